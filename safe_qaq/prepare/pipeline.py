"""The whole conversion, in order: read and merge records, cut each call's audio once, split, write rows.

Every row read ends up in an accepted call or in ``rejects.jsonl``; the summary counts both.
"""

from __future__ import annotations

import os
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prompt import FRAUD_LABELS, FRAUD_TYPES, SCENES, STAGES, TASKS
from safe_qaq import audio as audio_utils
from safe_qaq.calls import RowError
from safe_qaq.jsonl import write_json, write_jsonl
from safe_qaq.prepare.audio_jobs import Job, run_jobs, with_progress
from safe_qaq.prepare.merge import CallTable
from safe_qaq.prepare.options import Options
from safe_qaq.prepare.records import parse_record
from safe_qaq.prepare.rows import OUTPUT_KINDS, build_rows, call_record, split_calls
from safe_qaq.prepare.sources import Reject, iter_input_rows, snippet


def prepare(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, options: Options | None = None) -> dict:
    """Run the whole conversion; returns the summary (also written to ``out/summary.json``)."""
    options = options or Options()
    options.check()
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rejects: list[Reject] = []
    fatal: list[str] = []
    table = CallTable()
    n_records = 0
    input_stats = []

    # 1. Read and merge records (cheap; no audio yet).
    for raw_path in inputs:
        path = Path(raw_path)
        kinds: Counter[str] = Counter()
        for origin, obj, error in iter_input_rows(path):
            n_records += 1
            if error is not None:
                if origin.row == 0:
                    fatal.append(f"{path}: {error}")
                rejects.append(Reject(origin, error.code, str(error), raw=obj))
                kinds["malformed"] += 1
                continue
            try:
                table.add(parse_record(obj, origin, path))
                kinds["teleantifraud" if "prompt" in obj else "metadata"] += 1  # once added: a row counts once
            except RowError as exc:
                kinds["rejected"] += 1
                audio = obj.get("audio") if isinstance(obj, dict) and isinstance(obj.get("audio"), str) else None
                call_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
                rejects.append(Reject(origin, exc.code, str(exc), call_id=call_id, audio=audio, raw=snippet(obj)))
        if sum(kinds.values()) == 0:
            fatal.append(f"{path}: no records")
        input_stats.append({"path": str(path), "rows": dict(sorted(kinds.items()))})

    # 2. Decode, check and cut each call's audio once (in parallel).
    calls = table.calls()
    audio_root = out / "audio"
    jobs = [
        Job(
            call_id=call.call_id,
            audio=call.audio,
            segment_dir=str(audio_utils.chunk_dir(audio_root, call.call_id, call.audio)),
            declared_duration=call.duration,
            turns=tuple((t["start"], t["end"]) for t in call.turns) if call.turns else None,
            options=options,
        )
        for call in calls
    ]
    results: dict[str, dict[str, Any]] = {}
    audio_started = time.perf_counter()
    progress = with_progress(run_jobs(jobs, options.workers), total=len(jobs), enabled=options.progress, desc="audio")
    for call, result in zip(calls, progress, strict=True):
        if result["ok"]:
            results[call.call_id] = result
        else:
            for origin in call.origins:
                rejects.append(Reject(origin, result["code"], result["reason"], call_id=call.call_id, audio=call.audio))
    audio_wall = time.perf_counter() - audio_started
    accepted = [call for call in calls if call.call_id in results]

    # 3. Split by call, build and write the rows.
    split = split_calls(accepted, options.test_fraction, options.seed)
    side_of = {cid: side for side, ids in split.items() for cid in ids}
    outputs: dict[str, list[dict[str, Any]]] = {f"{k}_{s}": [] for k in OUTPUT_KINDS for s in ("train", "test")}
    call_rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for call in accepted:
        side = side_of[call.call_id]
        for kind, rows in build_rows(call, results[call.call_id], options).items():
            outputs[f"{kind}_{side}"].extend(rows)
        call_rows[side].append(call_record(call, results[call.call_id]["duration"]))
    counts = {f"{name}.jsonl": write_jsonl(out / f"{name}.jsonl", rows) for name, rows in outputs.items()}
    for side, rows in call_rows.items():
        counts[f"calls_{side}.jsonl"] = write_jsonl(out / f"calls_{side}.jsonl", rows)
    write_json(out / "split.json", split)
    write_jsonl(out / "rejects.jsonl", (r.to_json() for r in rejects))

    # 4. Summary.
    n_rejected = len(rejects)
    # Every row read is either in an accepted call or in rejects.jsonl: nothing is dropped silently.
    assert sum(len(call.origins) for call in accepted) + n_rejected == n_records, "row accounting is off"
    durations = [results[c.call_id]["duration"] for c in accepted]
    total_audio = sum(durations)
    wall = time.perf_counter() - started
    summary = {
        "inputs": input_stats,
        "records": n_records,
        "records_accepted": sum(len(call.origins) for call in accepted),
        "records_rejected": n_rejected,
        "reject_fraction": round(n_rejected / n_records, 4) if n_records else 1.0,
        "max_reject_fraction": options.max_reject_fraction,
        "rejects_by_code": dict(sorted(Counter(r.code for r in rejects).items())),
        "fatal": fatal,
        "calls": {"accepted": len(accepted), "train": len(split["train"]), "test": len(split["test"])},
        "audio": {
            "total_s": round(total_audio, 2),
            "max_s": round(max(durations), 2) if durations else 0.0,
            "mean_s": round(total_audio / len(durations), 2) if durations else 0.0,
            "long_call_policy": options.long_call,
            "chunk_s": options.chunk_seconds,
            "calls_over_chunk": sum(1 for d in durations if d > options.chunk_seconds),
            "chunked_calls": sum(1 for r in results.values() if r["chunked"]),
            "truncated_calls": sum(1 for r in results.values() if r["truncated"]),
            "segments_written": sum(r["written"] for r in results.values()),
            "segments_reused": sum(r["reused"] for r in results.values()),
        },
        "rows": counts,
        "by_task_stage": _count(outputs, ("task", "conversation_stage")),
        "by_label": _count(outputs, ("task", "answers")),
        "timing": {
            "wall_s": round(wall, 3),
            "audio_wall_s": round(audio_wall, 3),
            "workers": options.workers,
            "audio_s_per_wall_s": round(total_audio / wall, 1) if wall > 0 else None,
        },
        "options": {k: v for k, v in asdict(options).items() if k != "progress"},
    }
    write_json(out / "summary.json", summary)
    summary["rejects"] = rejects  # for the caller's report; not serialised
    return summary


# Table order: tasks, stages and labels as prompt.py lists them (task "fraud" is also a label).
_TASK_ORDER = {v: i for i, v in enumerate(TASKS)}
_VALUE_ORDER = {v: i for i, v in enumerate((*STAGES, *SCENES, *FRAUD_LABELS, *FRAUD_TYPES))}


def _order(key: tuple[str, ...]) -> tuple:
    kind, task, value = key
    return kind, _TASK_ORDER.get(task, 99), task, _VALUE_ORDER.get(value, 99), value


def _count(outputs: dict[str, list[dict[str, Any]]], keys: tuple[str, str]) -> dict[str, dict[str, int]]:
    """``{"offline|scene|complete": {"train": n, "test": n}}`` over the GRPO prompt files."""
    table: dict[tuple[str, ...], dict[str, int]] = {}
    for kind in ("offline", "realtime"):
        for side in ("train", "test"):
            for row in outputs[f"{kind}_{side}"]:
                cell = table.setdefault((kind, *(str(row[k]) for k in keys)), {"train": 0, "test": 0})
                cell[side] += 1
    ordered = sorted(table.items(), key=lambda item: _order(item[0]))
    return {"|".join(key): cell for key, cell in ordered}


def _pad(text: str, width: int) -> str:
    """Left-justify by display width: CJK characters take two terminal columns."""
    shown = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, width - shown)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as plain-text tables (what the CLI prints)."""
    lines = []
    audio = summary["audio"]
    calls = summary["calls"]
    lines.append(
        f"calls: {calls['accepted']} accepted ({calls['train']} train / {calls['test']} test); "
        f"records: {summary['records']} read, {summary['records_rejected']} rejected "
        f"({100 * summary['reject_fraction']:.1f}%, limit {100 * summary['max_reject_fraction']:.1f}%)"
    )
    lines.append(
        f"audio: {audio['total_s']:.1f} s total, max {audio['max_s']:.1f} s, mean {audio['mean_s']:.1f} s; "
        f"{audio['calls_over_chunk']} calls over {audio['chunk_s']:g} s -> {audio['chunked_calls']} chunked, "
        f"{audio['truncated_calls']} truncated (--long-call {audio['long_call_policy']}); "
        f"segments {audio['segments_written']} written, {audio['segments_reused']} reused"
    )
    if summary["rejects_by_code"]:
        lines.append("rejects: " + ", ".join(f"{k}={v}" for k, v in summary["rejects_by_code"].items()))
    lines.append("")
    lines.append(f"{'file':<28}{'rows':>7}")
    for name, n in summary["rows"].items():
        lines.append(f"{name:<28}{n:>7}")
    for title, key in (("task / stage", "by_task_stage"), ("task / gold label", "by_label")):
        lines.append("")
        lines.append(f"{'prompt rows by ' + title:<40}{'train':>7}{'test':>7}")
        for name, cell in summary[key].items():
            lines.append(f"{_pad(name.replace('|', ' / '), 40)}{cell['train']:>7}{cell['test']:>7}")
    timing = summary["timing"]
    lines.append("")
    lines.append(
        f"time: {timing['wall_s']:.2f} s wall ({timing['workers']} workers), "
        f"{timing['audio_s_per_wall_s']} s of audio per wall second"
    )
    return "\n".join(lines)
