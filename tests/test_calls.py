"""One call model (safe_qaq/calls.py): live inference sends exactly the chunks data preparation trained on."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from prompt import FRAUD, FRAUD_TYPES, NORMAL, SCENES, TASKS
from safe_qaq import live
from safe_qaq.calls import Call, RowError, load_calls, resolve_audio
from safe_qaq.jsonl import read_jsonl
from safe_qaq.prepare import Options, prepare
from tests.helpers.engines import FakeEngine, listener_engine

ROOT = Path(__file__).resolve().parents[1]
CALLS_META = ROOT / "data" / "calls" / "metadata.jsonl"


def NeverDecides() -> FakeEngine:
    """An engine that always answers "not enough audio yet", so every prefix of a call is requested."""
    return listener_engine(early_conf=0.1, reasons=False)


def _pauses_ms(turns: list[dict]) -> list[int]:
    """Middle of each pause between turns, written out here so the test does not share the code it checks."""
    return [round(500 * (a["end"] + max(b["start"], a["end"]))) for a, b in itertools.pairwise(turns)]


def _samples(paths: list[str]) -> list[np.ndarray]:
    return [sf.read(p, dtype="int16")[0] for p in paths]


def test_live_sends_the_chunks_prepare_cut_for_every_prefix(tmp_path):
    # the bundled calls over 30 s (all have turns) and one that fits in one chunk
    records = [r for r in read_jsonl(CALLS_META) if r["duration"] > 30 or r["id"] == "call_001"]
    assert sum(r["duration"] > 30 for r in records) == 5
    for record in records:
        record["audio"] = str(CALLS_META.parent / record["audio"])
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    # one prepare run per call, with a training prefix at every pause between turns (what live walks)
    prepared_by_end: dict[str, dict[float, list[str]]] = {}
    for record in records:
        pauses = [p for p in _pauses_ms(record["turns"]) if 0 < p < record["duration"] * 1000]
        one = tmp_path / f"{record['id']}.jsonl"
        one.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        fractions = tuple(p / round(record["duration"] * 1000) for p in pauses)
        options = Options(prefix_fractions=fractions, min_prefix_seconds=0.0, test_fraction=0.0, progress=False)
        out = tmp_path / "prepared" / record["id"]
        prepare([one], out, options)
        rows = [r for r in read_jsonl(out / "realtime_train.jsonl") if r["task"] == "fraud"]
        prepared_by_end[record["id"]] = {r["prefix_end_s"]: r["audios"] for r in rows}
        assert sorted(prepared_by_end[record["id"]])[:-1] == [p / 1000 for p in sorted(set(pauses))]

    calls = live.calls_from_file(tmp_path / "prepared" / records[0]["id"] / "calls_train.jsonl", "fraud")
    for record in records:
        [call] = live.calls_from_file(tmp_path / "prepared" / record["id"] / "calls_train.jsonl", "fraud")
        engine = NeverDecides()
        [result] = live.run_live(engine, [call], history=False, cache_dir=tmp_path / "live")
        assert result["rounds_used"] == len(result["prefix_ends"])
        prepared = prepared_by_end[record["id"]]
        assert result["prefix_ends"] == sorted(prepared), record["id"]
        for end, request in zip(result["prefix_ends"], engine.requests, strict=True):
            sent, trained = _samples(request["audios"]), _samples(prepared[end])
            assert [len(s) for s in sent] == [len(s) for s in trained], (record["id"], end)
            assert all(np.array_equal(a, b) for a, b in zip(sent, trained, strict=True)), (record["id"], end)
        if record["duration"] > 30:  # the whole call goes as two chunks, split in a pause
            whole = engine.requests[-1]["audios"]
            assert len(whole) == 2 and len(_samples(whole)[0]) < 30 * 16000
    assert calls  # the loader found the call


@pytest.mark.parametrize("with_turns", [True, False])
def test_live_splits_long_prefixes_where_training_does(tmp_path, with_turns):
    """38 s with a pause at 25 s: training saw [0-25, 25-38]; live must send the same, not [0-30, 30-38]."""
    rng = np.random.default_rng(0)
    wav = tmp_path / "c38.wav"
    sf.write(wav, (0.1 * rng.standard_normal(38 * 16000)).astype(np.float32), 16000)
    turns = [
        {"speaker": "caller", "start": 0.5, "end": 24.8, "text": "喂"},
        {"speaker": "callee", "start": 25.2, "end": 37.5, "text": "嗯"},
    ]
    record = {"id": "c38", "audio": str(wav), "duration": 38.0, "scene": None, "label": "fraud", "fraud_type": None}
    record["turns"] = turns if with_turns else []
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    prepare([meta], out, Options(test_fraction=0.0, progress=False))
    [offline] = read_jsonl(out / "offline_train.jsonl")
    expected = [25000, 13000] if with_turns else [30000, 8000]
    assert [sf.info(p).frames * 1000 // 16000 for p in offline["audios"]] == expected
    [call] = live.calls_from_file(out / "calls_train.jsonl", "fraud")
    engine = NeverDecides()
    live.run_live(engine, [call], history=False, cache_dir=tmp_path / "live")
    sent = engine.requests[-1]["audios"]
    assert [sf.info(p).frames * 1000 // 16000 for p in sent] == expected
    assert all(np.array_equal(a, b) for a, b in zip(_samples(sent), _samples(offline["audios"]), strict=True))


def test_live_sends_no_prefix_over_the_audio_bound(tmp_path, capsys):
    """245 s without turns: the whole call would be 9 chunks; vLLM takes 8 per row, so it is not sent."""
    wav = tmp_path / "long.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(245 * 16000)).astype(np.float32), 16000)
    engine = NeverDecides()
    [result] = live.run_live(engine, [live.LiveCall("long", str(wav))], hop_s=100, history=False, cache_dir=tmp_path)
    assert result["prefix_ends"] == [100.0, 200.0] and result["rounds_used"] == 2
    assert [len(r["audios"]) for r in engine.requests] == [4, 7]
    assert "needs more than 8 chunks of at most 30 s; sending the first 200.0 s" in capsys.readouterr().err


def test_live_imports_neither_prepare_nor_floor():
    code = "import sys, safe_qaq.live; print(sorted({'safe_qaq.prepare', 'safe_qaq.floor'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------
# The record, the gold rule, audio paths
# ---------------------------------------------------------------------------


def test_gold_rule():
    fraud = Call(call_id="a", audio="/a.wav", scene=SCENES[0], label=FRAUD, fraud_type=FRAUD_TYPES[1])
    assert [fraud.gold(t) for t in TASKS] == [SCENES[0], FRAUD, FRAUD_TYPES[1]]
    normal = Call(call_id="b", audio="/b.wav", scene="不是场景", label=NORMAL, fraud_type=FRAUD_TYPES[1])
    assert [normal.gold(t) for t in TASKS] == [None, NORMAL, None]  # unknown scene; a normal call has no type
    with pytest.raises(ValueError, match="unknown task"):
        fraud.gold("colour")


def test_resolve_audio(tmp_path, monkeypatch):
    listing = tmp_path / "lists" / "calls.jsonl"
    listing.parent.mkdir()
    (tmp_path / "lists" / "a.wav").write_bytes(b"x")
    assert resolve_audio("a.wav", listing) == str(tmp_path / "lists" / "a.wav")
    assert resolve_audio({"url": "file://a.wav"}, listing) == str(tmp_path / "lists" / "a.wav")
    assert resolve_audio("/abs/b.wav", listing) == "/abs/b.wav"
    assert resolve_audio("missing.wav", listing) == str(tmp_path / "lists" / "missing.wav")  # reported later
    (tmp_path / "here.wav").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_audio("here.wav", listing) == str(tmp_path / "here.wav")  # found only from the cwd
    for value, words in [
        (None, "non-empty string"),
        ("  ", "non-empty string"),
        ("a\0b.wav", "NUL character"),
        ("a\ud800.wav", "unpaired surrogate"),
        ("https://x/a.wav", "remote audio"),
    ]:
        with pytest.raises(RowError, match=words):
            resolve_audio(value, listing)


GOOD_CALL = {
    "id": "c1",
    "audio": "c1.wav",
    "duration": 3.0,
    "label": FRAUD,
    "turns": [{"speaker": "caller", "start": 0, "end": 1, "text": "喂"}],
}
# One parser, strict, for prepare and for every reader of call files: (change to a good record, reason).
BAD_CALLS = [
    ({"id": None}, "'id' must be a non-empty string, got None"),
    ({"id": 7}, "'id' must be a non-empty string, got 7"),
    ({"audio": None}, "audio path must be a non-empty string"),
    ({"label": "maybe"}, "unknown label 'maybe'"),
    ({"scene": "不是场景"}, "unknown scene '不是场景'"),
    ({"label": NORMAL, "fraud_type": FRAUD_TYPES[0]}, "a normal call cannot have fraud_type"),
    ({"label": None}, "record has no label"),
    ({"duration": -1}, "'duration' must be positive"),
    ({"turns": [GOOD_CALL["turns"][0], "x"]}, "turn 2 is not an object"),
    ({"turns": [{"start": 0, "end": 1}]}, "turn 1: speaker must be one of"),
    ({"turns": [{"speaker": "caller", "start": 2, "end": 1}]}, "turn 1: need 0 <= start <= end"),
]


def test_load_calls_names_the_bad_row(tmp_path):
    path = tmp_path / "calls.jsonl"
    path.write_text(json.dumps(GOOD_CALL) + "\n" + json.dumps({"audio": "c2.wav"}) + "\n", encoding="utf-8")
    with pytest.raises(RowError, match=rf"{path}:2: 'id' must be a non-empty string"):
        load_calls(path)
    for change, reason in BAD_CALLS:
        path.write_text(json.dumps(GOOD_CALL) + "\n" + json.dumps(GOOD_CALL | change) + "\n", encoding="utf-8")
        with pytest.raises(RowError) as caught:
            load_calls(path)
        assert str(caught.value).startswith(f"{path}:2: {reason}"), (change, str(caught.value))
    path.write_text(json.dumps(GOOD_CALL | {"fraud_type": FRAUD_TYPES[0], "label": None}) + "\n", encoding="utf-8")
    [call] = load_calls(path)
    assert (call.call_id, call.audio, call.duration, call.turns) == (
        "c1",
        str(tmp_path / "c1.wav"),
        3.0,
        [{"speaker": "caller", "start": 0.0, "end": 1.0, "text": "喂"}],
    )
    assert call.to_json()["scene"] is None and call.gold("fraud") == FRAUD  # a fraud type implies a fraud call


def test_prepare_rejects_what_the_readers_refuse_with_the_same_reason(tmp_path):
    """prepare and the call readers share one parser: each bad record is a reject row with the reader's reason."""
    path = tmp_path / "meta.jsonl"
    path.write_text("".join(json.dumps(GOOD_CALL | change) + "\n" for change, _ in BAD_CALLS), encoding="utf-8")
    summary = prepare([path], tmp_path / "out", Options(progress=False))
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [r["row"] for r in rejects] == list(range(1, len(BAD_CALLS) + 1))
    for reject, (change, reason) in zip(rejects, BAD_CALLS, strict=True):
        assert reject["reason"].startswith(reason), (change, reject)
        one = tmp_path / "one.jsonl"
        one.write_text(json.dumps(GOOD_CALL | change) + "\n", encoding="utf-8")
        with pytest.raises(RowError) as caught:
            load_calls(one)
        assert str(caught.value) == f"{one}:1: {reject['reason']}"
    assert summary["records_rejected"] == len(BAD_CALLS)
