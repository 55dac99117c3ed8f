"""Hostile but fair input to every CLI: a one-line message naming the file, row and problem, a non-zero exit,
never a traceback; and rewards that never raise.  One table per CLI: (case, input, exit code, message)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import prompt
from safe_qaq import evaluate, live, process_samples, rewards, sample
from safe_qaq.jsonl import dumps, meta_path
from safe_qaq.models import resolve_model
from tests.helpers.engines import FakeEngine, echo_engine, listener_engine

# what every generating CLI prints for a model folder that does not exist (at once: nothing is downloaded)
MISSING_MODEL = "cannot load model '/no/such/model': ModelError: model folder /no/such/model does not exist"
DEEP = b'{"prediction": ' + b"[" * 10_000 + b"]" * 10_000 + b', "answer": "fraud"}\n'


def call(main, argv, capsys) -> tuple[int, str, str]:
    """Run a CLI's main in-process; any exception fails the test (that would be a traceback)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]


def write(path: Path, data: bytes | str | list[dict]) -> Path:
    if isinstance(data, list):
        data = "".join(dumps(r) for r in data)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def fraud_row(folder: Path, i: int, **change) -> dict:
    audio = folder / f"a{i}.wav"
    audio.touch()  # the fake engines never read it; the CLIs check it exists
    row = {"messages": prompt.build_messages("fraud"), "audios": [str(audio)], "answers": prompt.FRAUD}
    return {**row, "task": "fraud", "call_id": f"c{i}", **change}


@pytest.fixture
def engine(monkeypatch):
    """What safe_qaq.engine.make_engine gives: ``--model listener`` a ListenerEngine, others an EchoEngine."""
    import safe_qaq.engine

    made = {"echo": echo_engine(), "listener": listener_engine(decide_after_s=1.0)}

    def make(model, **kwargs):
        if model == "/no/such/model":  # what the real factory does first: resolve the model, never download it
            resolve_model(model, backend=kwargs.get("backend", "pt"))
        return made["listener" if model == "listener" else "echo"]

    monkeypatch.setattr(safe_qaq.engine, "make_engine", make)
    return made


# --- process_samples ----------------------------------------------------------------------------------


def sample_lines(index: int, count: int, text: str = "<think>诈骗</think><answer>{}</answer>") -> list[dict]:
    row = {"messages": prompt.build_messages("fraud"), "audios": ["/a.wav"], "answers": prompt.FRAUD, "task": "fraud"}
    pid = sample.prompt_id({**row, "audios": [f"/a{index}.wav"]})
    return [
        {**row, "prompt_index": index, "prompt_id": pid, "sample_index": k, "completion": text} for k in range(count)
    ]


def ps_case(tmp: Path, case: str) -> list:
    good = write(tmp / "s.jsonl", sample_lines(0, 2) + sample_lines(1, 2))
    out, unsolved = tmp / "rsft.jsonl", tmp / "unsolved.jsonl"
    if case == "missing input":
        return [tmp / "none.jsonl", "--output", out, "--unsolved", unsolved]
    if case == "output is an input":
        return [good, "--output", good, "--unsolved", unsolved]
    if case == "unsolved is an input, spelled otherwise":
        return [good, "--output", out, "--unsolved", tmp / "sub" / ".." / "s.jsonl"]
    if case == "output is unsolved":
        return [good, "--output", out, "--unsolved", out]
    if case == "short group (--n)":
        write(good, sample_lines(0, 2) + sample_lines(1, 1))
        return [good, "--output", out, "--unsolved", unsolved, "--n", "2"]
    if case == "short group (N from .meta.json)":
        write(good, sample_lines(0, 3) + sample_lines(1, 2))
        meta_path(good).write_text(json.dumps({"n": 3}))
        return [good, "--output", out, "--unsolved", unsolved]
    if case == "torn inside a character":
        torn = dumps(sample_lines(2, 1, "诈骗")[0]).encode()
        write(good, good.read_bytes() + torn[: torn.index("骗".encode()) + 2])
        return [good, "--output", out, "--unsolved", unsolved]
    if case == "nested 10k deep":
        write(good, good.read_bytes() + DEEP)
        return [good, "--output", out, "--unsolved", unsolved]
    if case == "one empty input":
        return [good, write(tmp / "empty.jsonl", b""), "--output", out, "--unsolved", unsolved]
    if case == "every input empty":
        write(out, "an earlier result\n")
        return [write(tmp / "empty.jsonl", b""), "--output", out, "--unsolved", unsolved]
    raise AssertionError(case)


PROCESS_SAMPLES = [
    ("missing input", 2, "none.jsonl: no such file"),
    ("output is an input", 2, "--output {tmp}/s.jsonl is an input"),
    ("unsolved is an input, spelled otherwise", 2, "--unsolved"),
    ("output is unsolved", 2, "--output and --unsolved are the same file"),
    ("short group (--n)", 2, "s.jsonl:3: prompt 1 has 1 completions, not 2"),
    ("short group (N from .meta.json)", 2, "s.jsonl:4: prompt 1 has 2 completions, not 3"),
    ("torn inside a character", 2, "s.jsonl:5: not valid UTF-8 (byte 0xe9 at column"),
    ("nested 10k deep", 2, "s.jsonl:5: JSON nested too deeply"),
    ("one empty input", 0, "warning: {tmp}/empty.jsonl: no completions"),
    ("every input empty", 2, "no completions in {tmp}/empty.jsonl; nothing written"),
]


@pytest.mark.parametrize(("case", "code", "message"), PROCESS_SAMPLES, ids=[c[0] for c in PROCESS_SAMPLES])
def test_process_samples_bad_inputs(tmp_path, capsys, case, code, message):
    argv = ps_case(tmp_path, case)
    inputs = {p: p.read_bytes() for p in tmp_path.glob("*.jsonl")}
    got, _, err = call(process_samples.main, argv, capsys)
    assert got == code and message.format(tmp=tmp_path) in err, err
    if code:
        assert len(errors(err)) == 1, err
        assert {p: p.read_bytes() for p in inputs} == inputs  # inputs and earlier outputs untouched
        assert not (tmp_path / "unsolved.jsonl").exists()


# --- evaluate --predictions ---------------------------------------------------------------------------


GOOD_PREDICTIONS = [
    {"prediction": prompt.format_answer("fraud", prompt.FRAUD), "answer": prompt.FRAUD, "task": "fraud"},
    {"prediction": None, "answer": prompt.NORMAL, "task": "fraud"},  # no answer at all: scored as a failure
]
NOT_TEXT = "'prediction' must be the answer text (a string), not a"
PREDICTIONS = [
    (
        "prediction is a list",
        b'{"prediction": ["a"], "answer": "fraud"}\n',
        f"p.jsonl:3: {NOT_TEXT} list",
    ),
    (
        "prediction is a dict",
        b'{"prediction": {"a": 1}, "answer": "fraud"}\n',
        f"p.jsonl:3: {NOT_TEXT} dict",
    ),
    ("nested 10k deep", DEEP, "p.jsonl:3: JSON nested too deeply"),
    ("raw invalid UTF-8", b'{"prediction": "\xff\xfe", "answer": "fraud"}\n', "p.jsonl:3: not valid UTF-8 (byte 0xff"),
    ("torn inside a character", '{"prediction": "诈'.encode()[:-1], "p.jsonl:3: not valid UTF-8 (byte 0xe8"),
    ("not an object", b'["fraud", "fraud"]\n', "p.jsonl:3: expected a JSON object, got list"),
    ("no prediction", b'{"answer": "fraud"}\n', "p.jsonl:3: no 'prediction'"),
    ("no answer", b'{"prediction": "x"}\n', "p.jsonl:3: no 'answer'"),
    ("huge integer", b'{"prediction": "x", "answer": ' + b"9" * 5000 + b"}\n", "p.jsonl:3: not valid JSON"),
]


@pytest.mark.parametrize(("case", "line", "message"), PREDICTIONS, ids=[c[0] for c in PREDICTIONS])
def test_evaluate_predictions_rejects_one_bad_row_and_scores_the_rest(tmp_path, capsys, case, line, message):
    path = write(tmp_path / "p.jsonl", "".join(dumps(r) for r in GOOD_PREDICTIONS).encode() + line)
    argv = ["--predictions", path, "--out", tmp_path / "eval", "--no-plots", "--no-floor"]
    code, _, err = call(evaluate.main, argv, capsys)
    assert code == 1 and message in err, err
    assert len(errors(err)) == 2 and message in errors(err)[0] and "1 line(s) rejected" in errors(err)[1], err
    fraud = json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"]["tasks"]["fraud"]
    assert fraud["n"] == 2 and fraud["accuracy"] == 0.5  # the two good rows, scored


# (row change, extra options)
OPENAI_MISSING = ({"audios": ["/no/such.wav"]}, ["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"])
TWO_MISSING = ({"messages": prompt.build_messages("fraud", n_audios=2), "audios": ["/no/a.wav", "/no/b.wav"]}, [])
EVALUATE = [
    ("missing predictions file", "predictions", None, 2, "none.jsonl: No such file or directory"),
    ("only bad rows", "predictions", b'{"prediction": 1, "answer": "fraud"}\n', 1, "no scorable records"),
    ("missing data file", "model", None, 2, "none.jsonl: No such file or directory"),
    ("data: raw invalid UTF-8", "model", b'{"messages": "\xc3\x28"}\n', 1, "data.jsonl:2: not valid UTF-8 (byte 0xc3"),
    ("data: messages not a list", "model", {"messages": "hi"}, 1, "data.jsonl:2: 'messages' is missing or not"),
    ("data: message without content", "model", {"messages": [{"role": "user"}]}, 1, "data.jsonl:2: 'messages'[0]"),
    ("data: audios a string", "model", {"audios": "a.wav"}, 1, "data.jsonl:2: 'audios' is not a list of paths"),
    ("data: audio missing", "model", {"audios": ["/no/such.wav"]}, 1, "data.jsonl:2: audio /no/such.wav does not"),
    # the openai client reads the files (a path it cannot open reached the server as text: "Invalid file: None")
    ("data: audio missing, --backend openai", "model", OPENAI_MISSING, 1, "data.jsonl:2: audio /no/such.wav does not"),
    ("data: two audios missing", "model", TWO_MISSING, 1, "data.jsonl:2: 2 audios do not exist: /no/a.wav, /no/b.wav"),
    ("data: two audios, one tag", "model", {"audios": ["x", "y"]}, 1, "1 <audio> tag(s) in 'messages' for 2 audio"),
    ("model cannot load", "model", "/no/such/model", 1, MISSING_MODEL),
    ("bad top-p", "model", ["--top-p", "0"], 2, "--top-p must be in (0, 1], got 0.0"),
    ("negative temperature", "model", ["--temperature", "-1"], 2, "--temperature must be >= 0"),
    ("neither model nor predictions", None, None, 2, "give one of --model"),
    # the transcript floor's calls files, read before anything is generated
    ("floor calls: a bad row", "floor", {"id": ""}, 1, "calls_train.jsonl:4: 'id' must be a non-empty string"),
    ("floor calls: raw invalid UTF-8", "floor", b'{"id": "\xff"}\n', 1, "calls_train.jsonl:4: not valid UTF-8"),
    ("floor calls: torn inside a character", "floor", '{"id": "诈'.encode()[:-1], 1, "calls_train.jsonl:4: not valid"),
    ("floor calls: missing file", "floor", None, 2, "none.jsonl: No such file or directory"),
    ("floor calls beside --data: a bad row", "floor beside", {"audio": 3}, 1, "calls_train.jsonl:4: audio path must"),
    ("floor calls: only --calls-train", "floor", [], 2, "--calls-train and --calls-test go together"),
]


@pytest.mark.parametrize(("case", "mode", "bad", "code", "message"), EVALUATE, ids=[c[0] for c in EVALUATE])
def test_evaluate_bad_inputs(tmp_path, capsys, engine, case, mode, bad, code, message):
    out = tmp_path / "eval"
    argv: list = ["--out", out, "--no-plots", "--quiet", *([] if str(mode).startswith("floor") else ["--no-floor"])]
    if str(mode).startswith("floor"):
        data = write(tmp_path / "data.jsonl", [fraud_row(tmp_path, 0)])
        train, test = write(tmp_path / "calls_train.jsonl", calls_records(tmp_path)), tmp_path / "calls_test.jsonl"
        write(test, calls_records(tmp_path))
        if isinstance(bad, bytes):
            write(train, train.read_bytes() + bad)
        elif isinstance(bad, dict):
            write(train, [*calls_records(tmp_path), {"id": "k9", "audio": "k9.wav", **bad}])
        argv += ["--model", "m", "--data", data]
        if mode == "floor":
            argv += ["--calls-train", tmp_path / "none.jsonl" if bad is None else train]
            argv += [] if isinstance(bad, list) else ["--calls-test", test]
    elif mode == "predictions":
        path = tmp_path / "none.jsonl" if bad is None else write(tmp_path / "p.jsonl", bad)
        argv += ["--predictions", path]
    elif mode == "model":
        bad, extra = bad if isinstance(bad, tuple) else (bad, bad if isinstance(bad, list) else [])
        rows = [fraud_row(tmp_path, 0)]
        data = write(tmp_path / "data.jsonl", rows)
        if isinstance(bad, bytes):
            write(data, data.read_bytes() + bad)
        elif isinstance(bad, dict):
            write(data, [*rows, {**fraud_row(tmp_path, 1), **bad}])
        argv += ["--data", tmp_path / "none.jsonl" if bad is None else data]
        argv += ["--model", bad if isinstance(bad, str) else "m", *extra]
    code_got, _, err = call(evaluate.main, argv, capsys)
    assert code_got == code and message in errors(err)[-1], err
    assert len(errors(err)) == (2 if case == "only bad rows" else 1), err  # there: the row, then the verdict
    if mode and mode != "predictions":
        assert engine["echo"].requests == [] and not (out / "predictions.jsonl").exists()


def test_evaluate_failed_generation_keeps_what_finished(tmp_path, capsys, engine):
    data = write(tmp_path / "data.jsonl", [fraud_row(tmp_path, i) for i in range(3)])
    echo, calls = engine["echo"], []

    def flaky(rows, **kwargs):
        calls.append(rows)
        if len(calls) == 2:
            raise RuntimeError("generation failed for row c1: CUDA out of memory")
        return FakeEngine.generate(echo, rows, **kwargs)

    echo.generate = flaky
    argv = ["--model", "m", "--data", data, "--out", tmp_path / "eval", "--batch-size", "1", "--quiet", "--no-floor"]
    code, _, err = call(evaluate.main, argv, capsys)
    assert code == 1
    assert errors(err) == ["error: generation failed: RuntimeError: generation failed for row c1: CUDA out of memory"]
    kept = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in kept] == [0]  # a rerun resumes from row 1


# --- sample -------------------------------------------------------------------------------------------


SAMPLE = [
    ("missing input", None, 2, "none.jsonl: No such file or directory"),
    ("raw invalid UTF-8", b'{"messages": "\xe8\xaf"}\n', 1, "in.jsonl:2: not valid UTF-8"),
    ("not JSON", b"{messages: []}\n", 1, "in.jsonl:2: not valid JSON"),
    ("nested 10k deep", DEEP, 1, "in.jsonl:2: JSON nested too deeply"),
    ("messages of the wrong type", {"messages": [["user", "hi"]]}, 1, "in.jsonl:2: 'messages'[0] is not an object"),
    ("no user turn", {"messages": [{"role": "system", "content": "x"}]}, 1, "in.jsonl:2: 'messages' has no user"),
    ("audio missing, --backend openai", OPENAI_MISSING, 1, "in.jsonl:2: audio /no/such.wav does not exist"),
    ("output is the input", ["--output", "{tmp}/in.jsonl"], 2, "--output must not be the input"),
    ("no completions asked", ["--n", "0"], 2, "--n and --batch-size must be >= 1"),
    (
        "model cannot load",
        ["--model", "/no/such/model"],
        1,
        MISSING_MODEL,
    ),
]


@pytest.mark.parametrize(("case", "bad", "code", "message"), SAMPLE, ids=[c[0] for c in SAMPLE])
def test_sample_bad_inputs(tmp_path, capsys, engine, case, bad, code, message):
    bad, extra = bad if isinstance(bad, tuple) else (bad, bad if isinstance(bad, list) else [])
    rows = [fraud_row(tmp_path, 0)]
    data = write(tmp_path / "in.jsonl", rows)
    if isinstance(bad, bytes):
        write(data, data.read_bytes() + bad)
    elif isinstance(bad, dict):
        write(data, [*rows, {**fraud_row(tmp_path, 1), **bad}])
    before = data.read_bytes()
    argv = ["--model", "m", "--input", tmp_path / "none.jsonl" if bad is None else data, "--output", tmp_path / "o"]
    argv += [a.format(tmp=tmp_path) for a in extra]
    got, _, err = call(sample.main, argv, capsys)
    assert got == code and message in err, err
    assert len(errors(err)) == 1 and data.read_bytes() == before
    assert engine["echo"].requests == []


# --- live eval / live call ----------------------------------------------------------------------------


def calls_records(folder: Path, count: int = 3) -> list[dict]:
    records = []
    for i in range(count):
        audio = folder / f"k{i}.wav"
        sf.write(audio, (0.1 * np.random.default_rng(i).standard_normal(32000)).astype(np.float32), 16000)
        records.append({"id": f"k{i}", "audio": str(audio), "duration": 2.0, "label": prompt.FRAUD, "turns": []})
    return records


LIVE = [
    ("missing calls file", None, 2, "none.jsonl: No such file or directory"),
    ("raw invalid UTF-8", b'{"id": "\xff"}\n', 1, "calls.jsonl:4: not valid UTF-8 (byte 0xff"),
    ("torn inside a character", '{"id": "诈'.encode()[:-1], 1, "calls.jsonl:4: not valid UTF-8"),
    ("not JSON", b"{id: 1}\n", 1, "calls.jsonl:4: not valid JSON"),
    ("a call without audio", {"id": "k9", "label": "fraud"}, 1, "calls.jsonl:4: audio path must be a non-empty"),
    ("audio null", {"id": "k9", "audio": None}, 1, "calls.jsonl:4: audio path must be a non-empty string, got None"),
    ("id empty", {"id": " ", "audio": "k9.wav"}, 1, "calls.jsonl:4: 'id' must be a non-empty string, got ' '"),
    ("a call id twice", "k0 again", 1, "call id 'k0' appears twice"),
    (
        "model cannot load",
        ["--model", "/no/such/model"],
        1,
        MISSING_MODEL,
    ),
    ("bad hop", ["--hop", "0"], 2, "--hop and --chunk-s > 0"),
    ("no calls", b"", 1, "no calls to walk for task fraud"),
]


@pytest.mark.parametrize(("case", "bad", "code", "message"), LIVE, ids=[c[0] for c in LIVE])
def test_live_eval_bad_inputs(tmp_path, capsys, engine, case, bad, code, message):
    records = calls_records(tmp_path)
    calls = write(tmp_path / "calls.jsonl", records)
    if bad == b"":
        write(calls, b"")
    elif isinstance(bad, bytes):
        write(calls, calls.read_bytes() + bad)
    elif isinstance(bad, dict):
        write(calls, [*records, bad])
    elif bad == "k0 again":
        write(calls, [*records, records[0]])
    argv = ["eval", "--model", "listener", "--calls", tmp_path / "none.jsonl" if bad is None else calls]
    argv += ["--out", tmp_path / "out", "--quiet", *(bad if isinstance(bad, list) else [])]
    got, _, err = call(live.main, argv, capsys)
    assert got == code and (message in err or re.search(message, err)), err
    assert len(errors(err)) == 1, err
    assert engine["listener"].requests == [] and not (tmp_path / "out" / "live_results.jsonl").exists()


def test_live_eval_unreadable_audio_is_reported_and_the_rest_scored(tmp_path, capsys, engine):
    records = calls_records(tmp_path)
    write(Path(records[1]["audio"]), b"not audio")
    calls = write(tmp_path / "calls.jsonl", records)
    argv = ["eval", "--model", "listener", "--calls", calls, "--out", tmp_path / "out", "--quiet"]
    code, _, err = call(live.main, argv, capsys)
    assert code == 1 and "skipping call k1" in err
    [message] = errors(err)
    assert message.startswith("error: 1 of 3 calls have no result (warned above)") and "a rerun retries" in message
    assert json.loads((tmp_path / "out" / "live_metrics.json").read_text())["n_calls"] == 2


LIVE_CALL = [
    ("audio missing", ["--audio", "{tmp}/none.wav"], 2, "none.wav: no such file"),
    ("unknown call id", ["--calls", "{tmp}/calls.jsonl", "--call-id", "k9"], 1, "call 'k9' not in"),
    ("unreadable audio", ["--audio", "{tmp}/bad.wav"], 1, "call bad: its audio could not be read"),
    ("unreadable audio of a listed call", ["--calls", "{tmp}/bad_audio.jsonl", "--call-id", "kb"], 1, "call kb: its"),
    ("calls: a bad row", ["--calls", "{tmp}/bad_row.jsonl", "--call-id", "k0"], 1, "bad_row.jsonl:4: 'id' must be"),
    ("calls: raw invalid UTF-8", ["--calls", "{tmp}/bad_byte.jsonl", "--call-id", "k0"], 1, "bad_byte.jsonl:4: not"),
    ("calls: missing file", ["--calls", "{tmp}/none.jsonl", "--call-id", "k0"], 2, "none.jsonl: No such file"),
]


@pytest.mark.parametrize(("case", "extra", "code", "message"), LIVE_CALL, ids=[c[0] for c in LIVE_CALL])
def test_live_call_bad_inputs(tmp_path, capsys, engine, case, extra, code, message):
    records = calls_records(tmp_path)
    calls = write(tmp_path / "calls.jsonl", records)
    write(tmp_path / "bad.wav", b"RIFF but not really")
    write(tmp_path / "bad_audio.jsonl", [*records, {"id": "kb", "audio": str(tmp_path / "bad.wav"), "label": "fraud"}])
    write(tmp_path / "bad_row.jsonl", [*records, {"id": "", "audio": "k9.wav"}])
    write(tmp_path / "bad_byte.jsonl", calls.read_bytes() + b'{"id": "\xff"}\n')
    argv = ["call", "--model", "listener", "--cache-dir", tmp_path / "cache", *[a.format(tmp=tmp_path) for a in extra]]
    got, _, err = call(live.main, argv, capsys)
    assert got == code and message in err, err
    assert len(errors(err)) == 1, err


# --- rewards ------------------------------------------------------------------------------------------


def test_rewards_never_raise_on_a_lone_surrogate_with_the_log_on(tmp_path, monkeypatch):
    """A model can write an unpaired surrogate; strict UTF-8 cannot encode it, so the log used to raise."""
    log = tmp_path / "rewards.jsonl"
    monkeypatch.setattr(rewards, "_LOG", None)
    monkeypatch.setenv(rewards.LOG_ENV, str(log))
    text = '<think>诈骗\ud800</think><answer>{"is_fraud": true, "reason": "\udfff", "confidence": 0.9}</answer>'
    try:
        for name, reward in rewards.REWARDS.items():
            scores = reward(args=None)([text, "plain \ud83d"], answers=[prompt.FRAUD] * 2, task=["fraud"] * 2)
            assert len(scores) == 2 and all(math.isfinite(s) for s in scores), name
    finally:
        rewards._LOG._file.close()
        monkeypatch.setattr(rewards, "_LOG", None)
    logged = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(logged) == 2 * len(rewards.REWARDS)
    assert logged[0]["completion"] == text.replace("\ud800", "?").replace("\udfff", "?")
    assert {r["reward"] for r in logged} == set(rewards.REWARDS)
