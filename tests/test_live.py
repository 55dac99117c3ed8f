"""The real-time decision loop, with a scripted fake model that decides at the second prefix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from prompt import AUDIO_TAG, FRAUD, LATE_STAGE, NORMAL, SCENES, get_prompt
from safe_qaq import live
from safe_qaq.calls import turn_boundaries_ms
from tests.helpers.engines import listener_engine

SR = 16000


def write_wav(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(str(path), (0.1 * rng.standard_normal(round(seconds * SR))).astype(np.float32), SR)
    return path


def audio_seconds(paths: list[str]) -> float:
    return sum(sf.info(p).frames for p in paths) / SR


def ScriptedModel(label=FRAUD, decide_after_s=3.5, conf=0.9, early_conf=0.3, garbage_before=False):
    """Answers null until it has heard ``decide_after_s`` of audio, then ``label`` with confidence ``conf``."""
    return listener_engine(label, decide_after_s, conf=conf, early_conf=early_conf, scene_conf=0.99,
                           garbage_before=garbage_before, reasons=False)  # fmt: skip


@pytest.fixture
def call7(tmp_path):
    return live.LiveCall("c7", str(write_wav(tmp_path / "c7.wav", 7.0)), gold=FRAUD)


def test_prefix_ends():
    assert live.prefix_ends(7.0, hop_s=2.0) == [2.0, 4.0, 6.0, 7.0]
    assert live.prefix_ends(6.0, hop_s=2.0) == [2.0, 4.0, 6.0]
    turns = [{"start": 0.2, "end": 1.5}, {"start": 1.8, "end": 3.25}, {"start": 3.5, "end": 6.9}]
    # after each turn, in the middle of the pause (where the real-time training rows are cut)
    assert live.prefix_ends(7.0, turns=turns) == [1.65, 3.375, 7.0]
    assert live.prefix_ends(3.0, turns=turns) == [1.65, 3.0]
    assert turn_boundaries_ms(turns, 7000) == [1650, 3375]


def test_decides_at_second_prefix_and_raises_alarm(call7, tmp_path):
    model = ScriptedModel(FRAUD, decide_after_s=3.5)
    [res] = live.run_live(model, [call7], hop_s=2.0, threshold=0.8, cache_dir=tmp_path / "cache")
    assert res["decided"] and res["decision_label"] == FRAUD
    assert res["decision_round"] == 2 and res["rounds_used"] == 2
    assert res["decision_time_s"] == 4.0  # the second prefix's end
    assert res["alarm"] is True and res["correct"] is True
    assert [s["label"] for s in res["steps"]] == [None, FRAUD]
    assert [s["stage"] for s in res["steps"]] == ["early_stage", LATE_STAGE]
    # the model heard exactly 2 s, then 4 s; each prefix asked scene first, then fraud with scene carried
    fraud_requests = [r for r in model.requests if len(r["messages"]) == 4]
    assert [audio_seconds(r["audios"]) for r in fraud_requests] == pytest.approx([2.0, 4.0])
    assert len(model.requests) == 4
    first_user = fraud_requests[0]["messages"][1]["content"]
    assert first_user == AUDIO_TAG + get_prompt("scene", "realtime")
    assert fraud_requests[0]["messages"][2]["role"] == "assistant"


def test_normal_decision_raises_no_alarm(call7, tmp_path):
    [res] = live.run_live(ScriptedModel(NORMAL), [call7], hop_s=2.0, cache_dir=tmp_path / "cache", history=False)
    assert res["decision_label"] == NORMAL and res["decision_time_s"] == 4.0
    assert res["alarm"] is False and res["correct"] is False


def test_below_threshold_and_garbage_mean_feed_more(call7, tmp_path):
    # a label below the threshold is not a decision; an unparsable answer is not either
    low = ScriptedModel(FRAUD, decide_after_s=3.5, conf=0.6)
    [res] = live.run_live(low, [call7], hop_s=2.0, threshold=0.8, cache_dir=tmp_path / "c", history=False)
    assert not res["decided"] and res["rounds_used"] == 4 and res["decision_time_s"] is None
    assert res["alarm"] is False and res["correct"] is False
    garbage = ScriptedModel(FRAUD, decide_after_s=5.0, garbage_before=True)
    [res] = live.run_live(garbage, [call7], hop_s=2.0, cache_dir=tmp_path / "c", history=False)
    assert res["decision_time_s"] == 6.0 and res["steps"][0]["format_error"]
    capped = ScriptedModel(FRAUD, decide_after_s=100)
    [res] = live.run_live(capped, [call7], hop_s=2.0, max_rounds=2, cache_dir=tmp_path / "c", history=False)
    assert res["rounds_used"] == 2 and not res["decided"]


def test_long_prefix_is_chunked_at_30s(tmp_path):
    call = live.LiveCall("long", str(write_wav(tmp_path / "long.wav", 40.0)))
    model = ScriptedModel(FRAUD, decide_after_s=35)
    [res] = live.run_live(model, [call], hop_s=20.0, cache_dir=tmp_path / "c", history=False)
    assert res["decision_time_s"] == 40.0
    last = model.requests[-1]
    assert len(last["audios"]) == 2 and audio_seconds(last["audios"]) == pytest.approx(40.0)
    assert last["messages"][1]["content"].startswith(AUDIO_TAG * 2)
    assert max(sf.info(p).duration for p in last["audios"]) <= 30.0


def test_batched_lockstep_keeps_calls_apart(tmp_path):
    calls = [
        live.LiveCall(f"c{i}", str(write_wav(tmp_path / f"c{i}.wav", sec, seed=i))) for i, sec in enumerate([3, 9])
    ]
    model = ScriptedModel(FRAUD, decide_after_s=5.5)
    results = live.run_live(model, calls, hop_s=2.0, cache_dir=tmp_path / "c", batch_size=2, history=False)
    assert [r["call_id"] for r in results] == ["c0", "c1"]
    assert not results[0]["decided"] and results[0]["rounds_used"] == 2  # 2 s, 3 s: never 5.5 s
    assert results[1]["decision_time_s"] == 6.0 and results[1]["decision_round"] == 3
    # an unreadable file is skipped with a warning, the others still run
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    results = live.run_live(
        model, [live.LiveCall("bad", str(tmp_path / "bad.wav")), calls[0]], cache_dir=tmp_path / "c"
    )
    assert [r["call_id"] for r in results] == ["c0"]


def _result(gold, label, t, duration=10.0, task="fraud"):
    decided = label is not None
    return {
        "task": task,
        "gold": gold,
        "threshold": 0.8,
        "duration_s": duration,
        "decided": decided,
        "decision_label": label,
        "decision_time_s": t,
        "decision_round": 1 if decided else None,
        "rounds_used": 2,
        "alarm": label == FRAUD,
        "correct": label == gold,
    }


def test_live_metrics_by_fraction_hand_computed():
    results = [
        _result(FRAUD, FRAUD, 2.0),  # alarm after 20 %
        _result(FRAUD, FRAUD, 6.0),  # alarm after 60 %
        _result(FRAUD, None, None),  # never decided
        _result(NORMAL, NORMAL, 3.0),
        _result(NORMAL, FRAUD, 9.0),  # false alarm after 90 %
    ]
    m = live.live_metrics(results, fractions=(0.1, 0.5, 1.0))
    assert m["decided_rate"] == pytest.approx(0.8)
    assert m["decision_time_s"]["mean"] == pytest.approx(5.0)
    assert m["decision_time_s"]["median"] == pytest.approx(4.5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["accuracy_decided"] == pytest.approx(3 / 4)
    assert m["fraud_recall"] == pytest.approx(2 / 3) and m["false_alarm_rate"] == pytest.approx(1 / 2)
    rows = {r["fraction"]: r for r in m["by_fraction"]}
    assert rows[0.1] == {
        "fraction": 0.1,
        "decided_rate": 0.0,
        "accuracy": 0.0,
        "fraud_recall": 0.0,
        "false_alarm_rate": 0.0,
    }
    assert rows[0.5]["fraud_recall"] == pytest.approx(1 / 3) and rows[0.5]["false_alarm_rate"] == 0.0
    assert rows[0.5]["accuracy"] == pytest.approx(2 / 5)
    assert rows[1.0]["fraud_recall"] == pytest.approx(2 / 3) and rows[1.0]["false_alarm_rate"] == pytest.approx(0.5)
    assert m["decision"]["confusion"]["matrix"] == [[2, 0, 1], [1, 1, 0]]
    assert "| 0.5 |" in live.live_markdown(m)


def _calls_file(tmp_path: Path) -> Path:
    (tmp_path / "audio").mkdir()
    recs = []
    for i, (label, sec) in enumerate([(FRAUD, 5.0), (NORMAL, 5.0), (FRAUD, 7.0)]):
        write_wav(tmp_path / "audio" / f"k{i}.wav", sec, seed=i)
        turns = [
            {"speaker": "caller", "start": 0.1, "end": 1.9, "text": "喂"},
            {"speaker": "callee", "start": 2.1, "end": 3.9, "text": "嗯"},
            {"speaker": "caller", "start": 4.1, "end": 4.8, "text": "好"},
        ]
        recs.append({"id": f"k{i}", "audio": f"audio/k{i}.wav", "duration": sec, "scene": SCENES[1], "label": label})
        recs[-1] |= {"fraud_type": None, "turns": turns}
    path = tmp_path / "calls.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return path


def test_cli_eval_resumes_and_call_prints_timeline(tmp_path, monkeypatch, capsys):
    calls = _calls_file(tmp_path)
    model = ScriptedModel(FRAUD, decide_after_s=3.0)
    monkeypatch.setattr(live, "_engine", lambda args: model)
    out = tmp_path / "out"
    assert live.main(["eval", "--model", "m", "--calls", str(calls), "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "live_metrics.json").read_text())
    # pauses at 2.0 s and 4.0 s: the model decides at the second prefix, 4.0 s
    assert m["n_calls"] == 3 and m["decision_time_s"]["mean"] == pytest.approx(4.0)
    assert m["fraud_recall"] == 1.0 and m["false_alarm_rate"] == 1.0
    assert (out / "live_curve.png").exists() and (out / "live_metrics.md").exists()
    n_requests = len(model.requests)
    assert live.main(["eval", "--model", "m", "--calls", str(calls), "--out", str(out), "--quiet"]) == 0
    assert len(model.requests) == n_requests  # everything was already done
    capsys.readouterr()
    png = tmp_path / "t.png"
    args = ["call", "--model", "m", "--calls", str(calls), "--call-id", "k1", "--plot", str(png), "--no-history"]
    assert live.main([*args, "--out", str(tmp_path / "r.json"), "--cache-dir", str(tmp_path / "cc")]) == 0
    text = capsys.readouterr().out
    assert "decision after 4.0 s (2 rounds): fraud -> ALARM" in text and "gold: normal" in text
    assert png.exists() and json.loads((tmp_path / "r.json").read_text())["decision_round"] == 2


def test_without_turns_prefixes_end_at_detected_pauses(tmp_path):
    """A file without turn times is cut where a stream of it would be: at webrtcvad pauses, else every hop."""
    from safe_qaq.audio import decode
    from safe_qaq.calls import load_calls
    from safe_qaq.stream import plan_file
    from tests.helpers.cli import BUNDLED_CALLS

    audio = load_calls(BUNDLED_CALLS)[0].audio
    samples = decode(audio)
    model = ScriptedModel(FRAUD, decide_after_s=1000)
    [res] = live.run_live(model, [live.LiveCall("c", audio)], hop_s=4.0, cache_dir=tmp_path / "c", history=False)
    planned, _ = plan_file(samples, rule="vad", hop_s=4.0)
    assert res["prefix_ends"] == [p.end_s for p in planned]
    hop = [4.0 * k for k in range(1, 6)] + [len(samples) // 16 / 1000]
    assert res["prefix_ends"] != hop and max(np.diff([0, *res["prefix_ends"]])) <= 4.0
    # each prefix heard exactly its length
    assert [audio_seconds(r["audios"]) for r in model.requests] == pytest.approx(res["prefix_ends"], abs=1e-3)
    [res] = live.run_live(model, [live.LiveCall("c", audio)], hop_s=4.0, vad=False, cache_dir=tmp_path / "c")
    assert res["prefix_ends"] == hop
