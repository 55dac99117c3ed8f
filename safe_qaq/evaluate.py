"""Evaluate a model (or an existing predictions file) on the three tasks, TeleAntiFraud-style.

Model mode -- generate, then score::

    python -m safe_qaq.evaluate --model MODEL [--adapters CKPT ...] [--backend pt|vllm|openai]
        [--base-url http://127.0.0.1:8000/v1] --data data/prepared/offline_test.jsonl --out outputs/eval/NAME

Predictions mode -- score what is already there (ours, or any file whose records carry
``prediction`` (raw text) and ``answer`` (gold label); ``task`` / ``conversation_stage`` optional)::

    python -m safe_qaq.evaluate --predictions outputs/eval/NAME/predictions.jsonl --out outputs/eval/NAME

Writes to ``--out``: ``predictions.jsonl`` (one record per row, appended as batches finish,
so an interrupted run resumes where it stopped), ``metrics.json``, ``metrics.md`` and
``confusion_<task>.png``.  When the data directory holds ``calls_train.jsonl`` and
``calls_test.jsonl`` the transcript floor (:mod:`safe_qaq.floor`) is scored on the same
(call, task) pairs and printed beside the model.

Per-sample latency is the wall time of the ``generate`` call that produced the sample;
with ``--batch-size 1`` that is the request latency the paper reports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from prompt import question_of
from safe_qaq.answer import GoldError, resolve_stage, resolve_task
from safe_qaq.floor import floor_report
from safe_qaq.jsonl import dumps, read_jsonl
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


def load_predictions(path: Path) -> list[dict]:
    """Records of a predictions file; a truncated last line (killed mid-write) is dropped and the file repaired."""
    if not path.exists():
        return []
    records, bad = [], 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            bad += 1
    if bad:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(dumps(r) for r in records), encoding="utf-8")
        os.replace(tmp, path)
    return records


def generate_predictions(
    engine,
    rows: Sequence[dict],
    out_path: Path,
    *,
    batch_size: int = 8,
    max_tokens: int = 1024,
    temperature: float = 0.0,
    seed: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run ``engine.generate`` over ``rows``, appending one record per row to ``out_path``.

    Rows already in ``out_path`` (same index and fingerprint) are skipped: rerunning the
    same command resumes.  Returns the records in row order.
    """
    from tqdm import tqdm

    done: dict[int, dict] = {}
    for rec in load_predictions(out_path):
        i = rec.get("index")
        if not isinstance(i, int) or i >= len(rows) or rec.get("key") != row_key(rows[i]):
            raise ValueError(f"{out_path} holds predictions for other data (row {i}); use another --out or --overwrite")
        done[i] = rec
    todo = [i for i in range(len(rows)) if i not in done]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(out_path, "a", encoding="utf-8") as f,
        tqdm(total=len(rows), initial=len(done), desc="evaluate", unit="row", disable=not progress) as bar,
    ):
        for chunk in _batched(todo, batch_size):
            start = time.perf_counter()
            outputs = engine.generate(
                [prompt_of(rows[i]) for i in chunk], n=1, temperature=temperature, max_tokens=max_tokens, seed=seed
            )
            elapsed = time.perf_counter() - start
            if len(outputs) != len(chunk):
                raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(chunk)} rows")
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
                f.write(dumps(rec))
            f.flush()  # a killed run loses at most the batch in flight
            bar.update(len(chunk))
    return [done[i] for i in range(len(rows))]


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


def write_outputs(out: Path, reports: Sequence[dict], *, plots: bool = True) -> str:
    """metrics.json, metrics.md and the model's confusion PNGs; returns the Markdown text."""
    out.mkdir(parents=True, exist_ok=True)
    main_rep = reports[0]
    payload = {"model": main_rep, "baselines": list(reports[1:])}
    (out / "metrics.json").write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
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
    floor_calls: tuple[Path, Path] | None = None,
    plots: bool = True,
) -> list[dict]:
    """Score records (and the floor on the same (call, task) pairs); write outputs; return the reports."""
    samples, skipped = score_predictions(records)
    if not samples:
        raise ValueError("no scorable records (each needs 'prediction' and a known gold 'answer')")
    reports = [report(samples, system)]
    reports[0]["skipped_records"] = skipped
    if floor_calls:
        keep = {(s.call_id, s.task) for s in samples if s.call_id is not None}
        try:
            floor = floor_report(*floor_calls, keep=keep or None)
        except (OSError, ValueError) as exc:
            print(f"warning: transcript floor not scored: {exc}", file=sys.stderr)
        else:
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
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="base model path/id (generate predictions)")
    src.add_argument("--predictions", help="score an existing predictions jsonl (records with prediction + answer)")
    parser.add_argument("--adapters", nargs="*", default=None, help="LoRA adapter checkpoint(s)")
    parser.add_argument("--backend", choices=("pt", "vllm", "openai"), default="pt")
    parser.add_argument(
        "--base-url", help="OpenAI-compatible endpoint for --backend openai (swift deploy / vllm serve)"
    )
    parser.add_argument("--data", help="prompt rows jsonl (e.g. data/prepared/offline_test.jsonl)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--name", help="system name in the tables (default: from the model/adapter path)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the published latency)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N rows only (a quick look)")
    parser.add_argument("--overwrite", action="store_true", help="discard predictions already in --out")
    parser.add_argument("--calls-train", help="train calls for the transcript floor (default: beside --data)")
    parser.add_argument("--calls-test", help="test calls for the transcript floor (default: beside --data)")
    parser.add_argument("--no-floor", action="store_true", help="do not score the transcript floor")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.model and not args.data:
        print("error: --model needs --data", file=sys.stderr)
        return 2
    if args.model:
        rows = read_jsonl(args.data)[: args.limit]
        pred_path = out / PREDICTIONS
        if args.overwrite and pred_path.exists():
            pred_path.unlink()
        from safe_qaq.engine import make_engine

        engine = make_engine(
            args.model,
            adapters=args.adapters,
            backend=args.backend,
            base_url=args.base_url,
            max_batch_size=args.batch_size,
        )
        records = generate_predictions(
            engine,
            rows,
            pred_path,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed,
            progress=not args.quiet,
        )
    else:
        records = read_jsonl(args.predictions)[: args.limit]

    floor_calls = None
    if not args.no_floor:
        if args.calls_train and args.calls_test:
            floor_calls = (Path(args.calls_train), Path(args.calls_test))
        elif args.data:
            floor_calls = find_floor_calls(Path(args.data))
    try:
        reports = evaluate(records, out, system=_system_name(args), floor_calls=floor_calls, plots=not args.no_plots)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(markdown_table(reports))
    if len(reports) == 1 and not args.no_floor:
        print("(transcript floor not shown: pass --calls-train/--calls-test)")
    print(f"\nwrote {out}/metrics.json, metrics.md" + ("" if args.no_plots else ", confusion_*.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
