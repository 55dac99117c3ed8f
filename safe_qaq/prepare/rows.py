"""The train/test split by call and the ms-swift rows of one call (prompt rows and gold-answer SFT rows)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from prompt import COMPLETE, EARLY_STAGE, TASKS, build_messages, format_answer
from safe_qaq.calls import Call
from safe_qaq.prepare.options import Options

OUTPUT_KINDS = ("offline", "realtime", "sft", "sft_realtime")


def split_calls(calls: Sequence[Call], test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Deterministic, seeded train/test split by call, stratified by the fraud label."""
    strata: dict[str, list[str]] = {}
    for call in calls:
        strata.setdefault(call.label or "unlabelled", []).append(call.call_id)
    train, test = [], []
    for stratum in sorted(strata):
        ids = sorted(strata[stratum])
        random.Random(f"{seed}:{stratum}").shuffle(ids)
        n_test = round(len(ids) * test_fraction)
        if len(ids) >= 2 and 0.0 < test_fraction < 1.0:
            n_test = min(max(n_test, 1), len(ids) - 1)  # both sides see every stratum
        test += ids[:n_test]
        train += ids[n_test:]
    return {"train": sorted(train), "test": sorted(test)}


def _row(messages, audios, gold, stage, task, call_id, extra=None) -> dict[str, Any]:
    row = {
        "messages": messages,
        "audios": list(audios),
        "answers": gold,
        "conversation_stage": stage,
        "task": task,
        "call_id": call_id,
    }
    if extra:
        row.update(extra)
    return row


def build_rows(call: Call, result: dict[str, Any], options: Options) -> dict[str, list[dict[str, Any]]]:
    """All output rows of one call, keyed by kind (offline / realtime / sft / sft_realtime)."""
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in OUTPUT_KINDS}
    tasks = [t for t in TASKS if call.gold(t) is not None]

    audios = result["offline_audios"]
    history: list[tuple[str, str]] = []
    for task in tasks:
        gold = call.gold(task)
        answer = call.references.get(task) or format_answer(task, gold)
        messages = build_messages(task, mode="offline", n_audios=len(audios), history=history)
        rows["offline"].append(_row(messages, audios, gold, COMPLETE, task, call.call_id))
        messages = build_messages(task, mode="offline", n_audios=len(audios), history=history, answer=answer)
        rows["sft"].append(_row(messages, audios, gold, COMPLETE, task, call.call_id))
        history.append((task, answer))

    duration = round(result["duration"], 3)
    for prefix in result["prefixes"]:
        stage, audios = prefix["stage"], prefix["audios"]
        extra = {"prefix_end_s": prefix["end_s"], "call_duration_s": duration}
        history, sft_history = [], []
        for task in tasks:
            gold = call.gold(task)
            carried = format_answer(task, gold, mode="realtime", stage=stage)
            messages = build_messages(task, mode="realtime", n_audios=len(audios), history=history)
            rows["realtime"].append(_row(messages, audios, gold, stage, task, call.call_id, extra))
            # SFT target: at early_stage the "not enough audio yet" answer unless --early-sft-answer gold.
            target_label = None if stage == EARLY_STAGE and options.early_sft_answer == "null" else gold
            target = format_answer(task, target_label, mode="realtime", stage=stage)
            messages = build_messages(task, mode="realtime", n_audios=len(audios), history=sft_history, answer=target)
            rows["sft_realtime"].append(_row(messages, audios, gold, stage, task, call.call_id, extra))
            history.append((task, carried))
            sft_history.append((task, target))
    return rows


def call_record(call: Call, duration: float) -> dict[str, Any]:
    """The accepted call in our metadata format (absolute audio path, decoded duration)."""
    return {**call.to_json(), "duration": round(duration, 3)}
