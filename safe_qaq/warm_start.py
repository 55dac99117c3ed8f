"""Build the warm-started toy base: the tiny Qwen2-Audio fine-tuned to answer in the project's formats.

Why: a randomly initialised model never writes ``<think>…</think><answer>{json}</answer>``, so
every GRPO group scores the same, the advantage is zero and nothing learns.  The paper starts
from Qwen2-Audio-7B-Instruct, pretrained on audio and instruction-tuned; the CPU analogue is this
base, the tiny model after two full fine-tunes (``swift sft --tuner_type full``) on the toy
world's *warm-up* calls (:mod:`safe_qaq.toy_data`), which are never in the training or test split.
One full fine-tune, audio tower included, on the offline and real-time answer formats with think
texts of varied length (so the length rewards have something to act on) and sometimes ``null`` on
an early prefix.  The conclusion sentence, the only part that depends on the audio, is weighted
up (:mod:`safe_qaq.loss_scale`): with plain token weighting the format is learned and the labels
stay at chance.

The base answers in format and knows part of the task; the stage scripts have to improve on it.

    python -m safe_qaq.warm_start --out models/tiny-qwen2-audio-warm     # `make model`

Each step is skipped when its output is already there from the same recipe: the random tiny model
(``--base``), the toy calls (``--toy-dir``), the prepared warm-up rows, and the two fine-tunes,
whose last checkpoint's model files become ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from safe_qaq import loss_scale
from safe_qaq.checkpoint import copy_model_files

ROOT = Path(__file__).resolve().parents[1]
MARKER = "safe_qaq_warm.json"


def recipe(args: argparse.Namespace, rows_digest: str) -> dict:
    from safe_qaq import tiny_model, toy_data

    return {
        "version": 3,
        "tiny_model": {"seed": args.seed, "vocab_size": tiny_model.VOCAB_SIZE, "hidden": tiny_model.HIDDEN},
        "toy_version": toy_data.VERSION,
        "rows": rows_digest,
        "steps": args.steps,
        "lr": args.lr,
        "reason_weight": loss_scale.REASON_WEIGHT,
        "batch": [args.batch_size, args.grad_acc],
    }


def copy_model(checkpoint: Path, out: Path) -> None:
    """The checkpoint's model files into ``out``, replaced atomically (a reader never sees half a model)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy_model_files(checkpoint, tmp)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def warm_rows(prepared: Path, seed: int) -> list[dict]:
    """The fine-tune's rows from the prepared warm-up calls: every offline row and as many real-time rows."""
    from safe_qaq import toy_data
    from safe_qaq.jsonl import read_jsonl

    offline = read_jsonl(prepared / "sft_train.jsonl")
    realtime = read_jsonl(prepared / "sft_realtime_train.jsonl")
    rng = random.Random(seed)
    # As many real-time rows as offline ones (of several per call): the formats are the point here.
    realtime = rng.sample(realtime, min(len(realtime), len(offline)))
    rows = toy_data.warm_rows(offline + realtime, seed=seed)
    rng.shuffle(rows)
    return rows


def sft(args: argparse.Namespace, model: Path, data: Path, run: Path, steps: int, lr: float) -> Path:
    """One full fine-tune with ``swift sft``; returns its last checkpoint."""
    shutil.rmtree(run, ignore_errors=True)
    command = [
        args.swift, "sft", "--model", str(model), "--model_type", "qwen2_audio",
        "--template", "qwen2_audio_expanded", "--external_plugins",
        str(ROOT / "safe_qaq" / "qwen2_audio_template.py"), str(loss_scale.PLUGIN),
        "--check_model", "false", "--torch_dtype", "float32", "--tuner_type", "full", "--dataset", str(data),
        "--max_steps", str(steps), "--learning_rate", str(lr), "--lr_scheduler_type", "constant",
        "--warmup_ratio", "0", "--per_device_train_batch_size", str(args.batch_size),
        "--gradient_accumulation_steps", str(args.grad_acc), "--save_steps", str(steps), "--save_only_model", "true",
        "--logging_steps", "10", "--output_dir", str(run), "--add_version", "false", "--report_to", "none",
        "--dataloader_num_workers", "0", "--seed", str(args.seed), "--freeze_vit", "false", "--freeze_aligner", "false",
        # the last turn only (earlier turns are carried gold answers, not targets), its conclusion weighted up
        "--loss_scale", f"last_round+{loss_scale.NAME}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    log = run.with_suffix(".log")
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as sink:
        status = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
    if status != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        raise SystemExit(f"swift sft failed (exit {status}); last lines of {log}:\n" + "\n".join(tail))
    return run / f"checkpoint-{steps}"


def _losses(run: Path) -> str:
    from safe_qaq.jsonl import read_jsonl

    losses = [r["loss"] for r in read_jsonl(run / "logging.jsonl") if "loss" in r]
    return f"loss {losses[0]:.2f} -> {losses[-1]:.3f}"


def build(args: argparse.Namespace) -> Path:
    from safe_qaq import prepare, toy_data
    from safe_qaq.jsonl import dumps
    from safe_qaq.tiny_model import build_tiny_model

    started = time.perf_counter()
    base = build_tiny_model(args.base, args.seed)
    paths = toy_data.build(args.toy_dir, splits={"warmup": args.warmup_calls, "rl": args.rl_calls})
    toy_dir = Path(args.toy_dir)
    warm_dir = toy_dir / "prepared_warmup"
    prepare_log = toy_dir / "prepared_warmup.log"
    with open(prepare_log, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        code = prepare.main(
            ["--input", str(paths["warmup"]), "--out", str(warm_dir), "--test-fraction", "0",
             "--early-sft-answer", "gold", "--no-progress", "--workers", "1"]
        )  # fmt: skip
    if code != 0:
        raise SystemExit(f"preparing the warm-up calls failed (exit {code}); see {prepare_log}")
    rows = warm_rows(warm_dir, args.seed)
    text = "".join(dumps(row) for row in rows)
    (toy_dir / "warm.jsonl").write_text(text, encoding="utf-8")
    wanted = recipe(args, hashlib.sha256(text.encode()).hexdigest()[:16])

    out = Path(args.out)
    marker = out / MARKER
    if not args.force and marker.exists() and json.loads(marker.read_text()) == wanted:
        print(f"warm base up to date: {out}")
        return out
    run = out.with_name(f".{out.name}.run")
    print(f"warm start: {len(rows)} rows, {args.steps} steps of full fine-tuning")
    checkpoint = sft(args, base, toy_dir / "warm.jsonl", run, args.steps, args.lr)
    print(f"  {_losses(run)}")
    copy_model(checkpoint, out)
    shutil.copy2(run / "logging.jsonl", out / "warm_logging.jsonl")
    marker.write_text(json.dumps(wanted))
    shutil.rmtree(run, ignore_errors=True)
    print(f"warm base written to {out} in {time.perf_counter() - started:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.warm_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/tiny-qwen2-audio-warm", help="the warm base (a model directory)")
    parser.add_argument("--base", default="models/tiny-qwen2-audio", help="where the random tiny model goes")
    parser.add_argument("--toy-dir", default="data/toy", help="where the toy calls go")
    parser.add_argument("--steps", type=int, default=250, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=5e-3, help="learning rate (constant; gradients clipped at 1)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-acc", type=int, default=4)
    parser.add_argument("--warmup-calls", type=int, default=400, help="toy calls the base learns from")
    parser.add_argument("--rl-calls", type=int, default=160, help="toy calls for the stage scripts (make toy)")
    parser.add_argument("--seed", type=int, default=0)
    beside = Path(sys.executable).with_name("swift")  # this environment's ms-swift, also when it is not on PATH
    parser.add_argument("--swift", default=str(beside) if beside.exists() else "swift", help="the ms-swift executable")
    parser.add_argument("--force", action="store_true", help="retrain even when an up-to-date base exists")
    args = parser.parse_args(argv)
    build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
