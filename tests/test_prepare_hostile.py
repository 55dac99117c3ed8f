"""Hostile input for ``python -m safe_qaq.prepare``: each case is a reject row or one error line, never a traceback.

Table-driven: each case writes its input, then the expected exit code, the expected rejects
(row, code, words of the reason) and the number of calls kept.  Good rows always survive.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import prompt
from safe_qaq.jsonl import read_jsonl
from safe_qaq.prepare import Options, main, prepare
from tests.helpers.prepare_inputs import GOOD_AUDIO, fixture_rows

ROOT = Path(__file__).resolve().parents[1]
TURNS = [{"speaker": "caller", "start": 0.2, "end": 1.5, "text": "喂"}]


def good_rows() -> list[dict]:
    """test_prepare's good fixture rows, each with its duration and turns (the merge checks compare them)."""
    return [{**row, "duration": round(sf.info(row["audio"]).duration, 3), "turns": TURNS} for row in fixture_rows()]


def line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def noise_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.1 * rng.standard_normal(round(seconds * rate))).astype(np.float32), rate, subtype="PCM_16")
    return path


def lying_wav(path: Path) -> Path:
    """160 KB of real 16 kHz audio whose header claims 2 Hz: 40,000 s (11 h) once believed."""
    noise_wav(path, 5.0)
    data = bytearray(path.read_bytes())
    assert data[24:28] == struct.pack("<I", 16000)
    data[24:28], data[28:32] = struct.pack("<I", 2), struct.pack("<I", 4)  # sample rate, byte rate
    path.write_bytes(bytes(data))
    return path


def jsonl_with(tmp: Path, bad: bytes, *, at: int = 3) -> list[Path]:
    """The good rows with ``bad`` as line ``at`` (1-based)."""
    lines = [line(r) for r in good_rows()]
    lines.insert(at - 1, bad)
    meta = tmp / "meta.jsonl"
    meta.write_bytes(b"\n".join(lines) + b"\n")
    return [meta]


def bad_row(**changes) -> dict:
    row = {"id": "bad", "audio": str(GOOD_AUDIO[0]), "scene": prompt.SCENES[0], "label": prompt.NORMAL}
    return {**row, **changes}


# --- the inputs -----------------------------------------------------------------------------


def non_utf8_byte(tmp):  # one Latin-1 byte in a transcript: only its line is lost
    row = line(bad_row(id="bad_bytes", turns=[{**TURNS[0], "text": "cafe"}]))
    return jsonl_with(tmp, row.replace(b"cafe", b"caf\xe9"))


def non_utf8_in_json_list(tmp):
    user = {"role": "user", "content": [{"type": "audio", "audio_url": str(GOOD_AUDIO[0])}]}
    items = [json.dumps({"prompt": [user], "answer": a}, ensure_ascii=False).encode() for a in (prompt.SCENES[0], "XX")]
    items[1] = items[1].replace(b"XX", b"\xff\xfe")
    path = tmp / "release.json"
    path.write_bytes(b"[" + b",\n".join(items) + b"]")
    return [path, *jsonl_with(tmp, line(good_rows()[0]), at=1)]


def lone_surrogate_escape(tmp):
    return jsonl_with(tmp, line(bad_row()).replace(b'"bad"', b'"bad\\ud800"'))


def nul_in_audio_path(tmp):
    return jsonl_with(tmp, line(bad_row(audio=str(GOOD_AUDIO[0]) + "\0.wav")))


def header_lies_about_rate(tmp):
    return jsonl_with(tmp, line(bad_row(id="liar", audio=str(lying_wav(tmp / "liar.wav")))))


def pretty_printed_object(tmp):
    path = tmp / "one.json"
    path.write_text(json.dumps(good_rows()[0], ensure_ascii=False, indent=2), encoding="utf-8")
    return [path]


def pretty_printed_objects(tmp):
    path = tmp / "many.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False, indent=2) for r in good_rows()), encoding="utf-8")
    return [path]


def utf16_file(tmp):
    path = tmp / "meta16.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in good_rows()), encoding="utf-16")
    return [path]


def conflicting_duration(tmp):
    first = good_rows()[0]
    return jsonl_with(tmp, line({**first, "duration": first["duration"] + 0.5}))


def conflicting_turns(tmp):
    first = good_rows()[0]
    return jsonl_with(tmp, line({**first, "turns": [{**TURNS[0], "end": 1.6}]}))


def same_audio_same_facts(tmp):  # a true repeat is merged, not a conflict
    return jsonl_with(tmp, line(good_rows()[0]))


def duplicate_id(tmp):
    return jsonl_with(tmp, line(bad_row(id="good_0", audio=str(noise_wav(tmp / "other.wav", 3.0)))))


def deeply_nested(tmp):
    return jsonl_with(tmp, b"[" * 100_000 + b"]" * 100_000)


def huge_integer(tmp):  # Python refuses to convert more than 4300 digits: a ValueError, not a JSONDecodeError
    return jsonl_with(tmp, line(bad_row()).replace(b'"id": "bad"', b'"id": ' + b"9" * 5000))


def line_separator_in_text(tmp):  # U+2028 is valid inside a JSON string: not a line break
    text = "喂\u2028您好"
    return jsonl_with(
        tmp, line(bad_row(id="ls", audio=str(noise_wav(tmp / "ls.wav", 3.0)), turns=[{**TURNS[0], "text": text}]))
    )


def over_max_audios(tmp):  # 245 s without turns: 9 chunks of 30 s, more than MAX_AUDIOS_PER_ROW (8)
    return jsonl_with(tmp, line(bad_row(id="long", audio=str(noise_wav(tmp / "long.wav", 245.0)))))


def over_lowered_max_audios(tmp):  # 61 s: 3 chunks
    return jsonl_with(tmp, line(bad_row(id="long", audio=str(noise_wav(tmp / "long.wav", 61.0)))))


@dataclass
class Case:
    write: Callable[[Path], list[Path]]
    exit: int
    rejects: list[tuple[int, str, str]]  # (row, code, words of the reason); input is the last file
    calls: int
    args: list[str] = field(default_factory=list)


N = len(GOOD_AUDIO)
CASES = {
    "non_utf8_byte": Case(non_utf8_byte, 0, [(3, "bad_encoding", "not valid UTF-8 (byte 0xe9 at column")], N),
    "non_utf8_in_json_list": Case(non_utf8_in_json_list, 0, [(2, "bad_encoding", "not valid UTF-8")], N),
    "lone_surrogate_escape": Case(lone_surrogate_escape, 0, [(3, "bad_encoding", "unpaired")], N),
    "nul_in_audio_path": Case(nul_in_audio_path, 0, [(3, "bad_record", "NUL character")], N),
    "header_lies_about_rate": Case(
        header_lies_about_rate, 0, [(3, "duration", "header says 40000.0 s (80000 frames at 2 Hz)")], N
    ),
    "pretty_printed_object": Case(
        pretty_printed_object, 1, [(0, "malformed_json", "one JSON value pretty-printed")], 0
    ),
    "pretty_printed_objects": Case(pretty_printed_objects, 1, [(0, "malformed_json", f"{N} JSON values pretty")], 0),
    "utf16_file": Case(utf16_file, 1, [(0, "bad_encoding", "UTF-16")], 0),
    "conflicting_duration": Case(conflicting_duration, 0, [(3, "conflict", "meta.jsonl:1 for the same audio")], N),
    "conflicting_turns": Case(conflicting_turns, 0, [(3, "conflict", "turns differ from those of")], N),
    "same_audio_same_facts": Case(same_audio_same_facts, 0, [], N),
    "duplicate_id": Case(duplicate_id, 0, [(3, "duplicate_id", "already used by")], N),
    "deeply_nested": Case(deeply_nested, 0, [(3, "malformed_json", "nested too deeply")], N),
    "huge_integer": Case(huge_integer, 0, [(3, "malformed_json", "4300 digits")], N),
    "line_separator_in_text": Case(line_separator_in_text, 0, [], N + 1),
    "over_max_audios": Case(over_max_audios, 0, [(3, "too_many_chunks", "9 chunks of at most 30 s, more than")], N),
    "over_lowered_max_audios": Case(
        over_lowered_max_audios, 0, [(3, "too_many_chunks", "--max-audios 2")], N, ["--max-audios", "2"]
    ),
    "truncate_keeps_long_call": Case(
        over_lowered_max_audios, 0, [], N + 1, ["--max-audios", "2", "--long-call", "truncate"]
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name, tmp_path, capsys):
    case = CASES[name]
    inputs = case.write(tmp_path)
    out = tmp_path / "out"
    argv = [a for p in inputs for a in ("--input", str(p))]
    argv += ["--out", str(out), "--workers", "1", "--no-progress", "--max-reject-fraction", "0.25", *case.args]
    assert main(argv) == case.exit
    err = capsys.readouterr().err
    assert "Traceback" not in err
    rejects = read_jsonl(out / "rejects.jsonl")
    got = [(r["input"], r["row"], r["code"]) for r in rejects]
    assert got == [(str(inputs[0]), row, code) for row, code, _ in case.rejects], rejects
    for reject, (row, _, words) in zip(rejects, case.rejects, strict=True):
        assert words in reject["reason"], reject
        assert f"{inputs[0]}:{row}: " in err  # printed as one line naming the file and row
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["calls"]["accepted"] == case.calls
    # every row read is counted once: in an accepted call or in rejects.jsonl
    assert summary["records"] == summary["records_accepted"] + summary["records_rejected"]
    assert sum(sum(i["rows"].values()) for i in summary["inputs"]) == summary["records"]
    if case.exit:
        assert "error: " in err


def test_lying_header_is_refused_before_decoding(tmp_path):
    """Memory stays bounded: the 11 h the header claims are never allocated (it was 4.8 GiB)."""
    inputs = header_lies_about_rate(tmp_path)
    tracemalloc.start()
    try:
        summary = prepare(inputs, tmp_path / "out", Options(workers=1, progress=False, max_reject_fraction=1.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["rejects_by_code"] == {"duration": 1}
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_cli_prints_one_line_not_a_traceback(tmp_path):
    """The real CLI, in a subprocess: a pretty-printed object ends in one error line and exit 1."""
    [path] = pretty_printed_object(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "safe_qaq.prepare", "--input", str(path), "--out", str(tmp_path / "o"), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {path}: file is one JSON value pretty-printed over" in result.stderr


def test_max_audios_above_the_shared_bound_is_refused(tmp_path, capsys):
    assert main(["--input", str(GOOD_AUDIO[0]), "--out", str(tmp_path / "o"), "--max-audios", "9"]) == 2
    assert "--max-audios must be in [1, 8]" in capsys.readouterr().err
