"""Metric tables against hand-computed confusion matrices; format failures counted, never mapped."""

from __future__ import annotations

import json

import pytest

from prompt import EARLY_STAGE, FRAUD, FRAUD_TYPES, LATE_STAGE, NORMAL, SCENES, format_answer
from safe_qaq.metrics import (
    NO_LABEL,
    lenient_label,
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


# ---------------------------------------------------------------------------
# The lenient reading (docs/method.md#lenient-reading), beside the strict one
# ---------------------------------------------------------------------------

# (gold, answer, strict label, lenient label): a messy set where the two readings differ.
MESSY_FRAUD = [
    (F, fraud_answer(F), F, F),  # well formed: both readings agree
    (N, fraud_answer(N), N, N),
    (F, "<think>转账</think><answer>is_fraud: true</answer>", None, F),  # no JSON; "true" in the answer block
    (N, "I cannot tell.", None, N),  # nothing to read: fraud defaults to normal
    (F, '<answer>{"is_fraud": "yes"}</answer>', None, N),  # the key "is_fraud" is not the word "fraud"
    # unclosed answer: the whole text is searched and its first word wins, however wrong
    (N, '<think>Could be fraud, but the caller sounds normal.</think><answer>{"is_fraud": false', None, F),
    (F, '<think>false alarm?</think><answer>{"is_fraud": TRUE}</answer>', None, F),  # answer block before think
    (F, fraud_answer(N), N, N),  # a well-formed wrong answer stays wrong
]


def test_lenient_labels_of_a_messy_fraud_set():
    for gold, text, strict, lenient in MESSY_FRAUD:
        sample = sample_from_text(text, "fraud", gold)
        assert (sample.pred, sample.lenient_pred) == (strict, lenient), text
        assert lenient_label(text, "fraud") == lenient
        assert sample.lenient_correct == (lenient == gold)


def test_messy_fraud_set_strict_versus_lenient_hand_computed():
    m = task_metrics([sample_from_text(text, "fraud", gold) for gold, text, _, _ in MESSY_FRAUD])
    # strict: correct 1, 2 -> 2/8.  fraud: pred F {1}, tp 1, gold 5 -> P 1, R 1/5, F1 1/3;
    # normal: pred N {2, 8}, tp 1, gold 3 -> P 1/2, R 1/3, F1 2/5.  Five answers have no label.
    assert m["accuracy"] == pytest.approx(2 / 8)
    assert m["weighted_f1"] == pytest.approx((5 * (1 / 3) + 3 * (2 / 5)) / 8)  # 43/120 = 0.358
    assert m["macro_f1"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert m["micro_f1"] == pytest.approx(4 / 11)  # P 2/3 (labelled answers only), R 2/8
    assert m["no_label_rate"] == pytest.approx(5 / 8)
    # lenient: predictions F N F N N F F N; correct 1, 2, 3, 4, 7 -> 5/8.
    # fraud: pred {1, 3, 6, 7}, tp 3, gold 5 -> P 3/4, R 3/5, F1 2/3;
    # normal: pred {2, 4, 5, 8}, tp 2, gold 3 -> P 1/2, R 2/3, F1 4/7.
    lenient = m["lenient"]
    assert lenient["accuracy"] == pytest.approx(5 / 8)
    assert lenient["weighted_f1"] == pytest.approx((5 * (2 / 3) + 3 * (4 / 7)) / 8)  # 53/84 = 0.631
    assert lenient["macro_f1"] == pytest.approx((2 / 3 + 4 / 7) / 2)
    assert lenient["micro_f1"] == pytest.approx(5 / 8)  # every answer has a label now
    assert lenient["no_label_rate"] == 0.0
    assert lenient["rescued_rate"] == pytest.approx(5 / 8)
    assert lenient["confusion"]["matrix"] == [[3, 2, 0], [1, 2, 0]]


def test_lenient_scene_reads_the_answer_block_first_then_the_whole_text():
    a, b, c, taxi = "订餐服务", "外卖服务", "咨询客服", "打车服务"
    assert {a, b, c, taxi} <= set(SCENES)
    messy = [
        (a, format_answer("scene", a), a, a),
        (b, '<answer>{"scene": "外卖"}</answer>', None, None),  # not a whole label anywhere: no label
        (b, "<think>不是订餐服务</think><answer>场景：外卖服务</answer>", None, b),  # the answer block wins
        (a, "<think>像是订餐服务，也可能是外卖服务</think> 结论不明", None, a),  # no block: first in the text
        (c, format_answer("scene", taxi), taxi, taxi),  # well formed and wrong
        (c, '<answer>{"scene": "咨询客服还是外卖服务"}</answer>', None, c),  # value outside the set: first label
    ]
    samples = [sample_from_text(text, "scene", gold) for gold, text, _, _ in messy]
    assert [(s.pred, s.lenient_pred) for s in samples] == [(strict, lenient) for _, _, strict, lenient in messy]
    m = task_metrics(samples)
    assert m["accuracy"] == pytest.approx(1 / 6)
    assert m["lenient"]["accuracy"] == pytest.approx(4 / 6)
    assert m["no_label_rate"] == pytest.approx(4 / 6)
    assert m["lenient"]["no_label_rate"] == pytest.approx(1 / 6)  # scene has no default label
    assert m["lenient"]["rescued_rate"] == pytest.approx(3 / 6)
    # lenient per class: 订餐服务 pred {1, 4} tp 2 gold 2 -> F1 1;  外卖服务 pred {3} tp 1 gold 2 -> F1 2/3;
    # 咨询客服 pred {6} tp 1 gold 2 -> F1 2/3;  打车服务 pred {5}, gold none -> F1 0, no weight
    assert m["lenient"]["weighted_f1"] == pytest.approx((2 * 1 + 2 * (2 / 3) + 2 * (2 / 3)) / 6)


def test_lenient_fraud_words_are_whole_words_in_any_case():
    assert lenient_label("<answer>FRAUD</answer>", "fraud") == F
    assert lenient_label("<answer>Normal call</answer>", "fraud") == N
    assert lenient_label("这是fraud电话", "fraud") == F  # CJK next to the word is a word boundary
    assert lenient_label("the fraudster; is_fraud; truestory", "fraud") == N  # none is a whole word: default
    assert lenient_label("<answer>false, not true</answer>", "fraud") == N  # the first word wins
    assert lenient_label("<answer>诈骗</answer>", "fraud") == N  # Chinese words are not read
    assert lenient_label("", "fraud_type") is None
    assert lenient_label("<answer>投资诈骗</answer>", "fraud_type") == "投资诈骗"


def test_lenient_keeps_what_the_strict_reading_accepts():
    null = format_answer("fraud", None, mode="realtime", stage=EARLY_STAGE)
    early = sample_from_text(null, "fraud", F, EARLY_STAGE)
    assert early.correct and early.lenient_correct and early.lenient_pred is None  # no "normal" forced onto it
    late = sample_from_text(null, "fraud", F, LATE_STAGE)
    assert not late.correct and late.lenient_pred == N and not late.lenient_correct


def test_no_label_of_a_task_contains_another():
    # the lenient reading takes the leftmost label; that is unambiguous only under this property
    for labels in (SCENES, FRAUD_TYPES):
        assert not [(x, y) for x in labels for y in labels if x != y and x in y]


def test_lenient_figures_beside_strict_in_report_and_markdown():
    samples = [sample_from_text(text, "fraud", gold) for gold, text, _, _ in MESSY_FRAUD]
    samples.append(sample_from_text(format_answer("scene", SCENES[0]), "scene", SCENES[0]))
    rep = report(samples, "messy")
    assert rep["lenient_rules"] == "docs/method.md#lenient-reading"
    assert rep["lenient_avg_weighted_f1"] == pytest.approx((53 / 84 + 1.0) / 2)
    assert rep["avg_weighted_f1"] == pytest.approx((43 / 120 + 1.0) / 2)
    table = markdown_table([rep])
    strict_table, lenient_table = table.split("\n\nLenient reading")
    assert "| messy | fraud | 8 | 25.00 | **35.83** |" in strict_table
    assert "| messy | fraud | 8 | 25.00 | 62.50 | 35.83 | **63.10** | 61.90 | 62.50 | 62.50 | 0.00 | 62.50 |" in table
    rows = [line for line in lenient_table.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in rows}) == 1  # a well-formed table
    # systems that output labels (the floor, live decisions) have no lenient reading
    floor_like = report([sample_from_label("fraud", F, None)], "floor")
    assert "lenient_avg_weighted_f1" not in floor_like and "lenient" not in floor_like["tasks"]["fraud"]
    assert "Lenient" not in markdown_table([floor_like])


def test_evaluate_writes_lenient_figures_beside_strict(tmp_path, capsys):
    from safe_qaq import evaluate

    predictions = tmp_path / "messy" / "predictions.jsonl"
    predictions.parent.mkdir()
    records = [{"prediction": text, "answer": gold, "task": "fraud"} for gold, text, _, _ in MESSY_FRAUD]
    predictions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "eval"
    assert evaluate.main(["--predictions", str(predictions), "--out", str(out), "--no-plots", "--no-floor"]) == 0
    assert "**63.10**" in capsys.readouterr().out  # printed too
    fraud = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["model"]["tasks"]["fraud"]
    assert fraud["accuracy"] == pytest.approx(2 / 8) and fraud["lenient"]["accuracy"] == pytest.approx(5 / 8)
    md = (out / "metrics.md").read_text(encoding="utf-8")
    assert "docs/method.md#lenient-reading" in md and "| 35.83 | **63.10** |" in md


def test_metrics_docstring_examples():
    import doctest

    import safe_qaq.metrics

    result = doctest.testmod(safe_qaq.metrics)
    assert result.failed == 0 and result.attempted >= 3
