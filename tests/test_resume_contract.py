"""The one resume contract (safe_qaq.jsonl) and the three CLIs that append: sample, evaluate, live eval.

Each numbered case of the issue "Resume loses or mixes results" is a row below: a rerun with
other settings is refused naming them, the file untouched; a torn tail (even inside a UTF-8
character) is cut by bytes; a smaller --limit reuses, a larger one continues; kill -9 then resume
gives what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import prompt
from safe_qaq import evaluate, jsonl, live, sample
from tests.helpers.engines import CHILD, echo_engine, listener_engine

ROOT = Path(__file__).resolve().parents[1]


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().decode("utf-8").splitlines()]


def tear_inside_a_character(record: dict) -> bytes:
    """A record as a kill leaves it: cut after the first byte of a 3-byte Chinese character."""
    data = json.dumps(record, ensure_ascii=False).encode("utf-8")
    cut = data.index("转".encode()) + 1
    with pytest.raises(UnicodeDecodeError):
        data[:cut].decode("utf-8")
    return data[:cut]


def without_timing(value):
    """A record without its wall-clock fields (the only thing that differs between two identical runs)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in ("latency_s", "batch_size")}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


# --- the contract itself --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        (b"", b""),
        (b'{"a": 1}\n', b'{"a": 1}\n'),
        (b'{"a": 1}\n{"b": ', b'{"a": 1}\n'),
        (b'{"a": 1}\n{"b": "\xe8\xaf', b'{"a": 1}\n'),  # inside 诈 (e8 af 88)
        (b'{"a": 1}\n{"b": 2}', b'{"a": 1}\n'),  # whole JSON but no newline: the write was not finished
        (b'{"a": "\xe8', b""),  # no complete line at all
        (b'{"a": 1}\n' + b"x" * 200_000, b'{"a": 1}\n'),  # a tail longer than one read block
    ],
)
def test_cut_torn_tail_cuts_bytes_after_the_last_newline(tmp_path, data, kept):
    path = tmp_path / "out.jsonl"
    path.write_bytes(data)
    assert jsonl.cut_torn_tail(path) == len(data) - len(kept)
    assert path.read_bytes() == kept


def test_read_output_refuses_a_bad_complete_line_and_leaves_the_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(data := b'{"a": 1}\n{"a": 2, "a": \n{"a": 3}\n')
    with pytest.raises(jsonl.ResumeError, match=r"out.jsonl:2: not valid JSON.*--overwrite"):
        jsonl.read_output(path)
    assert path.read_bytes() == data


def test_check_settings_names_every_difference_and_touches_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    settings = {"input": {"sha256": "aa", "path": "/in"}, "sampling": {"temperature": 0.0, "seed": None}, "n": 2}
    jsonl.check_settings(out, settings, overwrite=False)  # nothing there yet: fine, settings written
    out.write_bytes(b'{"x": 1}\n')
    jsonl.check_settings(out, settings, overwrite=False)  # same settings: resume
    other = {"input": {"sha256": "bb", "path": "/in"}, "sampling": {"temperature": 0.7, "seed": None}}
    with pytest.raises(jsonl.ResumeError) as refused:
        jsonl.check_settings(out, other, overwrite=False)
    message = str(refused.value)
    assert 'input.sha256 ("aa" -> "bb")' in message and "sampling.temperature (0.0 -> 0.7)" in message
    assert "n (2 -> (absent))" in message and "input.path" not in message
    assert "\n" not in message and out.read_bytes() == b'{"x": 1}\n'
    assert json.loads(jsonl.meta_path(out).read_text()) == settings  # the old settings are kept too
    jsonl.check_settings(out, other, overwrite=True)
    assert not out.exists() and json.loads(jsonl.meta_path(out).read_text()) == other


def test_an_output_without_settings_is_not_resumed(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"x": 1}\n')
    with pytest.raises(jsonl.ResumeError, match=r"missing or unreadable.*--overwrite"):
        jsonl.check_settings(out, {"n": 1}, overwrite=False)
    jsonl.meta_path(out).write_text("{not json")
    with pytest.raises(jsonl.ResumeError, match="missing or unreadable"):
        jsonl.check_settings(out, {"n": 1}, overwrite=False)
    assert out.read_bytes() == b'{"x": 1}\n'


def test_input_fingerprint_is_the_content(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n')
    first = jsonl.file_fingerprint(path)
    os.utime(path, (0, 0))
    assert jsonl.file_fingerprint(path) == first  # touched, same content: the same input
    path.write_bytes(b'{"a": 2}\n')  # same size, same path
    os.utime(path, (0, 0))
    assert jsonl.file_fingerprint(path)["sha256"] != first["sha256"]


# --- evaluate -------------------------------------------------------------------------------------------


def eval_rows(folder: Path, count: int) -> list[dict]:
    """Fraud-task rows over placeholder audio files (the fake engine never reads them)."""
    (folder / "audio").mkdir(exist_ok=True)
    rows = []
    for i in range(count):
        audio = folder / "audio" / f"a{i}.wav"
        audio.touch()
        gold = prompt.FRAUD if i % 2 == 0 else prompt.NORMAL
        rows.append(
            {"messages": prompt.build_messages("fraud"), "audios": [str(audio)], "answers": gold, "call_id": f"c{i}"}
        )
        rows[-1]["task"] = "fraud"
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(jsonl.dumps(r) for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def echo(monkeypatch):
    import safe_qaq.engine

    engine = echo_engine()
    monkeypatch.setattr(safe_qaq.engine, "make_engine", lambda *args, **kwargs: engine)
    return engine


def eval_cli(tmp_path, *extra) -> int:
    argv = ["--model", "m1", "--data", str(tmp_path / "data.jsonl"), "--out", str(tmp_path / "out")]
    return evaluate.main([*argv, "--no-floor", "--no-plots", "--quiet", *extra])


def weights(folder: Path, content: bytes) -> str:
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(content)
    return str(folder)


# (issue row, change to the rerun, expected difference named); every one is refused, file untouched
EVAL_REFUSED = [
    ("#4 other model", ["--model", "m2"], 'engine.model ("m1" -> "m2")'),
    ("#4 max tokens", ["--max-tokens", "64"], "sampling.max_tokens (1024 -> 64)"),
    ("#4 temperature", ["--temperature", "0.7"], "sampling.temperature (0.0 -> 0.7)"),
    ("repetition penalty", ["--repetition-penalty", "1.1"], "sampling.repetition_penalty (1.0 -> 1.1)"),
    ("top_p", ["--top-p", "0.9"], "sampling.top_p"),
    ("seed", ["--seed", "3"], "sampling.seed (null -> 3)"),
    ("adapters", ["--adapters", "ckpt"], "engine.adapters"),
    ("backend", ["--backend", "vllm"], 'engine.backend ("pt" -> "vllm")'),
]


@pytest.mark.parametrize(("case", "change", "named"), EVAL_REFUSED, ids=[c[0] for c in EVAL_REFUSED])
def test_evaluate_refuses_other_settings(tmp_path, echo, capsys, case, change, named):
    write_rows(tmp_path / "data.jsonl", eval_rows(tmp_path, 4))
    assert eval_cli(tmp_path) == 0
    predictions = tmp_path / "out" / "predictions.jsonl"
    before, asked = predictions.read_bytes(), len(echo.requests)
    capsys.readouterr()
    assert eval_cli(tmp_path, *change) == 1
    err = capsys.readouterr().err
    assert named in err and "--overwrite" in err and len(err.splitlines()) == 1, err
    assert predictions.read_bytes() == before and len(echo.requests) == asked
    assert eval_cli(tmp_path, *change, "--overwrite") == 0  # discards and starts again
    assert len(echo.requests) == asked + 4 and len(lines_of(predictions)) == 4


def test_evaluate_refuses_rewritten_data_and_retrained_weights(tmp_path, echo, capsys):
    data = write_rows(tmp_path / "data.jsonl", eval_rows(tmp_path, 3))
    model = weights(tmp_path / "model", b"v1")
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--no-floor", "--no-plots", "--quiet"]
    assert evaluate.main(["--model", model, *argv]) == 0
    rows = eval_rows(tmp_path, 3)
    rows[1]["answers"] = prompt.FRAUD
    write_rows(data, rows)  # rewritten in place: same path
    capsys.readouterr()
    assert evaluate.main(["--model", model, *argv]) == 1
    assert "input.sha256" in capsys.readouterr().err
    write_rows(data, eval_rows(tmp_path, 3))
    assert evaluate.main(["--model", model, *argv]) == 0  # the same content again: resumes
    weights(tmp_path / "model", b"v2, retrained")
    assert evaluate.main(["--model", model, *argv]) == 1
    assert "engine.model_weights" in capsys.readouterr().err


def test_evaluate_smaller_limit_reuses_and_larger_continues(tmp_path, echo):
    """Issue #7: a smaller --limit was refused as "predictions for other data"."""
    write_rows(tmp_path / "data.jsonl", eval_rows(tmp_path, 6))
    predictions = tmp_path / "out" / "predictions.jsonl"
    assert eval_cli(tmp_path, "--limit", "4") == 0
    before = predictions.read_bytes()
    assert eval_cli(tmp_path, "--limit", "2") == 0
    assert predictions.read_bytes() == before and len(echo.requests) == 4  # nothing truncated or redone
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["model"]["tasks"]["fraud"]["n"] == 2
    assert eval_cli(tmp_path) == 0
    assert len(echo.requests) == 6 and [r["index"] for r in lines_of(predictions)] == list(range(6))
    assert predictions.read_bytes().startswith(before)


def test_evaluate_cuts_a_tail_torn_inside_a_character(tmp_path, echo):
    """Issue #6: a torn last line ending inside a UTF-8 character raised UnicodeDecodeError."""
    write_rows(tmp_path / "data.jsonl", eval_rows(tmp_path, 3))
    predictions = tmp_path / "out" / "predictions.jsonl"
    assert eval_cli(tmp_path) == 0
    complete = lines_of(predictions)
    data = predictions.read_bytes().splitlines(keepends=True)
    predictions.write_bytes(b"".join(data[:2]) + tear_inside_a_character(complete[2]))
    assert eval_cli(tmp_path) == 0
    assert without_timing(lines_of(predictions)) == without_timing(complete) and len(echo.requests) == 4


def test_evaluate_passes_every_sampling_setting(tmp_path, echo):
    write_rows(tmp_path / "data.jsonl", eval_rows(tmp_path, 1))
    assert eval_cli(tmp_path, "--top-k", "5", "--seed", "9") == 0
    assert echo.sampling == [
        {"temperature": 0.0, "top_p": 1.0, "top_k": 5, "repetition_penalty": 1.0, "max_tokens": 1024, "seed": 9}
    ]


# --- live eval ------------------------------------------------------------------------------------------


def calls_file(folder: Path, seconds=(2.0, 4.0, 6.0, 8.0, 10.0)) -> Path:
    """Calls of growing length without turn times: prefixes every --hop seconds, the k-th call has k rounds."""
    (folder / "audio").mkdir(exist_ok=True)
    records = []
    for i, length in enumerate(seconds):
        audio = folder / "audio" / f"k{i}.wav"
        noise = 0.1 * np.random.default_rng(i).standard_normal(round(length * 16000))
        sf.write(audio, noise.astype(np.float32), 16000)
        label = prompt.FRAUD if i % 2 == 0 else prompt.NORMAL
        records.append({"id": f"k{i}", "audio": str(audio), "duration": length, "scene": prompt.SCENES[0]})
        records[-1] |= {"label": label, "fraud_type": None, "turns": []}
    return write_rows(folder / "calls.jsonl", records)


@pytest.fixture
def listener(monkeypatch):
    import safe_qaq.engine

    engine = listener_engine(decide_after_s=3.5)
    monkeypatch.setattr(safe_qaq.engine, "make_engine", lambda *args, **kwargs: engine)
    return engine


def live_cli(tmp_path, *extra) -> int:
    argv = ["eval", "--model", "m1", "--calls", str(tmp_path / "calls.jsonl"), "--out", str(tmp_path / "out")]
    return live.main([*argv, "--hop", "2", "--quiet", *extra])


LIVE_REFUSED = [
    ("#2 threshold", ["--threshold", "0.5"], "live.threshold (0.8 -> 0.5)"),
    ("#2 task", ["--task", "scene"], 'live.task ("fraud" -> "scene")'),
    ("#3 missing model", ["--model", "/no/such/model"], 'engine.model ("m1" -> "/no/such/model")'),
    ("hop", ["--hop", "3"], "live.hop_s (2.0 -> 3.0)"),
    ("history", ["--no-history"], "live.history (true -> false)"),
    ("max tokens", ["--max-tokens", "16"], "sampling.max_tokens"),
    ("repetition penalty", ["--repetition-penalty", "1.05"], "sampling.repetition_penalty"),
]


@pytest.mark.parametrize(("case", "change", "named"), LIVE_REFUSED, ids=[c[0] for c in LIVE_REFUSED])
def test_live_eval_refuses_other_settings_and_never_truncates(tmp_path, listener, capsys, case, change, named):
    calls_file(tmp_path)
    assert live_cli(tmp_path) == 0
    results = tmp_path / "out" / "live_results.jsonl"
    before, asked = results.read_bytes(), len(listener.requests)
    assert len(lines_of(results)) == 5
    capsys.readouterr()
    assert live_cli(tmp_path, *change) == 1
    err = capsys.readouterr().err
    assert named in err and "--overwrite" in err and len(err.splitlines()) == 1, err
    assert results.read_bytes() == before and len(listener.requests) == asked  # 5 lines stay 5 lines


def test_live_eval_smaller_limit_reuses_and_larger_continues(tmp_path, listener):
    calls_file(tmp_path)
    results = tmp_path / "out" / "live_results.jsonl"
    assert live_cli(tmp_path, "--limit", "3") == 0
    before, asked = results.read_bytes(), len(listener.requests)
    assert live_cli(tmp_path, "--limit", "1") == 0
    assert results.read_bytes() == before and len(listener.requests) == asked
    assert json.loads((tmp_path / "out" / "live_metrics.json").read_text())["n_calls"] == 1
    assert live_cli(tmp_path) == 0
    assert [r["call_id"] for r in lines_of(results)] == ["k0", "k1", "k2", "k3", "k4"]
    assert json.loads((tmp_path / "out" / "live_metrics.json").read_text())["n_calls"] == 5


def test_live_eval_cuts_a_torn_line_instead_of_appending_to_it(tmp_path, listener):
    """Issue #1: the next record was appended onto the fragment (one line, two call_id keys)."""
    calls_file(tmp_path)
    results = tmp_path / "out" / "live_results.jsonl"
    assert live_cli(tmp_path) == 0
    complete = lines_of(results)
    data = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(b"".join(data[:3]) + tear_inside_a_character(complete[3]))
    assert live_cli(tmp_path) == 0
    after = results.read_bytes().decode("utf-8").splitlines()
    assert [line.count('"call_id"') for line in after] == [1] * 5
    assert without_timing([json.loads(x) for x in after]) == without_timing(complete)


def test_live_eval_passes_every_sampling_setting(tmp_path, listener):
    calls_file(tmp_path, seconds=(2.0,))
    assert live_cli(tmp_path, "--temperature", "0.5", "--top-p", "0.9", "--top-k", "20", "--seed", "1") == 0
    expected = {"temperature": 0.5, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.0, "max_tokens": 1024}
    assert listener.sampling and all(s == {**expected, "seed": 1} for s in listener.sampling)


# --- sample ---------------------------------------------------------------------------------------------


@pytest.fixture
def sample_echo(monkeypatch):
    import safe_qaq.engine

    engine = echo_engine()
    monkeypatch.setattr(safe_qaq.engine, "make_engine", lambda *args, **kwargs: engine)
    return engine


def sample_cli(tmp_path, *extra) -> int:
    argv = ["--model", "m1", "--input", str(tmp_path / "data.jsonl"), "--output", str(tmp_path / "samples.jsonl")]
    return sample.main([*argv, "--n", "2", "--batch-size", "1", *extra])


def test_sample_refuses_an_input_rewritten_in_place(tmp_path, sample_echo, capsys):
    """Issue #5: a rewritten input kept groups of prompts no longer there and never sampled the new ones."""
    write_rows(tmp_path / "data.jsonl", eval_rows(tmp_path, 4))
    assert sample_cli(tmp_path) == 0
    output = tmp_path / "samples.jsonl"
    before = output.read_bytes()
    rows = eval_rows(tmp_path, 4)
    rows[3]["messages"][-1]["content"] += " (reworded)"
    write_rows(tmp_path / "data.jsonl", rows)
    capsys.readouterr()
    assert sample_cli(tmp_path) == 1
    err = capsys.readouterr().err
    assert "input.sha256" in err and "--overwrite" in err and output.read_bytes() == before


def test_sample_smaller_limit_reuses_and_larger_continues(tmp_path, sample_echo, capsys):
    write_rows(tmp_path / "data.jsonl", eval_rows(tmp_path, 4))
    output = tmp_path / "samples.jsonl"
    assert sample_cli(tmp_path, "--limit", "3") == 0
    before = output.read_bytes()
    assert sample_cli(tmp_path, "--limit", "1") == 0
    assert output.read_bytes() == before and "1 prompts, 1 already sampled, 0 to go" in capsys.readouterr().out
    assert sample_cli(tmp_path) == 0
    assert [r["prompt_index"] for r in lines_of(output)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(sample_echo.requests) == 4 and output.read_bytes().startswith(before)
    assert sample_echo.sampling[0] == {
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 50,
        "repetition_penalty": 1.0,
        "max_tokens": 2048,
        "seed": 42,  # the recipe's SEED (recipes/paper.yaml) + the first prompt's index
    }


# --- kill -9, then resume: what an uninterrupted run writes -----------------------------------------------


def kill_after(command: list[str], path: Path, lines: int, cwd: Path) -> int:
    """Start the CLI in a child with a slow fake engine; SIGKILL it once ``path`` has ``lines`` complete lines."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(cwd / "child.log", "w") as log:  # a file, not a pipe: a full pipe would stall the child
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
    text = (cwd / "child.log").read_text()
    assert child.returncode == -signal.SIGKILL, f"not stopped by the kill (rc {child.returncode}):\n{text[-3000:]}"
    return path.read_bytes().count(b"\n")


def test_evaluate_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, echo):
    rows = eval_rows(tmp_path, 10)
    data = write_rows(tmp_path / "data.jsonl", rows)
    argv = ["--model", "m1", "--data", str(data), "--no-floor", "--no-plots", "--quiet", "--batch-size", "2"]
    assert evaluate.main([*argv, "--out", str(tmp_path / "whole")]) == 0
    reference = lines_of(tmp_path / "whole" / "predictions.jsonl")

    out = tmp_path / "out"
    predictions = out / "predictions.jsonl"
    child = [sys.executable, "-c", CHILD, "echo", "0.2", "evaluate", *argv, "--out", str(out)]
    done = kill_after(child, predictions, 4, tmp_path)
    assert 4 <= done < 10
    # and what a kill in the middle of a write leaves: a line torn inside a character
    kept = predictions.read_bytes()[: predictions.read_bytes().rindex(b"\n") + 1]
    predictions.write_bytes(kept + tear_inside_a_character(reference[done]))
    echo.requests.clear()
    assert evaluate.main([*argv, "--out", str(out)]) == 0
    assert len(echo.requests) == 10 - done  # only what the kill lost
    assert without_timing(lines_of(predictions)) == without_timing(reference)
    assert predictions.read_bytes().startswith(kept)


def test_live_eval_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import safe_qaq.engine

    monkeypatch.setattr(safe_qaq.engine, "make_engine", lambda *args, **kwargs: listener_engine())
    calls = calls_file(tmp_path, seconds=(2.0, 4.0, 6.0, 8.0, 10.0, 12.0))
    argv = ["eval", "--model", "m1", "--calls", str(calls), "--hop", "2", "--no-history", "--batch-size", "1"]
    assert live.main([*argv, "--quiet", "--out", str(tmp_path / "whole")]) == 0
    reference = {r["call_id"]: r for r in lines_of(tmp_path / "whole" / "live_results.jsonl")}

    out = tmp_path / "out"
    results = out / "live_results.jsonl"
    child = [sys.executable, "-c", CHILD, "listener", "0.1", "live", *argv, "--quiet", "--out", str(out)]
    done = kill_after(child, results, 2, tmp_path)
    assert 2 <= done < 6
    finished = [r["call_id"] for r in lines_of(results)]
    kept = results.read_bytes()
    results.write_bytes(kept + tear_inside_a_character(reference[f"k{done}"]))
    assert live.main([*argv, "--quiet", "--out", str(out)]) == 0
    after = lines_of(results)
    assert [r["call_id"] for r in after[:done]] == finished and results.read_bytes().startswith(kept)
    assert sorted(r["call_id"] for r in after) == sorted(reference)  # each call once
    assert without_timing({r["call_id"]: r for r in after}) == without_timing(reference)


# --- the real engine on the tiny model ------------------------------------------------------------------


@pytest.mark.slow
def test_real_engine_resume_equals_one_run_and_a_missing_model_is_one_line(prepared, tiny_model, tmp_path, capsys):
    """Greedy generation resumed across a larger --limit equals one run; every option reaches the real engine."""
    argv = ["--model", str(tiny_model), "--data", str(prepared / "offline_test.jsonl"), "--no-floor", "--no-plots"]
    argv += ["--quiet", "--max-tokens", "8", "--batch-size", "1", "--repetition-penalty", "1.0", "--top-k", "-1"]
    assert evaluate.main([*argv, "--out", str(tmp_path / "whole"), "--limit", "3"]) == 0
    assert evaluate.main([*argv, "--out", str(tmp_path / "part"), "--limit", "1"]) == 0
    assert evaluate.main([*argv, "--out", str(tmp_path / "part"), "--limit", "3"]) == 0
    whole, part = (lines_of(tmp_path / name / "predictions.jsonl") for name in ("whole", "part"))
    assert len(whole) == 3 and without_timing(part) == without_timing(whole)
    capsys.readouterr()

    missing = ["--model", "/no/such/model", "--quiet"]
    assert evaluate.main([*argv, *missing, "--out", str(tmp_path / "missing")]) == 1
    calls = ["--calls", str(prepared / "calls_test.jsonl"), "--out", str(tmp_path / "live")]
    assert live.main(["eval", *calls, *missing]) == 1
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(failures) == 2 and all("cannot load model '/no/such/model'" in line for line in failures), err
    assert "Traceback" not in err
