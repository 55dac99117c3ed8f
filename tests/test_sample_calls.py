"""The bundled sample calls (data/calls): coverage, shape and reproducibility."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

import prompt

ROOT = Path(__file__).resolve().parents[1]
CALLS = ROOT / "data" / "calls"
METADATA = CALLS / "metadata.jsonl"
KEYS = {"id", "audio", "duration", "scene", "label", "fraud_type", "turns"}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [json.loads(line) for line in METADATA.read_text(encoding="utf-8").splitlines()]


def test_metadata_schema(records):
    assert len(records) >= 24
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert set(r) == KEYS, r["id"]
        assert r["scene"] in prompt.SCENES
        assert r["label"] in prompt.FRAUD_LABELS
        if r["label"] == prompt.FRAUD:
            assert r["fraud_type"] in prompt.FRAUD_TYPES
        else:
            assert r["fraud_type"] is None
        assert r["audio"] == f"audio/{r['id']}.flac"


def test_coverage(records):
    normal_scenes = {r["scene"] for r in records if r["label"] == prompt.NORMAL}
    fraud_types = {r["fraud_type"] for r in records if r["label"] == prompt.FRAUD}
    assert normal_scenes == set(prompt.SCENES)
    assert fraud_types == set(prompt.FRAUD_TYPES)
    labels = Counter(r["label"] for r in records)
    assert labels[prompt.FRAUD] >= 8 and labels[prompt.NORMAL] >= 7


def test_durations(records):
    durations = [r["duration"] for r in records]
    assert all(10.0 <= d <= 40.0 for d in durations)
    long_calls = [r for r in records if r["duration"] > 30.0]
    assert len(long_calls) >= 2
    # Both classes have long calls, so the number of <audio> chunks does not give the label away.
    assert {r["label"] for r in long_calls} == set(prompt.FRAUD_LABELS)


def test_audio_files(records):
    total_bytes = 0
    for r in records:
        path = CALLS / r["audio"]
        info = sf.info(str(path))
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1), r["id"]
        assert abs(info.duration - r["duration"]) < 0.01, r["id"]
        total_bytes += path.stat().st_size
    assert total_bytes + METADATA.stat().st_size <= 10 * 1024 * 1024
    assert sorted(p.name for p in (CALLS / "audio").iterdir()) == sorted(Path(r["audio"]).name for r in records)


def test_turns(records):
    for r in records:
        turns = r["turns"]
        assert len(turns) >= 4, r["id"]
        assert {t["speaker"] for t in turns} == {"caller", "callee"}, r["id"]
        previous_end = 0.0
        for t in turns:
            assert previous_end <= t["start"] < t["end"] <= r["duration"], r["id"]
            assert t["text"].strip()
            previous_end = t["end"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_generator_reproduces_committed_calls(tmp_path, records):
    """Regenerating two calls gives the committed metadata and audio samples."""
    ids = ["call_001", "call_024"]
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "data" / "generate_sample_calls.py"),
            "--out",
            str(tmp_path),
            "--only",
            ",".join(ids),
        ],
        check=True,
        capture_output=True,
    )
    for call_id in ids:
        fresh, _ = sf.read(tmp_path / "audio" / f"{call_id}.flac", dtype="int16")
        committed, _ = sf.read(CALLS / "audio" / f"{call_id}.flac", dtype="int16")
        assert (fresh == committed).all(), f"{call_id}: espeak-ng output changed (version differs from 1.51?)"
