"""The one reader of ms-swift training logs (``logging.jsonl``) and the one definition of "the metric moved".

Read by the plots, the demo's moves table, the toy report, the warm start and the GPU report.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from safe_qaq.jsonl import JsonlError, iter_lines

#: "Moved" compares the mean of the first part of a run's logged steps with the mean of the last part.
PART = 1 / 3


def read_log(path: str | Path) -> list[dict]:
    """The per-step records of an ms-swift ``logging.jsonl``, each with ``step`` added.

    Keeps lines that carry ``global_step/max_steps`` (every training/eval log does) and skips the final summary
    line. Lines are decoded one by one (:mod:`safe_qaq.jsonl`): a last line cut short by a run that is still
    writing, or was killed, even inside a multibyte character, is skipped; any other bad line is skipped with a
    warning naming it.
    """
    records = []
    unread: JsonlError | None = None
    for _, rec in iter_lines(path):
        if unread is not None:  # not the last line, so not a line still being written
            print(f"warning: skipped {unread}", file=sys.stderr)
            unread = None
        if isinstance(rec, JsonlError):
            unread = rec
            continue
        if "global_step/max_steps" not in rec:
            continue
        try:
            rec["step"] = int(str(rec["global_step/max_steps"]).split("/")[0])
        except ValueError:
            continue
        records.append(rec)
    return records


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the records that hold a finite number for it."""
    xs, ys = [], []
    for rec in records:
        value = rec.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(rec["step"])
            ys.append(float(value))
    return xs, ys


def moved(values: Sequence[float], part: float = PART) -> tuple[float, float]:
    """Mean of the first and of the last ``part`` of the values (at least one each).

    >>> moved([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    (1.5, 5.5)
    """
    if not values:
        raise ValueError("no values")
    k = max(1, int(len(values) * part))
    return sum(values[:k]) / k, sum(values[-k:]) / k


def reward_spread(records: Sequence[dict]) -> float | None:
    """The fraction of GRPO steps whose rewards differed within a group (``reward_std`` > 0): 0 means no advantage."""
    spread = [r["reward_std"] > 0 for r in records if isinstance(r.get("reward_std"), (int, float))]
    return sum(spread) / len(spread) if spread else None


def stage_moves(output_root: str | Path, settings=None) -> list[dict]:
    """Each training stage's target metrics (the stage registry) over the first and last part of its steps."""
    from safe_qaq import recipe, rewards, stages

    settings = settings or recipe.load()
    rows = []
    for st in stages.TRAINING:
        log = Path(output_root) / st.run_dir / "logging.jsonl"
        if not log.exists():
            continue
        records = read_log(log)
        for metric in st.targets:
            key = metric.key
            if metric.reward:
                name = next((n for n in settings.rewards(st.key) if n.startswith(metric.reward)), None)
                key = rewards.log_key(name) if name in rewards.REWARDS else None
            values = series(records, key)[1] if key else []
            if not values:
                continue
            first, last = moved(values)
            rows.append({"stage": st.title, "metric": metric.label, "key": key, "steps": len(values),
                         "first": first, "last": last, "steps_with_reward_spread": reward_spread(records)})  # fmt: skip
    return rows


def moves_table(rows: Sequence[dict]) -> str:
    lines = [f"| stage | metric (from the training log) | first {PART:.0%} of steps | last {PART:.0%} | steps | "
             "reward std > 0 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        spread = "–" if r["steps_with_reward_spread"] is None else f"{100 * r['steps_with_reward_spread']:.0f} %"
        lines.append(f"| {r['stage']} | {r['metric']} | {r['first']:.3f} | {r['last']:.3f} | {r['steps']} | {spread} |")
    return "\n".join(lines)
