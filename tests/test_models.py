"""One way to resolve a model argument (safe_qaq/models.py): a local folder or a served name, never a download."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import pytest

from safe_qaq import budget, engine
from safe_qaq.models import ModelError, model_fingerprint, resolve_model
from tests.helpers.cli import cli_env

ROOT = Path(__file__).resolve().parents[1]


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 64}}))
    (path / "model.safetensors").write_bytes(b"w" * 10)
    (path / "vocab.json").write_text("{}")
    return path


def test_resolve_model(tmp_path):
    model = model_folder(tmp_path / "m")
    assert resolve_model(str(model)) == str(model)
    assert resolve_model("served-name", backend="openai") == "served-name"  # a name the server knows
    assert resolve_model(None, backend="openai") is None  # the server's first model
    (tmp_path / "ckpt").mkdir()
    assert resolve_model(str(tmp_path / "ckpt"), what="adapter") == str(tmp_path / "ckpt")
    (tmp_path / "file").write_text("x")
    for value, words in [
        (str(tmp_path / "nope"), f"model folder {tmp_path / 'nope'} does not exist"),
        ("Qwen/Qwen2-Audio-7B-Instruct", "does not exist; models load from local folders, never from a hub"),
        (str(tmp_path / "file"), "is a file, not a folder"),
        (str(tmp_path / "ckpt"), "has no config.json"),
        (None, "no model given"),
    ]:
        with pytest.raises(ModelError, match=words) as caught:
            resolve_model(value)
        assert "\n" not in str(caught.value)


def test_make_engine_refuses_a_missing_folder_before_loading_anything(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        engine.make_engine(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match=r"adapter folder .*ckpt does not exist"):
        engine.make_engine(str(model_folder(tmp_path / "m")), adapters=[str(tmp_path / "ckpt")])


def test_one_fingerprint_and_resume_metadata_keeps_its_form(tmp_path):
    model = model_folder(tmp_path / "m")
    fingerprint = model_fingerprint(str(model))
    stat = (model / "model.safetensors").stat()
    assert fingerprint["weights"] == [["model.safetensors", 10, stat.st_mtime_ns]]
    assert set(fingerprint["tokenizer"]) == {"vocab.json"} and fingerprint["positions"] == 64
    assert model_fingerprint("served-name") is None
    args = argparse.Namespace(backend="pt", model=str(model), adapters=[], base_url=None)
    identity = engine.engine_identity(args)
    # the form every resumable output's .meta.json has always held, so outputs written before still resume
    assert identity["model"] == str(model.resolve()) and identity["model_weights"] == fingerprint["weights"]
    # the budget's cache key follows the tokenizer, not the weights: a merged copy reuses the counts
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    key = budget.counts_key(data, str(model))
    (model / "model.safetensors").write_bytes(b"retrained")
    assert budget.counts_key(data, str(model)) == key
    (model / "vocab.json").write_text('{"a": 0}')
    assert budget.counts_key(data, str(model)) != key


def test_budget_missing_model_is_one_line(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    argv = ["--model", str(tmp_path / "nope"), "--dataset", str(data), "--out", str(tmp_path / "o.jsonl")]
    assert budget.main([*argv, "--max-length", "100", "--max-audios", "1"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and f"budget: model folder {tmp_path / 'nope'} does not exist" in err


def test_evaluate_sh_on_a_run_that_does_not_exist_fails_at_once_in_one_line(prepared, tmp_path):
    """Stage 4's script through the real CLI, as a user types it (a relative run folder, which ms-swift took for a
    hub id and retried for ~8 s): one error line naming the folder, at once."""
    env = cli_env({"PROFILE": "smoke", "EVAL_RUN": "outputs/nope", "DATA_DIR": str(prepared), "OUTPUT_ROOT": "outputs"})
    started = time.perf_counter()
    result = subprocess.run(
        ["bash", str(ROOT / "evaluate.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    wall = time.perf_counter() - started
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot load model 'outputs/nope/merged'"), lines[0]
    assert "model folder outputs/nope/merged does not exist" in lines[0]
    assert wall < 30, wall  # python and the CLI's imports only; ms-swift is never imported
