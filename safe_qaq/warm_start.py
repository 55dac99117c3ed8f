"""Build the warm-started toy base: the tiny Qwen2-Audio fine-tuned to answer in the project's formats.

Why: a randomly initialised model never writes ``<think>…</think><answer>{json}</answer>``, so
every GRPO group scores the same, the advantage is zero and nothing learns.  The paper starts
from Qwen2-Audio-7B-Instruct, pretrained on audio and instruction-tuned; the CPU analogue is this
base, the tiny model after two full fine-tunes (``swift sft --tuner_type full``) on the toy
world's *warm-up* calls (:mod:`safe_qaq.toy_data`), which are never in the training or test split:

1. *listening* (the pretraining analogue): each question answered with the bare gold label, audio
   tower included, at lr 1e-3 -- what the model hears becomes a label (a higher rate does not
   learn from the audio at all on this model);
2. *answer formats* (the instruction-tuning analogue): the offline and real-time answer formats with
   think texts of varied length (so the length rewards have something to act on), and sometimes
   ``null`` on an early prefix; the audio tower frozen, so a higher rate teaches the formats fast.

The base answers in format and knows part of the task; the stage scripts have to improve on it.

    python -m safe_qaq.warm_start --out models/tiny-qwen2-audio-warm     # `make model`

Each step is skipped when its output is already there from the same recipe: the random tiny model
(``--base``), the toy calls (``--toy-dir``), the prepared warm-up rows, and the two fine-tunes,
whose last checkpoint's model files become ``--out``.
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
TRAINING_STATE = {
    "training_args.bin", "trainer_state.json", "args.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"
}  # fmt: skip


def recipe(args: argparse.Namespace, rows_digest: str) -> dict:
    from safe_qaq import tiny_model, toy_data

    return {
        "version": 2,
        "tiny_model": {"seed": args.seed, "vocab_size": tiny_model.VOCAB_SIZE, "hidden": tiny_model.HIDDEN},
        "toy_version": toy_data.VERSION,
        "rows": rows_digest,
        "listen": [args.listen_steps, args.listen_lr],
        "formats": [args.format_steps, args.format_lr],
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


def warm_rows(prepared: Path, seed: int) -> tuple[list[dict], list[dict]]:
    """The two fine-tunes' rows from the prepared warm-up calls: (bare-label rows, answer-format rows)."""
    import prompt
    from safe_qaq import toy_data
    from safe_qaq.jsonl import read_jsonl

    offline = read_jsonl(prepared / "sft_train.jsonl")
    realtime = read_jsonl(prepared / "sft_realtime_train.jsonl")
    rng = random.Random(seed)
    listen = [{**r, "messages": [*prompt.question_of(r["messages"]), {"role": "assistant", "content": r["answers"]}]}
              for r in offline]  # fmt: skip
    rng.shuffle(listen)
    # Two real-time rows per offline row (of ~4 per call): the formats, not the prefixes, are the point here.
    realtime = rng.sample(realtime, min(len(realtime), 2 * len(offline)))
    formats = toy_data.warm_rows(offline + realtime, seed=seed)
    rng.shuffle(formats)
    return listen, formats


def sft(args: argparse.Namespace, model: Path, data: Path, run: Path, steps: int, lr: float, *extra: str) -> Path:
    """One full fine-tune with ``swift sft``; returns its last checkpoint."""
    shutil.rmtree(run, ignore_errors=True)
    command = [
        args.swift, "sft", "--model", str(model), "--model_type", "qwen2_audio",
        "--template", "qwen2_audio_expanded", "--external_plugins", str(ROOT / "safe_qaq" / "qwen2_audio_template.py"),
        "--check_model", "false", "--torch_dtype", "float32", "--tuner_type", "full", "--dataset", str(data),
        "--max_steps", str(steps), "--learning_rate", str(lr), "--lr_scheduler_type", "constant",
        "--warmup_ratio", "0", "--per_device_train_batch_size", str(args.batch_size),
        "--gradient_accumulation_steps", str(args.grad_acc), "--save_steps", str(steps), "--save_only_model", "true",
        "--logging_steps", "10", "--output_dir", str(run), "--add_version", "false", "--report_to", "none",
        "--dataloader_num_workers", "0", "--seed", str(args.seed),
        # the last turn only: earlier turns are carried gold answers with bare conclusions, not targets
        "--loss_scale", "last_round", *extra,
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
    code = prepare.main(
        ["--input", str(paths["warmup"]), "--out", str(warm_dir), "--test-fraction", "0",
         "--early-sft-answer", "gold", "--no-progress", "--workers", "1"]
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"preparing the warm-up calls failed (exit {code})")
    listen, formats = warm_rows(warm_dir, args.seed)
    texts = {name: "".join(dumps(row) for row in rows) for name, rows in (("listen", listen), ("formats", formats))}
    for name, text in texts.items():
        (toy_dir / f"warm_{name}.jsonl").write_text(text, encoding="utf-8")
    digest = hashlib.sha256("".join(texts.values()).encode()).hexdigest()[:16]
    wanted = recipe(args, digest)

    out = Path(args.out)
    marker = out / MARKER
    if not args.force and marker.exists() and json.loads(marker.read_text()) == wanted:
        print(f"warm base up to date: {out}")
        return out
    runs = out.with_name(f".{out.name}.runs")
    print(f"warm start 1/2, listening: {len(listen)} rows, {args.listen_steps} steps")
    heard = sft(args, base, toy_dir / "warm_listen.jsonl", runs / "listen", args.listen_steps, args.listen_lr,
                "--freeze_vit", "false", "--freeze_aligner", "false")  # fmt: skip
    print(f"  {_losses(runs / 'listen')}")
    print(f"warm start 2/2, answer formats: {len(formats)} rows, {args.format_steps} steps")
    formatted = sft(args, heard, toy_dir / "warm_formats.jsonl", runs / "formats", args.format_steps, args.format_lr)
    print(f"  {_losses(runs / 'formats')}")
    copy_model(formatted, out)
    for name in ("listen", "formats"):
        shutil.copy2(runs / name / "logging.jsonl", out / f"warm_{name}_logging.jsonl")
    marker.write_text(json.dumps(wanted))
    shutil.rmtree(runs, ignore_errors=True)
    print(f"warm base written to {out} in {time.perf_counter() - started:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.warm_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/tiny-qwen2-audio-warm", help="the warm base (a model directory)")
    parser.add_argument("--base", default="models/tiny-qwen2-audio", help="where the random tiny model goes")
    parser.add_argument("--toy-dir", default="data/toy", help="where the toy calls go")
    parser.add_argument("--listen-steps", type=int, default=200, help="steps of the bare-label fine-tune")
    parser.add_argument("--listen-lr", type=float, default=1e-3)
    parser.add_argument("--format-steps", type=int, default=150, help="steps of the answer-format fine-tune")
    parser.add_argument("--format-lr", type=float, default=3e-3)
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
