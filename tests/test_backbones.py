"""safe_qaq.backbones: one entry per family, picked by MODEL_FAMILY or the model's config.json, a mismatch refused
in one line; each family's audio arithmetic equals transformers' own encoder and feature extractor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safe_qaq import backbones, recipe
from safe_qaq.backbones import BACKBONES, BackboneError


def write_config(folder, model_type: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


def test_the_family_comes_from_config_json_and_a_mismatch_is_one_line(tmp_path):
    omni = write_config(tmp_path / "omni", "qwen2_5_omni")
    moe = write_config(tmp_path / "moe", "qwen3_omni_moe")
    assert backbones.resolve(None, omni).family == "qwen2_5_omni"
    assert backbones.resolve(None, moe).family == "qwen3_omni"
    assert backbones.resolve(None, tmp_path / "not-there").family == "qwen2_audio"  # the default
    assert backbones.resolve("qwen3_omni", tmp_path / "not-there").family == "qwen3_omni"
    with pytest.raises(BackboneError) as error:
        backbones.resolve("qwen2_audio", omni)
    assert str(error.value).count("\n") == 0 and "MODEL_FAMILY=qwen2_audio but" in str(error.value)
    assert "set MODEL_FAMILY=qwen2_5_omni" in str(error.value)
    with pytest.raises(BackboneError, match="not a backbone"):
        backbones.get("qwen3")
    with pytest.raises(BackboneError, match="model_type 'llama' is not a supported backbone"):
        backbones.resolve(None, write_config(tmp_path / "llama", "llama"))


def test_the_recipe_derives_everything_a_family_names(tmp_path):
    paper = recipe.load("paper", env={})
    assert (paper["MODEL_FAMILY"], paper["MODEL_TYPE"], paper["TEMPLATE"]) == (
        "qwen2_audio", "qwen2_audio", "qwen2_audio_expanded"
    )  # fmt: skip
    assert paper["LORA_TARGET_REGEX"] == r"^language_model\..*\.(q_proj|v_proj)$"
    omni = recipe.load("paper", env={"MODEL": str(write_config(tmp_path / "o", "qwen2_5_omni"))})
    assert (omni["MODEL_FAMILY"], omni["MODEL_TYPE"], omni["TEMPLATE"]) == (
        "qwen2_5_omni", "qwen2_5_omni_audio", "qwen2_5_omni_audio"
    )  # fmt: skip
    assert omni["LORA_TARGET_REGEX"] == r"^thinker\.model\..*\.(q_proj|v_proj)$"
    argv = recipe.train_argv(omni, "stage1")
    assert argv[argv.index("--model_kwargs") + 1] == '{"ENABLE_AUDIO_OUTPUT": "0"}'
    plugins = argv[argv.index("--external_plugins") + 1 : argv.index("--reward_funcs")]
    assert [p.rsplit("/", 1)[-1] for p in plugins] == ["omni_audio.py", "rewards.py"]
    moe = recipe.load("paper", env={"MODEL_FAMILY": "qwen3_omni"})
    assert "--external_plugins" not in recipe.merge_argv(moe, "stage1")  # no plugin, no bare flag
    # A family, or a model type, that the model's config contradicts: refused before anything starts.
    with pytest.raises(recipe.RecipeError, match="is a qwen2_5_omni model"):
        recipe.load("paper", env={"MODEL": str(tmp_path / "o"), "MODEL_FAMILY": "qwen2_audio"})
    with pytest.raises(recipe.RecipeError, match="does not match MODEL_FAMILY=qwen2_audio"):
        recipe.load("paper", env={"MODEL_TYPE": "qwen2_5_omni"})


def test_recipe_cli_refuses_a_mismatch_in_one_line(tmp_path, capsys):
    model = write_config(tmp_path / "omni", "qwen2_5_omni")
    import os

    saved = dict(os.environ)
    try:
        os.environ.update(MODEL=str(model), MODEL_FAMILY="qwen3_omni")
        assert recipe.main(["show"]) == 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recipe: MODEL_FAMILY=qwen3_omni but")


@pytest.mark.parametrize("family", list(BACKBONES))
def test_audio_token_arithmetic_equals_the_model_encoder(family):
    import torch

    if family == "qwen2_audio":
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        def reference(n):
            return int(Qwen2AudioEncoder._get_feat_extract_output_lengths(None, torch.tensor(n))[1])
    elif family == "qwen2_5_omni":
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

        def reference(n):
            return int(Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths(None, torch.tensor(n))[1])
    else:
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        def reference(n):
            return int(_get_feat_extract_output_lengths(torch.tensor(n)))

    backbone = backbones.get(family)
    for frames in (1, 2, 99, 100, 101, 199, 1000, 2999, 3000, 4500):
        assert backbone.encoder_tokens(frames) == reference(frames), frames
    assert backbone.audio_tokens(16000 * 10) == 10 * backbone.tokens_per_second


@pytest.mark.parametrize("family", list(BACKBONES))
def test_45_s_is_cut_or_carried_whole_exactly_as_the_feature_extractor_does(family):
    """ms-swift #9113: the Whisper extractor cuts at 30 s unless truncation is off (ms-swift 4.6 turns it off for
    omni_v3 only). The real extractor, with each family's processor defaults, marks what the backbone says."""
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessorKwargs

    extractor = WhisperFeatureExtractor(feature_size=128)
    kwargs = {
        "qwen2_audio": {"sampling_rate": 16000, "padding": "max_length", "return_attention_mask": True},
        "qwen2_5_omni": dict(Qwen2_5OmniProcessorKwargs._defaults["audio_kwargs"]),
        # ms-swift 4.6's omni_v3 init_processor: truncation off (transformers #41473), padding to the longest
        "qwen3_omni": {"sampling_rate": 16000, "padding": True, "return_attention_mask": True, "truncation": False},
    }[family]
    backbone = backbones.get(family)
    for seconds in (10, 30, 45):
        samples = 16000 * seconds
        wave = (0.1 * np.sin(np.arange(samples) / 16000 * 2 * np.pi * 300)).astype(np.float32)
        frames = int(extractor(wave, **kwargs)["attention_mask"].sum())
        assert frames == backbone.mel_frames(samples), (family, seconds)
        assert backbone.cuts(seconds) == (frames < samples // 160)
    assert backbone.cuts(45) == (family != "qwen3_omni")


def test_ms_swift_turns_truncation_off_for_omni_v3_only():
    """The fact the backbones record (Qwen2.5-Omni cut at 30 s, Qwen3-Omni carried whole), in the pinned
    ms-swift's template; if an upgrade changes it, this fails and the entries must follow."""
    import inspect

    from swift.template.templates.qwen import Qwen2_5OmniTemplate

    source = inspect.getsource(Qwen2_5OmniTemplate.init_processor)
    v3 = source.index("elif self.version == 'omni_v3'")
    assert source.index("default['audio_kwargs']['truncation'] = False") > v3
    assert backbones.get("qwen2_5_omni").max_audio_seconds == 30
    assert backbones.get("qwen3_omni").max_audio_seconds is None


def test_nothing_outside_the_entries_names_a_family():
    from tests.helpers.cli import ROOT

    allowed = {"backbones.py", "omni_audio.py", "tiny_omni.py", "tiny_model.py", "qwen2_audio_template.py"}
    for path in (ROOT / "safe_qaq").rglob("*.py"):
        if path.name in allowed:
            continue
        text = path.read_text(encoding="utf-8")
        for name in ('"qwen2_5_omni', '"qwen3_omni', 'model_type="qwen2_audio"'):
            assert name not in text, (path, name)
