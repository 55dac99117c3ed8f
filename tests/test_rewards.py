"""The reward plugin (rewards.py): every formula at its boundaries, mixed batches, robustness."""

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prompt
from safe_qaq import rewards
from safe_qaq.rewards import REWARDS

ROOT = Path(__file__).resolve().parents[1]


def make(name):
    return REWARDS[name](args=None)


def answer(obj, think="分析", after="", fence=False):
    body = json.dumps(obj, ensure_ascii=False) if not isinstance(obj, str) else obj
    if fence:
        body = f"```json\n{body}\n```"
    return f"<think>{think}</think><answer>{body}</answer>{after}"


def score(name, completion, answers, stage=None, task=None):
    kwargs = {"answers": [answers], "conversation_stage": [stage]}
    if task is not None:
        kwargs["task"] = [task]
    return make(name)([completion], **kwargs)[0]


def think_of(t):
    """A think text whose length estimate is exactly t (one CJK char = 1)."""
    return "诈" * t


SCENE_OK = {"scene": "外卖服务", "reason": "骑手确认地址", "confidence": 0.9}
FRAUD_OK = {"is_fraud": True, "reason": "冒充警察要求转账", "confidence": 0.95}
TYPE_OK = {"fraud_type": "投资诈骗", "reason": "高回报理财", "confidence": 0.8}


# --- registry -------------------------------------------------------------------------------------

EXPECTED_NAMES = {
    "prompt_format",
    "adaptive_classification",
    "stage_classification",
    "think_length_reward_200",
    "think_length_reward_300",
    "think_length_penalty_200",
    "think_length_penalty_300",
    "think_length_penalty_500",
}


def test_registry_has_exactly_the_recipe_names():
    assert set(REWARDS) >= EXPECTED_NAMES
    # Anything else was registered by a test or the toy's plugin, through the factory, never as a recipe name.
    assert all(name.startswith("think_length_penalty_") for name in set(REWARDS) - EXPECTED_NAMES)
    assert len({cls.__name__ for cls in REWARDS.values()}) == len(REWARDS)  # distinct log columns


def test_scoring_imports_without_ms_swift():
    code = "import sys, safe_qaq.rewards; assert not [m for m in sys.modules if m.split('.')[0] == 'swift'], 'swift'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_parametrized_reward_is_one_factory_call():
    penalty = rewards.get_think_length_penalty(42, 3)
    assert (penalty.name, penalty.__name__, penalty.start, penalty.cap, penalty.floor) == (
        "think_length_penalty_42",
        "ThinkLengthPenalty42",
        42,
        3.0,
        -3.0,
    )
    assert penalty()(["<think>" + "诈" * 42 + "</think>"]) == [0.0]
    assert penalty()(["<think>" + "诈" * 1032 + "</think>"]) == [-3.0]
    # The recipe's own names are factory products too, and registering another class under one is refused.
    assert REWARDS["think_length_penalty_200"].start == 200 and REWARDS["think_length_reward_300"].target == 300
    with pytest.raises(ValueError, match="already registered"):
        rewards.register(type("Other", (rewards.PromptFormat,), {"name": "think_length_penalty_200"}))


def test_every_name_resolves_through_swift_orms():
    from swift.rewards import ORM, orms

    import rewards as plugin  # the ms-swift plugin: the registry, put into orms

    for name in EXPECTED_NAMES:
        assert issubclass(orms[name], ORM) and orms[name].__name__ == REWARDS[name].__name__
        func = orms[name](args=None)
        assert isinstance(func(["x"], answers=["fraud"]), list)
    assert plugin.REWARDS is REWARDS


def test_plugin_loads_through_ms_swift_external_plugin_loader():
    """What ``--external_plugins [toy plugin] rewards.py`` does: import by file path in order, then build by name."""
    from swift.rewards import orms
    from swift.utils.utils import import_external_file

    saved = dict(orms)
    try:
        for name in [*EXPECTED_NAMES, "think_length_penalty_16"]:
            orms.pop(name, None)
        import_external_file(str(ROOT / "safe_qaq" / "toy" / "reward_plugin.py"))
        module = import_external_file(str(ROOT / "rewards.py"))
        assert set(module.REWARDS) >= EXPECTED_NAMES | {"think_length_penalty_16"}
        for name in EXPECTED_NAMES:
            func = orms[name](args=None)
            assert func([answer(FRAUD_OK)], answers=["fraud"], conversation_stage=["complete"])
        toy = orms["think_length_penalty_16"](args=None)
        assert round(toy(["<think>先听身份。通话中出现了典型的诈骗话术。</think>"])[0], 2) == -1.86
    finally:
        orms.clear()
        orms.update(saved)


@pytest.mark.parametrize("profile", ["paper", "smoke", "toy"])
def test_every_reward_name_of_every_profile_is_registered(profile):
    from swift.utils.utils import import_external_file

    from safe_qaq import recipe, stages

    settings = recipe.load(profile, env={})
    for plugin in settings["EXTRA_PLUGINS"]:
        import_external_file(str(ROOT / plugin))
    for stage in stages.GRPO:
        names = settings.rewards(stage.key)
        assert names and all(name in REWARDS for name in names), (profile, stage.key, names)
        argv = recipe.train_argv(settings, stage.key)
        given = argv[argv.index("--reward_funcs") + 1 : argv.index("--num_generations")]
        assert given == names  # what the stage script passes is the recipe's set, unchanged


def test_recipe_reward_sets_are_the_published_ones():
    from safe_qaq import recipe

    paper = recipe.load("paper", env={})
    assert {key: paper[key] for key in ("STAGE1_REWARDS", "LCRL_REWARDS", "REALTIME_REWARDS")} == {
        "STAGE1_REWARDS": ["adaptive_classification", "prompt_format", "think_length_reward_300"],
        "LCRL_REWARDS": ["adaptive_classification", "prompt_format", "think_length_penalty_200"],
        "REALTIME_REWARDS": ["adaptive_classification", "prompt_format", "stage_classification"],
    }
    assert paper["EXTRA_PLUGINS"] == []  # the toy's penalty is never a recipe default


# --- prompt_format ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (answer(SCENE_OK), "外卖服务", 1.0),
        (answer(SCENE_OK, fence=True), "外卖服务", 1.0),
        (answer(FRAUD_OK), "normal", 1.0),  # format does not care about correctness
        (answer(TYPE_OK), "投资诈骗", 1.0),
        (answer({**SCENE_OK, "confidence": 0}), "外卖服务", 1.0),
        (answer({**SCENE_OK, "confidence": 1}), "外卖服务", 1.0),
        (answer({**SCENE_OK, "confidence": 1.01}), "外卖服务", 0.5),
        (answer({**SCENE_OK, "confidence": True}), "外卖服务", 0.5),
        (answer({**FRAUD_OK, "is_fraud": "true"}), "fraud", 0.5),
        (answer({**SCENE_OK, "scene": None}), "外卖服务", 0.5),  # null needs the real-time schema
        (answer({**SCENE_OK, "scene": None, "conversation_stage": "early_stage"}), "外卖服务", 1.0),
        (answer({"reason": "r", "confidence": 1}), "外卖服务", 0.5),  # label key absent
        (answer("not json"), "外卖服务", 0.5),
        (answer(FRAUD_OK), "外卖服务", 0.5),  # the scene task's key is missing
        ("<answer>" + json.dumps(SCENE_OK) + "</answer>", "外卖服务", 0.0),  # no think
        ("<think>x</think>" + json.dumps(SCENE_OK), "外卖服务", 0.0),  # no answer tags
        ("", "外卖服务", 0.0),
    ],
)
def test_format_score(completion, gold, expected):
    assert score("prompt_format", completion, gold) == pytest.approx(expected)


def test_offline_answer_does_not_need_conversation_stage():
    # The reference demanded conversation_stage even offline; an offline answer must reach 1.0.
    assert "conversation_stage" not in SCENE_OK
    assert score("prompt_format", answer(SCENE_OK), "外卖服务", "complete") == 1.0


def test_format_trailing_text_penalty():
    assert score("prompt_format", answer(SCENE_OK, after="  \n "), "外卖服务") == 1.0
    assert score("prompt_format", answer(SCENE_OK, after="abc"), "外卖服务") == pytest.approx(0.997)
    assert score("prompt_format", answer(SCENE_OK, after="x" * 1000), "外卖服务") == pytest.approx(0.0)
    # no penalty when the tags did not match
    assert score("prompt_format", "<answer>{}</answer>" + "x" * 50, "外卖服务") == 0.0


def test_format_uses_explicit_task_column():
    # the fraud task's key decides validity, whatever other label keys are present
    assert score("prompt_format", answer(SCENE_OK), "fraud", task="fraud") == 0.5
    assert score("prompt_format", answer({**SCENE_OK, "is_fraud": True}), "fraud", task="fraud") == 1.0


# --- adaptive_classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "gold", "stage", "expected"),
    [
        (SCENE_OK, "外卖服务", "complete", 5.0),
        (SCENE_OK, "打车服务", "complete", 0.0),
        ({"scene": "火星服务"}, "外卖服务", "complete", -3.0),
        ({"scene": 3}, "外卖服务", "complete", -3.0),
        ({"scene": ["外卖服务"]}, "外卖服务", "complete", -3.0),
        (FRAUD_OK, "fraud", "complete", 5.0),
        (FRAUD_OK, "normal", "complete", 0.0),
        ({"is_fraud": False}, "normal", "complete", 5.0),
        ({"is_fraud": "yes"}, "fraud", "complete", -3.0),
        ({"is_fraud": "true"}, "fraud", "complete", -3.0),
        ({"is_fraud": 1}, "fraud", "complete", -3.0),
        (TYPE_OK, "投资诈骗", "complete", 5.0),
        ({"fraud_type": "钓鱼诈骗"}, "投资诈骗", "complete", 0.0),
        ({"fraud_type": "外卖服务"}, "投资诈骗", "complete", -3.0),
        # explicit null vs absent key, by stage
        ({"is_fraud": None}, "fraud", "early_stage", 5.0),
        ({"is_fraud": None}, "fraud", "late_stage", 0.0),
        ({"is_fraud": None}, "fraud", "complete", 0.0),
        ({"reason": "x"}, "fraud", "early_stage", 0.0),
        ({"reason": "x"}, "fraud", "complete", 0.0),
        # an early-stage answer that already commits to the right label is also correct
        ({"is_fraud": True}, "fraud", "early_stage", 5.0),
    ],
)
def test_accuracy(obj, gold, stage, expected):
    assert score("adaptive_classification", answer(obj), gold, stage) == expected


def test_accuracy_without_answer_json_is_zero():
    assert score("adaptive_classification", "<think>是诈骗 true</think>", "fraud") == 0.0
    assert score("adaptive_classification", "<answer>is_fraud: true</answer>", "fraud") == 0.0


def test_accuracy_does_not_need_think_tags():
    # direct prompts answer without thinking; correctness is read from the answer JSON alone
    assert score("adaptive_classification", "<answer>" + json.dumps(FRAUD_OK) + "</answer>", "fraud") == 5.0


# --- stage_classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "gold", "expected"),
    [
        ({"conversation_stage": "early_stage", "is_fraud": None}, "early_stage", 5.0),
        ({"conversation_stage": "late_stage", "is_fraud": True}, "late_stage", 5.0),
        ({"conversation_stage": "complete", "is_fraud": False}, "complete", 5.0),
        ({"conversation_stage": "late_stage", "is_fraud": True}, "early_stage", 0.0),
        ({"conversation_stage": "middle", "is_fraud": True}, "early_stage", -3.0),
        ({"conversation_stage": 3, "is_fraud": True}, "early_stage", -3.0),
        ({"conversation_stage": None, "is_fraud": True}, "early_stage", 0.0),
        ({"is_fraud": True}, "early_stage", 0.0),  # stage absent
        # complete with no committed label: -3, whichever side says complete
        ({"conversation_stage": "complete", "is_fraud": None}, "complete", -3.0),
        ({"conversation_stage": "complete", "reason": "x"}, "late_stage", -3.0),
        ({"conversation_stage": "late_stage", "scene": None}, "complete", -3.0),
        ({"is_fraud": None}, "complete", -3.0),
        # any one task's label counts as committed
        ({"conversation_stage": "complete", "scene": "外卖服务", "is_fraud": None}, "complete", 5.0),
        ({"conversation_stage": "complete", "is_fraud": False}, "late_stage", 0.0),
    ],
)
def test_stage(obj, gold, expected):
    assert score("stage_classification", answer(obj), "fraud", gold) == expected


def test_stage_without_answer_json_is_zero():
    assert score("stage_classification", "<think>x</think>", "fraud", "complete") == 0.0


def test_stage_missing_column_means_complete():
    obj = {"conversation_stage": "complete", "is_fraud": True}
    assert make("stage_classification")([answer(obj)], answers=["fraud"])[0] == 5.0


# --- think length reward / penalty ----------------------------------------------------------------------


@pytest.mark.parametrize("target", [200, 300])
def test_think_length_reward_boundaries(target):
    name = f"think_length_reward_{target}"

    def at(t):
        return score(name, answer(SCENE_OK, think=think_of(t)), "外卖服务")

    assert at(0) == 0.0
    assert score(name, "no think at all", "外卖服务") == 0.0
    assert at(1) == pytest.approx(5 * math.log(2) / math.log(target + 1))
    # t = 0.25 (one full-width letter): 5·ln(1.25)/ln(T+1) < 0.5, so the 0.5 floor applies
    assert score(name, answer(SCENE_OK, think="ａ"), "外卖服务") == 0.5
    assert at(target // 2) == pytest.approx(5 * math.log(target // 2 + 1) / math.log(target + 1))
    assert at(target) == pytest.approx(5.0)
    assert at(target + 1) == 5.0
    assert at(10 * target) == 5.0


def test_think_length_reward_reads_only_the_think_block():
    long_answer = {**SCENE_OK, "reason": "诈" * 500}
    expected = 5 * math.log(2) / math.log(201)  # t = 1 from the single think character
    assert score("think_length_reward_200", answer(long_answer, think="短"), "外卖服务") == pytest.approx(expected)


@pytest.mark.parametrize(("start", "cap"), [(200, 5.0), (300, 5.0), (500, 7.0)])
def test_think_length_penalty_boundaries(start, cap):
    name = f"think_length_penalty_{start}"

    def at(t):
        return score(name, answer(SCENE_OK, think=think_of(t)), "外卖服务")

    assert at(0) == 0.0
    assert at(start) == 0.0
    assert at(start + 1) == pytest.approx(-cap * math.log(11) / math.log(1000))
    assert at(start + 1) == pytest.approx(-cap * 0.347, abs=0.01)  # the published jump to about -M/3
    assert at(start + 990) == pytest.approx(-cap)
    assert at(start + 5000) == -cap
    assert score(name, "<answer>{}</answer>", "外卖服务") == 0.0


def test_penalty_is_monotone_in_length():
    lengths = range(0, 1400, 7)
    values = [score("think_length_penalty_200", answer(SCENE_OK, think=think_of(t)), "fraud") for t in lengths]
    assert all(a >= b for a, b in itertools.pairwise(values))


# --- batches --------------------------------------------------------------------------------------------


def test_mixed_task_mixed_stage_batch_scores_each_row_against_its_own_gold():
    completions = [
        answer(SCENE_OK),  # scene, correct
        answer({"conversation_stage": "early_stage", "is_fraud": None, "reason": "r", "confidence": 0.2}),
        answer(TYPE_OK),  # fraud type, wrong
        answer({"conversation_stage": "late_stage", "is_fraud": False, "reason": "r", "confidence": 0.9}),
        "garbage",
        answer({"conversation_stage": "complete", "is_fraud": True, "reason": "r", "confidence": 0.9}),
    ]
    answers = ["外卖服务", "fraud", "钓鱼诈骗", "normal", "fraud", "fraud"]
    stages = ["complete", "early_stage", "complete", "late_stage", "late_stage", "complete"]
    kwargs = {"answers": answers, "conversation_stage": stages, "messages": [[]] * 6}
    assert make("adaptive_classification")(completions, **kwargs) == [5.0, 5.0, 0.0, 5.0, 0.0, 5.0]
    assert make("prompt_format")(completions, **kwargs) == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert make("stage_classification")(completions, **kwargs) == [0.0, 5.0, 0.0, 5.0, 0.0, 5.0]
    # permuting the batch permutes the scores: no cross-row leakage
    order = [5, 3, 1, 4, 0, 2]
    permuted = {k: [v[i] for i in order] for k, v in kwargs.items()}
    expected = [[5.0, 5.0, 0.0, 5.0, 0.0, 5.0][i] for i in order]
    assert make("adaptive_classification")([completions[i] for i in order], **permuted) == expected


def test_task_column_mixed_with_missing_values():
    completions = [answer(FRAUD_OK), answer(SCENE_OK)]
    out = make("adaptive_classification")(completions, answers=["fraud", "外卖服务"], task=["fraud", None])
    assert out == [5.0, 5.0]


def test_extra_columns_and_trainer_state_are_ignored():
    out = make("prompt_format")([answer(SCENE_OK)], answers=["外卖服务"], call_id=["c1"], trainer_state=object())
    assert out == [1.0]


def test_chat_message_completions_are_accepted():
    out = make("adaptive_classification")([{"role": "assistant", "content": answer(FRAUD_OK)}], answers=["fraud"])
    assert out == [5.0]


# --- never raises; floors ----------------------------------------------------------------------------------


def test_unscoreable_rows_get_the_floor_without_raising(caplog):
    completions = [answer(FRAUD_OK)] * 3
    bad = {"answers": ["fraud", "unknown-label", None], "conversation_stage": ["complete", "complete", "middle"]}
    for name, cls in REWARDS.items():
        out = make(name)(completions, **bad)
        assert len(out) == 3
        if cls.needs_gold and name != "stage_classification":
            assert out[1] == cls.floor and out[2] == cls.floor
    assert make("stage_classification")(completions, **bad)[2] == rewards.StageClassification.floor
    assert "floor" in caplog.text


def test_column_of_wrong_length_floors_every_row():
    out = make("adaptive_classification")([answer(FRAUD_OK)] * 3, answers=["fraud"] * 2)
    assert out == [-3.0, -3.0, -3.0]


def test_task_inconsistent_with_gold_is_unscoreable():
    assert score("adaptive_classification", answer(FRAUD_OK), "fraud", task="scene") == -3.0


def test_non_string_completions_do_not_raise():
    for name in REWARDS:
        out = make(name)([None, 3, ["x"], b"bytes"], answers=["fraud"] * 4)
        assert len(out) == 4 and all(math.isfinite(x) for x in out)


RANGES = {
    "adaptive_classification": {-3.0, 0.0, 5.0},
    "stage_classification": {-3.0, 0.0, 5.0},
}

tag_soup = st.lists(
    st.sampled_from(
        [
            "<think>",
            "</think>",
            "<answer>",
            "</answer>",
            "```json",
            "```",
            "{",
            "}",
            '"is_fraud": true',
            '"scene": "外卖服务"',
            '"conversation_stage": "complete"',
            '"reason": "r"',
            '"confidence": 0.5',
            "null",
            ",",
            " ",
            "\n",
            "诈骗",
            "abc",
        ]
    )
    | st.text(max_size=20),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    text=tag_soup,
    gold=st.sampled_from([*prompt.SCENES, *prompt.FRAUD_LABELS, *prompt.FRAUD_TYPES]),
    stage=st.sampled_from(prompt.STAGES),
)
def test_any_text_gives_a_finite_score_in_range(text, gold, stage):
    for name, cls in REWARDS.items():
        value = make(name)([text], answers=[gold], conversation_stage=[stage])[0]
        assert math.isfinite(value)
        if name in RANGES:
            assert value in RANGES[name]
        elif name == "prompt_format":
            assert value <= 1.0
            assert value == 0.0 or value >= 0.5 - 0.001 * len(text)
        elif name.startswith("think_length_reward"):
            assert value == 0.0 or 0.5 <= value <= 5.0
        else:
            assert value == 0.0 or -cls.cap <= value <= -0.1 * cls.cap


@settings(max_examples=300, deadline=None)
@given(
    obj=st.fixed_dictionaries(
        {"is_fraud": st.one_of(st.booleans(), st.none(), st.text(max_size=5))},
        optional={"reason": st.text(max_size=10), "confidence": st.floats(allow_nan=True)},
    ),
    think=st.text(max_size=30),
    suffix=st.text(max_size=60),
)
def test_adding_text_after_answer_never_raises_the_format_score(obj, think, suffix):
    base = f"<think>{think.replace('<', '')}</think><answer>{json.dumps(obj)}</answer>"
    before = make("prompt_format")([base], answers=["fraud"])[0]
    after = make("prompt_format")([base + suffix], answers=["fraud"])[0]
    assert after <= before


# --- logging ----------------------------------------------------------------------------------------------


def test_reward_log_is_off_by_default_and_appends_when_asked(tmp_path, monkeypatch):
    log_path = tmp_path / "logs" / "rewards.jsonl"
    monkeypatch.setattr(rewards, "_LOG", None)
    monkeypatch.delenv(rewards.LOG_ENV, raising=False)
    make("prompt_format")([answer(SCENE_OK)], answers=["外卖服务"])
    assert not log_path.exists()

    monkeypatch.setattr(rewards, "_LOG", None)
    monkeypatch.setenv(rewards.LOG_ENV, str(log_path))
    make("prompt_format")([answer(SCENE_OK), "x"], answers=["外卖服务"] * 2)
    make("adaptive_classification")([answer(SCENE_OK)], answers=["外卖服务"])
    lines = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    assert [(r["reward"], r["score"]) for r in lines] == [
        ("prompt_format", 1.0),
        ("prompt_format", 0.0),
        ("adaptive_classification", 5.0),
    ]
    assert lines[0]["completion"] == answer(SCENE_OK)
    rewards._LOG._file.close()
    monkeypatch.setattr(rewards, "_LOG", None)


def test_reward_log_every_rank_logs_its_own_completions_once(tmp_path, monkeypatch):
    """ms-swift scores each rank's completions on that rank: rank 0 (or a lone process) logs into the given
    path, rank N into rewards.rankN.jsonl beside it, so together they hold every completion exactly once."""
    log_path = tmp_path / "rewards.jsonl"
    monkeypatch.setenv(rewards.LOG_ENV, str(log_path))
    share = {"0": ["rank0 a", "rank0 b"], "1": ["rank1 a", "rank1 b"], None: ["single"]}
    try:
        for rank, completions in share.items():
            if rank is None:
                monkeypatch.delenv("RANK", raising=False)
            else:
                monkeypatch.setenv("RANK", rank)
            monkeypatch.setattr(rewards, "_LOG", None)  # a fresh process
            make("prompt_format")(completions, answers=["fraud"] * len(completions))
            rewards._LOG._file.close()
    finally:
        monkeypatch.setattr(rewards, "_LOG", None)
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["rewards.jsonl", "rewards.rank1.jsonl"]
    logged = {p.name: [json.loads(line)["completion"] for line in p.read_text().splitlines()] for p in files}
    assert logged == {"rewards.jsonl": ["rank0 a", "rank0 b", "single"], "rewards.rank1.jsonl": ["rank1 a", "rank1 b"]}


@pytest.mark.parametrize(
    ("path", "rank", "expected"),
    [
        ("/l/rewards.jsonl", None, "/l/rewards.jsonl"),
        ("/l/rewards.jsonl", "0", "/l/rewards.jsonl"),
        ("/l/rewards.jsonl", "3", "/l/rewards.rank3.jsonl"),
        ("/l.d/rewards", "12", "/l.d/rewards.rank12"),
        ("/l/rewards.jsonl", "x", "/l/rewards.jsonl"),  # not torchrun's: treated as a single process, never raises
        ("/l/rewards.jsonl", "²", "/l/rewards.jsonl"),
    ],
)
def test_reward_log_path_per_rank(path, rank, expected):
    assert rewards.rank_log_path(path, rank) == expected


def test_docstring_examples():
    import doctest

    import safe_qaq.answer

    for module in (rewards, safe_qaq.answer, prompt):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0
