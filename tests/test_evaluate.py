"""Evaluation CLI: predictions file (TeleAntiFraud-readable, resumable), metrics, floor beside the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prompt import FRAUD, FRAUD_TYPES, NORMAL, SCENES, build_messages, format_answer, get_prompt
from safe_qaq import evaluate
from tests.helpers import engines as helpers

REPO = Path(__file__).resolve().parents[1]


def task_of_request(row: dict) -> str:
    last = row["messages"][-1]["content"]
    return next(
        t for t in ("scene", "fraud", "fraud_type") for m in ("offline", "realtime") if last.endswith(get_prompt(t, m))
    )


def offline_answer(row: dict, **_) -> str:
    """Says fraud to every fraud question, a fixed type to type questions, garbage to scene questions."""
    task = task_of_request(row)
    if task == "scene":
        return "I think this is 外卖服务"  # names a scene, but not in the answer format
    if task == "fraud":
        return format_answer("fraud", FRAUD, think="转账 验证码")
    return format_answer("fraud_type", FRAUD_TYPES[0])


def FakeEngine(fail_after_calls: int | None = None) -> helpers.FakeEngine:
    return helpers.FakeEngine(offline_answer, fail_after_calls=fail_after_calls)


def make_rows() -> list[dict]:
    rows = []
    for i, (gold, task) in enumerate(
        [(FRAUD, "fraud"), (NORMAL, "fraud"), (SCENES[0], "scene"), (FRAUD_TYPES[0], "fraud_type")]
    ):
        messages = build_messages(task)
        rows.append({"messages": messages, "audios": [f"a{i}.wav"], "answers": gold, "task": task, "call_id": f"c{i}"})
    rows.append({**rows[0], "call_id": "c4", "audios": ["a4.wav"]})
    return rows


def test_predictions_carry_prediction_and_answer_and_resume(tmp_path):
    rows = make_rows()
    path = tmp_path / "predictions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate.generate_predictions(FakeEngine(fail_after_calls=2), rows, path, batch_size=2, progress=False)
    assert len(path.read_text().splitlines()) == 4  # two batches landed before the kill
    with path.open("a") as f:
        f.write('{"index": 4, "key": "trunc')  # and a line cut short
    engine = FakeEngine()
    records = evaluate.generate_predictions(engine, rows, path, batch_size=2, progress=False)
    assert len(engine.requests) == 1  # only the missing row was generated
    assert [r["index"] for r in records] == list(range(5))
    assert [json.loads(x)["index"] for x in path.read_text().splitlines()] == [0, 1, 2, 3, 4]
    for rec, row in zip(records, rows, strict=True):
        assert rec["answer"] == row["answers"] and isinstance(rec["prediction"], str)
        assert rec["latency_s"] >= 0 and rec["batch_size"] in (1, 2)
    # another data file in the same --out is refused, not silently mixed
    with pytest.raises(ValueError, match="other data"):
        evaluate.generate_predictions(FakeEngine(), list(reversed(rows)), path, progress=False)


def test_sft_rows_are_asked_without_their_target():
    row = {"messages": build_messages("fraud", answer="x"), "audios": ["a.wav"], "answers": FRAUD}
    assert evaluate.prompt_of(row)["messages"][-1]["role"] == "user"


def toy_calls_files(tmp_path: Path) -> tuple[Path, Path]:
    def call(cid, label, words):
        turns = [{"speaker": "caller", "start": 0, "end": 1, "text": words}]
        return {"id": cid, "audio": "x.wav", "duration": 1.0, "scene": SCENES[0], "label": label, "turns": turns}

    train = [call(f"t{i}", FRAUD if i % 2 else NORMAL, "转账验证码" if i % 2 else "外卖到了") for i in range(6)]
    test = [call("c0", FRAUD, "转账验证码"), call("c1", NORMAL, "外卖到了"), call("c9", NORMAL, "外卖到了")]
    paths = tmp_path / "calls_train.jsonl", tmp_path / "calls_test.jsonl"
    for p, calls in zip(paths, (train, test), strict=True):
        p.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in calls))
    return paths


def test_cli_on_predictions_file_with_floor_beside(tmp_path, capsys):
    rows = make_rows()
    pred = tmp_path / "run" / "predictions.jsonl"
    evaluate.generate_predictions(FakeEngine(), rows, pred, progress=False)
    train, test = toy_calls_files(tmp_path)
    out = tmp_path / "eval"
    argv = ["--predictions", str(pred), "--out", str(out), "--calls-train", str(train), "--calls-test", str(test)]
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| run | fraud |" in printed and "| floor" in printed
    payload = json.loads((out / "metrics.json").read_text())
    fraud = payload["model"]["tasks"]["fraud"]
    # gold F, N, F; always says fraud -> fraud P 2/3 R 1, normal P 0 R 0
    assert fraud["accuracy"] == pytest.approx(2 / 3)
    assert fraud["weighted_f1"] == pytest.approx((2 * 0.8 + 1 * 0.0) / 3)
    assert fraud["think_tokens"]["mean"] == pytest.approx(5 + 1 / 4)  # 5 CJK + 1 space / 4
    scene = payload["model"]["tasks"]["scene"]
    # the scene answer names a real scene in free text: still a format failure, no label
    assert scene["format_failure_rate"] == 1.0 and scene["no_label_rate"] == 1.0 and scene["accuracy"] == 0.0
    [floor] = payload["baselines"]
    # the floor is scored on the (call, task) pairs the model was: c0 and c1 for fraud, none for c9
    assert floor["tasks"]["fraud"]["n"] == 2 and set(floor["tasks"]) == {"fraud"}  # c2 (scene) is not a test call
    assert floor["tasks"]["fraud"]["accuracy"] == 1.0
    for task in ("scene", "fraud", "fraud_type"):
        assert (out / f"confusion_{task}.png").exists()
    md = (out / "metrics.md").read_text()
    assert "| run | **avg** |" in md and "floor" in md


def test_cli_model_mode_on_the_bundled_test_split(prepared, tmp_path, monkeypatch, capsys):
    import safe_qaq.engine

    made = {}

    def fake_make_engine(model, **kw):
        made.update(model=model, **kw)
        return FakeEngine()

    monkeypatch.setattr(safe_qaq.engine, "make_engine", fake_make_engine)
    out = tmp_path / "eval"
    data = prepared / "offline_test.jsonl"
    argv = ["--model", "some/model", "--adapters", "ckpt-1", "--data", str(data), "--out", str(out), "--quiet"]
    assert evaluate.main([*argv, "--batch-size", "4"]) == 0
    assert made == {
        "model": "some/model",
        "adapters": ["ckpt-1"],
        "backend": "pt",
        "base_url": None,
        "max_batch_size": 4,
    }
    printed = capsys.readouterr().out
    assert "| model + ckpt-1 | fraud |" in printed and "| floor" in printed  # floor found beside --data
    payload = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    n_fraud_rows = sum(r["task"] == "fraud" for r in rows)
    fraud = payload["model"]["tasks"]["fraud"]
    assert fraud["n"] == n_fraud_rows
    assert fraud["accuracy"] == pytest.approx(
        sum(r["answers"] == FRAUD for r in rows if r["task"] == "fraud") / n_fraud_rows
    )
    assert payload["baselines"][0]["tasks"]["fraud"]["n"] == n_fraud_rows
    assert len((out / "predictions.jsonl").read_text().splitlines()) == len(rows)


@pytest.mark.slow
def test_tiny_model_end_to_end(prepared, tiny_model, tmp_path, capsys):
    """The real engine on the tiny random model: numbers are meaningless, the plumbing is real."""
    from safe_qaq import live

    model = str(tiny_model)
    out = tmp_path / "eval"
    argv = [
        "--model",
        model,
        "--data",
        str(prepared / "offline_test.jsonl"),
        "--out",
        str(out),
        "--quiet",
        "--name",
        "tiny",
    ]
    assert evaluate.main([*argv, "--limit", "3", "--max-tokens", "16", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| tiny |" in printed and "| floor" in printed
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(isinstance(r["prediction"], str) and r["answer"] for r in records)
    payload = json.loads((out / "metrics.json").read_text())
    for m in payload["model"]["tasks"].values():
        assert m["latency_s"]["p50"] > 0 and 0 <= m["format_failure_rate"] <= 1

    live_out = tmp_path / "live"
    argv = ["eval", "--model", model, "--calls", str(prepared / "calls_test.jsonl"), "--out", str(live_out)]
    assert live.main([*argv, "--limit", "1", "--max-rounds", "2", "--max-tokens", "8", "--quiet"]) == 0
    [result] = [json.loads(x) for x in (live_out / "live_results.jsonl").read_text().splitlines()]
    assert 1 <= result["rounds_used"] <= 2 and len(result["steps"]) == result["rounds_used"]
    assert json.loads((live_out / "live_metrics.json").read_text())["n_calls"] == 1
