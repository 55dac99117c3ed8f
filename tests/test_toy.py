"""The toy reproduction's scoring and claims (safe_qaq.toy), and the warm start's loss weighting
(safe_qaq.loss_scale): each claim can fail, and reads only the numbers it is given."""

import json
import random

import pytest

import prompt
from safe_qaq import toy, toy_data
from safe_qaq.jsonl import dumps


def gold_answer(task, label, **kwargs):
    return prompt.format_answer(task, label, **kwargs)


def test_score_row_scores_a_gold_answer_like_grpo():
    row = {"task": "scene", "answers": prompt.SCENES[0], "conversation_stage": "complete"}
    scored = toy.score_row(row, gold_answer("scene", prompt.SCENES[0], mode="offline"))
    assert scored["correct"] and scored["format_ok"] and not scored["null"]
    assert scored["reward"] == 5 + 1  # accuracy + format; offline rows carry no stage reward


def test_score_row_early_null_counts_as_waiting():
    row = {"task": "fraud", "answers": prompt.FRAUD, "conversation_stage": prompt.EARLY_STAGE, "prefix_end_s": 4.0}
    text = gold_answer("fraud", None, mode="realtime", stage=prompt.EARLY_STAGE)
    scored = toy.score_row(row, text)
    assert scored["null"] and scored["correct"] and scored["stage_ok"] and scored["realtime"]
    assert scored["reward"] == 5 + 1 + 5
    summary = toy.summarise([scored, toy.score_row(row, "no answer at all")])
    assert summary["early_null_rate"] == 0.5 and summary["format_valid"] == 0.5 and summary["accuracy"] == 0.5


def write_stage1_log(out, accuracy_rewards, stds):
    run = out / "stage1_grpo"
    run.mkdir(parents=True)
    rows = [{"reward": a, "reward_std": s, "rewards/AdaptiveClassification/mean": a}
            for a, s in zip(accuracy_rewards, stds, strict=True)]  # fmt: skip
    (run / "logging.jsonl").write_text("".join(dumps(r) for r in rows))


def write_rsft(out, kept_rows, trained_rows, prompts):
    samples = out / "stage2_samples"
    samples.mkdir(parents=True)
    (samples / "rsft.jsonl").write_text("".join(dumps(r) for r in kept_rows))
    stats = {"prompts": prompts, "kept": len(kept_rows), "think_mean_all": 20.0, "think_mean_kept": 15.0}
    (samples / "process_stats.json").write_text(json.dumps(stats))
    rsft = out / "stage2_rsft"
    rsft.mkdir(parents=True)
    trained = rsft / "budget" / "rsft.jsonl"
    trained.parent.mkdir()
    trained.write_text("".join(dumps(r) for r in trained_rows))
    (rsft / "args.json").write_text(json.dumps({"dataset": [str(trained)]}))


def measured(think_rsft, think_lcrl, acc_rsft, acc_lcrl, ms_rsft, ms_lcrl, null=(0.5, 0.6), stage_acc=(0.5, 0.6)):
    def model(think, acc, ms, null_rate, stage):
        return {"latency_ms": ms, "sets": {
            "test/offline": {"think_mean": think, "accuracy": acc},
            "test/realtime": {"early_null_rate": null_rate, "stage_accuracy": stage}}}  # fmt: skip

    return {
        "rsft": model(think_rsft, acc_rsft, ms_rsft, 0.0, 0.0),
        "lcrl": model(think_lcrl, acc_lcrl, ms_lcrl, null[0], stage_acc[0]),
        "stage3": model(0, 0, 0, null[1], stage_acc[1]),
    }


def claim(found, start):
    (match,) = [c for c in found if c["name"].startswith(start)]
    return match


def test_claims_hold_when_the_numbers_say_so(tmp_path):
    write_stage1_log(tmp_path, [1, 1, 2, 2, 3, 3, 4, 4], [1.0] * 8)
    kept = [{"messages": [{"role": "assistant", "content": f"kept {i}"}]} for i in range(6)]
    write_rsft(tmp_path, kept, kept[:5], prompts=10)  # the pre-flight may drop a row; all RSFT reads is kept
    found = toy.claims(tmp_path, measured(30.0, 20.0, 0.50, 0.47, 130.0, 100.0))
    assert [c["held"] for c in found] == [True, True, True, True]
    assert claim(found, "stage 1")["numbers"]["acc_reward_first_quarter"] == 1.0
    assert claim(found, "stage 1")["numbers"]["acc_reward_last_quarter"] == 4.0


@pytest.mark.parametrize(
    "accuracy, stds",
    [([4, 4, 3, 3, 2, 2, 1, 1], [1.0] * 8),  # accuracy reward falls
     ([1, 1, 2, 2, 3, 3, 4, 4], [1.0, 0, 0, 1.0, 1.0, 1.0, 1.0, 1.0])],  # 75 % of steps with reward std > 0
)  # fmt: skip
def test_stage1_claim_fails(tmp_path, accuracy, stds):
    write_stage1_log(tmp_path, accuracy, stds)
    assert not claim(toy.claims(tmp_path, {}), "stage 1")["held"]


def test_rsft_claim_fails_on_gold_rows_or_few_kept(tmp_path):
    kept = [{"messages": [{"role": "assistant", "content": f"kept {i}"}]} for i in range(6)]
    gold = {"messages": [{"role": "assistant", "content": "a gold answer"}]}
    write_rsft(tmp_path / "gold", kept, [*kept, gold], prompts=10)
    found = claim(toy.claims(tmp_path / "gold", {}), "rejection sampling")
    assert not found["held"] and found["numbers"]["rsft_rows_from_kept"] == 6
    write_rsft(tmp_path / "few", kept, kept, prompts=13)  # 6/13 < half
    assert not claim(toy.claims(tmp_path / "few", {}), "rejection sampling")["held"]


@pytest.mark.parametrize(
    "numbers",
    [(30.0, 21.5, 0.50, 0.50, 130.0, 100.0),  # 28 % shorter only
     (30.0, 20.0, 0.50, 0.44, 130.0, 100.0),  # accuracy down 6 points
     (30.0, 20.0, 0.50, 0.50, 130.0, 131.0)],  # slower
)  # fmt: skip
def test_lcrl_claim_fails(tmp_path, numbers):
    assert not claim(toy.claims(tmp_path, measured(*numbers)), "LCRL")["held"]


@pytest.mark.parametrize("null, stage_acc", [((0.6, 0.6), (0.5, 0.7)), ((0.5, 0.7), (0.6, 0.6))])
def test_stage3_claim_needs_both_rises(tmp_path, null, stage_acc):
    found = toy.claims(tmp_path, measured(30.0, 20.0, 0.5, 0.5, 130.0, 100.0, null=null, stage_acc=stage_acc))
    assert not claim(found, "stage 3")["held"]


def test_report_writes_table_and_claims(tmp_path):
    write_stage1_log(tmp_path, [1, 2, 3, 4], [1.0] * 4)
    summary = {"n": 2, "accuracy": 0.5, "format_valid": 1.0, "think_mean": 12.0, "reward_mean": 3.0}
    (tmp_path / "measure_base.json").write_text(
        json.dumps({"name": "base", "latency_ms": 80.0, "sets": {"test/offline": summary}})
    )
    payload = toy.report(tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["claims"] == payload["claims"] and {"name", "held", "numbers"} <= set(payload["claims"][0])
    text = (tmp_path / "report.md").read_text()
    assert "| warm base | test/offline (2) | 50 |" in text and "NOT held" in text  # no RSFT run: not held


def test_warm_answers_vary_their_thinking():
    row = {"task": "scene", "answers": prompt.SCENES[2], "messages": []}
    rng = random.Random(0)
    lengths = {toy.score_row(row, toy_data.varied_answer(row, rng))["think"] for _ in range(60)}
    assert len(lengths) == len(toy_data.THOUGHTS) + 1  # zero to four checklist items


def test_reason_weighting_keeps_the_tokens_inference_sees(tiny_model):
    """The weighted conclusion is cut where the tokenizer cuts anyway: training sees inference's tokens."""
    from transformers import AutoTokenizer

    from safe_qaq.loss_scale import REASON_WEIGHT, reason_segments

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rng = random.Random(0)
    for task, labels in prompt.TASK_LABELS.items():
        for label in labels:
            for extra in ({}, {"conversation_stage": prompt.EARLY_STAGE, "prefix_end_s": 3.0}):
                answer = toy_data.varied_answer({"task": task, "answers": label, **extra}, rng, null_early=0.5)
                segments, weights = reason_segments(answer)
                assert "".join(segments) == answer and weights == [1.0, REASON_WEIGHT, 1.0]

                def ids(text):
                    return tokenizer(text, add_special_tokens=False)["input_ids"]

                assert ids(answer) == [i for s in segments for i in ids(s)], answer
    assert reason_segments("no think here") == (["no think here"], [1.0])


def test_committed_phrase_bank_matches_the_phrase_texts():
    """data/toy_phrases was synthesised from toy_data.PHRASES as they are now (rerun the generator after edits)."""
    index = json.loads((toy_data.PHRASE_DIR / "index.json").read_text(encoding="utf-8"))
    assert set(index) == set(toy_data.PHRASES)
    for key, (role, text) in toy_data.PHRASES.items():
        assert (index[key]["role"], index[key]["text"]) == (role, text), key
        assert (toy_data.PHRASE_DIR / index[key]["file"]).is_file(), key


def test_loss_scale_docstring_examples():
    import doctest

    from safe_qaq import loss_scale

    result = doctest.testmod(loss_scale)
    assert result.failed == 0 and result.attempted > 0
