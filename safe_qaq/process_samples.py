"""Rejection sampling, step 2: keep, per prompt, the shortest correct completion (one streaming pass).

    python -m safe_qaq.process_samples outputs/samples/samples.jsonl [more shards ...] \\
        --output outputs/samples/rsft.jsonl --unsolved outputs/samples/unsolved.jsonl

"Correct" is :attr:`safe_qaq.answer.Verdict.is_correct` -- the very notion the
``adaptive_classification`` reward pays +5 for -- read by the shared parser.  By default a kept
completion must also have its tags in order (``<think>…</think><answer>…</answer>``), so RSFT
never teaches a broken format; ``--allow-malformed`` drops that requirement.
"Shortest" is the think-length estimate ``t`` the length rewards use, then the completion's
character length, then the earliest sample.

Outputs: an ms-swift SFT jsonl (the prompt's messages + the chosen completion as the final
assistant turn, ``audios`` and the gold columns) and a file of prompts with no correct
completion (the prompt row, unchanged).  Memory does not grow with the number of
completions: the input is read once, group by group (``sample.py`` writes each prompt's
completions together); only the set of seen (prompt_index, prompt_id) pairs is kept, to catch
overlapping shards.

Checks: every group has N completions (``--n``, else the N in each input's ``.meta.json``,
which ``sample.py`` writes), so an unfinished sampling run is reported rather than used; the
outputs may not alias an input or each other; an empty input is warned about, and no
completions at all is an error.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prompt import question_of
from safe_qaq.answer import GoldError, judge, parse_answer, resolve_stage, resolve_task
from safe_qaq.jsonl import JsonlError, atomic_file, dumps, iter_jsonl, os_error_message, print_error, write_json
from safe_qaq.sample import read_n

SAMPLE_COLUMNS = ("prompt_index", "prompt_id", "sample_index", "completion")


@dataclass
class TaskStats:
    prompts: int = 0
    solved: int = 0
    completions: int = 0
    correct: int = 0
    think_all: float = 0.0  # sum of think lengths over all completions
    think_kept: float = 0.0  # sum over the kept ones

    def row(self, task: str) -> str:
        mean_all = self.think_all / self.completions if self.completions else 0.0
        mean_kept = self.think_kept / self.solved if self.solved else 0.0
        return (
            f"| {task} | {self.prompts} | {self.solved} | {self.prompts - self.solved} | "
            f"{self.correct}/{self.completions} | {mean_all:.1f} | {mean_kept:.1f} |"
        )


@dataclass
class Report:
    tasks: dict[str, TaskStats] = field(default_factory=lambda: defaultdict(TaskStats))
    lines: int = 0
    seconds: float = 0.0

    def table(self) -> str:
        header = (
            "| task | prompts | kept | unsolved | correct/completions | mean think t (all) | mean think t (kept) |\n"
            "|---|---|---|---|---|---|---|"
        )
        total = TaskStats()
        for stats in self.tasks.values():
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
        rows = [self.tasks[task].row(task) for task in sorted(self.tasks)] + [total.row("all")]
        return "\n".join([header, *rows])

    def stats(self) -> dict[str, Any]:
        """The table as numbers (``--stats``): prompts, kept, unsolved and mean think lengths, in all and per task."""

        def numbers(t: TaskStats) -> dict[str, Any]:
            return {
                "prompts": t.prompts,
                "kept": t.solved,
                "unsolved": t.prompts - t.solved,
                "correct_completions": t.correct,
                "completions": t.completions,
                "think_mean_all": t.think_all / t.completions if t.completions else None,
                "think_mean_kept": t.think_kept / t.solved if t.solved else None,
            }

        total = TaskStats()
        for stats in self.tasks.values():
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
        return {**numbers(total), "tasks": {task: numbers(self.tasks[task]) for task in sorted(self.tasks)}}


def _key(record: dict[str, Any]) -> tuple[Any, Any]:
    # The position tells duplicated prompts apart; the content hash tells different inputs apart.
    return record["prompt_index"], record["prompt_id"]


def _records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        yield from iter_jsonl(path)
    except JsonlError as exc:
        raise JsonlError(f"{exc} (if sample.py was interrupted, rerun it to finish and repair the file)") from None


def _groups(paths: list[str]) -> Iterator[tuple[str, int, list[tuple[int, dict[str, Any]]]]]:
    """Yield (file, first line, records) per prompt group; groups are contiguous runs of one prompt_id."""
    for path in paths:
        current: list[tuple[int, dict[str, Any]]] = []
        empty = True
        for number, record in _records(path):
            empty = False
            missing = [c for c in SAMPLE_COLUMNS if c not in record]
            if missing:
                raise ValueError(f"{path}:{number}: not a sample.py line (missing {', '.join(missing)})")
            if current and _key(record) != _key(current[0][1]):
                yield path, current[0][0], current
                current = []
            current.append((number, record))
        if current:
            yield path, current[0][0], current
        if empty:
            print(f"warning: {path}: no completions (an empty sampling shard?)", file=sys.stderr)


def _select(group: list[tuple[int, dict[str, Any]]], task: str, stage: str, require_format: bool, stats: TaskStats):
    """The chosen record of a group (or None), updating the task's statistics."""
    gold = group[0][1]["answers"]
    best, best_key = None, None
    for number, record in group:
        parsed = parse_answer(record["completion"] if isinstance(record["completion"], str) else "")
        stats.completions += 1
        stats.think_all += parsed.think_tokens
        if not judge(parsed, task, gold, stage).is_correct:
            continue
        stats.correct += 1
        if require_format and not parsed.tags_ok:
            continue
        key = (parsed.think_tokens, len(record["completion"]), record["sample_index"], number)
        if best_key is None or key < best_key:
            best, best_key = record, key
    stats.prompts += 1
    if best is not None:
        stats.solved += 1
        stats.think_kept += best_key[0]
    return best


def _prompt_row(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in SAMPLE_COLUMNS}


def process(
    paths: list[str], output: str, unsolved: str, *, require_format: bool = True, n: int | None = None
) -> Report:
    """Filter ``paths`` into ``output`` / ``unsolved``.  ``n``: completions per prompt (None: each file's meta)."""
    sizes = {path: n if n is not None else read_n(path) for path in paths}
    report = Report()
    start = time.perf_counter()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(unsolved).parent.mkdir(parents=True, exist_ok=True)
    # Written beside the targets and renamed at the end: a failed run leaves no half file that looks valid.
    with atomic_file(output) as kept, atomic_file(unsolved) as missed:
        _write(paths, kept, missed, require_format, report, sizes)
    report.seconds = time.perf_counter() - start
    return report


def _write(
    paths: list[str], kept: IO[str], missed: IO[str], require_format: bool, report: Report, sizes: dict[str, int | None]
) -> None:
    seen: set[tuple[Any, Any]] = set()
    for path, line, group in _groups(paths):
        key = _key(group[0][1])
        where = f"{path}:{line}"
        if key in seen:
            raise ValueError(f"{where}: prompt {key} appears in two places (overlapping shards or a rerun?)")
        n = sizes[path]
        if n is not None and len(group) != n:
            raise ValueError(
                f"{where}: prompt {key[0]} has {len(group)} completions, not {n} "
                "(an unfinished sample.py run? rerun it to finish; or pass the right --n)"
            )
        seen.add(key)
        report.lines += len(group)
        first = group[0][1]
        try:
            task = resolve_task(first.get("answers"), first.get("task"))
            stage = resolve_stage(first.get("conversation_stage"))
        except GoldError as exc:
            raise ValueError(f"{where}: {exc}") from None
        chosen = _select(group, task, stage, require_format, report.tasks[task])
        if chosen is None:
            missed.write(dumps(_prompt_row(first)))
            continue
        row = _prompt_row(chosen)
        # a row sampled from an SFT row gets the kept completion in place of its answer
        row["messages"] = [*question_of(chosen["messages"]), {"role": "assistant", "content": chosen["completion"]}]
        kept.write(dumps(row))
    if report.lines == 0:  # raised before the outputs are replaced: an earlier result stays
        raise ValueError(f"no completions in {', '.join(paths)}; nothing written")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() or os.path.samefile(a, b)
    except OSError:  # b does not exist (yet)
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Keep the shortest correct completion per prompt.")
    parser.add_argument("samples", nargs="+", help="sample.py output file(s)")
    parser.add_argument("--output", required=True, help="ms-swift SFT jsonl of kept completions")
    parser.add_argument("--unsolved", required=True, help="prompts with no correct completion")
    parser.add_argument(
        "--allow-malformed", action="store_true", help="keep correct completions even without <think>/<answer> tags"
    )
    parser.add_argument(
        "--n", type=int, help="completions every prompt must have (default: each input's N from its .meta.json)"
    )
    parser.add_argument("--stats", help="also write the table's numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.n is not None and args.n < 1:
        parser.error("--n must be >= 1")
    for path in args.samples:
        if not Path(path).is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    if _same_file(args.output, args.unsolved):
        print(f"error: --output and --unsolved are the same file ({args.output})", file=sys.stderr)
        return 2
    for name, target in (("--output", args.output), ("--unsolved", args.unsolved)):
        clash = next((path for path in args.samples if _same_file(path, target)), None)
        if clash is not None:
            print(f"error: {name} {target} is an input; it would overwrite the samples", file=sys.stderr)
            return 2
    try:
        report = process(args.samples, args.output, args.unsolved, require_format=not args.allow_malformed, n=args.n)
    except ValueError as exc:
        print_error(exc)
        return 2
    except OSError as exc:
        print_error(os_error_message(exc))
        return 2
    print(report.table())
    if args.stats:
        write_json(args.stats, report.stats(), indent=1)
    rate = report.lines / report.seconds if report.seconds else float("inf")
    print(f"{report.lines} completions in {report.seconds:.1f} s ({rate:,.0f}/s); peak RSS {peak_rss_mb():.0f} MB")
    print(f"kept -> {args.output}\nunsolved -> {args.unsolved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
