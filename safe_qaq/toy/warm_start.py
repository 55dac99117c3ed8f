"""Build the warm-started toy base: the tiny Qwen2-Audio fine-tuned to hear the toy task and answer in format.

Why: a randomly initialised model never writes ``<think>…</think><answer>{json}</answer>``, so
every GRPO group scores the same, the advantage is zero and nothing learns.  The paper starts
from Qwen2-Audio-7B-Instruct and an SFT backbone that already scores well above chance; the CPU
analogue is this base: the tiny model after one full fine-tune
(``swift sft --tuner_type full``, the audio encoder frozen) on the toy world's *warm-up* calls
(:mod:`safe_qaq.toy.data`), which are never in the RL training or test split.

The fine-tune is a curriculum, in one run over rows in a fixed order (no shuffling), each phase
drawing as many rows of each task:

1. *hear*: direct-prompt rows (``mode="direct"``: the answer JSON and nothing else), the label
   token weighted x10 (:mod:`safe_qaq.toy.loss_scale`), so most of the gradient goes to the only
   part that depends on the audio.  Trained on every answer format at once, the tiny model learns
   the format long before it learns to listen (issue 16: the previous base stayed at chance);
2. *format*: the offline and real-time think formats, with think texts of varied length (so the
   length rewards have something to act on) and ``null`` on some early prefixes, mixed with direct
   rows so the labels are not forgotten.  The conclusion sentence is weighted x3;
3. *bundled calls*: the think formats on the bundled sample calls' train split (``data/calls``, split as
   ``make demo`` splits it), half the rows, beside toy think rows, so the demo's calls get answers in format
   (without it: none, at any temperature).

The encoder stays random and frozen: its features keep each cue's frequency band apart, the
projector and the language model learn to read them, and its backward would cost 40 % of a step.
It stops early on purpose: the base hears part of the task (issue 16's targets on the toy test
split: scene >= 40 %, fraud >= 65 %, fraud type >= 30 %, format-valid >= 95 %) and leaves room
for the stage scripts to improve on it.

The base is committed (``data/warm_base/tiny-qwen2-audio-warm``, under 2 MB) with a build-info
file whose ``code_hash`` covers this builder's code and :data:`SETTINGS`; a fast test fails when
they change and the shipped copy was not rebuilt.  ``make model`` rebuilds it::

    python -m safe_qaq.toy.warm_start                  # `make model`: build into data/warm_base/...
    python -m safe_qaq.toy.warm_start --check          # is the shipped base there and up to date? (no ms-swift)
"""

from __future__ import annotations

import argparse
import ast
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

from safe_qaq.toy import loss_scale

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data" / "warm_base" / "tiny-qwen2-audio-warm"
BUILD_INFO = "build_info.json"

#: Everything that decides the warm base besides the code (the code is hashed too, see :func:`code_hash`).
SETTINGS: dict = {
    "seed": 0,
    "width": 32,  # the tiny model's hidden size (safe_qaq.toy.tiny_model); 64 heard no better
    "warmup_calls": 400,
    "hear_steps": 120,  # phase 1: direct rows only
    "format_steps": 400,  # phase 2: think formats, with direct rows mixed in
    "format_direct_share": 0.25,
    "lr": 5e-3,  # constant; gradients clipped at 1
    # 8 rows a step: half the cost of 16 and, measured, at least as much learnt per step
    "batch_size": 4,
    "grad_acc": 2,
    "null_early": 0.45,  # share of early-prefix real-time targets that answer null
    # Phase 3, after the other two: the bundled sample calls' train split (data/calls, split as `make demo` splits
    # them; their test calls never), half the rows, beside toy think rows. Without it the base, which had heard only
    # toy calls, wrote no valid answer on a bundled call at any temperature, and the demo's stage 1 could not learn.
    # After the other phases, not mixed into them: mixed in, they changed the whole run and the toy's RL lost its room.
    "bundled_steps": 10,
    "bundled_share": 0.5,
    # The random audio encoder keeps each cue's frequency band apart; the projector and the language model learn to
    # read it. Training the encoder as well costs 40 % of a step (the backward of its attention over 1,500 frames).
    "train_audio_tower": False,
}
#: The files whose code builds the base (hashed without comments, formatting or docstrings).
CODE_FILES = (
    "safe_qaq/toy/warm_start.py",
    "safe_qaq/toy/data.py",
    "safe_qaq/toy/tiny_model.py",
    "safe_qaq/toy/loss_scale.py",
    "safe_qaq/toy/loss_scale_plugin.py",
    "prompt.py",
)
#: The bundled sample calls: their train split is the third phase (SETTINGS["bundled_steps"]).
BUNDLED_CALLS_FILE = "data/calls/metadata.jsonl"
BUNDLED_CALLS = ROOT / BUNDLED_CALLS_FILE
#: Data files the build reads (hashed byte for byte).
DATA_FILES = ("data/toy_phrases/index.json", BUNDLED_CALLS_FILE)
#: Model files copied into the shipped folder (no optimizer or trainer state).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def _code_digest(source: str) -> str:
    """The source's syntax tree without docstrings: a comment, a docstring or reformatting changes nothing."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def code_hash(settings: dict | None = None, root: Path = ROOT) -> str:
    """sha256 over the builder's code (:data:`CODE_FILES`), its data files and its settings."""
    digest = hashlib.sha256()
    for name in CODE_FILES:
        digest.update(name.encode() + b"\0" + _code_digest((root / name).read_text(encoding="utf-8")).encode())
    for name in DATA_FILES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    digest.update(json.dumps(settings or SETTINGS, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def check(out: Path = SHIPPED) -> str | None:
    """None when ``out`` holds a base built by today's code and settings, else one line saying what is wrong."""
    info = out / BUILD_INFO
    if not (out / "model.safetensors").is_file() or not info.is_file():
        return f"{out}: no warm base there; build it with `make model`"
    recorded = json.loads(info.read_text(encoding="utf-8")).get("code_hash")
    wanted = code_hash()
    if recorded != wanted:
        return (
            f"{out}: built by other code or settings (code_hash {recorded}, today's {wanted}); "
            "rebuild it with `make model` and commit it"
        )
    return None


def direct_row(row: dict) -> dict:
    """An offline SFT row asked with the direct prompt: the answer JSON alone, the label its first free choice."""
    import prompt

    answer = prompt.format_answer(row["task"], row["answers"], mode="direct")
    messages = prompt.build_messages(row["task"], mode="direct", n_audios=len(row["audios"]), answer=answer)
    return {**row, "messages": messages}


def curriculum(prepared: Path, settings: dict, bundled: Path | None = None) -> list[dict]:
    """The fine-tune's rows in training order: the hear phase's direct rows, then the format phase's mix.

    ``bundled``: the bundled calls prepared as the demo prepares them; their train rows make ``bundled_share`` of a
    third phase's rows (``bundled_steps``), after the other two."""
    from safe_qaq.jsonl import read_jsonl
    from safe_qaq.toy import data as toy_data

    rng = random.Random(settings["seed"])
    offline = read_jsonl(prepared / "sft_train.jsonl")
    realtime = read_jsonl(prepared / "sft_realtime_train.jsonl")
    direct = [direct_row(r) for r in offline]
    per_step = settings["batch_size"] * settings["grad_acc"]

    def draw(pool: list[dict], n: int) -> list[dict]:
        """``n`` rows from ``pool``, as many of each task (whole shuffled passes over each, then a part of one).

        Why: fraud type is asked of fraud calls only, so drawn in proportion it gets a fifth of the rows; the base
        then copied its reason sentence into the label field (issue 16)."""
        tasks = sorted({row["task"] for row in pool})
        out: list[dict] = []
        for i, task in enumerate(tasks):
            of_task = [row for row in pool if row["task"] == task]
            want = n // len(tasks) + (i < n % len(tasks))
            mine: list[dict] = []
            while len(mine) < want:
                mine += rng.sample(of_task, len(of_task))
            out += mine[:want]
        rng.shuffle(out)
        return out

    def think_rows(offline: list[dict], realtime: list[dict]) -> list[dict]:
        """The think-format rows of a prepared set: as many real-time rows (of several per call) as offline ones."""
        return toy_data.warm_rows(offline + rng.sample(realtime, min(len(realtime), len(offline))),
                                  seed=settings["seed"], null_early=settings["null_early"])  # fmt: skip

    hear = draw(direct, settings["hear_steps"] * per_step)
    n_format = settings["format_steps"] * per_step
    n_direct = round(n_format * settings["format_direct_share"])
    think = think_rows(offline, realtime)
    fmt = draw(think, n_format - n_direct) + draw(direct, n_direct)
    rng.shuffle(fmt)
    tail: list[dict] = []
    if bundled is not None and settings["bundled_steps"]:
        b_think = think_rows(read_jsonl(bundled / "sft_train.jsonl"), read_jsonl(bundled / "sft_realtime_train.jsonl"))
        n_tail = settings["bundled_steps"] * per_step
        n_bundled = round(n_tail * settings["bundled_share"])
        tail = draw(b_think, n_bundled) + draw(think, n_tail - n_bundled)
        rng.shuffle(tail)
    return hear + fmt + tail


def sft(swift: str, model: Path, data: Path, run: Path, settings: dict, steps: int) -> Path:
    """One full fine-tune with ``swift sft`` over ``data`` in file order; returns its last checkpoint."""
    shutil.rmtree(run, ignore_errors=True)
    command = [
        swift, "sft", "--model", str(model), "--model_type", "qwen2_audio",
        "--template", "qwen2_audio_expanded", "--external_plugins",
        str(ROOT / "safe_qaq" / "qwen2_audio_template.py"), str(loss_scale.PLUGIN),
        "--check_model", "false", "--torch_dtype", "float32", "--tuner_type", "full", "--dataset", str(data),
        # the curriculum is the row order: ms-swift must not shuffle it
        "--dataset_shuffle", "false", "--train_dataloader_shuffle", "false",
        "--max_steps", str(steps), "--learning_rate", str(settings["lr"]), "--lr_scheduler_type", "constant",
        "--warmup_ratio", "0", "--per_device_train_batch_size", str(settings["batch_size"]),
        "--gradient_accumulation_steps", str(settings["grad_acc"]), "--save_steps", str(steps),
        "--save_only_model", "true", "--logging_steps", "10", "--output_dir", str(run), "--add_version", "false",
        "--report_to", "none", "--dataloader_num_workers", "0", "--seed", str(settings["seed"]),
        "--freeze_vit", str(not settings["train_audio_tower"]).lower(), "--freeze_aligner", "false",
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


def ship(checkpoint: Path, out: Path, info: dict) -> None:
    """The checkpoint's model files and the build info into ``out``, replaced atomically."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in MODEL_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, tmp / name)
    if not (tmp / "model.safetensors").is_file():
        raise SystemExit(f"{checkpoint}: no model.safetensors to ship")
    (tmp / BUILD_INFO).write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def build(out: Path, work: Path, swift: str, settings: dict | None = None) -> Path:
    """Random tiny model -> warm-up calls -> prepared rows -> curriculum -> one ``swift sft`` -> ``out``."""
    from safe_qaq import prepare
    from safe_qaq.jsonl import dumps, read_jsonl
    from safe_qaq.toy import data as toy_data
    from safe_qaq.toy.tiny_model import build_tiny_model

    settings = settings or SETTINGS
    started = time.perf_counter()
    base = build_tiny_model(work / "tiny-qwen2-audio", settings["seed"], width=settings["width"])
    calls = toy_data.build(work / "calls", splits={"warmup": settings["warmup_calls"]}, seed=settings["seed"])
    prepared = work / "prepared_warmup"
    prepare_log = work / "prepared_warmup.log"
    with open(prepare_log, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        code = prepare.main(
            ["--input", str(calls["warmup"]), "--out", str(prepared), "--test-fraction", "0",
             "--early-sft-answer", "gold", "--no-progress", "--workers", "1"]
        )  # fmt: skip
    if code != 0:
        raise SystemExit(f"preparing the warm-up calls failed (exit {code}); see {prepare_log}")
    bundled = None
    if settings["bundled_steps"]:
        # The same split `make demo` makes (prepare's defaults): only its train calls are read below.
        bundled = work / "prepared_bundled"
        with open(prepare_log, "a", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
            code = prepare.main(
                ["--input", str(BUNDLED_CALLS), "--out", str(bundled), "--early-sft-answer", "gold",
                 "--no-progress", "--workers", "1"]
            )  # fmt: skip
        if code != 0:
            raise SystemExit(f"preparing the bundled calls failed (exit {code}); see {prepare_log}")
    rows = curriculum(prepared, settings, bundled)
    bundled_ids = {row["call_id"] for row in read_jsonl(bundled / "sft_train.jsonl")} if bundled else set()
    text = "".join(dumps(row) for row in rows)
    data = work / "warm.jsonl"
    data.write_text(text, encoding="utf-8")
    steps = settings["hear_steps"] + settings["format_steps"] + settings["bundled_steps"]
    print(f"warm start: {len(rows)} rows, {settings['hear_steps']} hear + {settings['format_steps']} format + "
          f"{settings['bundled_steps']} bundled-call steps")  # fmt: skip
    run = work / "run"
    checkpoint = sft(swift, base, data, run, settings, steps)
    losses = [r["loss"] for r in read_jsonl(run / "logging.jsonl") if "loss" in r]
    seconds = round(time.perf_counter() - started)
    info = {
        "code_hash": code_hash(settings),
        "settings": settings,
        "code_files": list(CODE_FILES) + list(DATA_FILES),
        "rows_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
        # what the base was trained on besides the warm-up calls (a test checks none is a demo test call)
        "bundled_calls_seen": sorted(bundled_ids & {row["call_id"] for row in rows}),
        "loss_every_10_steps": [round(x, 4) for x in losses],
        "build_seconds": seconds,
        "note": "CPU training is not bit-reproducible across machines: a rebuild differs in the last digits",
    }
    ship(checkpoint, out, info)
    print(f"  loss {losses[0]:.2f} -> {losses[-1]:.3f}; warm base written to {out} in {seconds} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.toy.warm_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(SHIPPED), help="the warm base (a model directory)")
    parser.add_argument("--work", default="models/warm_start", help="scratch: tiny model, warm-up calls, run")
    beside = Path(sys.executable).with_name("swift")  # this environment's ms-swift, also when it is not on PATH
    parser.add_argument("--swift", default=str(beside) if beside.exists() else "swift", help="the ms-swift executable")
    parser.add_argument("--check", action="store_true", help="only say whether --out is there and up to date")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override one of SETTINGS for an experiment (the result then fails --check)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.check:
        problem = check(out)
        print(problem or f"warm base up to date: {out}", file=sys.stderr if problem else sys.stdout)
        return 1 if problem else 0
    settings = dict(SETTINGS)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in SETTINGS:
            parser.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(SETTINGS)}")
        kind = type(SETTINGS[key])
        settings[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    build(out, Path(args.work), args.swift, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
