"""safe_qaq.budget: exact token counts without decoding audio; over-budget rows dropped with a count, never cut."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

import prompt
from safe_qaq import budget
from safe_qaq.jsonl import read_jsonl
from tests.helpers.cli import write_jsonl


@pytest.fixture(scope="module")
def counter(tiny_model):
    return budget.Counter.load(str(tiny_model))


def full_encode_length(counter, row) -> int:
    """What training really encodes: the expanded template, audio decoded and featurised."""
    return len(counter.template.encode({"messages": row["messages"], "audios": row["audios"]})["input_ids"])


def test_counts_equal_the_training_encoding(counter, prepared, tmp_path):
    offline, sft = read_jsonl(prepared / "offline_train.jsonl"), read_jsonl(prepared / "sft_train.jsonl")
    chunked_prompt = next(row for row in offline if len(row["audios"]) > 1)  # a call over 30 s
    chunked_sft = next(row for row in sft if len(row["audios"]) > 1)  # the same with its answer
    rows = [*offline[:3], *sft[:2], chunked_prompt, chunked_sft]
    # Other sample rates and lengths: resampled on load, 30 s kept per audio.
    for i, (rate, seconds) in enumerate(((24000, 7.3), (8000, 12.01), (44100, 31.0))):
        path = tmp_path / f"tone{i}.wav"
        t = np.arange(int(rate * seconds)) / rate
        sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate)
        rows.append({"messages": prompt.build_messages("fraud"), "audios": [str(path)]})
    for row in rows:
        assert counter.tokens(row) == full_encode_length(counter, row), row["audios"]


def run_budget(tiny_model, dataset, out, **options):
    argv = ["--model", str(tiny_model), "--dataset", str(dataset), "--out", str(out)]
    for name, value in {"max_length": 8192, "max_audios": 2, **options}.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return budget.main(argv)


def test_rows_over_budget_are_dropped_with_a_count_and_listed(tiny_model, prepared, tmp_path, capsys, counter):
    rows = read_jsonl(prepared / "offline_train.jsonl")[:10]
    lengths = [counter.tokens(row) for row in rows]
    limit = sorted(lengths)[-3]  # the longest rows go over, equal ones stay
    over = [i + 1 for i, n in enumerate(lengths) if n > limit]
    many = dict(rows[0], audios=rows[0]["audios"] * 3)
    many["messages"] = prompt.build_messages("fraud", n_audios=3)
    dataset = write_jsonl(tmp_path / "rows.jsonl", [*rows, many])
    out = tmp_path / "run" / "budget" / "rows.jsonl"
    code = run_budget(tiny_model, dataset, out, completion_tokens=100, max_length=limit + 100, max_drop_fraction=0.5)
    assert code == 0
    kept = read_jsonl(out)
    assert kept == [row for row, n in zip(rows, lengths, strict=True) if n <= limit]  # whole rows, in order
    dropped = read_jsonl(tmp_path / "run" / "budget" / "rows.over_budget.jsonl")
    assert [d["row"] for d in dropped] == [*over, 11]
    assert {d["reason"] for d in dropped} == {"too_long", "too_many_audios"}
    printed = capsys.readouterr().out
    assert f"{len(kept)} kept, {len(over) + 1} dropped ({len(over)} over {limit} tokens" in printed
    assert "1 with more than 2 audios" in printed


def test_too_many_dropped_rows_stop_the_stage_and_the_rerun_too(tiny_model, prepared, tmp_path, capsys):
    dataset = tmp_path / "rows.jsonl"
    shutil.copy(prepared / "offline_train.jsonl", dataset)
    out, cache = tmp_path / "budget" / "rows.jsonl", tmp_path / "cache"
    assert run_budget(tiny_model, dataset, out, max_length=1100, cache_dir=cache) == 1
    error = capsys.readouterr().err
    assert "more than --max-drop-fraction 0.05" in error and "rows.over_budget.jsonl" in error
    assert run_budget(tiny_model, dataset, out, max_length=1100, cache_dir=cache) == 1  # reused counts, same refusal
    assert "over budget" in capsys.readouterr().err


def test_token_counts_are_reused_by_content(tiny_model, prepared, tmp_path, capsys):
    dataset = write_jsonl(tmp_path / "rows.jsonl", read_jsonl(prepared / "offline_train.jsonl")[:3])
    out, cache = tmp_path / "budget" / "rows.jsonl", tmp_path / "cache"
    assert run_budget(tiny_model, dataset, out, cache_dir=cache) == 0
    assert "(token counts reused)" not in capsys.readouterr().out
    first = read_jsonl(out)
    assert run_budget(tiny_model, dataset, out, cache_dir=cache) == 0  # a resumed stage, another node
    assert "(token counts reused)" in capsys.readouterr().out and read_jsonl(out) == first
    merged = tmp_path / "merged"  # a later stage: a merged model with the same tokenizer
    shutil.copytree(tiny_model, merged)
    assert run_budget(merged, dataset, tmp_path / "lcrl" / "rows.jsonl", completion_tokens=10, cache_dir=cache) == 0
    assert "(token counts reused)" in capsys.readouterr().out
    write_jsonl(dataset, read_jsonl(prepared / "offline_train.jsonl")[:2])  # other rows at the same path
    assert run_budget(tiny_model, dataset, out, cache_dir=cache) == 0
    assert "(token counts reused)" not in capsys.readouterr().out and len(read_jsonl(out)) == 2


def test_a_context_longer_than_the_model_is_refused(tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 8192
    (model / "config.json").write_text(json.dumps(config))
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"messages": prompt.build_messages("fraud"), "audios": []}])
    assert run_budget(model, dataset, tmp_path / "out.jsonl", vllm_max_model_len=10240) == 1
    assert "VLLM_MAX_MODEL_LEN 10240 is longer than the model's 8192 positions" in capsys.readouterr().err
    assert run_budget(model, dataset, tmp_path / "out.jsonl", max_length=9000) == 1
    assert "MAX_LENGTH 9000" in capsys.readouterr().err


def test_an_unreadable_audio_is_dropped_with_its_reason(tiny_model, prepared, tmp_path):
    rows = read_jsonl(prepared / "offline_train.jsonl")[:20]
    rows[3] = dict(rows[3], audios=[str(tmp_path / "gone.flac")] * len(rows[3]["audios"]))
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "rows.kept.jsonl"
    assert run_budget(tiny_model, dataset, out, max_audios=8, max_drop_fraction=0.1) == 0
    (dropped,) = read_jsonl(tmp_path / "rows.kept.over_budget.jsonl")
    assert dropped["row"] == 4 and dropped["reason"].startswith("unreadable_audio") and "gone.flac" in dropped["reason"]
    assert len(read_jsonl(out)) == 19


def test_counted_ahead_in_one_call_the_stage_check_reuses_the_same_counts(tiny_model, prepared, tmp_path, capsys):
    """`budget count` (the demo, before its first stage): several sets, one ms-swift load; a stage's check then
    reuses them and keeps exactly what a cold check keeps."""
    sets = []
    for name, n in (("offline_train.jsonl", 3), ("realtime_train.jsonl", 2)):
        sets.append(write_jsonl(tmp_path / name, read_jsonl(prepared / name)[:n]))
    cache = tmp_path / "cache"
    assert budget.main(["count", "--model", str(tiny_model), "--cache-dir", str(cache), *map(str, sets)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"budget: {n} rows of {path} counted -> {cache}" for path, n in zip(sets, (3, 2), strict=True)]
    assert len(list(cache.iterdir())) == 2
    for dataset in sets:
        warm, cold = tmp_path / "warm" / dataset.name, tmp_path / "cold" / dataset.name
        assert run_budget(tiny_model, dataset, warm, cache_dir=cache) == 0
        assert "(token counts reused)" in capsys.readouterr().out
        assert run_budget(tiny_model, dataset, cold) == 0
        assert read_jsonl(warm) == read_jsonl(cold)
    assert budget.main(["count", "--model", str(tiny_model), "--cache-dir", str(cache), str(sets[0])]) == 0
    assert capsys.readouterr().out.strip().endswith(f"counted before (cached) -> {cache}")
    missing = tmp_path / "no.jsonl"
    assert budget.main(["count", "--model", str(tiny_model), "--cache-dir", str(cache), str(missing)]) == 1
    assert capsys.readouterr().err.strip() == f"budget: no such file: {tmp_path / 'no.jsonl'}"
