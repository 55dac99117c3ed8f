"""Pictures: training curves from an ms-swift logging.jsonl, confusion matrices, live plots."""

from __future__ import annotations

import json

import pytest

from prompt import FRAUD, FRAUD_TYPES, NORMAL
from safe_qaq import plots, recipe
from safe_qaq.metrics import sample_from_label, task_metrics
from safe_qaq.trainlog import read_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def grpo_log_lines(steps: int = 4) -> list[str]:
    """What ms-swift 4.6's GRPO trainer appends to logging.jsonl (key names from grpo_trainer.py / patcher.py)."""
    lines = []
    for step in range(1, steps + 1):
        rec = {
            "loss": 0.1 / step,
            "grad_norm": 1.0,
            "learning_rate": 3e-5,
            "completions/mean_length": 300.0 - step,
            "completions/min_length": 100.0,
            "completions/max_length": 512.0,
            "completions/clipped_ratio": 0.0,
            "rewards/PromptFormat/mean": 0.5 + 0.1 * step,
            "rewards/PromptFormat/std": 0.1,
            "rewards/AdaptiveClassification/mean": float(step),
            "rewards/AdaptiveClassification/std": 0.5,
            "reward": 1.5 + step,
            "reward_std": 0.3,
            "frac_reward_zero_std": 0.0,
            "kl": 0.01 * step,
            "epoch": step / steps,
            "global_step/max_steps": f"{step}/{steps}",
            "percentage": "25.00%",
            "elapsed_time": "1s",
            "remaining_time": "3s",
        }
        lines.append(json.dumps(rec))
    # the summary line written at the end of training, and a line cut short by a kill
    lines.append(json.dumps({"last_model_checkpoint": "x", "best_model_checkpoint": None, "log_history": []}))
    lines.append('{"loss": 0.1, "global_st')
    return lines


def test_read_log_skips_summary_and_truncated(tmp_path):
    log = tmp_path / "logging.jsonl"
    log.write_text("\n".join(grpo_log_lines(3)) + "\n")
    records = read_log(log)
    assert [r["step"] for r in records] == [1, 2, 3]


def test_curves_of_a_log_killed_inside_a_character_or_with_a_bad_byte(tmp_path, capsys):
    """A run killed mid-write can leave half a multibyte character; it used to stop the whole plot."""
    log = tmp_path / "logging.jsonl"
    good = "\n".join(grpo_log_lines(4)[:2]).encode() + b"\n"
    torn = json.dumps({"loss": 0.1, "note": "诈骗", "global_step/max_steps": "3/4"}, ensure_ascii=False).encode()
    log.write_bytes(good + torn[: torn.index("骗".encode()) + 1])
    assert plots.main(["curves", str(tmp_path)]) == 0
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert capsys.readouterr().err == ""  # a torn last line is a run still writing: nothing to warn about
    log.write_bytes(good.replace(b"\n", b"\xff\n", 1) + torn)  # a bad byte on line 1, not the last line
    assert [r["step"] for r in read_log(log)] == [2, 3]
    column = good.index(b"\n") + 1
    assert capsys.readouterr().err == f"warning: skipped {log}:1: not valid UTF-8 (byte 0xff at column {column})\n"


def test_curve_panels_follow_the_keys_present():
    keys = json.loads(grpo_log_lines(1)[0]).keys()
    panels = dict(plots.curve_panels(list(keys)))
    assert panels["loss"] == ["loss"]
    assert panels["kl"] == ["kl"]
    assert panels["reward"] == ["reward"]
    assert panels["reward: PromptFormat"] == ["rewards/PromptFormat/mean"]
    assert panels["reward: AdaptiveClassification"] == ["rewards/AdaptiveClassification/mean"]
    assert panels["completion length"] == [
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
    ]
    assert panels["completions/clipped_ratio"] == ["completions/clipped_ratio"]
    flat = [k for ks in panels.values() for k in ks]
    assert not any(k.endswith("/std") and k.startswith("rewards/") for k in flat)  # std is a band, not a line
    # an unknown reward name in a future ms-swift still gets its own panel
    assert "reward: NewThing" in dict(plots.curve_panels(["rewards/NewThing/mean", "loss"]))


def test_curves_cli_writes_png_beside_each_log(tmp_path):
    run = tmp_path / "run"
    (run / "v0-20260101").mkdir(parents=True)
    (run / "v0-20260101" / "logging.jsonl").write_text("\n".join(grpo_log_lines()) + "\n")
    assert plots.main(["curves", str(run)]) == 0
    png = run / "v0-20260101" / "curves.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert plots.main(["curves", str(tmp_path / "nothing")]) == 1


def test_curves_of_several_runs_in_one_call(tmp_path):
    """What the demo runs once for its GRPO stages: RUN_curves.png per run in --out-dir."""
    runs = []
    for name in ("stage1_grpo", "stage2_lcrl"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "logging.jsonl").write_text("\n".join(grpo_log_lines()) + "\n")
        runs.append(str(tmp_path / name))
    assert plots.main(["curves", *runs, "--out-dir", str(tmp_path / "pngs")]) == 0
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["stage1_grpo_curves.png", "stage2_lcrl_curves.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in (tmp_path / "pngs").iterdir())
    with pytest.raises(SystemExit):  # --out names one file
        plots.main(["curves", *runs, "--out", str(tmp_path / "one.png")])


def test_curves_for_an_sft_log(tmp_path):
    log = tmp_path / "logging.jsonl"
    recs = [{"loss": 2.0 / s, "token_acc": 0.1 * s, "global_step/max_steps": f"{s}/3"} for s in (1, 2, 3)]
    log.write_text("\n".join(json.dumps(r) for r in recs))
    out = plots.curves_png(log, tmp_path / "c.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    log.write_text(json.dumps({"global_step/max_steps": "1/1", "memory(GiB)": 1.0}))
    with pytest.raises(ValueError):
        plots.curves_png(log, tmp_path / "d.png")


def test_confusion_png_with_chinese_labels(tmp_path):
    pairs = [(FRAUD_TYPES[0], FRAUD_TYPES[0]), (FRAUD_TYPES[1], FRAUD_TYPES[0]), (FRAUD_TYPES[1], None)]
    m = task_metrics([sample_from_label("fraud_type", g, p) for g, p in pairs])
    out = plots.confusion_png(m, tmp_path / "cm.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_live_pngs(tmp_path):
    steps = [
        {"round": 1, "end_s": 2.0, "stage": "early_stage", "label": None, "confidence": 0.3, "decided": False},
        {"round": 2, "end_s": 4.0, "stage": "late_stage", "label": FRAUD, "confidence": 0.9, "decided": True},
    ]
    result = {"call_id": "c", "task": "fraud", "duration_s": 6.0, "steps": steps}
    result |= {"decision_time_s": 4.0, "decision_label": FRAUD, "alarm": True}
    assert plots.timeline_png(result, tmp_path / "t.png", threshold=0.8).read_bytes().startswith(PNG_MAGIC)
    rows = [
        {"fraction": f, "decided_rate": f, "accuracy": f, "fraud_recall": f, "false_alarm_rate": 0.0} for f in (0.5, 1)
    ]
    curve = plots.live_curve_png({"task": "fraud", "n_calls": 2, "by_fraction": rows}, tmp_path / "l.png")
    assert curve.read_bytes().startswith(PNG_MAGIC)
    assert NORMAL  # the colour table knows both fraud labels
    assert set(plots._LABEL_COLOURS) >= {FRAUD, NORMAL, None}


def test_stage_moves_reads_each_stage_target_from_its_log(tmp_path):
    from safe_qaq.jsonl import dumps
    from safe_qaq.trainlog import moves_table, stage_moves

    stage1 = tmp_path / "stage1_grpo"
    stage1.mkdir()
    pairs = [(1.0, 1.0), (1.0, 0.0), (2.0, 1.0), (2.0, 1.0), (4.0, 1.0), (4.0, 1.0)]
    rows = [{"rewards/AdaptiveClassification/mean": v, "reward_std": s, "global_step/max_steps": f"{i}/6"}
            for i, (v, s) in enumerate(pairs, 1)]  # fmt: skip
    (stage1 / "logging.jsonl").write_text("".join(dumps(r) for r in rows))
    rsft = tmp_path / "stage2_rsft"
    rsft.mkdir()
    losses = [{"loss": v, "global_step/max_steps": f"{i}/3"} for i, v in enumerate((3.0, 2.0, 1.0), 1)]
    (rsft / "logging.jsonl").write_text("".join(dumps(r) for r in losses))
    moves = stage_moves(tmp_path, recipe.load("smoke", env={}))
    got = [(m["stage"], m["first"], m["last"]) for m in moves]
    assert got == [("1 GRPO (SAFE-RL)", 1.0, 4.0), ("2b RSFT (SAFE-RS)", 3.0, 1.0)]
    assert moves[0]["steps_with_reward_spread"] == 5 / 6 and moves[1]["steps_with_reward_spread"] is None
    table = moves_table(moves)
    assert "| 1 GRPO (SAFE-RL) | accuracy reward | 1.000 | 4.000 | 6 | 83 % |" in table
    assert "| 2b RSFT (SAFE-RS) | SFT loss | 3.000 | 1.000 | 3 | – |" in table
