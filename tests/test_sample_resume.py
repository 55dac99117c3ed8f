"""safe_qaq.sample: resuming after a kill (torn line, half-written group) and refusing mixed settings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prompt
from safe_qaq import sample
from tests.helpers.engines import FakeEngine

ROOT = Path(__file__).resolve().parents[1]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def sample_line(index, k, text="x"):
    return {"prompt_index": index, "prompt_id": f"p{index}", "sample_index": k, "completion": text}


def group_lines(index, n):
    return [sample_line(index, k) for k in range(n)]


# --- recover() on hand-made files ---------------------------------------------------------------------


def test_recover_missing_file(tmp_path):
    assert sample.recover(tmp_path / "none.jsonl", 3) == (0, set())


def test_recover_keeps_complete_groups_untouched(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(complete := jsonl(group_lines(0, 3) + group_lines(1, 3)))
    assert sample.recover(path, 3) == (2, {0, 1})
    assert path.read_bytes() == complete


def test_recover_drops_a_partial_last_group(tmp_path):
    path = tmp_path / "out.jsonl"
    complete = jsonl(group_lines(0, 3) + group_lines(1, 3))
    path.write_bytes(complete + jsonl(group_lines(2, 3)[:2]))
    assert sample.recover(path, 3) == (2, {0, 1})
    assert path.read_bytes() == complete


def test_recover_drops_a_torn_line_and_its_group(tmp_path):
    path = tmp_path / "out.jsonl"
    complete = jsonl(group_lines(0, 2))
    torn = jsonl([sample_line(1, 0)]) + jsonl([sample_line(1, 1)])[:-9]  # cut mid-line, no newline
    path.write_bytes(complete + torn)
    assert sample.recover(path, 2) == (1, {0})
    assert path.read_bytes() == complete


def test_recover_treats_a_line_without_newline_as_torn_even_if_it_parses(tmp_path):
    # the kill may land just before the newline: the JSON is whole but the write was not
    path = tmp_path / "out.jsonl"
    path.write_bytes(jsonl(group_lines(0, 2))[:-1])
    assert sample.recover(path, 2) == (0, set())
    assert path.read_bytes() == b""


def test_recover_stops_at_garbage_and_multibyte_cut(tmp_path):
    path = tmp_path / "out.jsonl"
    complete = jsonl(group_lines(0, 1) + group_lines(1, 1))
    cut = jsonl([sample_line(2, 0, "诈骗电话")])
    path.write_bytes(complete + cut[: cut.index("骗".encode()) + 1])  # inside a UTF-8 character
    assert sample.recover(path, 1) == (2, {0, 1})
    assert path.read_bytes() == complete


# --- the CLI with a fake engine: resume, settings, overwrite ------------------------------------------


def seeded_answer(row: dict, *, index: int, k: int, sampling: dict) -> str:
    """Deterministic completions, seeded per request as vLLM does (seed + position in the call)."""
    return f"{row['call_id']}/{k}/seed {sampling['seed'] + index}"


def asked(engine: FakeEngine) -> list[str]:
    return [row["call_id"] for row in engine.requests]


@pytest.fixture
def fake_engine(monkeypatch):
    import safe_qaq.engine

    engine = FakeEngine(seeded_answer)
    monkeypatch.setattr(safe_qaq.engine, "make_engine", lambda *a, **kw: engine)
    return engine


def prompt_rows(count, folder: Path):
    """Prompt rows over placeholder audio files (the fake engine never reads them; the CLI checks they exist)."""
    tasks = [("scene", "外卖服务"), ("fraud", prompt.FRAUD), ("fraud_type", "投资诈骗")]
    rows = []
    (folder / "audio").mkdir(exist_ok=True)
    for i in range(count):
        task, gold = tasks[i % 3]
        audio = folder / "audio" / f"call_{i}.flac"
        audio.touch()
        rows.append(
            {
                "messages": prompt.build_messages(task),
                "audios": [str(audio)],
                "answers": gold,
                "conversation_stage": prompt.COMPLETE,
                "task": task,
                "call_id": f"call_{i}",
            }
        )
    return rows


def check_output(path: Path, rows, n):
    """Exactly n lines per prompt, in input order, each carrying its prompt row."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(x) for x in lines]  # every line parses
    assert len(records) == n * len(rows)
    keys = [(r["prompt_index"], r["sample_index"]) for r in records]
    assert len(set(keys)) == len(keys), "duplicate (prompt_index, sample_index)"
    for index, row in enumerate(rows):
        group = records[index * n : (index + 1) * n]
        assert {r["prompt_index"] for r in group} == {index}  # groups contiguous, in input order
        assert {r["sample_index"] for r in group} == set(range(n))
        for r in group:
            assert r["prompt_id"] == sample.prompt_id(row)
            assert {k: r[k] for k in row} == row  # messages, audios and gold columns carried
            assert isinstance(r["completion"], str)
    return records


def cli(tmp_path, *extra, n=3):
    argv = ["--model", "fake", "--input", str(tmp_path / "prompts.jsonl"), "--output", str(tmp_path / "out.jsonl")]
    return sample.main([*argv, "--n", str(n), "--batch-size", "2", *extra])


def test_resume_generates_only_missing_prompts(tmp_path, fake_engine, capsys):
    rows = prompt_rows(5, tmp_path)
    (tmp_path / "prompts.jsonl").write_bytes(jsonl(rows))
    assert cli(tmp_path) == 0
    out = tmp_path / "out.jsonl"
    first = check_output(out, rows, 3)
    # a kill in the middle of prompt 3's group (a whole line and a torn one) after prompts 0-2
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:10]) + lines[10][:25])
    fake_engine.requests.clear()
    assert cli(tmp_path) == 0
    assert asked(fake_engine) == ["call_3", "call_4"]
    assert "3 already sampled, 2 to go" in capsys.readouterr().out
    assert check_output(out, rows, 3) == first  # prompt i still gets seed + i: the same file
    assert out.read_bytes() == data
    fake_engine.requests.clear()
    assert cli(tmp_path) == 0 and asked(fake_engine) == []  # nothing left to do


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"n": 4}, "n (3 -> 4)"),
        ({"extra": ["--temperature", "0.5"]}, "sampling.temperature (0.8 -> 0.5)"),
        ({"extra": ["--seed", "7"]}, "sampling.seed (42 -> 7)"),
        ({"extra": ["--repetition-penalty", "1.1"]}, "sampling.repetition_penalty (1.0 -> 1.1)"),
        ({"extra": ["--adapters", "ckpt"]}, "engine.adapters"),
        ({"extra": ["--backend", "openai"]}, "engine.backend"),
    ],
)
def test_other_settings_are_refused_unless_overwrite(tmp_path, fake_engine, change, named, capsys):
    rows = prompt_rows(3, tmp_path)
    (tmp_path / "prompts.jsonl").write_bytes(jsonl(rows))
    assert cli(tmp_path) == 0
    out = tmp_path / "out.jsonl"
    before = out.read_bytes()
    n = change.get("n", 3)
    capsys.readouterr()
    assert cli(tmp_path, *change.get("extra", []), n=n) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and named in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == before  # refused before touching the file
    assert cli(tmp_path, *change.get("extra", []), "--overwrite", n=n) == 0
    check_output(out, rows, n)


def test_a_file_without_settings_is_not_resumed(tmp_path, fake_engine, capsys):
    rows = prompt_rows(2, tmp_path)
    (tmp_path / "prompts.jsonl").write_bytes(jsonl(rows))
    (tmp_path / "out.jsonl").write_bytes(before := jsonl(group_lines(0, 3)))  # someone else's file, no .meta.json
    assert cli(tmp_path) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out.jsonl").read_bytes() == before


def test_retrained_model_weights_are_other_settings(tmp_path, fake_engine, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    rows = prompt_rows(2, tmp_path)
    (tmp_path / "prompts.jsonl").write_bytes(jsonl(rows))
    argv = ["--model", str(model), "--input", str(tmp_path / "prompts.jsonl"), "--output", str(tmp_path / "o.jsonl")]
    assert sample.main([*argv, "--n", "2"]) == 0
    (model / "model.safetensors").write_bytes(b"weights v2, longer")
    assert sample.main([*argv, "--n", "2"]) == 1
    assert "engine.model_weights" in capsys.readouterr().err


# --- kill -9 and resume with the real CLI on the tiny model ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_prompts(prepared, tmp_path_factory) -> Path:
    """Nine prompt rows, three per task (rounds 1-3), from the bundled calls as safe_qaq.prepare writes them."""
    lines = (prepared / "offline_train.jsonl").read_text(encoding="utf-8").splitlines()
    chosen = [x for task in prompt.TASKS for x in [y for y in lines if json.loads(y)["task"] == task][:3]]
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    # more than a handful, so the kill after the first group lands well before the end
    path.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return path


def kept_groups_end(data: bytes, n: int) -> int:
    """Byte offset after the last complete group of n lines (groups are written whole, in order)."""
    lines = [x for x in data.splitlines(keepends=True) if x.endswith(b"\n")]
    return sum(len(x) for x in lines[: len(lines) - len(lines) % n])


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_kill_and_resume_on_the_tiny_model(tmp_path, tiny_prompts, tiny_model, capsys):
    model = tiny_model
    out, n = tmp_path / "samples.jsonl", 3
    command = [sys.executable, "-m", "safe_qaq.sample", "--model", str(model), "--input", str(tiny_prompts)]
    command += ["--output", str(out), "--n", str(n), "--max-tokens", "8", "--batch-size", "1"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", HF_HUB_OFFLINE="1")
    rows = [json.loads(x) for x in tiny_prompts.read_text(encoding="utf-8").splitlines()]

    with open(tmp_path / "first.log", "w") as log:  # a file, not a pipe: a full pipe would stall the child
        child = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while _complete_lines(out) < n and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
    log_text = (tmp_path / "first.log").read_text()
    assert child.returncode == -signal.SIGKILL, f"not stopped by the kill (rc {child.returncode}):\n{log_text[-3000:]}"
    done_lines = _complete_lines(out)
    assert n <= done_lines < n * len(rows), log_text[-3000:]
    # Keep the complete groups the kill left, then add what a cut mid-write leaves: a whole line
    # of a group that never finished and a torn line without its newline.
    data = out.read_bytes()
    kept = data[: kept_groups_end(data, n)]
    complete_groups = kept.count(b"\n") // n
    partial = json.loads(kept.splitlines()[-1])
    partial.update(prompt_index=complete_groups, sample_index=0, completion="PARTIAL GROUP")
    torn = json.dumps({**partial, "sample_index": 1}, ensure_ascii=False).encode()
    out.write_bytes(kept + (json.dumps(partial, ensure_ascii=False) + "\n").encode() + torn[: len(torn) // 2])

    # The resume runs in this process (the same CLI entry point; a second start-up would double the test's time).
    assert sample.main(command[3:]) == 0
    assert f"{len(rows)} prompts, {complete_groups} already sampled" in capsys.readouterr().out

    records = check_output(out, rows, n)
    assert all(r["completion"] != "PARTIAL GROUP" for r in records)
    assert out.read_bytes().startswith(kept)  # finished groups were kept as they were, not redone


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ([*group_lines(0, 2), sample_line(1, 0), sample_line(1, 0)], ":4: prompt_index 1 sample_index 0"),  # repeat
        (group_lines(0, 2) + group_lines(0, 2), ":3: prompt_index 0"),  # a group twice
        ([sample_line(0, 0), sample_line(1, 0), *group_lines(2, 2)], ":2: prompt_index 1"),  # a short group
        ([*group_lines(0, 2), "garbage", *group_lines(1, 2)], ":3: not valid JSON"),  # garbage before good groups
    ],
)
def test_recover_refuses_what_a_kill_cannot_leave(tmp_path, lines, named):
    """Only a kill's leftovers are cut; anything else is named and the file is left alone."""
    output = tmp_path / "samples.jsonl"
    output.write_bytes(before := b"".join(x.encode() + b"\n" if isinstance(x, str) else jsonl([x]) for x in lines))
    with pytest.raises(sample.ResumeError, match=f"samples.jsonl{named}.*--overwrite"):
        sample.recover(output, 2)
    assert output.read_bytes() == before
