"""safe_qaq.process_samples: shortest correct completion per prompt, with the reward's notion of correct."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prompt
from safe_qaq.answer import parse_answer
from safe_qaq.process_samples import SAMPLE_COLUMNS, main, process
from safe_qaq.rewards import REWARDS
from safe_qaq.sample import prompt_id

ACCURACY = REWARDS["adaptive_classification"](args=None)


def prompt_row(task="fraud", gold=prompt.FRAUD, *, stage=prompt.COMPLETE, mode="offline", call="c1"):
    return {
        "messages": prompt.build_messages(task, mode=mode),
        "audios": [f"/audio/{call}.flac"],
        "answers": gold,
        "conversation_stage": stage,
        "task": task,
        "call_id": call,
    }


def group(row, index, completions):
    """The lines sample.py writes for one prompt."""
    pid = prompt_id(row)
    return [
        {**row, "prompt_index": index, "prompt_id": pid, "sample_index": k, "completion": text}
        for k, text in enumerate(completions)
    ]


def write(path, lines):
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return str(path)


def read(path):
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]


def answer(task, value, think="分析", *, stage=None, tail="", indent=None):
    obj = {} if stage is None else {"conversation_stage": stage}
    obj.update({prompt.LABEL_FIELD[task]: value, "reason": "理由", "confidence": 0.9})
    body = f"<answer>{json.dumps(obj, ensure_ascii=False, indent=indent)}</answer>"
    return body + tail if think is None else f"<think>{think}</think>{body}{tail}"


def run(tmp_path, lines, *extra, name="samples.jsonl"):
    """The real CLI on one file; returns (exit code, kept rows, unsolved rows); None when not written."""
    out, unsolved = tmp_path / "rsft.jsonl", tmp_path / "unsolved.jsonl"
    code = main([write(tmp_path / name, lines), "--output", str(out), "--unsolved", str(unsolved), *extra])
    return code, *(read(path) if path.exists() else None for path in (out, unsolved))


def reward(row, text):
    return ACCURACY(
        [text], answers=[row["answers"]], conversation_stage=[row["conversation_stage"]], task=[row["task"]]
    )[0]


# --- selection --------------------------------------------------------------------------------------


def test_shortest_correct_by_think_estimate_then_characters(tmp_path):
    row = prompt_row()
    texts = [
        answer("fraud", False, "很短"),  # wrong, however short
        answer("fraud", True, "诈骗" * 20),  # correct, t = 40
        answer("fraud", True, "a b c d e f g h"),  # correct, t = 8 + 7/4 = 9.75
        answer("fraud", True, "abcdefgh" * 3, indent=2),  # correct, t = 1 + 23/4: shortest estimate
        answer("fraud", True, "abcdefgh" * 3),  # same think, fewer characters: this one
        answer("fraud", True, "abcdefgh" * 3),  # an exact tie keeps the earlier sample
    ]
    assert parse_answer(texts[3]).think_tokens == parse_answer(texts[4]).think_tokens == 6.75
    code, kept, unsolved = run(tmp_path, group(row, 0, texts))
    assert code == 0 and unsolved == []
    [sft] = kept
    assert sft["messages"][-1] == {"role": "assistant", "content": texts[4]}


def test_sft_row_is_prompt_plus_kept_completion_with_audio_and_gold(tmp_path):
    rows = [prompt_row(call="c1"), prompt_row("scene", "外卖服务", call="c2")]
    rows[1]["extra"] = {"kept": True}  # unknown columns travel too
    good = [answer("fraud", True), answer("scene", "外卖服务")]
    code, kept, _ = run(tmp_path, group(rows[0], 0, ["x", good[0]]) + group(rows[1], 1, [good[1], "y"]))
    assert code == 0
    for row, text, sft in zip(rows, good, kept, strict=True):
        assert sft == {**row, "messages": [*row["messages"], {"role": "assistant", "content": text}]}
        assert not set(SAMPLE_COLUMNS) & set(sft)


def test_sft_row_sampled_as_a_prompt_gets_its_answer_replaced_not_doubled(tmp_path):
    # the engine asks an SFT row's question again (drops its assistant turn), so the kept
    # completion must take that turn's place rather than follow it
    row = prompt_row()
    sft_row = {**row, "messages": [*row["messages"], {"role": "assistant", "content": "gold answer"}]}
    text = answer("fraud", True)
    code, kept, _ = run(tmp_path, group(sft_row, 0, [text]))
    assert code == 0
    assert kept[0]["messages"] == [*row["messages"], {"role": "assistant", "content": text}]


def test_prompt_without_a_correct_completion_goes_to_unsolved_unchanged(tmp_path):
    solved, unsolved_row = prompt_row(call="c1"), prompt_row("scene", "外卖服务", call="c2")
    wrong = [answer("scene", "打车服务"), answer("scene", 3), "no tags at all", answer("scene", None, stage="complete")]
    code, kept, unsolved = run(tmp_path, group(solved, 0, [answer("fraud", True)]) + group(unsolved_row, 1, wrong))
    assert code == 0
    assert [r["call_id"] for r in kept] == ["c1"]
    assert unsolved == [unsolved_row]  # the prompt row as it was, without the sample columns


def test_non_string_completion_is_not_correct_and_does_not_crash(tmp_path):
    row = prompt_row()
    code, kept, unsolved = run(tmp_path, group(row, 0, [None, 42, {"content": "x"}]))
    assert code == 0 and kept == [] and unsolved == [row]


# --- correctness is the reward's ----------------------------------------------------------------------

TASK_GOLDS = [(task, gold) for task, labels in prompt.TASK_LABELS.items() for gold in labels]


@st.composite
def completions_for(draw, task, gold, realtime):
    labels = prompt.TASK_LABELS[task]
    texts = []
    for _ in range(draw(st.integers(1, 6))):
        label = draw(st.sampled_from(labels))
        value = draw(
            st.sampled_from(
                [prompt.answer_value(task, label), None, "不确定", 3, prompt.answer_value(task, gold), "null"]
            )
        )
        stage = draw(st.sampled_from([None, *prompt.STAGES])) if realtime else None
        think = draw(st.one_of(st.none(), st.text(alphabet="诈骗ab1 ，.", max_size=30)))
        text = answer(task, value, think, stage=stage, tail=draw(st.sampled_from(["", " 多余"])))
        texts.append(draw(st.sampled_from([text, text.replace("</answer>", ""), text[: len(text) // 2]])))
    return texts


@st.composite
def prompt_groups(draw):
    groups = []
    for index in range(draw(st.integers(1, 5))):
        task, gold = draw(st.sampled_from(TASK_GOLDS))
        realtime = draw(st.booleans())
        stage = draw(st.sampled_from(prompt.STAGES)) if realtime else prompt.COMPLETE
        row = prompt_row(task, gold, stage=stage, mode="realtime" if realtime else "offline", call=f"c{index}")
        groups.append((row, draw(completions_for(task, gold, realtime))))
    return groups


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=prompt_groups(), allow_malformed=st.booleans())
def test_kept_and_unsolved_agree_with_the_accuracy_reward(groups, allow_malformed):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = [line for i, (row, texts) in enumerate(groups) for line in group(row, i, texts)]
        out, missed = tmp / "rsft.jsonl", tmp / "unsolved.jsonl"
        process([write(tmp / "s.jsonl", lines)], str(out), str(missed), require_format=not allow_malformed)
        kept = {r["call_id"]: r["messages"][-1]["content"] for r in read(out)}
        unsolved = {r["call_id"] for r in read(missed)}
    for row, texts in groups:
        # eligible = what the reward pays +5 for, with the tags in order unless --allow-malformed
        eligible = [t for t in texts if reward(row, t) == 5.0 and (allow_malformed or parse_answer(t).tags_ok)]
        if eligible:
            assert row["call_id"] in kept and row["call_id"] not in unsolved
            chosen = kept[row["call_id"]]
            assert reward(row, chosen) == 5.0
            assert min((parse_answer(t).think_tokens, len(t)) for t in eligible) == (
                parse_answer(chosen).think_tokens,
                len(chosen),
            )
        else:
            assert row["call_id"] in unsolved and row["call_id"] not in kept
            if allow_malformed:
                assert all(reward(row, t) < 5.0 for t in texts)


def test_format_required_by_default_and_allow_malformed_lifts_it(tmp_path):
    row = prompt_row()
    bare = answer("fraud", True, think=None)  # correct, but no <think>: the reward still pays 5
    well_formed = answer("fraud", True, "诈骗" * 50)
    assert reward(row, bare) == 5.0 and not parse_answer(bare).tags_ok
    code, kept, unsolved = run(tmp_path, group(row, 0, [bare]))
    assert code == 0 and kept == [] and unsolved == [row]
    code, kept, unsolved = run(tmp_path, group(row, 0, [bare]), "--allow-malformed")
    assert code == 0 and [r["messages"][-1]["content"] for r in kept] == [bare] and unsolved == []
    # with both, the default keeps the longer well-formed one; --allow-malformed the shorter bare one
    _, kept, _ = run(tmp_path, group(row, 0, [bare, well_formed]))
    assert kept[0]["messages"][-1]["content"] == well_formed
    _, kept, _ = run(tmp_path, group(row, 0, [bare, well_formed]), "--allow-malformed")
    assert kept[0]["messages"][-1]["content"] == bare


@pytest.mark.parametrize(("stage", "solved"), [("early_stage", True), ("late_stage", False), ("complete", False)])
def test_null_answer_is_correct_only_at_early_stage(tmp_path, stage, solved):
    row = prompt_row(stage=stage, mode="realtime")
    null = answer("fraud", None, stage=stage)
    assert (reward(row, null) == 5.0) is solved
    code, kept, unsolved = run(tmp_path, group(row, 0, [null, answer("fraud", False, stage=stage)]))
    assert code == 0
    assert [r["messages"][-1]["content"] for r in kept] == ([null] if solved else [])
    assert unsolved == ([] if solved else [row])


# --- bad inputs ---------------------------------------------------------------------------------------


def test_overlapping_shards_are_refused_with_exit_code_2(tmp_path, capsys):
    a, b = prompt_row(call="c1"), prompt_row(call="c2")
    shard0 = write(tmp_path / "shard0.jsonl", group(a, 0, ["x", "y"]) + group(b, 1, ["z"]))
    shard1 = write(tmp_path / "shard1.jsonl", group(b, 1, ["z"]))  # prompt 1 again
    argv = [shard0, shard1, "--output", str(tmp_path / "o.jsonl"), "--unsolved", str(tmp_path / "u.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{shard1}:1" in err and "appears in two places" in err


def test_same_prompt_at_two_places_in_one_file_is_refused(tmp_path, capsys):
    a, b = prompt_row(call="c1"), prompt_row(call="c2")
    lines = group(a, 0, ["x"]) + group(b, 1, ["y"]) + group(a, 0, ["z"])
    code, _, _ = run(tmp_path, lines)
    assert code == 2 and f"{tmp_path / 'samples.jsonl'}:3" in capsys.readouterr().err


@pytest.mark.parametrize("column", SAMPLE_COLUMNS)
def test_line_missing_a_sample_column_names_file_and_line(tmp_path, capsys, column):
    lines = group(prompt_row(), 0, ["a", "b", "c"])
    del lines[1][column]
    code, _, _ = run(tmp_path, lines)
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'samples.jsonl'}:2" in err and column in err


def test_malformed_json_line_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "samples.jsonl"
    good = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in group(prompt_row(), 0, ["a", "b"]))
    path.write_text(good + '{"prompt_index": 1, "comp\n', encoding="utf-8")
    argv = [str(path), "--output", str(tmp_path / "o.jsonl"), "--unsolved", str(tmp_path / "u.jsonl")]
    assert main(argv) == 2
    assert f"{path}:3" in capsys.readouterr().err


def test_unknown_gold_label_names_file_and_line(tmp_path, capsys):
    row = {**prompt_row(), "answers": "maybe", "task": None}
    code, _, _ = run(tmp_path, group(prompt_row(call="ok"), 0, ["a"]) + group(row, 1, ["b"]))
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'samples.jsonl'}:2" in err and "maybe" in err


# --- report -------------------------------------------------------------------------------------------


def test_per_task_stats_table_is_printed(tmp_path, capsys):
    fraud_ok, fraud_missed = prompt_row(call="c1"), prompt_row(call="c2")
    scene = prompt_row("scene", "外卖服务", call="c3")
    lines = (
        group(fraud_ok, 0, [answer("fraud", True, "诈骗" * 10), answer("fraud", False, "诈骗" * 30)])
        + group(fraud_missed, 1, ["nothing", answer("fraud", False)])
        + group(scene, 2, [answer("scene", "外卖服务", "诈骗" * 4)])
    )
    code, _, _ = run(tmp_path, lines, "--stats", str(tmp_path / "stats.json"))
    out = capsys.readouterr().out
    assert code == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (stats["prompts"], stats["kept"], stats["unsolved"], stats["completions"]) == (3, 2, 1, 5)
    assert stats["tasks"]["fraud"]["think_mean_kept"] == 20.0 and stats["tasks"]["scene"]["kept"] == 1
    # | task | prompts | kept | unsolved | correct/completions | mean think t (all) | mean think t (kept) |
    assert "| task | prompts | kept | unsolved |" in out
    assert "| fraud | 2 | 1 | 1 | 1/4 | 20.5 | 20.0 |" in out  # think t: 20, 60, 0 (none), 2
    assert "| scene | 1 | 1 | 0 | 1/1 | 8.0 | 8.0 |" in out
    assert "| all | 3 | 2 | 1 | 2/5 |" in out
    assert "5 completions in" in out


def test_a_failed_run_leaves_no_output_that_looks_valid(tmp_path):
    from safe_qaq.process_samples import main

    good = tmp_path / "good.jsonl"
    bad = tmp_path / "bad.jsonl"
    output, unsolved = tmp_path / "rsft.jsonl", tmp_path / "unsolved.jsonl"
    good.write_text("")
    bad.write_text("{not json\n")
    output.write_text("an earlier run's result\n")
    assert main([str(good), str(bad), "--output", str(output), "--unsolved", str(unsolved)]) == 2
    assert output.read_text() == "an earlier run's result\n"  # untouched, not truncated
    assert not unsolved.exists()
    assert not list(tmp_path.glob("*.partial*"))  # the partial files (named after the pid) are removed
