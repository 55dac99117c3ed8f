"""Transcript floor: TF-IDF + LR on transcripts, scored with the shared metrics."""

from __future__ import annotations

import json
from pathlib import Path

from prompt import FRAUD, FRAUD_TYPES, NORMAL, SCENES
from safe_qaq import floor
from safe_qaq.calls import Call

REPO = Path(__file__).resolve().parents[1]

FRAUD_WORDS = "请把钱转到安全账户，验证码告诉我，否则冻结"
NORMAL_WORDS = "您的外卖到了，放在门口，祝您用餐愉快"


def call(i: int, label: str, scene: str | None, fraud_type: str | None, words: str) -> dict:
    turns = [
        {"speaker": "caller", "start": 0.0, "end": 2.0, "text": words},
        {"speaker": "callee", "start": 2.0, "end": 3.0, "text": f"好的{i}"},
    ]
    rec = {"id": f"c{i}", "audio": f"audio/c{i}.wav", "duration": 3.0, "scene": scene, "label": label}
    return rec | {"fraud_type": fraud_type, "turns": turns}


def toy_calls(offset: int = 0) -> list[dict]:
    calls = []
    for k in range(4):
        calls.append(call(offset + k, FRAUD, SCENES[1], FRAUD_TYPES[0], FRAUD_WORDS + "投资理财高回报"))
        calls.append(call(offset + 10 + k, NORMAL, SCENES[6], None, NORMAL_WORDS))
    return calls


def as_calls(records: list[dict]) -> list[Call]:
    return [Call.from_json(r, REPO / "calls.jsonl") for r in records]


def test_separable_toy_calls_are_perfect():
    samples = floor.floor_samples(as_calls(toy_calls()), as_calls(toy_calls(100)))
    by_task = {t: [s for s in samples if s.task == t] for t in ("scene", "fraud", "fraud_type")}
    assert len(by_task["scene"]) == 8 and len(by_task["fraud"]) == 8
    assert len(by_task["fraud_type"]) == 4  # fraud calls only
    assert all(s.correct for s in samples)
    assert all(s.pred == FRAUD_TYPES[0] for s in by_task["fraud_type"])  # one class in training: constant
    rep = floor.report(samples, floor.SYSTEM)
    assert rep["tasks"]["fraud"]["weighted_f1"] == 1.0 and rep["avg_weighted_f1"] == 1.0


def test_keep_restricts_to_evaluated_pairs_and_unknown_labels_are_skipped():
    # a call without a scene (the strict parser refuses an unknown one): scored on the fraud task only
    test = as_calls([*toy_calls(100), call(999, NORMAL, None, None, NORMAL_WORDS)])
    keep = {("c100", "fraud"), ("c110", "scene")}
    samples = floor.floor_samples(as_calls(toy_calls()), test, keep=keep)
    assert {(s.call_id, s.task) for s in samples} == keep
    samples = floor.floor_samples(as_calls(toy_calls()), test)
    assert sum(s.call_id == "c999" for s in samples) == 1  # fraud task only: its scene is unknown
    assert test[-1].gold("scene") is None and test[0].gold("fraud_type") == FRAUD_TYPES[0]
    assert test[1].gold("fraud_type") is None  # a normal call has no type


def test_cli_writes_metrics(tmp_path, capsys):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    for path, calls in ((train, toy_calls()), (test, toy_calls(100))):
        path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in calls))
    out = tmp_path / "floor"
    assert floor.main(["--calls-train", str(train), "--calls-test", str(test), "--out", str(out)]) == 0
    assert "| floor" in capsys.readouterr().out
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["tasks"]["scene"]["weighted_f1"] == 1.0
    assert (out / "confusion_fraud.png").exists() and (out / "metrics.md").exists()
    # audio paths are resolved against the file that lists them
    assert floor.load_calls(test)[0].audio == str(tmp_path / "audio" / "c100.wav")
    # a row that cannot be used is one line naming the file and row, not a traceback
    test.write_text('{"id": "x", "audio": null}\n', encoding="utf-8")
    assert floor.main(["--calls-train", str(train), "--calls-test", str(test)]) == 1
    assert f"{test}:1: audio path must be a non-empty string" in capsys.readouterr().err


def test_floor_on_the_bundled_calls(prepared, capsys):
    train, test = prepared / "calls_train.jsonl", prepared / "calls_test.jsonl"
    n_test = len(json.loads((prepared / "split.json").read_text())["test"])
    assert floor.main(["--calls-train", str(train), "--calls-test", str(test)]) == 0
    assert "| floor" in capsys.readouterr().out
    rep = floor.floor_report(train, test)
    fraud = rep["tasks"]["fraud"]
    assert fraud["n"] == rep["tasks"]["scene"]["n"] == n_test
    assert rep["tasks"]["fraud_type"]["n"] == fraud["gold_distribution"][FRAUD]
    for m in rep["tasks"].values():
        assert 0.0 <= m["weighted_f1"] <= 1.0 and m["no_label_rate"] == 0.0
    # fraud vs normal is the easy task for a bag of n-grams: the scripted fraud talk uses
    # words (账户, 验证码, 转账 ...) that the normal calls never do
    assert fraud["accuracy"] >= 0.5
