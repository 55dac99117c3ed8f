"""Metric tables for the three tasks, TeleAntiFraud-compatible (docs/method.md#evaluation).

Every system -- the audio model, the transcript floor, the live-call decisions -- is
reduced to a list of :class:`Sample` (gold label, predicted label or None, correctness)
and scored by :func:`task_metrics` with scikit-learn.  Per task:

* ``accuracy`` -- the shared notion of correctness (:func:`safe_qaq.answer.judge`); an
  answer without a usable label is wrong, never mapped to a label;
* ``weighted_f1`` (headline), ``macro_f1``, ``micro_f1`` and per-class precision/recall/F1
  over the task's label set.  Answers without a usable label fall in the extra column
  :data:`NO_LABEL`: they lower the recall of their gold class and count for no class's
  precision (so micro F1 differs from accuracy when there are such answers);
* ``format_failure_rate`` -- answers whose JSON is not valid for the task's schema
  (the format reward's second half), and ``no_label_rate`` -- answers scored without a label;
* think length (the reference's token estimate) mean/median, latency p50/p95;
* ``lenient`` -- for systems that answer in text, the same label scores under the lenient
  reading (:func:`lenient_label`, docs/method.md#lenient-reading), which rescues a label from
  a messy answer the way TeleAntiFraud's own scorer is lenient.  The strict figures above are
  the project's; the lenient ones are there to compare with published tables.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from prompt import COMPLETE, FRAUD, NORMAL, STAGES, TASK_LABELS, TASKS
from safe_qaq.answer import MISSING, Verdict, judge, parse_answer

#: Confusion-matrix column (and predicted-distribution key) of answers without a usable label.
NO_LABEL = "(no label)"


@dataclass(frozen=True)
class Sample:
    """One scored answer of one task."""

    task: str
    gold: str
    pred: str | None  # predicted gold-label string; None when the answer gives no usable label
    correct: bool
    outcome: str  # a Verdict value, or 'correct'/'wrong'/'undecided' for non-LLM systems
    format_ok: bool | None = None  # None: the system outputs labels, not text (floor, live decision)
    think_tokens: float | None = None  # None: the system does not think (floor, direct mode)
    has_think: bool | None = None
    latency_s: float | None = None
    gold_stage: str = COMPLETE
    pred_stage: str | None = None  # only for answers that carry conversation_stage
    call_id: str | None = None
    # Under the lenient reading (docs/method.md#lenient-reading); None for systems without text.
    lenient_pred: str | None = None
    lenient_correct: bool | None = None


# ---------------------------------------------------------------------------
# The lenient reading: what a scorer that hunts for labels in messy text would say
# ---------------------------------------------------------------------------

#: Words the lenient reading takes as a fraud answer, and what each means.
LENIENT_FRAUD_WORDS: dict[str, str] = {"true": FRAUD, FRAUD: FRAUD, "false": NORMAL, NORMAL: NORMAL}
# Whole ASCII words only, so the key "is_fraud" or a word like "fraudster" never counts.
_FRAUD_WORD = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(LENIENT_FRAUD_WORDS) + r")(?![A-Za-z0-9_])", re.IGNORECASE)
# No label of a task is a substring of another, so the leftmost match is unambiguous.
_LABEL_STRING = {task: re.compile("|".join(map(re.escape, TASK_LABELS[task]))) for task in ("scene", "fraud_type")}


def _first_label_in(text: str, task: str) -> str | None:
    if task == "fraud":
        match = _FRAUD_WORD.search(text)
        return LENIENT_FRAUD_WORDS[match.group(1).lower()] if match else None
    match = _LABEL_STRING[task].search(text)
    return match.group(0) if match else None


#: Where the lenient reading is written down (metrics.json and metrics.md point there).
LENIENT_RULES = "docs/method.md#lenient-reading"


def lenient_label(text: str, task: str) -> str | None:
    """The label of an answer under the lenient reading (docs/method.md#lenient-reading).

    1. the strict label (:meth:`ParsedAnswer.prediction`, the one parser) when there is one;
    2. else the first label found as a substring of the answer block, then of the whole text
       (for fraud: the first whole word ``true``/``fraud`` -> fraud, ``false``/``normal`` ->
       normal, any case);
    3. else ``normal`` for the fraud task, no label (None) for scene and fraud type.

    >>> lenient_label('<answer>is_fraud: TRUE</answer>', "fraud")
    'fraud'
    >>> lenient_label("no idea", "fraud")
    'normal'
    >>> lenient_label("<think>订餐服务?</think><answer>外卖服务</answer>", "scene")
    '外卖服务'
    """
    text = text if isinstance(text, str) else ""
    parsed = parse_answer(text)
    strict = parsed.prediction(task)
    if strict is not None:
        return strict
    for where in (parsed.answer_block, text):
        found = _first_label_in(where, task) if where else None
        if found is not None:
            return found
    return NORMAL if task == "fraud" else None


def sample_from_text(
    text: str,
    task: str,
    gold: str,
    gold_stage: str = COMPLETE,
    *,
    latency_s: float | None = None,
    call_id: str | None = None,
) -> Sample:
    """Score one raw completion with the shared parser and the shared notion of correctness."""
    parsed = parse_answer(text)
    verdict = judge(parsed, task, gold, gold_stage)
    stage = parsed.stage()
    pred = parsed.prediction(task)
    # An answer the strict reading accepts (an explicit null at early_stage included) stands as it is.
    lenient_pred = pred if verdict.is_correct else lenient_label(text, task)
    return Sample(
        task=task,
        gold=gold,
        pred=pred,
        correct=verdict.is_correct,
        outcome=verdict.value,
        format_ok=parsed.schema_error(task) is None,
        think_tokens=parsed.think_tokens,
        has_think=parsed.think is not None,
        latency_s=latency_s,
        gold_stage=gold_stage,
        pred_stage=None if stage is MISSING else str(stage),
        call_id=call_id,
        lenient_pred=lenient_pred,
        lenient_correct=verdict.is_correct or lenient_pred == gold,
    )


def sample_from_label(
    task: str, gold: str, pred: str | None, *, latency_s: float | None = None, call_id: str | None = None
) -> Sample:
    """Score a system that outputs a label directly (the floor, a live-call decision)."""
    outcome = "undecided" if pred is None else (Verdict.CORRECT if pred == gold else Verdict.WRONG).value
    return Sample(
        task=task, gold=gold, pred=pred, correct=pred == gold, outcome=outcome, latency_s=latency_s, call_id=call_id
    )


def _rate(flags: Iterable[bool]) -> float | None:
    flags = list(flags)
    return float(np.mean(flags)) if flags else None


def _stats(values: Sequence[float], percentiles: Sequence[int]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    out = {"mean": float(arr.mean())}
    out.update({f"p{q}": float(np.percentile(arr, q)) for q in percentiles})
    return out


def _label_scores(task: str, y_true: Sequence[str], predicted: Sequence[str | None]) -> dict:
    """F1 (weighted / macro / micro), per-class scores and the confusion matrix of one task's labels."""
    y_pred = [p if p is not None else NO_LABEL for p in predicted]
    # The task's labels in their canonical order, restricted to those that occur, so that an
    # absent class does not drag macro F1 down with a meaningless 0.
    seen = set(y_true) | set(y_pred)
    labels = [label for label in TASK_LABELS[task] if label in seen]
    f1 = {
        avg: float(f1_score(y_true, y_pred, labels=labels, average=avg, zero_division=0))
        for avg in ("weighted", "macro", "micro")
    }
    precision, recall, f1_each, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    columns = [*labels, NO_LABEL]
    matrix = confusion_matrix(y_true, y_pred, labels=columns)[: len(labels)]  # no gold row for NO_LABEL
    return {
        "label_accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": f1["weighted"],
        "macro_f1": f1["macro"],
        "micro_f1": f1["micro"],
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for label, p, r, f, n in zip(labels, precision, recall, f1_each, support, strict=True)
        },
        "pred_distribution": dict(Counter(y_pred).most_common()),
        "confusion": {"rows": labels, "columns": columns, "matrix": matrix.tolist()},
    }


def task_metrics(samples: Sequence[Sample]) -> dict:
    """All metrics of one task's samples (they must share a task)."""
    tasks = {s.task for s in samples}
    if len(tasks) != 1:
        raise ValueError(f"task_metrics needs samples of exactly one task, got {sorted(tasks)}")
    task = tasks.pop()
    y_true = [s.gold for s in samples]
    scores = _label_scores(task, y_true, [s.pred for s in samples])
    result: dict = {
        "task": task,
        "n": len(samples),
        "accuracy": _rate(s.correct for s in samples),
        # sklearn's exact-match accuracy over labels; equals `accuracy` except for real-time
        # rows, where an explicit null at early_stage is correct (docs/method.md#correctness)
        "label_accuracy": scores["label_accuracy"],
        "weighted_f1": scores["weighted_f1"],
        "macro_f1": scores["macro_f1"],
        "micro_f1": scores["micro_f1"],
        "format_failure_rate": _rate(not s.format_ok for s in samples if s.format_ok is not None),
        "no_label_rate": _rate(s.pred is None for s in samples),
        "per_class": scores["per_class"],
        "gold_distribution": dict(Counter(y_true).most_common()),
        "pred_distribution": scores["pred_distribution"],
        "outcomes": dict(Counter(s.outcome for s in samples).most_common()),
        "confusion": scores["confusion"],
    }
    if all(s.lenient_correct is not None for s in samples):
        lenient = _label_scores(task, y_true, [s.lenient_pred for s in samples])
        result["lenient"] = {
            "accuracy": _rate(bool(s.lenient_correct) for s in samples),
            "weighted_f1": lenient["weighted_f1"],
            "macro_f1": lenient["macro_f1"],
            "micro_f1": lenient["micro_f1"],
            "no_label_rate": _rate(s.lenient_pred is None for s in samples),
            # answers with no label under the strict reading that the lenient one gives a label
            "rescued_rate": _rate(s.pred is None and s.lenient_pred is not None for s in samples),
            "pred_distribution": lenient["pred_distribution"],
            "confusion": lenient["confusion"],
        }
    thinks = [s.think_tokens for s in samples if s.think_tokens is not None]
    if thinks:
        result["think_tokens"] = {
            "mean": float(np.mean(thinks)),
            "median": float(np.median(thinks)),
            "missing_rate": _rate(not s.has_think for s in samples),
        }
    latency = _stats([s.latency_s for s in samples if s.latency_s is not None], (50, 95))
    if latency:
        result["latency_s"] = latency
    staged = [s for s in samples if s.pred_stage is not None or s.gold_stage != COMPLETE]
    if staged:
        result["stage_accuracy"] = _rate(s.pred_stage == s.gold_stage for s in staged)
        result["accuracy_by_gold_stage"] = {
            stage: _rate(s.correct for s in staged if s.gold_stage == stage)
            for stage in STAGES
            if any(s.gold_stage == stage for s in staged)
        }
    return result


def report(samples: Sequence[Sample], system: str) -> dict:
    """Metrics of every task present, and the average weighted F1 (the paper's 'avg')."""
    by_task = {task: [s for s in samples if s.task == task] for task in TASKS}
    tasks = {task: task_metrics(group) for task, group in by_task.items() if group}
    weighted = [m["weighted_f1"] for m in tasks.values()]
    rep = {
        "system": system,
        "n": len(samples),
        "tasks": tasks,
        "avg_weighted_f1": float(np.mean(weighted)) if weighted else None,
    }
    if tasks and all("lenient" in m for m in tasks.values()):
        rep["lenient_avg_weighted_f1"] = float(np.mean([m["lenient"]["weighted_f1"] for m in tasks.values()]))
        rep["lenient_rules"] = LENIENT_RULES
    return rep


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def markdown_table(reports: Sequence[dict]) -> str:
    """One row per (system, task): the headline numbers, side by side (percentages)."""
    head = (
        "| system | task | n | acc | weighted F1 | macro F1 | micro F1 | format fail | no label "
        "| think mean / median | latency p50 / p95 (s) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for rep in reports:
        for task, m in rep["tasks"].items():
            think = m.get("think_tokens")
            lat = m.get("latency_s")
            lines.append(
                "| "
                + " | ".join(
                    [
                        rep["system"],
                        task,
                        str(m["n"]),
                        _pct(m["accuracy"]),
                        f"**{_pct(m['weighted_f1'])}**",
                        _pct(m["macro_f1"]),
                        _pct(m["micro_f1"]),
                        _pct(m["format_failure_rate"]),
                        _pct(m["no_label_rate"]),
                        f"{_num(think['mean'])} / {_num(think['median'])}" if think else "–",
                        f"{_num(lat['p50'], '{:.3f}')} / {_num(lat['p95'], '{:.3f}')}" if lat else "–",
                    ]
                )
                + " |"
            )
        if len(rep["tasks"]) > 1:
            lines.append(f"| {rep['system']} | **avg** | | | **{_pct(rep['avg_weighted_f1'])}** | | | | | | |")
    lenient = lenient_markdown_table(reports)
    return "\n".join(lines) + ("\n\n" + lenient if lenient else "")


def lenient_markdown_table(reports: Sequence[dict]) -> str:
    """Strict and lenient figures side by side, for the systems that answer in text ('' when none do)."""
    rows = [rep for rep in reports if "lenient_avg_weighted_f1" in rep]
    if not rows:
        return ""
    head = (
        "| system | task | n | acc strict | acc lenient | weighted F1 strict | weighted F1 lenient "
        "| macro F1 lenient | micro F1 lenient | no label strict | no label lenient | rescued |"
    )
    lines = [
        f"Lenient reading, for comparison with published tables ({LENIENT_RULES}): a label is also "
        "looked for in messy text, and a fraud answer without one counts as normal. The table above is strict.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for rep in rows:
        for task, m in rep["tasks"].items():
            lenient = m["lenient"]
            cells = [
                rep["system"],
                task,
                str(m["n"]),
                _pct(m["accuracy"]),
                _pct(lenient["accuracy"]),
                _pct(m["weighted_f1"]),
                f"**{_pct(lenient['weighted_f1'])}**",
                _pct(lenient["macro_f1"]),
                _pct(lenient["micro_f1"]),
                _pct(m["no_label_rate"]),
                _pct(lenient["no_label_rate"]),
                _pct(lenient["rescued_rate"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if len(rep["tasks"]) > 1:
            avg = f"| {rep['system']} | **avg** | | | | {_pct(rep['avg_weighted_f1'])} | "
            lines.append(avg + f"**{_pct(rep['lenient_avg_weighted_f1'])}** | | | | | |")
    return "\n".join(lines)


def per_class_markdown(rep: dict) -> str:
    """Per-class precision/recall/F1 of every task of one report."""
    out = []
    for task, m in rep["tasks"].items():
        out.append(f"**{rep['system']} — {task}**\n")
        out.append("| label | precision | recall | F1 | support |\n|---|---|---|---|---|")
        for label, c in m["per_class"].items():
            out.append(f"| {label} | {_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} | {c['support']} |")
        out.append("")
    return "\n".join(out)
