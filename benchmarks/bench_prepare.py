"""Throughput of ``safe_qaq.prepare``: seconds of audio prepared per wall-clock second.

Builds a corpus from the bundled calls (``data/calls``) copied ``--copies`` times, in two
shapes, and runs the whole conversion (read, decode + check, cut prefixes/chunks, write every
jsonl) on a cold output folder and again on a warm one (cut audio reused):

* ``metadata-flac16k``: our metadata JSONL, 16 kHz FLAC, with turn timestamps;
* ``teleantifraud-wav24k``: TeleAntiFraud JSON list, 24 kHz WAV (ChatTTS's rate), no turns,
  so every file is also resampled.

Target: >= 100x real time per core.  Usage::

    python benchmarks/bench_prepare.py --copies 8 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safe_qaq.prepare import Options, prepare  # noqa: E402

CALLS = ROOT / "data" / "calls"


def build_corpus(work: Path, copies: int) -> dict[str, Path]:
    """Write both corpus shapes under ``work``; returns {name: input file}."""
    records = [json.loads(line) for line in (CALLS / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    meta_dir, taf_dir = work / "meta", work / "taf"
    (meta_dir / "audio").mkdir(parents=True)
    (taf_dir / "audio").mkdir(parents=True)
    meta_rows, taf_rows = [], []
    for record in records:
        samples, rate = sf.read(CALLS / record["audio"], dtype="float32")
        wav24 = soxr.resample(samples, rate, 24000)
        for copy in range(copies):
            name = f"{record['id']}_{copy:03d}"
            shutil.copyfile(CALLS / record["audio"], meta_dir / "audio" / f"{name}.flac")
            meta_rows.append({**record, "id": name, "audio": f"audio/{name}.flac"})
            sf.write(taf_dir / "audio" / f"{name}.wav", wav24, 24000, subtype="PCM_16")
            for answer in (record["scene"], record["label"], record["fraud_type"]):
                if answer is None:
                    continue
                user = [{"type": "audio", "audio_url": f"audio/{name}.wav"}, {"type": "text", "text": "?"}]
                taf_rows.append({"prompt": [{"role": "user", "content": user}], "answer": answer})
    meta = meta_dir / "metadata.jsonl"
    meta.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in meta_rows), encoding="utf-8")
    taf = taf_dir / "records.json"
    taf.write_text(json.dumps(taf_rows, ensure_ascii=False), encoding="utf-8")
    return {"metadata-flac16k": meta, "teleantifraud-wav24k": taf}


def run(inputs: Path, out: Path, workers: int) -> tuple[float, float]:
    options = Options(workers=workers, progress=False)
    start = time.perf_counter()
    summary = prepare([inputs], out, options)
    wall = time.perf_counter() - start
    assert summary["records_rejected"] == 0, summary["rejects_by_code"]
    return summary["audio"]["total_s"], wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=8, help="copies of the 24 bundled calls")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = Path(tmp)
        corpora = build_corpus(work, args.copies)
        print(f"{'corpus':<22}{'workers':>8}{'run':>6}{'audio s':>10}{'wall s':>9}{'x RT':>9}{'x RT/core':>11}")
        for name, inputs in corpora.items():
            for workers in sorted(set(args.workers)):
                out = work / f"out_{name}_{workers}"
                for run_name in ("cold", "warm"):
                    audio_s, wall = run(inputs, out, workers)
                    speed = audio_s / wall
                    print(
                        f"{name:<22}{workers:>8}{run_name:>6}{audio_s:>10.0f}{wall:>9.2f}"
                        f"{speed:>9.0f}{speed / workers:>11.0f}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
