"""Metric tables against hand-computed confusion matrices; format failures counted, never mapped."""

from __future__ import annotations

import pytest

from prompt import EARLY_STAGE, FRAUD, LATE_STAGE, NORMAL, SCENES, format_answer
from safe_qaq.metrics import (
    NO_LABEL,
    markdown_table,
    per_class_markdown,
    report,
    sample_from_label,
    sample_from_text,
    task_metrics,
)

F, N = FRAUD, NORMAL


def fraud_answer(label: str, **kw) -> str:
    return format_answer("fraud", label, **kw)


def test_binary_hand_computed():
    # gold F F F F N N, predicted F F F N N F
    # fraud: tp 3, fp 1, fn 1 -> P = R = F1 = 3/4;  normal: tp 1, fp 1, fn 1 -> 1/2
    golds = [F, F, F, F, N, N]
    preds = [F, F, F, N, N, F]
    m = task_metrics([sample_from_text(fraud_answer(p), "fraud", g) for g, p in zip(golds, preds, strict=True)])
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"][F] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert m["per_class"][N] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["weighted_f1"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    assert m["macro_f1"] == pytest.approx(0.625)
    assert m["micro_f1"] == pytest.approx(4 / 6)
    assert m["confusion"] == {"rows": [F, N], "columns": [F, N, NO_LABEL], "matrix": [[3, 1, 0], [1, 1, 0]]}
    assert m["format_failure_rate"] == 0.0
    assert m["no_label_rate"] == 0.0


def test_multiclass_hand_computed_in_canonical_label_order():
    a, b, c = SCENES[0], SCENES[1], SCENES[2]
    # given out of order on purpose: rows/columns must follow prompt.SCENES
    pairs = [(c, c), (a, a), (a, b), (b, b), (a, a), (b, c)]
    m = task_metrics([sample_from_label("scene", g, p) for g, p in pairs])
    # a: tp 2, pred 2, true 3 -> P 1, R 2/3, F1 0.8
    # b: tp 1, pred 2, true 2 -> P 1/2, R 1/2, F1 1/2
    # c: tp 1, pred 2, true 1 -> P 1/2, R 1, F1 2/3
    assert m["confusion"]["rows"] == [a, b, c]
    assert m["confusion"]["matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
    assert m["per_class"][a]["f1"] == pytest.approx(0.8)
    assert m["per_class"][b]["precision"] == pytest.approx(0.5)
    assert m["per_class"][c]["recall"] == pytest.approx(1.0)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["micro_f1"] == pytest.approx(4 / 6)
    assert m["gold_distribution"] == {a: 3, b: 2, c: 1}
    # labels that never occur are left out, not scored as F1 = 0 in the macro average
    assert set(m["per_class"]) == {a, b, c}


def test_format_failures_are_counted_not_mapped_to_a_label():
    # The external scorer maps unparsable answers to "normal" and reads "true" anywhere as fraud.
    texts = [
        fraud_answer(F),  # gold F, correct
        "<think>the caller says is_fraud: true</think> I think it is fraud",  # gold F, no answer at all
        fraud_answer(N),  # gold N, correct
        fraud_answer(F),  # gold N, wrong
    ]
    golds = [F, F, N, N]
    samples = [sample_from_text(t, "fraud", g) for t, g in zip(texts, golds, strict=True)]
    assert samples[1].pred is None and samples[1].outcome == "no_answer" and not samples[1].correct
    m = task_metrics(samples)
    # fraud: tp 1, predicted-fraud 2, gold-fraud 2 -> P 1/2, R 1/2;  normal: tp 1, pred 1, gold 2 -> P 1, R 1/2
    assert m["confusion"]["matrix"] == [[1, 0, 1], [1, 1, 0]]
    assert m["per_class"][N]["precision"] == pytest.approx(1.0)  # the failure did not become a "normal"
    assert m["per_class"][F]["recall"] == pytest.approx(0.5)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 2 * (2 / 3)) / 4)
    assert m["micro_f1"] == pytest.approx(4 / 7)  # P 2/3 (failures predict no class), R 2/4
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["format_failure_rate"] == pytest.approx(0.25)
    assert m["no_label_rate"] == pytest.approx(0.25)
    assert m["pred_distribution"] == {F: 2, N: 1, NO_LABEL: 1}
    assert m["outcomes"] == {"correct": 2, "no_answer": 1, "wrong": 1}


def test_invalid_and_schema_errors():
    no_conf = '<think>x</think><answer>{"is_fraud": true, "reason": "r"}</answer>'
    string_bool = '<think>x</think><answer>{"is_fraud": "true", "reason": "r", "confidence": 0.9}</answer>'
    s1 = sample_from_text(no_conf, "fraud", F)
    s2 = sample_from_text(string_bool, "fraud", F)
    # label readable, schema broken: correct, but a format failure
    assert s1.correct and s1.pred == F and not s1.format_ok
    # "true" as a string is not a JSON boolean: no label, invalid
    assert s2.pred is None and s2.outcome == "invalid" and not s2.correct and not s2.format_ok
    m = task_metrics([s1, s2])
    assert m["format_failure_rate"] == 1.0
    assert m["no_label_rate"] == 0.5
    assert m["accuracy"] == 0.5


def test_think_length_and_latency():
    texts = [
        fraud_answer(F, think="诈骗诈骗"),
        fraud_answer(F, think="诈骗诈骗诈骗诈骗"),
        '<answer>{"is_fraud": true}</answer>',
    ]
    samples = [sample_from_text(t, "fraud", F, latency_s=lat) for t, lat in zip(texts, [1.0, 2.0, 3.0], strict=True)]
    m = task_metrics(samples)
    assert m["think_tokens"]["mean"] == pytest.approx((4 + 8 + 0) / 3)
    assert m["think_tokens"]["median"] == pytest.approx(4)
    assert m["think_tokens"]["missing_rate"] == pytest.approx(1 / 3)
    assert m["latency_s"]["p50"] == pytest.approx(2.0)
    assert m["latency_s"]["p95"] == pytest.approx(2.9)


def test_realtime_null_at_early_stage_is_correct():
    null = format_answer("fraud", None, mode="realtime", stage=EARLY_STAGE)
    late = format_answer("fraud", F, mode="realtime", stage=LATE_STAGE)
    samples = [
        sample_from_text(null, "fraud", F, EARLY_STAGE),  # correct: null while intent is not shown
        sample_from_text(null, "fraud", F, LATE_STAGE),  # wrong: null when it should decide
        sample_from_text(late, "fraud", F, LATE_STAGE),
    ]
    m = task_metrics(samples)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["label_accuracy"] == pytest.approx(1 / 3)
    assert m["stage_accuracy"] == pytest.approx(2 / 3)  # the second says early_stage, gold late
    assert m["accuracy_by_gold_stage"] == {EARLY_STAGE: 1.0, LATE_STAGE: 0.5}
    assert m["format_failure_rate"] == 0.0  # null is valid in the real-time schema


def test_report_and_markdown():
    samples = [sample_from_label("fraud", F, F), sample_from_label("fraud", N, F)]
    samples += [sample_from_label("scene", SCENES[0], SCENES[0])]
    rep = report(samples, "sys")
    assert set(rep["tasks"]) == {"scene", "fraud"}
    assert rep["avg_weighted_f1"] == pytest.approx((1.0 + rep["tasks"]["fraud"]["weighted_f1"]) / 2)
    table = markdown_table([rep])
    assert "| sys | fraud | 2 |" in table and "**avg**" in table
    assert len({line.count("|") for line in table.splitlines()}) == 1  # a well-formed table
    assert SCENES[0] in per_class_markdown(rep)
    with pytest.raises(ValueError):
        task_metrics(samples)  # mixed tasks


def test_empty_think_stats_absent_for_label_systems():
    m = task_metrics([sample_from_label("fraud", F, None)])
    assert "think_tokens" not in m and "latency_s" not in m
    assert m["accuracy"] == 0.0 and m["outcomes"] == {"undecided": 1}
    assert m["weighted_f1"] == 0.0 and m["format_failure_rate"] is None  # no text, no format to fail
