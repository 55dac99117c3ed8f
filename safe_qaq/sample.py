"""Rejection sampling, step 1: N completions per prompt, written as JSONL, resumable after any kill.

    python -m safe_qaq.sample --model MODEL_DIR --input data/prepared/offline_train.jsonl \\
        --output outputs/samples/samples.jsonl --n 16 --temperature 0.8 --top-p 0.95 --top-k 50

Each output line is one completion: every column of the prompt row (``messages``, ``audios``,
``answers``, ``conversation_stage``, ``task``, ``call_id``, ...) plus ``prompt_index``,
``prompt_id``, ``sample_index`` and ``completion``.  The N lines of a prompt are written
together, in input order, so the file is a sequence of complete groups.

Resuming (the contract of :mod:`safe_qaq.jsonl`): a rerun with the same settings reads the
file, cuts it back to the end of the last complete group (a torn line or a half-written group
from a kill is removed, nothing else) and generates only the prompts that are missing.  The
settings -- the input's content hash, the model and its weights, the sampling settings, N and
the shard -- are kept beside the output in ``<output>.meta.json``; a run whose settings differ
is refused with the differences named (``--overwrite`` starts afresh).  A smaller ``--limit``
reuses what is there, a larger one continues.

Sharding for several GPUs: ``--num-shards K --shard-index I`` takes prompts ``I, I+K, ...``;
run one process per GPU with its own ``--output`` and give all files to ``process_samples``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safe_qaq.engine import (
    Sampling,
    add_engine_arguments,
    engine_from_args,
    engine_identity,
    request_problem,
    sampling_from_args,
)
from safe_qaq.jsonl import (
    JsonlError,
    ResumeError,
    append_records,
    check_settings,
    file_fingerprint,
    meta_path,
    os_error_message,
    parse_line,
    print_error,
    read_rows,
)


def recipe_defaults() -> Sampling:
    """The command-line defaults: the published recipe's rejection-sampling settings (recipes/paper.yaml,
    SAMPLE_* and the shared generation values), so running the module by hand samples as sample.sh does."""
    from safe_qaq.recipe import load

    r = load("paper", env={})
    return Sampling(temperature=r["SAMPLE_TEMPERATURE"], top_p=r["SAMPLE_TOP_P"], top_k=r["SAMPLE_TOP_K"],
                    repetition_penalty=r["REPETITION_PENALTY"], max_tokens=r["MAX_COMPLETION_LENGTH"],
                    seed=r["SEED"])  # fmt: skip


def prompt_id(row: dict[str, Any]) -> str:
    """Stable id of a prompt: its messages and audios (not its position, which shards change)."""
    key = json.dumps([row.get("messages"), row.get("audios")], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def recover(output: Path, n: int) -> tuple[int, set[int]]:
    """Cut ``output`` back to its last complete group; return (groups kept, prompt indices done).

    Only what a kill can leave is cut: whole lines of the one group being written, then perhaps
    a torn line (whatever byte it stops at).  Anything else -- a bad line, a group out of order
    or repeated -- is not a kill's doing: :class:`ResumeError` names it and the file is left alone.
    """
    if not output.exists():
        return 0, set()
    done: set[int] = set()
    keep_bytes = offset = 0
    group_index, group_size = None, 0
    with open(output, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                break  # a torn last line
            offset += len(raw)
            where = f"{output}:{number}"
            try:
                record = parse_line(raw, where)
            except JsonlError as exc:
                raise ResumeError(f"{exc}; sample.py never writes that: fix the file or pass --overwrite") from None
            index, sample = record.get("prompt_index"), record.get("sample_index")
            if group_size == 0:
                group_index = index
            if not isinstance(index, int) or index in done or index != group_index or sample != group_size:
                raise ResumeError(
                    f"{where}: prompt_index {index!r} sample_index {sample!r} where sample {group_size} of "
                    f"prompt {group_index!r} ({n} per prompt) was due; sample.py never writes that: "
                    "fix the file or pass --overwrite"
                )
            group_size += 1
            if group_size == n:
                done.add(index)
                keep_bytes, group_size = offset, 0
    size = output.stat().st_size
    if keep_bytes != size:
        with open(output, "r+b") as handle:
            handle.truncate(keep_bytes)
        print(f"{output}: cut {size - keep_bytes} bytes of an unfinished group (an interrupted run)")
    return len(done), done


def settings_of(args: argparse.Namespace, sampling: Sampling) -> dict[str, Any]:
    """Everything that decides what the output holds (see the module docstring)."""
    return {
        "tool": "safe_qaq.sample",
        "input": file_fingerprint(args.input),
        "engine": engine_identity(args),
        "sampling": asdict(sampling),
        "n": args.n,
        "num_shards": args.num_shards,
        "shard_index": args.shard_index,
    }


def read_n(samples_file: str | Path) -> int | None:
    """N of a sample.py output, from the settings beside it (None when there are none)."""
    try:
        n = json.loads(meta_path(samples_file).read_text(encoding="utf-8")).get("n")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and n >= 1 else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m safe_qaq.sample", description="N completions per prompt for rejection sampling (resumable)."
    )
    add_engine_arguments(parser, defaults=recipe_defaults())
    parser.add_argument("--input", required=True, help="prompt rows (ms-swift jsonl)")
    parser.add_argument("--output", required=True, help="completions jsonl (appended to when resuming)")
    parser.add_argument("--n", type=int, default=16, help="completions per prompt")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per engine call")
    parser.add_argument("--limit", type=int, help="only the first LIMIT prompts of this shard (smoke runs)")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--shard-index", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.shard_index < args.num_shards:
        parser.error("--shard-index must be in [0, --num-shards)")
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be >= 1")
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    try:
        sampling = sampling_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    output = Path(args.output)
    if output.resolve() in {Path(args.input).resolve(), meta_path(args.input).resolve()}:
        parser.error("--output must not be the input (or its settings file)")
    try:
        return _run(args, sampling, output)
    except (JsonlError, ResumeError) as exc:
        print_error(exc)
        return 1
    except OSError as exc:
        print_error(os_error_message(exc))
        return 2


def _run(args: argparse.Namespace, sampling: Sampling, output: Path) -> int:
    rows = read_rows(args.input, request_problem)
    if not rows:
        print(f"warning: {args.input}: no prompts", file=sys.stderr)
    check_settings(output, settings_of(args, sampling), overwrite=args.overwrite)
    _, done = recover(output, args.n)

    shard = args.shard_index, args.num_shards
    prompts = [(position, row) for position, (_, row) in enumerate(rows) if position % shard[1] == shard[0]]
    if args.limit is not None:
        prompts = prompts[: args.limit]
    todo = [(index, row) for index, row in prompts if index not in done]
    kept = len(prompts) - len(todo)
    print(f"{len(prompts)} prompts, {kept} already sampled, {len(todo)} to go ({args.n} completions each)")
    if not todo:
        return 0

    from tqdm import tqdm

    try:
        engine = engine_from_args(args)
    except Exception as exc:  # a missing or broken model: one line, not a traceback
        print(f"error: cannot load model {args.model!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    with open(output, "a", encoding="utf-8") as sink, tqdm(total=len(prompts), initial=kept, unit="prompt") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            # The seed of a call follows its first prompt, so a resumed run draws what an uninterrupted one would.
            seed = None if sampling.seed is None else sampling.seed + batch[0][0]
            try:
                texts = engine.generate([row for _, row in batch], n=args.n, **{**sampling.as_kwargs(), "seed": seed})
            except Exception as exc:  # the groups written so far are kept; a rerun resumes
                which = f"prompts {batch[0][0]}-{batch[-1][0]}"
                print(f"error: generation failed for {which}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            for (index, row), completions in zip(batch, texts, strict=True):
                if len(completions) != args.n:
                    got = len(completions)
                    print(f"error: prompt {index}: the engine returned {got} of {args.n} completions", file=sys.stderr)
                    return 1
                pid = prompt_id(row)
                group = [
                    {**row, "prompt_index": index, "prompt_id": pid, "sample_index": k, "completion": text}
                    for k, text in enumerate(completions)
                ]
                # One write per group, flushed to disk: a kill leaves at most one partial group at the end.
                append_records(sink, group)
                bar.update(1)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
