"""Build the warm-started toy base: the tiny Qwen2-Audio fine-tuned to answer in the project's formats.

Why: a randomly initialised model never writes ``<think>…</think><answer>{json}</answer>``, so
every GRPO group scores the same, the advantage is zero and nothing learns.  The paper starts
from an instruction-tuned 7B model; the CPU analogue is this base: the tiny model after a full
fine-tune (``swift sft --tuner_type full``) on the toy world's *warm-up* calls
(:mod:`safe_qaq.toy_data`), which never appear in the training or test split.  It learns the
offline and real-time answer formats, think texts of varied length (so the length rewards have
something to act on), sometimes waiting with ``null`` on an early prefix, and something of the
task; the stage scripts then have to improve on it.

    python -m safe_qaq.warm_start --out models/tiny-qwen2-audio-warm     # `make model`

Steps (each skipped when its output is already there from the same recipe):

1. the random tiny model (:mod:`safe_qaq.tiny_model`) in ``--base``;
2. the toy calls (:mod:`safe_qaq.toy_data`) in ``--toy-dir``;
3. ``safe_qaq.prepare`` on the warm-up calls, then their SFT rows with varied think texts;
4. ``swift sft`` (full fine-tuning), then the last checkpoint's model files copied to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "safe_qaq_warm.json"
# Files of a full-tuning checkpoint that are training state, not model: not copied (and trainer
# state files such as training_args.bin are pickles we never read).
TRAINING_STATE = {"training_args.bin", "trainer_state.json", "args.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"}


def recipe(args: argparse.Namespace, rows_digest: str) -> dict:
    from safe_qaq import tiny_model, toy_data

    return {
        "version": 1,
        "tiny_model": {"seed": args.seed, "vocab_size": tiny_model.VOCAB_SIZE, "hidden": tiny_model.HIDDEN},
        "toy_version": toy_data.VERSION,
        "warm_rows": rows_digest,
        "steps": args.steps,
        "learning_rate": args.learning_rate,
        "batch": [args.batch_size, args.grad_acc],
    }


def copy_model(checkpoint: Path, out: Path) -> None:
    """The checkpoint's model files into ``out``, replaced atomically (a reader never sees half a model)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in checkpoint.iterdir():
        if item.is_file() and item.name not in TRAINING_STATE:
            shutil.copy2(item, tmp / item.name)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def build(args: argparse.Namespace) -> Path:
    from safe_qaq import prepare, toy_data
    from safe_qaq.jsonl import dumps, read_jsonl
    from safe_qaq.tiny_model import build_tiny_model

    started = time.perf_counter()
    base = build_tiny_model(args.base, args.seed)
    paths = toy_data.build(args.toy_dir)
    warm_dir = Path(args.toy_dir) / "prepared_warmup"
    code = prepare.main(
        ["--input", str(paths["warmup"]), "--out", str(warm_dir), "--test-fraction", "0",
         "--early-sft-answer", "gold", "--no-progress", "--workers", "1"]
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"preparing the warm-up calls failed (exit {code})")
    offline = read_jsonl(warm_dir / "sft_train.jsonl")
    realtime = read_jsonl(warm_dir / "sft_realtime_train.jsonl")
    rng = random.Random(args.seed)
    # Fewer real-time rows than there are (4 prefixes per call): the formats, not the prefixes, are the point.
    realtime = rng.sample(realtime, min(len(realtime), 2 * len(offline)))
    rows = toy_data.warm_rows(offline + realtime, seed=args.seed)
    rng.shuffle(rows)
    text = "".join(dumps(row) for row in rows)
    data = Path(args.toy_dir) / "warm_sft.jsonl"
    data.write_text(text, encoding="utf-8")
    wanted = recipe(args, hashlib.sha256(text.encode()).hexdigest()[:16])

    out = Path(args.out)
    marker = out / MARKER
    if not args.force and marker.exists() and json.loads(marker.read_text()) == wanted:
        print(f"warm base up to date: {out}")
        return out
    run = out.with_name(f".{out.name}.run")
    shutil.rmtree(run, ignore_errors=True)
    command = [
        args.swift, "sft", "--model", str(base), "--model_type", "qwen2_audio",
        "--template", "qwen2_audio_expanded", "--external_plugins", str(ROOT / "safe_qaq" / "qwen2_audio_template.py"),
        "--check_model", "false", "--torch_dtype", "float32", "--tuner_type", "full", "--dataset", str(data),
        "--max_steps", str(args.steps), "--learning_rate", str(args.learning_rate),
        "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05",
        "--per_device_train_batch_size", str(args.batch_size), "--gradient_accumulation_steps", str(args.grad_acc),
        "--save_steps", str(args.steps), "--save_only_model", "true", "--logging_steps", "10",
        "--output_dir", str(run), "--add_version", "false", "--report_to", "none",
        "--dataloader_num_workers", "0", "--seed", str(args.seed),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    print(f"warm start: {len(rows)} rows, {args.steps} steps of {args.batch_size * args.grad_acc} rows -> {out}")
    log = run.with_suffix(".log")
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as sink:
        status = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
    if status != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        raise SystemExit(f"swift sft failed (exit {status}); last lines of {log}:\n" + "\n".join(tail))
    copy_model(run / f"checkpoint-{args.steps}", out)
    shutil.copy2(run / "logging.jsonl", out / "warm_start_logging.jsonl")
    losses = [r["loss"] for r in read_jsonl(run / "logging.jsonl") if "loss" in r]
    marker.write_text(json.dumps(wanted))
    shutil.rmtree(run, ignore_errors=True)
    print(f"warm base written to {out}: loss {losses[0]:.2f} -> {losses[-1]:.3f}, {time.perf_counter() - started:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.warm_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/tiny-qwen2-audio-warm", help="the warm base (a model directory)")
    parser.add_argument("--base", default="models/tiny-qwen2-audio", help="where the random tiny model goes")
    parser.add_argument("--toy-dir", default="data/toy", help="where the toy calls go")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-acc", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--swift", default="swift", help="the ms-swift executable")
    parser.add_argument("--force", action="store_true", help="retrain even when an up-to-date base exists")
    args = parser.parse_args(argv)
    build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
