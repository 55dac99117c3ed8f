"""safe_qaq.prepare: bundled calls, TeleAntiFraud fixture, bad inputs, split, ms-swift loading."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

import prompt
from safe_qaq import audio as audio_utils
from safe_qaq.answer import parse_answer
from safe_qaq.calls import Call, chunk_bounds, plan_prefixes, stage_of
from safe_qaq.jsonl import read_jsonl
from safe_qaq.prepare import Options, main, prepare
from safe_qaq.prepare.records import parse_reference_answer
from safe_qaq.prepare.rows import split_calls
from tests.helpers.prepare_inputs import GOOD_AUDIO, fixture_rows

ROOT = Path(__file__).resolve().parents[1]
CALLS_META = ROOT / "data" / "calls" / "metadata.jsonl"
FIXTURE = ROOT / "tests" / "fixtures" / "teleantifraud"
FIXTURE_INPUTS = [FIXTURE / "scene.json", FIXTURE / "fraud.jsonl", FIXTURE / "fraud_type.json"]
PROMPT_KINDS = ("offline", "realtime")
ALL_KINDS = ("offline", "realtime", "sft", "sft_realtime")
QUIET = Options(workers=1, progress=False)


def rows_of(out: Path, kind: str) -> list[dict]:
    return read_jsonl(out / f"{kind}_train.jsonl") + read_jsonl(out / f"{kind}_test.jsonl")


def audio_seconds(path: str) -> float:
    return sf.info(path).duration


@pytest.fixture(scope="module")
def metadata() -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(CALLS_META)}


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare([CALLS_META], out, QUIET)
    return out, summary


# ---------------------------------------------------------------------------
# Bundled calls
# ---------------------------------------------------------------------------


def test_bundled_outputs(bundled, metadata):
    out, summary = bundled
    for name in (
        *(f"{k}_{s}.jsonl" for k in ALL_KINDS for s in ("train", "test")),
        "calls_train.jsonl",
        "calls_test.jsonl",
        "split.json",
        "rejects.jsonl",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    assert summary["records_rejected"] == 0 and read_jsonl(out / "rejects.jsonl") == []
    assert summary["calls"]["accepted"] == len(metadata)
    n_rounds = sum(3 if r["label"] == prompt.FRAUD else 2 for r in metadata.values())
    assert len(rows_of(out, "offline")) == len(rows_of(out, "sft")) == n_rounds
    assert len(rows_of(out, "realtime")) == len(rows_of(out, "sft_realtime"))
    on_disk = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["rows"]["offline_train.jsonl"] == len(read_jsonl(out / "offline_train.jsonl"))
    stages = {key.split("|")[2] for key in on_disk["by_task_stage"] if key.startswith("realtime")}
    assert stages == set(prompt.STAGES)


def _check_carried(messages: list[dict], mode: str, stage: str, gold_of: dict[str, str]) -> None:
    """Every assistant turn is a well-formed answer with the gold label of its round."""
    tasks = [t for t in prompt.TASKS if gold_of.get(t)]
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    for task, text in zip(tasks, assistants, strict=False):
        parsed = parse_answer(text)
        assert parsed.tags_ok and parsed.schema_error(task) is None, text
        if mode == "realtime":
            assert parsed.stage() == stage
        assert parsed.prediction(task) == gold_of[task] or (
            mode == "realtime" and stage == prompt.EARLY_STAGE and parsed.label(task) is None
        )


def _gold_of(record: dict) -> dict[str, str]:
    return {"scene": record["scene"], "fraud": record["label"], "fraud_type": record["fraud_type"]}


def test_prompt_rows_shape(bundled, metadata):
    out, _ = bundled
    for kind in PROMPT_KINDS:
        mode = kind
        for row in rows_of(out, kind):
            record = metadata[row["call_id"]]
            gold_of = _gold_of(record)
            assert row["answers"] == gold_of[row["task"]]
            assert prompt.task_of_label(row["answers"]) == row["task"]
            messages = row["messages"]
            assert messages[-1]["role"] == "user"
            assert len(messages) == 2 * (prompt.TASKS.index(row["task"]) + 1)
            assert messages[-1]["content"].endswith(prompt.get_prompt(row["task"], mode))
            assert messages[1]["content"].count(prompt.AUDIO_TAG) == len(row["audios"]) >= 1
            assert sum(m["content"].count(prompt.AUDIO_TAG) for m in messages) == len(row["audios"])
            for path in row["audios"]:
                assert Path(path).is_absolute() and Path(path).is_file()
                assert audio_seconds(path) <= audio_utils.MAX_AUDIO_SECONDS + 1e-6
            _check_carried(messages, mode, row["conversation_stage"], gold_of)
            if kind == "offline":
                assert row["conversation_stage"] == prompt.COMPLETE


def test_sft_rows_extend_prompt_rows(bundled, metadata):
    out, _ = bundled
    prompts = {(r["call_id"], r["task"]): r for r in rows_of(out, "offline")}
    for row in rows_of(out, "sft"):
        assert row["messages"][-1]["role"] == "assistant"
        assert row["messages"][:-1] == prompts[row["call_id"], row["task"]]["messages"]
        parsed = parse_answer(row["messages"][-1]["content"])
        assert parsed.prediction(row["task"]) == row["answers"]
    for row in rows_of(out, "sft_realtime"):
        parsed = parse_answer(row["messages"][-1]["content"])
        assert parsed.stage() == row["conversation_stage"]
        if row["conversation_stage"] == prompt.EARLY_STAGE:  # default --early-sft-answer null
            assert parsed.label(row["task"]) is None
        else:
            assert parsed.prediction(row["task"]) == row["answers"]
        _check_carried(row["messages"], "realtime", row["conversation_stage"], _gold_of(metadata[row["call_id"]]))


def test_realtime_prefixes(bundled, metadata):
    out, _ = bundled
    options = QUIET
    by_call: dict[str, set] = {}
    for row in rows_of(out, "realtime"):
        duration = row["call_duration_s"]
        assert abs(duration - metadata[row["call_id"]]["duration"]) < 0.01
        assert 0 < row["prefix_end_s"] <= duration
        heard = sum(audio_seconds(p) for p in row["audios"])
        assert abs(heard - row["prefix_end_s"]) < 0.01
        expected = stage_of(
            round(row["prefix_end_s"] * 1000) / round(duration * 1000),
            options.early_max_fraction,
            options.complete_min_fraction,
        )
        assert row["conversation_stage"] == expected
        # Prefixes end at turn boundaries (in a pause, not inside a turn).
        if row["conversation_stage"] != prompt.COMPLETE:
            for turn in metadata[row["call_id"]]["turns"]:
                assert not turn["start"] < row["prefix_end_s"] < turn["end"]
        by_call.setdefault(row["call_id"], set()).add((row["prefix_end_s"], row["conversation_stage"]))
    assert set(by_call) == set(metadata)
    for prefixes in by_call.values():
        assert sum(stage == prompt.COMPLETE for _, stage in prefixes) == 1
        assert len(prefixes) >= 3


def test_long_calls_are_chunked(bundled, metadata):
    out, summary = bundled
    long_ids = {cid for cid, r in metadata.items() if r["duration"] > audio_utils.MAX_AUDIO_SECONDS}
    assert len(long_ids) >= 2
    assert summary["audio"]["chunked_calls"] == len(long_ids) and summary["audio"]["truncated_calls"] == 0
    for row in rows_of(out, "offline"):
        duration = metadata[row["call_id"]]["duration"]
        if row["call_id"] in long_ids:
            assert len(row["audios"]) == 2
            assert abs(sum(audio_seconds(p) for p in row["audios"]) - duration) < 0.01
        else:
            assert row["audios"] == [str(CALLS_META.parent / metadata[row["call_id"]]["audio"])]


def test_split_by_call(bundled, metadata):
    out, _ = bundled
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    train, test = set(split["train"]), set(split["test"])
    assert not train & test
    assert train | test == set(metadata)
    assert len(test) == round(0.25 * len(metadata))
    for side, ids in (("train", train), ("test", test)):
        for kind in (*ALL_KINDS, "calls"):
            rows = read_jsonl(out / f"{kind}_{side}.jsonl")
            assert {r.get("call_id", r.get("id")) for r in rows} == ids, (kind, side)
        labels = {metadata[i]["label"] for i in ids}
        assert labels == set(prompt.FRAUD_LABELS)  # stratified: both classes on both sides


def test_split_deterministic():
    calls = [Call(call_id=f"c{i:03d}", audio=f"/c{i}.wav", label=prompt.FRAUD_LABELS[i % 2]) for i in range(40)]
    assert split_calls(calls, 0.25, 0) == split_calls(list(reversed(calls)), 0.25, 0)
    assert split_calls(calls, 0.25, 0) != split_calls(calls, 0.25, 1)
    one = split_calls(calls, 0.25, 0)
    assert len(one["test"]) == 10 and not set(one["test"]) & set(one["train"])


def test_calls_files_keep_turns(bundled, metadata):
    out, _ = bundled
    for record in read_jsonl(out / "calls_train.jsonl") + read_jsonl(out / "calls_test.jsonl"):
        original = metadata[record["id"]]
        assert record["turns"] == original["turns"]
        assert Path(record["audio"]).is_absolute() and Path(record["audio"]).is_file()
        for key in ("scene", "label", "fraud_type"):
            assert record[key] == original[key]


def test_rerun_reuses_audio_and_is_deterministic(bundled, tmp_path):
    out, first = bundled
    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    again = prepare([CALLS_META], out, QUIET)
    assert again["audio"]["segments_written"] == 0
    assert again["audio"]["segments_reused"] == first["audio"]["segments_written"] > 0
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == before


def test_truncate_policy(tmp_path, metadata):
    long_records = [r for r in metadata.values() if r["duration"] > 30][:2]
    meta = tmp_path / "meta.jsonl"
    meta.write_text(
        "".join(
            json.dumps({**r, "audio": str(CALLS_META.parent / r["audio"])}, ensure_ascii=False) + "\n"
            for r in long_records
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    summary = prepare([meta], out, Options(long_call="truncate", test_fraction=0.0, workers=1, progress=False))
    assert summary["audio"]["truncated_calls"] == 2 and summary["audio"]["chunked_calls"] == 0
    for row in rows_of(out, "offline") + rows_of(out, "realtime"):
        assert len(row["audios"]) == 1
        assert audio_seconds(row["audios"][0]) <= 30.0 + 1e-6
    stages = {r["conversation_stage"] for r in rows_of(out, "realtime") if r["prefix_end_s"] == 30.0}
    assert stages == {prompt.LATE_STAGE}  # 30 s of a 34-38 s call is not the complete call


# ---------------------------------------------------------------------------
# TeleAntiFraud release format
# ---------------------------------------------------------------------------


def test_teleantifraud_fixture(tmp_path):
    out = tmp_path / "out"
    summary = prepare(FIXTURE_INPUTS, out, Options(test_fraction=0.0, workers=1, progress=False))
    assert summary["records"] == 9 and summary["records_rejected"] == 0
    assert summary["calls"]["accepted"] == 4  # records merged by audio file
    offline = rows_of(out, "offline")
    tasks = {}
    for row in offline:
        tasks.setdefault(row["call_id"], []).append(row["task"])
    assert tasks == {
        "taf_0001": ["scene", "fraud"],
        "taf_0002": ["scene", "fraud", "fraud_type"],
        "taf_0003": ["scene", "fraud", "fraud_type"],
        "taf_0004": ["fraud"],  # only in the binary file: only the fraud round
    }
    only_fraud = next(r for r in offline if r["call_id"] == "taf_0004")
    assert len(only_fraud["messages"]) == 2 and only_fraud["answers"] == prompt.NORMAL
    # taf_0003 carries the record's reference answers.
    reference = json.loads((FIXTURE / "fraud.jsonl").read_text(encoding="utf-8").splitlines()[2])["answer"]
    round3 = next(r for r in offline if r["call_id"] == "taf_0003" and r["task"] == "fraud_type")
    assert round3["messages"][4]["content"] == reference
    sft3 = next(r for r in rows_of(out, "sft") if r["call_id"] == "taf_0003" and r["task"] == "fraud_type")
    assert "冒充银行工作人员" in parse_answer(sft3["messages"][-1]["content"]).think
    assert parse_answer(sft3["messages"][-1]["content"]).prediction("fraud_type") == round3["answers"]
    # Fixture audio is 8 kHz (one file stereo): cut prefixes are 16 kHz mono.
    for row in rows_of(out, "realtime"):
        for path in row["audios"]:
            info = sf.info(path)
            if "/audio/" in path and str(out) in path:
                assert (info.samplerate, info.channels) == (16000, 1)


def test_teleantifraud_json_list_and_jsonl_agree(tmp_path):
    """The same records as a JSON list or one per line give the same rows."""
    jsonl_dir = tmp_path / "jsonl"
    shutil.copytree(FIXTURE, jsonl_dir)
    for name in ("scene.json", "fraud_type.json"):
        records = json.loads((jsonl_dir / name).read_text(encoding="utf-8"))
        (jsonl_dir / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    opts = Options(test_fraction=0.0, workers=1, progress=False)
    prepare(FIXTURE_INPUTS, tmp_path / "a", opts)
    prepare([jsonl_dir / p.name for p in FIXTURE_INPUTS], tmp_path / "b", opts)

    def normalised(out: Path) -> list[dict]:
        rows = rows_of(out, "sft")
        for row in rows:
            row["audios"] = [Path(p).name for p in row["audios"]]
        return rows

    assert normalised(tmp_path / "a") == normalised(tmp_path / "b")


def test_parse_reference_answer():
    assert parse_reference_answer(f" {prompt.FRAUD} ") == ("fraud", prompt.FRAUD, None)
    scene = prompt.SCENES[0]
    assert parse_reference_answer(scene) == ("scene", scene, None)
    full = prompt.format_answer("fraud_type", prompt.FRAUD_TYPES[2], reason="理由")
    assert parse_reference_answer(full) == ("fraud_type", prompt.FRAUD_TYPES[2], full)
    task, label, ref = parse_reference_answer(f"<think>分析</think><answer>{prompt.NORMAL}</answer>")
    assert (task, label) == ("fraud", prompt.NORMAL) and parse_answer(ref).think == "分析"


# ---------------------------------------------------------------------------
# Bad input: every bad row is rejected with its file, row and reason; good rows stay
# ---------------------------------------------------------------------------


def _write_bad(kind: str, folder: Path) -> tuple[str, str]:
    """One bad metadata line of ``kind``; returns (line, expected reject code)."""
    row = {"id": f"bad_{kind}", "scene": prompt.SCENES[0], "label": prompt.NORMAL, "fraud_type": None}
    audio = folder / f"{kind}.wav"
    if kind == "missing":
        row["audio"], code = str(folder / "does_not_exist.wav"), "missing"
    elif kind == "empty":
        audio.write_bytes(b"")
        row["audio"], code = str(audio), "empty"
    elif kind == "corrupt":
        audio = folder / "corrupt.flac"
        audio.write_bytes((CALLS_META.parent / "audio" / "call_001.flac").read_bytes()[:3000])
        row["audio"], code = str(audio), "unreadable"
    elif kind == "non_audio":
        audio.write_text("this is not audio\n")
        row["audio"], code = str(audio), "unreadable"
    elif kind == "silent":
        sf.write(audio, np.zeros(16000 * 3, np.float32), 16000)
        row["audio"], code = str(audio), "silent"
    elif kind == "unknown_label":
        row["audio"], row["scene"], code = str(GOOD_AUDIO[0]), "不是场景", "unknown_label"
    elif kind == "unknown_answer":
        user = {"role": "user", "content": [{"type": "audio", "audio_url": str(GOOD_AUDIO[1])}]}
        return json.dumps({"prompt": [user], "answer": "maybe"}), "unknown_label"
    elif kind == "malformed_json":
        return '{"id": "bad", "audio": ', "malformed_json"
    elif kind == "conflict":
        user = {"role": "user", "content": [{"type": "audio", "audio_url": str(GOOD_AUDIO[0])}]}
        return json.dumps({"prompt": [user], "answer": prompt.SCENES[3]}), "conflict"
    elif kind == "duplicate_id":
        sf.write(audio, np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32), 16000)
        row["id"], row["audio"], code = "good_0", str(audio), "duplicate_id"
    elif kind == "turns_past_end":
        row["audio"], code = str(GOOD_AUDIO[2]), "turns"
        row["id"] = "good_2"  # the same call as a good row: merged, then rejected as a whole
        row.update(scene=prompt.SCENES[2], label=prompt.NORMAL)
        row["turns"] = [{"speaker": "caller", "start": 0.0, "end": 60.0, "text": "..."}]
        return json.dumps(row, ensure_ascii=False), code
    elif kind == "duration_mismatch":
        sf.write(audio, np.random.default_rng(1).normal(0, 0.1, 16000 * 3).astype(np.float32), 16000)
        row["audio"], row["duration"], code = str(audio), 20.0, "duration"
    else:
        raise AssertionError(kind)
    return json.dumps(row, ensure_ascii=False), code


BAD_KINDS = (
    "missing",
    "empty",
    "corrupt",
    "non_audio",
    "silent",
    "unknown_label",
    "unknown_answer",
    "malformed_json",
    "conflict",
    "duplicate_id",
    "duration_mismatch",
)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_row_is_rejected_with_reason(kind, tmp_path, capsys):
    bad_line, code = _write_bad(kind, tmp_path)
    meta = tmp_path / "meta.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in fixture_rows()]
    lines.insert(2, bad_line)  # the bad row is line 3
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"

    # 1 of 5 rows rejected = 20% > the default 5% limit: the run fails ...
    assert main(["--input", str(meta), "--out", str(out), "--workers", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{meta}:3" in err and "REJECT" in err
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [(r["input"], r["row"], r["code"]) for r in rejects] == [(str(meta), 3, code)], rejects
    assert rejects[0]["reason"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["records"], summary["records_accepted"], summary["records_rejected"]) == (5, 4, 1)
    # ... and every good row is still there.
    calls = read_jsonl(out / "calls_train.jsonl") + read_jsonl(out / "calls_test.jsonl")
    assert sorted(c["id"] for c in calls) == [f"good_{i}" for i in range(len(GOOD_AUDIO))]
    # Under a looser limit the same input passes.
    assert (
        main(
            [
                "--input",
                str(meta),
                "--out",
                str(out),
                "--workers",
                "1",
                "--no-progress",
                "--max-reject-fraction",
                "0.25",
            ]
        )
        == 0
    )


def test_rejected_audio_rejects_every_record_of_the_call(tmp_path):
    bad_line, _ = _write_bad("turns_past_end", tmp_path)
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join([*(json.dumps(r) for r in fixture_rows()), bad_line]) + "\n", encoding="utf-8")
    summary = prepare([meta], tmp_path / "out", QUIET)
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert {(r["row"], r["code"]) for r in rejects} == {(3, "turns"), (5, "turns")}
    assert summary["calls"]["accepted"] == len(GOOD_AUDIO) - 1


def test_unparseable_json_list_fails_the_run(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"prompt": [], "answer": "fraud"},', encoding="utf-8")
    assert (
        main(["--input", str(broken), "--input", str(CALLS_META), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    )
    rejects = read_jsonl(tmp_path / "o" / "rejects.jsonl")
    assert rejects[0]["input"] == str(broken) and rejects[0]["row"] == 0 and rejects[0]["code"] == "malformed_json"


def test_bad_arguments_exit_2(tmp_path):
    assert main(["--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert main(["--input", str(CALLS_META), "--out", str(tmp_path / "o"), "--chunk-seconds", "45"]) == 2


# ---------------------------------------------------------------------------
# Stage rule and chunking
# ---------------------------------------------------------------------------


def test_stage_rule():
    assert stage_of(0.2, 0.35, 1.0) == prompt.EARLY_STAGE
    assert stage_of(0.35, 0.35, 1.0) == prompt.EARLY_STAGE
    assert stage_of(0.36, 0.35, 1.0) == prompt.LATE_STAGE
    assert stage_of(0.99, 0.35, 1.0) == prompt.LATE_STAGE
    assert stage_of(1.0, 0.35, 1.0) == prompt.COMPLETE
    assert stage_of(0.95, 0.35, 0.9) == prompt.COMPLETE


def test_plan_prefixes_by_turns_and_by_time():
    kw = {"early_max": 0.35, "complete_min": 1.0, "min_prefix_ms": 2000}
    # Turn boundaries at 5, 12, 21, 30 s of a 40 s call: targets 10/20/30 s snap to 12/21/30.
    by_turns = plan_prefixes(40000, [5000, 12000, 21000, 30000], (0.25, 0.5, 0.75), **kw)
    assert by_turns == [(12000, "early_stage"), (21000, "late_stage"), (30000, "late_stage"), (40000, "complete")]
    # No timestamps: cut at the time fractions themselves.
    by_time = plan_prefixes(40000, [], (0.25, 0.5, 0.75), **kw)
    assert by_time == [(10000, "early_stage"), (20000, "late_stage"), (30000, "late_stage"), (40000, "complete")]
    # Too-short and duplicate prefixes are skipped; the whole call is always there.
    assert plan_prefixes(3000, [], (0.25, 0.5, 0.75), **kw) == [(2250, "late_stage"), (3000, "complete")]
    assert plan_prefixes(40000, [20000], (0.25, 0.5), **kw) == [(20000, "late_stage"), (40000, "complete")]


@settings(max_examples=200, deadline=None)
@given(
    end=st.integers(min_value=1, max_value=400_000),
    points=st.lists(st.integers(min_value=1, max_value=400_000), max_size=30),
    chunk=st.integers(min_value=1000, max_value=30_000),
)
def test_chunk_bounds_cover_the_audio(end, points, chunk):
    bounds = chunk_bounds(end, points, chunk)
    assert bounds[0][0] == 0 and bounds[-1][1] == end
    for (_, b), (c, _) in itertools.pairwise(bounds):
        assert b == c
    assert all(0 < b - a <= chunk for a, b in bounds)
    # A prefix shares every chunk of the whole call that ends before the prefix's last chunk.
    if len(bounds) > 1:
        cut = bounds[-2][1] + 1
        prefix = chunk_bounds(cut, [p for p in points if p < cut], chunk)
        assert prefix[:-1] == bounds[: len(prefix) - 1]


# ---------------------------------------------------------------------------
# ms-swift: the files load with its dataset loader and encode with the qwen2_audio template
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_processor(tmp_path_factory):
    tiny_model = pytest.importorskip("safe_qaq.toy.tiny_model")
    from swift.model import get_processor

    model_dir = tiny_model.build_tiny_model(tmp_path_factory.mktemp("tiny"))
    return get_processor(str(model_dir), model_type="qwen2_audio")


@pytest.mark.parametrize("template_type", ["qwen2_audio", "qwen2_audio_expanded"])
def test_ms_swift_loads_and_encodes(bundled, tiny_processor, template_type):
    from swift.dataset import load_dataset
    from swift.template import get_template

    if template_type != "qwen2_audio":
        import safe_qaq.qwen2_audio_template  # noqa: F401  registers the template

    out, _ = bundled
    template = get_template(tiny_processor, template_type=template_type)
    template.set_mode("train")
    audio_id = tiny_processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    for kind in ALL_KINDS:
        dataset, _ = load_dataset([str(out / f"{kind}_train.jsonl")], remove_unused_columns=False)
        assert len(dataset) == len(read_jsonl(out / f"{kind}_train.jsonl"))
        for column in ("messages", "audios", "answers", "conversation_stage", "task", "call_id"):
            assert column in dataset.column_names, (kind, column)
        # One single-audio and one chunked row of each file.
        samples = [next(r for r in dataset if len(r["audios"]) == n) for n in (1, 2)]
        for row in samples:
            encoded = template.encode(row)
            assert encoded["input_features"].shape[0] == len(row["audios"])
            assert audio_id in encoded["input_ids"]
            has_target = any(label != -100 for label in encoded["labels"])
            assert has_target == kind.startswith("sft"), kind
