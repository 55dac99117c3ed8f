"""The toy reproduction's scoring and claims (safe_qaq.toy.measure), the warm start's loss weighting
(safe_qaq.toy.loss_scale), the shipped warm base's build check and fresh toy sets: each claim can fail, and
reads only the numbers it is given."""

import json
import random
import shutil

import pytest

import prompt
from safe_qaq.jsonl import dumps
from safe_qaq.toy import data as toy_data
from safe_qaq.toy import measure as toy
from safe_qaq.toy import warm_start


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
    n = len(accuracy_rewards)
    pairs = enumerate(zip(accuracy_rewards, stds, strict=True), 1)
    rows = [{"reward": a, "reward_std": s, "rewards/AdaptiveClassification/mean": a,
             "global_step/max_steps": f"{i}/{n}"} for i, (a, s) in pairs]  # fmt: skip
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


def stage(acc, *, tasks=None, fmt=1.0, think=20.0, null=None, p_null=None, stage_acc=None, ms=100.0, live=None):
    """One stage's measurement as measure() writes it: test/offline and, given ``null``, test/realtime."""
    per_task = dict(zip(("acc_scene", "acc_fraud", "acc_fraud_type"), tasks or (acc, acc, acc), strict=True))
    sets = {"test/offline": {"accuracy": acc, "acc_tasks_mean": acc, **per_task, "format_valid": fmt,
                             "think_mean": think}}  # fmt: skip
    if null is not None:
        sets["test/realtime"] = {"format_valid": fmt, "early_null_rate": null, "early_null_prob": p_null,
                                 "stage_accuracy": stage_acc}  # fmt: skip
    out = {"latency_ms": ms, "sets": sets}
    if live:
        out["live"] = dict(zip(("accuracy", "heard_fraction_mean"), live, strict=True), n_calls=40,
                           decision_time_s_mean=5.0)  # fmt: skip
    return out


def good_run(**changes):
    """Numbers under which every held-out claim holds; ``changes`` replaces whole stages."""
    stages = {
        "base": stage(0.40, tasks=(0.40, 0.65, 0.15), null=0.3, p_null=0.3, stage_acc=0.5, ms=120.0),
        "stage1": stage(0.50, tasks=(0.50, 0.75, 0.25), think=30.0, null=0.3, stage_acc=0.5, ms=120.0),
        "rsft": stage(0.49, think=25.0, null=0.3, stage_acc=0.5, ms=110.0),
        "lcrl": stage(0.47, think=15.0, null=0.2, stage_acc=0.5, ms=90.0, live=(0.6, 0.4)),
        "stage3": stage(0.45, think=15.0, null=0.6, p_null=0.7, stage_acc=0.7, ms=90.0, live=(0.7, 0.5)),
    }
    return {**stages, **changes}


def claim(found, start):
    (match,) = [c for c in found if c["name"].startswith(start)]
    return match


def test_claims_hold_when_the_numbers_say_so(tmp_path):
    write_stage1_log(tmp_path, [1, 1, 2, 2, 3, 3, 4, 4], [1.0] * 8)
    kept = [{"messages": [{"role": "assistant", "content": f"kept {i}"}]} for i in range(6)]
    write_rsft(tmp_path, kept, kept[:5], prompts=10)  # the pre-flight may drop a row; all RSFT reads is kept
    found = toy.claims(tmp_path, measured(30.0, 20.0, 0.50, 0.47, 130.0, 100.0))
    assert [c["held"] for c in found][:4] == [True, True, True, True]
    assert claim(found, "stage 1")["numbers"]["acc_reward_first_part"] == 1.0
    assert claim(found, "stage 1")["numbers"]["acc_reward_last_part"] == 4.0


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
    summary = {
        "n": 2,
        "accuracy": 0.5,
        "acc_tasks_mean": 0.5,
        "format_valid": 1.0,
        "think_mean": 12.0,
        "reward_mean": 3.0,
    }
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

    from safe_qaq.toy.loss_scale import LABEL_WEIGHT, REASON_WEIGHT, reason_segments

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    rng = random.Random(0)
    for task, labels in prompt.TASK_LABELS.items():
        for label in labels:
            for extra in ({}, {"conversation_stage": prompt.EARLY_STAGE, "prefix_end_s": 3.0}):
                answer = toy_data.varied_answer({"task": task, "answers": label, **extra}, rng, null_early=0.5)
                segments, weights = reason_segments(answer)
                assert "".join(segments) == answer and weights == [1.0, REASON_WEIGHT, 1.0]
                assert ids(answer) == [i for s in segments for i in ids(s)], answer
    assert reason_segments("no think here") == (["no think here"], [1.0])
    # a direct answer (no think): its label alone is weighted, again cut where the tokenizer cuts
    for task, labels in prompt.TASK_LABELS.items():
        for label in labels:
            answer = prompt.format_answer(task, label, mode="direct")
            segments, weights = reason_segments(answer)
            assert "".join(segments) == answer and weights == [1.0, LABEL_WEIGHT, 1.0], answer
            value = json.dumps(prompt.answer_value(task, label), ensure_ascii=False).strip('"')
            assert segments[1].strip() == value, segments
            assert ids(answer) == [i for s in segments for i in ids(s)], answer


def test_committed_phrase_bank_matches_the_phrase_texts():
    """data/toy_phrases was synthesised from toy_data.PHRASES as they are now (rerun the generator after edits)."""
    index = json.loads((toy_data.PHRASE_DIR / "index.json").read_text(encoding="utf-8"))
    assert set(index) == set(toy_data.PHRASES)
    for key, (role, text) in toy_data.PHRASES.items():
        assert (index[key]["role"], index[key]["text"]) == (role, text), key
        assert (toy_data.PHRASE_DIR / index[key]["file"]).is_file(), key


def test_loss_scale_docstring_examples():
    import doctest

    from safe_qaq.toy import loss_scale

    result = doctest.testmod(loss_scale)
    assert result.failed == 0 and result.attempted > 0


def test_heldout_claims_hold_when_the_numbers_say_so():
    found = toy.heldout_claims(good_run())
    assert len(found) == 8 and all(c["held"] for c in found), [c["name"] for c in found if not c["held"]]
    assert claim(found, "stage 1 GRPO raises mean")["numbers"]["gain"] == pytest.approx(0.10)


BAD_RUNS = {
    "stage 1 GRPO raises mean": [
        {"stage1": stage(0.47, tasks=(0.47, 0.72, 0.22))},  # +7 points only
        {"stage1": stage(0.55, tasks=(0.36, 0.90, 0.39))},  # scene 4 points down
        {"stage1": stage(0.50, tasks=(0.50, 0.75, 0.25), fmt=0.94)},  # format broken
    ],
    "RSFT keeps": [{"rsft": stage(0.46, think=25.0)}, {"rsft": stage(0.50, think=30.0)}],
    "LCRL thinks": [
        {"lcrl": stage(0.47, think=18.0, ms=90.0)},  # 28 % shorter
        {"lcrl": stage(0.45, think=15.0, ms=90.0)},  # 4 points down
        {"lcrl": stage(0.47, think=15.0, ms=110.0)},  # not faster
    ],
    "every stage answers in format": [{"rsft": stage(0.49, think=25.0, fmt=0.9, null=0.3, stage_acc=0.5)}],
    "stage 3 waits": [
        {"stage3": stage(0.45, null=0.45, stage_acc=0.7, live=(0.7, 0.5))},  # under 50 %
        {"lcrl": stage(0.47, think=15.0, null=0.65, stage_acc=0.5, ms=90.0, live=(0.6, 0.4))},  # LCRL waits more
    ],
    "stage 3 raises stage accuracy": [{"stage3": stage(0.45, null=0.6, stage_acc=0.5, live=(0.7, 0.5))}],
    "stage 3 on `live eval`": [
        {"stage3": stage(0.45, null=0.6, stage_acc=0.7, live=(0.5, 0.5))},  # decides worse than LCRL
        {"stage3": stage(0.45, null=0.6, stage_acc=0.7, live=(0.7, 1.0))},  # waits to the end
    ],
    "stage 3 keeps offline": [{"stage3": stage(0.41, null=0.6, stage_acc=0.7, live=(0.7, 0.5))}],
}


@pytest.mark.parametrize("name, changes", [(n, c) for n, runs in BAD_RUNS.items() for c in runs])
def test_each_heldout_claim_can_fail(name, changes):
    found = toy.heldout_claims(good_run(**changes))
    assert not claim(found, name)["held"]


def test_measure_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    code = toy.main(["measure", "--model", str(tmp_path / "nope"), "--name", "base", "--data", str(tmp_path),
                     "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nope" in err and "no model directory" in err


def test_measure_refuses_a_folder_without_toy_rows(tmp_path):
    with pytest.raises(SystemExit, match="no prepared toy rows"):
        toy.available_sets(tmp_path, toy.DEFAULT_ROWS)
    (tmp_path / "offline_test.jsonl").write_text("{}\n")
    assert list(toy.available_sets(tmp_path, toy.DEFAULT_ROWS)) == ["test/offline"]  # a test-only set is fine


def test_the_shipped_warm_base_is_built_by_todays_code():
    """Fails when the warm start's code or settings changed and data/warm_base was not rebuilt: `make model`."""
    assert warm_start.check() is None, warm_start.check()
    files = sorted(p.name for p in warm_start.SHIPPED.iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files and warm_start.BUILD_INFO in files
    assert sum(p.stat().st_size for p in warm_start.SHIPPED.iterdir()) < 2 * 1024 * 1024


def test_the_shipped_warm_base_never_saw_a_demo_test_call():
    """The base's bundled-call phase reads the bundled calls' train split only: `make demo` tests on calls it never
    heard."""
    from safe_qaq.calls import load_calls
    from safe_qaq.prepare.options import Options
    from safe_qaq.prepare.rows import split_calls

    info = json.loads((warm_start.SHIPPED / warm_start.BUILD_INFO).read_text(encoding="utf-8"))
    seen = set(info["bundled_calls_seen"])
    defaults = Options()
    split = split_calls(load_calls(warm_start.BUNDLED_CALLS), defaults.test_fraction, defaults.seed)
    assert seen and split["test"]
    assert seen <= set(split["train"]) and not seen & set(split["test"]), seen & set(split["test"])


def test_the_build_check_notices_code_and_settings_changes(tmp_path):
    root = tmp_path / "root"
    for name in (*warm_start.CODE_FILES, *warm_start.DATA_FILES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(warm_start.ROOT / name, root / name)
    today = warm_start.code_hash(root=root)
    builder = root / "safe_qaq" / "toy" / "warm_start.py"
    source = builder.read_text(encoding="utf-8")
    builder.write_text(source.replace('"""Build the', '"""Now build the') + "\n# a comment\n", encoding="utf-8")
    assert warm_start.code_hash(root=root) == today  # docstrings, comments and formatting do not count
    builder.write_text(source.replace('"lr": 5e-3', '"lr": 4e-3'), encoding="utf-8")
    assert warm_start.code_hash(root=root) != today
    builder.write_text(source, encoding="utf-8")
    assert warm_start.code_hash({**warm_start.SETTINGS, "hear_steps": 1}, root=root) != today
    data = root / "safe_qaq" / "toy" / "data.py"
    data.write_text(data.read_text(encoding="utf-8").replace("AMBIENCE_LEVEL = 0.03", "AMBIENCE_LEVEL = 0.04"))
    assert warm_start.code_hash(root=root) != today


def test_the_build_check_names_a_missing_or_stale_base(tmp_path):
    assert "no warm base there" in warm_start.check(tmp_path)
    shutil.copytree(warm_start.SHIPPED, tmp_path / "base")
    info = json.loads((tmp_path / "base" / warm_start.BUILD_INFO).read_text())
    (tmp_path / "base" / warm_start.BUILD_INFO).write_text(json.dumps({**info, "code_hash": "0" * 16}))
    assert "rebuild it with `make model`" in warm_start.check(tmp_path / "base")


def test_fresh_sets_refuse_the_project_seed_and_differ_from_it(tmp_path):
    with pytest.raises(ValueError, match="pick another"):
        toy_data.build_fresh(tmp_path, toy_data.PROJECT_SEED, 4)
    plans = {}
    for seed in (toy_data.PROJECT_SEED, 7):
        plans[seed] = [toy_data.plan_call(random.Random(f"{seed}:rl:{i}"), fraud=i % 2 == 1) for i in range(20)]
    assert plans[0] != plans[7]


def test_curriculum_hears_first_then_formats(tmp_path):
    """The warm start's rows: the hear phase is direct-prompt rows only, the format phase mostly think formats."""
    gold = prompt.format_answer("scene", prompt.SCENES[1])
    row = {"task": "scene", "answers": prompt.SCENES[1], "audios": ["a.flac"], "conversation_stage": "complete",
           "messages": prompt.build_messages("scene", answer=gold)}  # fmt: skip
    rt = {**row, "conversation_stage": prompt.EARLY_STAGE, "prefix_end_s": 3.0,
          "messages": prompt.build_messages("scene", mode="realtime", answer="x")}  # fmt: skip
    (tmp_path / "sft_train.jsonl").write_text(dumps(row))
    (tmp_path / "sft_realtime_train.jsonl").write_text(dumps(rt))
    settings = {**warm_start.SETTINGS, "hear_steps": 2, "format_steps": 4, "batch_size": 2, "grad_acc": 2}
    rows = warm_start.curriculum(tmp_path, settings)
    assert len(rows) == (2 + 4) * 4
    answers = [r["messages"][-1]["content"] for r in rows]
    assert all(a.startswith("<answer>") for a in answers[:8])
    assert sum(a.startswith("<think>") for a in answers[8:]) == 12  # 25 % of the format phase stays direct
    assert prompt.PROMPTS[("scene", "direct")] in rows[0]["messages"][1]["content"]
