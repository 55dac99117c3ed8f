"""``python -m safe_qaq.prepare``: flags to :class:`~safe_qaq.prepare.options.Options`, the run, the report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from safe_qaq.prepare.options import Options
from safe_qaq.prepare.pipeline import format_summary, prepare

MAX_LOGGED_REJECTS = 20


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("need at least one fraction")
    return values


def build_parser() -> argparse.ArgumentParser:
    defaults = Options()
    p = argparse.ArgumentParser(
        prog="python -m safe_qaq.prepare",
        description="Convert call records (our metadata JSONL or the TeleAntiFraud JSON/JSONL release) "
        "into ms-swift jsonl for every training stage. See the README's Data section.",
    )
    p.add_argument("--input", action="append", required=True, help="input file; repeat for several")
    p.add_argument("--out", required=True, help="output folder (e.g. data/prepared)")
    p.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the train/test split")
    p.add_argument(
        "--long-call",
        choices=("chunk", "truncate"),
        default=defaults.long_call,
        help="calls over --chunk-seconds: split into consecutive <=30 s <audio> chunks, or keep the first 30 s",
    )
    p.add_argument("--chunk-seconds", type=float, default=defaults.chunk_seconds)
    p.add_argument(
        "--max-audios",
        type=int,
        default=defaults.max_audios,
        help="most <audio> chunks one row may carry (vLLM's limit_mm_per_prompt in the stage scripts); "
        "a longer call is rejected (too_many_chunks) unless --long-call truncate",
    )
    p.add_argument(
        "--prefix-fractions",
        type=_fractions,
        default=defaults.prefix_fractions,
        help="real-time prefixes: fractions of the call, each cut at the nearest turn boundary (the "
        "whole call is always added)",
    )
    p.add_argument("--early-max-fraction", type=float, default=defaults.early_max_fraction)
    p.add_argument("--complete-min-fraction", type=float, default=defaults.complete_min_fraction)
    p.add_argument("--min-prefix-seconds", type=float, default=defaults.min_prefix_seconds)
    p.add_argument(
        "--early-sft-answer",
        choices=("null", "gold"),
        default=defaults.early_sft_answer,
        help="SFT target of early_stage real-time rows: the null 'not enough audio' answer or the gold label",
    )
    p.add_argument("--max-reject-fraction", type=float, default=defaults.max_reject_fraction)
    p.add_argument("--min-duration", type=float, default=defaults.min_duration)
    p.add_argument("--max-duration", type=float, default=defaults.max_duration)
    p.add_argument(
        "--duration-tolerance",
        type=float,
        default=defaults.duration_tolerance,
        help="seconds a declared duration or the last turn end may differ from the audio",
    )
    p.add_argument("--silence-dbfs", type=float, default=defaults.silence_dbfs, help="RMS below this is 'silent'")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    p.add_argument("--no-progress", action="store_true")
    return p


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        test_fraction=args.test_fraction,
        seed=args.seed,
        long_call=args.long_call,
        chunk_seconds=args.chunk_seconds,
        max_audios=args.max_audios,
        prefix_fractions=args.prefix_fractions,
        early_max_fraction=args.early_max_fraction,
        complete_min_fraction=args.complete_min_fraction,
        min_prefix_seconds=args.min_prefix_seconds,
        early_sft_answer=args.early_sft_answer,
        max_reject_fraction=args.max_reject_fraction,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        duration_tolerance=args.duration_tolerance,
        silence_dbfs=args.silence_dbfs,
        workers=max(1, args.workers),
        progress=not args.no_progress,
    )
    try:
        options.check()
        for path in args.input:
            if not Path(path).is_file():
                raise ValueError(f"--input {path}: no such file")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out}: exists and is not a folder")
    except ValueError as exc:
        _stderr(f"error: {exc}")
        return 2
    summary = prepare(args.input, args.out, options)
    rejects = summary.pop("rejects")
    for reject in rejects[:MAX_LOGGED_REJECTS]:
        _stderr(f"REJECT {reject}")
    if len(rejects) > MAX_LOGGED_REJECTS:
        _stderr(f"... {len(rejects) - MAX_LOGGED_REJECTS} more rejects")
    if rejects:
        _stderr(f"warning: {len(rejects)} rows rejected; see {Path(args.out) / 'rejects.jsonl'}")
    print(format_summary(summary))
    for problem in summary["fatal"]:
        _stderr(f"error: {problem}")
    if summary["fatal"]:
        return 1
    if summary["reject_fraction"] > options.max_reject_fraction:
        _stderr(
            f"error: rejected {100 * summary['reject_fraction']:.1f}% of the rows, "
            f"above --max-reject-fraction {100 * options.max_reject_fraction:.1f}%"
        )
        return 1
    return 0
