"""The shared answer parser (safe_qaq.answer): extraction, schema, length estimate, verdicts."""

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prompt
from safe_qaq.answer import (
    MISSING,
    GoldError,
    Verdict,
    _think_length_regex,
    judge,
    parse_answer,
    resolve_stage,
    resolve_task,
    schema_error,
    think_length,
)


def answer(obj, think="分析", fence=False, after=""):
    body = json.dumps(obj, ensure_ascii=False) if not isinstance(obj, str) else obj
    if fence:
        body = f"```json\n{body}\n```"
    return f"<think>{think}</think>\n<answer>{body}</answer>{after}"


# --- tags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>a</think><answer>b</answer>", True),
        ("<think>a</think> \n\t <answer>b</answer>", True),
        ("prefix <think>a</think><answer>b</answer> suffix", True),
        ("<think></think><answer></answer>", True),
        ("<think>a</think>x<answer>b</answer>", False),  # only whitespace may separate them
        ("<answer>b</answer><think>a</think>", False),
        ("<think>a</think><answer>b", False),
        ("<think>a<answer>b</answer>", False),
        ("<think>a</think></think>\n<answer>b</answer>", True),  # a later </think> may close it
        ("<think>a</think>x</think> <answer>b</answer>", True),
        ("", False),
    ],
)
def test_tags_match_the_reference_regex(text, ok):
    import re

    reference = re.search(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.S) is not None
    assert reference == ok
    assert parse_answer(text).tags_ok is ok


def test_think_is_first_block_stripped_even_without_answer():
    parsed = parse_answer("  <think>  first </think><think>second</think>")
    assert parsed.think == "first"
    assert parsed.obj is None and parsed.error == "no <answer> tag"


def test_unclosed_think_gives_no_think_text():
    assert parse_answer("<think>never closed <answer>{}</answer>").think is None


def test_answer_block_is_first_open_to_next_close():
    parsed = parse_answer('<answer>{"scene": "外卖服务"}</answer><answer>{"scene": "打车服务"}</answer>')
    assert parsed.label("scene") == "外卖服务"


def test_unclosed_answer_is_reported():
    parsed = parse_answer('<think>x</think><answer>{"scene": "外卖服务"}')
    assert parsed.obj is None and parsed.error == "<answer> is not closed"


# --- JSON extraction ----------------------------------------------------------------------


def test_bare_and_fenced_json_parse_the_same():
    obj = {"is_fraud": True, "reason": "r", "confidence": 0.5}
    assert parse_answer(answer(obj)).obj == obj
    assert parse_answer(answer(obj, fence=True)).obj == obj
    assert parse_answer(answer(json.dumps(obj).join(["```\n", "\n```"]))).obj == obj


def test_brace_inside_a_string_does_not_end_the_object():
    obj = {"scene": "外卖服务", "reason": "他说 } 然后 { 又说", "confidence": 0.9}
    assert parse_answer(answer(obj)).obj == obj


def test_text_after_the_object_is_ignored():
    parsed = parse_answer('<answer>结论如下 {"scene": "外卖服务"} 以上 {"scene": "打车服务"}</answer>')
    assert parsed.label("scene") == "外卖服务"


def test_raw_newlines_and_tabs_inside_strings_are_tolerated():
    parsed = parse_answer('<answer>{"scene": "外卖服务", "reason": "第一行\n第二行\t制表"}</answer>')
    assert parsed.obj["reason"] == "第一行\n第二行\t制表"


def test_fence_without_object_is_a_failure_not_a_guess():
    parsed = parse_answer("<answer>```json\nis_fraud: true\n```</answer>")
    assert parsed.obj is None and "no JSON object" in parsed.error


def test_malformed_json_reports_why():
    parsed = parse_answer('<answer>{"scene": 外卖服务}</answer>')
    assert parsed.obj is None and parsed.error.startswith("answer JSON does not parse")


def test_no_label_is_guessed_from_free_text():
    parsed = parse_answer("<think>这是诈骗 true fraud</think><answer>是诈骗 is_fraud: true</answer>")
    assert parsed.obj is None
    assert parsed.prediction("fraud") is None
    assert judge(parsed, "fraud", prompt.FRAUD) is Verdict.NO_ANSWER


def test_deeply_nested_json_does_not_raise():
    parsed = parse_answer("<answer>" + "[" * 100_000 + "</answer>")
    assert parsed.obj is None


# --- absent vs null ---------------------------------------------------------------------------


def test_absent_key_is_not_null():
    parsed = parse_answer('<answer>{"reason": "x"}</answer>')
    assert parsed.label("fraud") is MISSING
    parsed = parse_answer('<answer>{"is_fraud": null}</answer>')
    assert parsed.label("fraud") is None


# --- trailing text --------------------------------------------------------------------------


def test_trailing_counts_stripped_text_after_last_answer_close():
    assert parse_answer("<answer>{}</answer>  \n").trailing_chars == 0
    assert parse_answer("<answer>{}</answer>  abc \n").trailing_chars == 3
    assert parse_answer("<answer>{}</answer>ab</answer>x").trailing_chars == 1
    assert parse_answer("no tags at all").trailing_chars == 0


# --- schema --------------------------------------------------------------------------------------

VALID = {
    "scene": {"scene": "外卖服务", "reason": "r", "confidence": 0.9},
    "fraud": {"is_fraud": False, "reason": "r", "confidence": 0.9},
    "fraud_type": {"fraud_type": "投资诈骗", "reason": "r", "confidence": 0.9},
}


@pytest.mark.parametrize("task", prompt.TASKS)
def test_valid_objects(task):
    assert schema_error(VALID[task], task) is None


@pytest.mark.parametrize(
    ("change", "ok"),
    [
        ({"confidence": 0}, True),
        ({"confidence": 1}, True),
        ({"confidence": 1.0}, True),
        ({"confidence": 1.01}, False),
        ({"confidence": -0.01}, False),
        ({"confidence": True}, False),
        ({"confidence": "0.9"}, False),
        ({"confidence": float("nan")}, False),
        ({"confidence": float("inf")}, False),
        ({"reason": None}, False),
        ({"reason": 3}, False),
        ({"extra": [1, 2]}, True),
    ],
)
def test_schema_boundaries(change, ok):
    obj = {**VALID["scene"], **change}
    assert (schema_error(obj, "scene") is None) is ok


def test_schema_missing_fields():
    for key in ("scene", "reason", "confidence"):
        obj = dict(VALID["scene"])
        del obj[key]
        assert schema_error(obj, "scene") is not None


def test_label_types_per_task():
    assert schema_error({**VALID["fraud"], "is_fraud": "true"}, "fraud") is not None
    assert schema_error({**VALID["fraud"], "is_fraud": 1}, "fraud") is not None
    assert schema_error({**VALID["scene"], "scene": 3}, "scene") is not None
    # a string outside the label set is schema-valid; accuracy punishes it
    assert schema_error({**VALID["fraud_type"], "fraud_type": "电信诈骗"}, "fraud_type") is None


def test_null_label_only_in_the_realtime_schema():
    null_offline = {**VALID["fraud"], "is_fraud": None}
    assert schema_error(null_offline, "fraud") is not None
    assert schema_error({**null_offline, "conversation_stage": "early_stage"}, "fraud") is None
    # in the real-time schema the stage must be a string
    assert schema_error({**VALID["fraud"], "conversation_stage": None}, "fraud") is not None
    assert schema_error({**VALID["fraud"], "conversation_stage": 1}, "fraud") is not None


# --- think length ---------------------------------------------------------------------------------


def test_think_length_formula_parts():
    assert think_length("") == 0.0
    assert think_length(None) == 0.0
    assert think_length("诈骗电话") == 4  # C=4
    assert think_length("hello world 42") == 3 + (14 - 3) / 4  # W=3, rest = 11 chars
    assert think_length("，。！？；：（）“”‘’") == 12  # Chinese punctuation, P=12
    assert think_length(",.!?;:()\"'-") == 11  # ASCII punctuation, P=11
    assert think_length("   ") == 0.75
    assert think_length("ａ") == 0.25  # full-width letter is neither CJK nor [A-Za-z0-9]


def test_think_length_mixed():
    # C=2 (诈骗), W=3 (abc, 12, x), P=2 (， and .), L=11 -> 7 + (11 - 7) / 4
    assert think_length("诈骗abc，12. x") == 8.0


# --- verdicts --------------------------------------------------------------------------------------


def v(obj, task, gold, stage="complete"):
    return judge(parse_answer(answer(obj)), task, gold, stage)


def test_verdicts():
    assert v({"is_fraud": True}, "fraud", "fraud") is Verdict.CORRECT
    assert v({"is_fraud": False}, "fraud", "normal") is Verdict.CORRECT
    assert v({"is_fraud": False}, "fraud", "fraud") is Verdict.WRONG
    assert v({"is_fraud": "true"}, "fraud", "fraud") is Verdict.INVALID
    assert v({"scene": 3}, "scene", "外卖服务") is Verdict.INVALID
    assert v({"scene": "银行"}, "scene", "外卖服务") is Verdict.INVALID
    assert v({"fraud_type": "外卖服务"}, "fraud_type", "投资诈骗") is Verdict.INVALID  # another task's label
    assert v({"scene": None}, "scene", "外卖服务", "early_stage") is Verdict.NULL_EARLY
    assert v({"scene": None}, "scene", "外卖服务", "late_stage") is Verdict.NULL
    assert v({"reason": "x"}, "scene", "外卖服务", "early_stage") is Verdict.ABSENT
    assert judge(parse_answer("nothing"), "scene", "外卖服务") is Verdict.NO_ANSWER
    assert Verdict.CORRECT.is_correct and Verdict.NULL_EARLY.is_correct
    assert not any(x.is_correct for x in Verdict if x not in (Verdict.CORRECT, Verdict.NULL_EARLY))


def test_resolve_task_and_stage():
    assert resolve_task("外卖服务") == "scene"
    assert resolve_task("fraud") == "fraud"
    assert resolve_task("投资诈骗", "fraud_type") == "fraud_type"
    for bad in [("unknown", None), ("fraud", "scene"), ("fraud", "nope"), (None, None)]:
        with pytest.raises(GoldError):
            resolve_task(*bad)
    assert resolve_stage(None) == "complete"
    assert resolve_stage("late_stage") == "late_stage"
    with pytest.raises(GoldError):
        resolve_stage("middle")


# --- hostile input stays linear ------------------------------------------------------------------


def _parse_seconds(text):
    parse_answer.cache_clear()
    start = time.perf_counter()
    parse_answer(text)
    return time.perf_counter() - start


@pytest.mark.parametrize(
    "unit",
    ["<think>", "</think> <answer>", "<answer>", "<think>a</think>   ", "<answer>{", "```"],
)
def test_hostile_repetition_is_not_quadratic(unit):
    # A backtracking regex takes seconds on 20k repetitions (quadratic); a linear parser takes
    # milliseconds.  The bound is loose on purpose (shared CI machine): quadratic would be ~100x over it.
    assert _parse_seconds(unit * 20_000) < 1.0


# --- the fast think-length estimate equals its regex definition ---------------------------------


def test_think_length_matches_definition_on_every_code_point():
    every_char = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    for start in range(0, len(every_char), 4096):
        chunk = every_char[start : start + 4096]
        assert think_length(chunk) == _think_length_regex(chunk)


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from([*"诈骗ab1 ,.-，。“”‘’（）ａ\n\t\U0001f600", chr(0x9FFF), chr(0x4E00), chr(0x3001)])
    )
)
def test_think_length_matches_definition(text):
    assert think_length(text) == _think_length_regex(text)


TAG_PIECES = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "{}", "<", ">"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(TAG_PIECES), max_size=14).map("".join))
def test_tags_ok_equals_the_reference_regex_on_tag_soup(text):
    import re

    reference = re.search(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.S) is not None
    parse_answer.cache_clear()
    assert parse_answer(text).tags_ok is reference
