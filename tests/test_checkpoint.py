"""safe_qaq.checkpoint: a full fine-tuning checkpoint's model files, never its trainer state."""

import pytest

from safe_qaq.checkpoint import copy_model_files, main

MODEL = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")
STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "args.json", "rng_state_1.pth")


def test_copies_the_model_and_leaves_the_trainer_state(tmp_path):
    checkpoint = tmp_path / "checkpoint-6"
    checkpoint.mkdir()
    for name in MODEL + STATE:
        (checkpoint / name).write_text(name)
    assert copy_model_files(checkpoint, tmp_path / "merged") == sorted(MODEL)
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == sorted(MODEL)
    assert (tmp_path / "merged" / "model.safetensors").read_text() == "model.safetensors"


def test_refuses_a_folder_without_a_model_and_an_existing_destination(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(FileNotFoundError, match="not a full fine-tuning checkpoint"):
        copy_model_files(tmp_path / "adapter", tmp_path / "out")
    (tmp_path / "adapter" / "config.json").write_text("{}")
    (tmp_path / "out").mkdir()
    assert main([str(tmp_path / "adapter"), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
