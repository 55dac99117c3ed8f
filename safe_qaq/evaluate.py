"""Evaluate a model (or an existing predictions file) on the three tasks, TeleAntiFraud-style.

Model mode -- generate, then score::

    python -m safe_qaq.evaluate --model MODEL [--adapters CKPT ...] [--backend pt|vllm|openai]
        [--base-url http://127.0.0.1:8000/v1] --data data/prepared/offline_test.jsonl --out outputs/eval/NAME

Predictions mode -- score what is already there (ours, or any file whose records carry
``prediction`` (raw text) and ``answer`` (gold label); ``task`` / ``conversation_stage`` optional)::

    python -m safe_qaq.evaluate --predictions outputs/eval/NAME/predictions.jsonl --out outputs/eval/NAME

Writes to ``--out``: ``predictions.jsonl`` (one record per row, appended as batches finish),
``metrics.json``, ``metrics.md`` and ``confusion_<task>.png``.  Rerunning the same command
resumes an interrupted run; the data file's content, the model and the generation settings are
kept in ``predictions.jsonl.meta.json`` and a run with others is refused, naming them
(``--overwrite`` starts again; see :mod:`safe_qaq.jsonl`).  A smaller ``--limit`` scores the
predictions already there, a larger one continues.

When the data directory holds ``calls_train.jsonl`` and ``calls_test.jsonl`` (or with
``--calls-train``/``--calls-test``) the transcript floor (:mod:`safe_qaq.floor`) is scored on the
same (call, task) pairs and printed beside the model.  Those files are read before anything is
generated, so a bad one stops the run at once (``--no-floor`` skips the floor).

Per-sample latency is the wall time of the ``generate`` call that produced the sample;
with ``--batch-size 1`` that is the request latency the paper reports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prompt import question_of
from safe_qaq.answer import GoldError, resolve_stage, resolve_task
from safe_qaq.calls import Call, load_calls
from safe_qaq.engine import (
    GREEDY,
    Sampling,
    add_engine_arguments,
    engine_from_args,
    engine_identity,
    request_problem,
    sampling_from_args,
)
from safe_qaq.floor import SYSTEM as FLOOR_SYSTEM
from safe_qaq.floor import floor_samples
from safe_qaq.jsonl import (
    JsonlError,
    ResumeError,
    append_records,
    check_settings,
    file_fingerprint,
    iter_lines,
    os_error_message,
    print_error,
    read_output,
    read_rows,
    write_json,
)
from safe_qaq.metrics import Sample, markdown_table, per_class_markdown, report, sample_from_text

PREDICTIONS = "predictions.jsonl"


def prompt_of(row: dict) -> dict:
    """The generation request of a dataset row: its messages up to the last user turn, and audios."""
    return {"messages": question_of(row["messages"]), "audios": list(row.get("audios") or [])}


def row_key(row: dict) -> str:
    """Fingerprint of a row's request and gold, so a resumed run cannot mix two data files."""
    blob = json.dumps([prompt_of(row), row.get("answers")], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def _batched(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def resume_predictions(path: Path, rows: Sequence[dict]) -> dict[int, dict]:
    """Predictions already in ``path`` for ``rows``, by row index (a torn last line is cut off first).

    Records for rows past a smaller ``--limit`` stay in the file and are simply not used.  A
    record whose fingerprint is not its row's means the file holds other data: refused.
    """
    done: dict[int, dict] = {}
    for number, rec in enumerate(read_output(path), start=1):
        i = rec.get("index")
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ResumeError(f"{path}: record {number} has no row index; use another --out or --overwrite")
        if i < len(rows):
            if rec.get("key") != row_key(rows[i]):
                raise ResumeError(
                    f"{path} holds predictions for other data (row {i}); use another --out or --overwrite"
                )
            done[i] = rec
    return done


def generate_predictions(
    engine,
    rows: Sequence[dict],
    out_path: Path,
    *,
    batch_size: int = 8,
    sampling: Sampling = GREEDY,
    progress: bool = True,
    done: dict[int, dict] | None = None,
) -> list[dict]:
    """Run ``engine.generate`` over ``rows``, appending one record per row to ``out_path``.

    Rows already in ``out_path`` (``done``, read by :func:`resume_predictions` when not given)
    are skipped: rerunning the same command resumes.  Returns the records in row order.
    """
    from tqdm import tqdm

    done = dict(resume_predictions(out_path, rows) if done is None else done)
    todo = [i for i in range(len(rows)) if i not in done]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(out_path, "a", encoding="utf-8") as f,
        tqdm(total=len(rows), initial=len(done), desc="evaluate", unit="row", disable=not progress) as bar,
    ):
        for chunk in _batched(todo, batch_size):
            start = time.perf_counter()
            outputs = engine.generate([prompt_of(rows[i]) for i in chunk], n=1, **sampling.as_kwargs())
            elapsed = time.perf_counter() - start
            if len(outputs) != len(chunk):
                raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(chunk)} rows")
            batch = []
            for i, texts in zip(chunk, outputs, strict=True):
                row = rows[i]
                rec = {
                    "index": i,
                    "key": row_key(row),
                    "call_id": row.get("call_id"),
                    "task": row.get("task"),
                    "conversation_stage": row.get("conversation_stage"),
                    "answer": row.get("answers"),  # gold, under the name TeleAntiFraud's scorer reads
                    "prediction": texts[0] if texts else "",
                    "latency_s": elapsed,
                    "batch_size": len(chunk),
                    "audios": row.get("audios"),
                }
                done[i] = rec
                batch.append(rec)
            append_records(f, batch)  # a killed run loses at most the batch in flight
            bar.update(len(chunk))
    return [done[i] for i in range(len(rows))]


def prediction_problem(rec: dict[str, Any]) -> str | None:
    """Why a predictions-file record cannot be scored at all, or None (an unknown gold is a warning, later)."""
    if "prediction" not in rec:
        return "no 'prediction' (the model's raw answer text)"
    if rec["prediction"] is not None and not isinstance(rec["prediction"], str):
        return f"'prediction' must be the answer text (a string), not a {type(rec['prediction']).__name__}"
    if "answer" not in rec:
        return "no 'answer' (the gold label)"
    return None


def load_prediction_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """The scorable records of a predictions file, and one message per line that is not (file:line: why)."""
    records, problems = [], []
    for number, rec in iter_lines(path):
        problem = str(rec) if isinstance(rec, JsonlError) else prediction_problem(rec)
        if problem is None:
            records.append(rec)
        else:
            problems.append(problem if isinstance(rec, JsonlError) else f"{path}:{number}: {problem}")
    return records, problems


def score_predictions(records: Sequence[dict]) -> tuple[list[Sample], int]:
    """Samples of prediction records, and how many records were skipped for unusable gold."""
    samples, skipped = [], 0
    for rec in records:
        try:
            task = resolve_task(rec.get("answer"), rec.get("task"))
            stage = resolve_stage(rec.get("conversation_stage"))
        except GoldError as exc:
            skipped += 1
            print(f"warning: skipping record {rec.get('index', '?')}: {exc}", file=sys.stderr)
            continue
        latency = rec.get("latency_s")
        samples.append(
            sample_from_text(
                rec.get("prediction") or "",
                task,
                rec["answer"],
                stage,
                latency_s=float(latency) if isinstance(latency, (int, float)) else None,
                call_id=None if rec.get("call_id") is None else str(rec["call_id"]),
            )
        )
    return samples, skipped


def find_floor_calls(data_path: Path) -> tuple[Path, Path] | None:
    """calls_train.jsonl / calls_test.jsonl beside a prepared data file, when both exist."""
    train, test = data_path.parent / "calls_train.jsonl", data_path.parent / "calls_test.jsonl"
    return (train, test) if train.exists() and test.exists() else None


def load_floor_calls(args: argparse.Namespace) -> tuple[list[Call], list[Call]] | None:
    """The floor's train and test calls (``--calls-train``/``--calls-test``, else beside ``--data``), or None.

    Read before any generation: a bad row raises ``ValueError`` naming its file and line, so it
    costs a message, not a finished evaluation without its floor.
    """
    if args.no_floor:
        return None
    if args.calls_train and args.calls_test:
        paths = Path(args.calls_train), Path(args.calls_test)
    else:
        paths = find_floor_calls(Path(args.data)) if args.data else None
    if paths is None:
        return None
    try:
        return load_calls(paths[0]), load_calls(paths[1])
    except ValueError as exc:
        raise ValueError(f"{exc} (calls for the transcript floor; --no-floor skips it)") from None


def write_outputs(out: Path, reports: Sequence[dict], *, plots: bool = True) -> str:
    """metrics.json, metrics.md and the model's confusion PNGs; returns the Markdown text."""
    out.mkdir(parents=True, exist_ok=True)
    main_rep = reports[0]
    payload = {"model": main_rep, "baselines": list(reports[1:])}
    write_json(out / "metrics.json", payload)
    text = markdown_table(reports) + "\n\n" + "\n".join(per_class_markdown(r) for r in reports)
    (out / "metrics.md").write_text(text, encoding="utf-8")
    if plots:
        from safe_qaq.plots import confusion_png

        for task, m in main_rep["tasks"].items():
            confusion_png(m, out / f"confusion_{task}.png", title=f"{main_rep['system']} — {task}")
    return text


def evaluate(
    records: Sequence[dict],
    out: Path,
    *,
    system: str,
    floor_calls: tuple[Sequence[Call], Sequence[Call]] | None = None,
    plots: bool = True,
) -> list[dict]:
    """Score records (and the floor, trained and tested on ``floor_calls``, on the same (call, task) pairs);
    write outputs; return the reports."""
    samples, skipped = score_predictions(records)
    if not samples:
        raise ValueError("no scorable records (each needs 'prediction' and a known gold 'answer')")
    reports = [report(samples, system)]
    reports[0]["skipped_records"] = skipped
    if floor_calls:
        keep = {(s.call_id, s.task) for s in samples if s.call_id is not None}
        floor = report(floor_samples(*floor_calls, keep=keep or None), FLOOR_SYSTEM)
        if floor["tasks"]:
            reports.append(floor)
    write_outputs(out, reports, plots=plots)
    return reports


def _system_name(args) -> str:
    if args.name:
        return args.name
    if args.predictions:
        return Path(args.predictions).parent.name or "predictions"
    name = Path(args.model.rstrip("/")).name
    if args.adapters:
        name += " + " + ",".join(Path(a.rstrip("/")).name for a in args.adapters)
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m safe_qaq.evaluate",
        description="Score a model or a predictions file: weighted F1 per task, format failures, think length.",
    )
    # greedy by default: the published figures (and their latency) are greedy
    add_engine_arguments(parser, defaults=GREEDY, model_required=False)
    parser.add_argument("--predictions", help="score an existing predictions jsonl (records with prediction + answer)")
    parser.add_argument("--data", help="prompt rows jsonl (e.g. data/prepared/offline_test.jsonl)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--name", help="system name in the tables (default: from the model/adapter path)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="first N rows only (a quick look)")
    parser.add_argument("--overwrite", action="store_true", help="discard predictions already in --out")
    parser.add_argument("--calls-train", help="train calls for the transcript floor (default: beside --data)")
    parser.add_argument("--calls-test", help="test calls for the transcript floor (default: beside --data)")
    parser.add_argument("--no-floor", action="store_true", help="do not score the transcript floor")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def settings_of(args: argparse.Namespace, sampling: Sampling) -> dict[str, Any]:
    """What decides the predictions: the data's content, the model, the generation settings."""
    return {
        "tool": "safe_qaq.evaluate",
        "input": file_fingerprint(args.data),
        "engine": engine_identity(args),
        "sampling": asdict(sampling),
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.predictions):
        parser.error("give one of --model (generate, then score) or --predictions (score a file)")
    if args.model and not args.data:
        parser.error("--model needs --data")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 0):
        parser.error("--batch-size must be >= 1 and --limit >= 0")
    if bool(args.calls_train) != bool(args.calls_test):
        parser.error("--calls-train and --calls-test go together (the floor trains on one and scores the other)")
    try:
        sampling = sampling_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return _run(args, sampling)
    except (ValueError, RuntimeError) as exc:  # bad rows, a refused resume, a failed generation
        print_error(exc)
        return 1
    except OSError as exc:
        print_error(os_error_message(exc))
        return 2


def _run(args: argparse.Namespace, sampling: Sampling) -> int:
    out = Path(args.out)
    problems: list[str] = []
    floor_calls = load_floor_calls(args)
    if args.model:
        rows = [row for _, row in read_rows(args.data, request_problem)]
        rows = rows[: args.limit]
        pred_path = out / PREDICTIONS
        check_settings(pred_path, settings_of(args, sampling), overwrite=args.overwrite)
        done = resume_predictions(pred_path, rows)
        engine = None
        if len(done) < len(rows):
            try:
                engine = engine_from_args(args, max_batch_size=args.batch_size)
            except Exception as exc:  # a missing or broken model: one line, not a traceback
                raise RuntimeError(f"cannot load model {args.model!r}: {type(exc).__name__}: {exc}") from None
        try:
            records = generate_predictions(
                engine,
                rows,
                pred_path,
                batch_size=args.batch_size,
                sampling=sampling,
                progress=not args.quiet,
                done=done,
            )
        except Exception as exc:  # what finished is kept in predictions.jsonl; a rerun resumes
            raise RuntimeError(f"generation failed: {type(exc).__name__}: {exc}") from None
    else:
        records, problems = load_prediction_records(args.predictions)
        records = records[: args.limit]
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)

    reports = evaluate(records, out, system=_system_name(args), floor_calls=floor_calls, plots=not args.no_plots)
    print(markdown_table(reports))
    if len(reports) == 1 and not args.no_floor:
        print("(transcript floor not shown: pass --calls-train/--calls-test)")
    print(f"\nwrote {out}/metrics.json, metrics.md" + ("" if args.no_plots else ", confusion_*.png"))
    if problems:
        rejected = f"{len(problems)} line(s) rejected (listed above)"
        print(f"error: {args.predictions}: {rejected}; the other records were scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
