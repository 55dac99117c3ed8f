"""`make check-recipe` for the Omni backbones: every stage command of the paper profile for Qwen2.5-Omni-7B and
Qwen3-Omni-30B-A3B-Instruct, built by safe_qaq.recipe and parsed by ms-swift 4.6's own argument classes under
torchrun (3 processes, the paper's launch), against config-only stand-ins (published config values, a tiny
tokenizer, no weights: tests/helpers/omni_recipe.py). They are parsed in the same launches as the Qwen2-Audio
scenarios (tests/helpers/paper_recipe.py). The invariants of tests/test_recipe.py are asserted per family.

What is not run here: the stage scripts' token budget (safe_qaq.budget loads the model's processor, and
transformers' Qwen2.5-Omni/Qwen3-Omni processors need torchvision, which does not load on the CPU torch:
docs/backbones.md). The commands are the ones the scripts run (safe_qaq.recipe argv).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from safe_qaq import backbones
from tests.helpers.omni_recipe import FAMILIES, PAPER_WORLD, UNVERIFIED, omni_config

pytestmark = pytest.mark.recipe


@pytest.fixture(scope="module")
def omni(paper_recipe) -> dict[str, dict]:
    """Per family: the stand-in, the recipe's commands (stage order), and what ms-swift parsed of each."""
    return paper_recipe.omni


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def of(omni, family: str, route: str) -> list[dict]:
    return [c for c in omni[family]["commands"] if c["route"] == route]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_omni_command_is_accepted_by_ms_swift(omni, family):
    routes = [c["route"] for c in omni[family]["commands"]]
    assert routes.count("rlhf") == 3 and routes.count("sft") == 1 and routes.count("export") == 4
    assert routes.count("rollout") == 3 and routes.count("deploy") == 1
    backbone = backbones.get(family)
    for command in omni[family]["commands"]:
        args = command["args"]
        if "model_type" in args and command["route"] != "export":
            assert args["model_type"] == backbone.model_type and args["template"] == backbone.template
        # The talker stays unloaded in every process ms-swift starts (it sets the variable from --model_kwargs).
        assert flag(command["argv"], "--model_kwargs") == '{"ENABLE_AUDIO_OUTPUT": "0"}', command["route"]
    print(f"{family} stand-in values not verified offline:", ", ".join(UNVERIFIED[family]))


@pytest.mark.parametrize("family", FAMILIES)
def test_omni_context_fits_the_model_positions(omni, family):
    config = json.loads((omni[family]["standin"] / "config.json").read_text())
    positions = backbones.get(family).positions(config)
    assert positions == {"qwen2_5_omni": 32768, "qwen3_omni": 65536}[family]
    for command in of(omni, family, "rlhf"):
        args = command["args"]
        assert args["max_length"] + args["max_completion_length"] <= positions
        assert args["truncation_strategy"] == "delete" and args["vllm_max_model_len"] <= positions
    (sft,) = of(omni, family, "sft")
    assert sft["args"]["max_length"] <= positions and sft["args"]["truncation_strategy"] == "delete"
    for command in of(omni, family, "rollout") + of(omni, family, "deploy"):
        assert command["args"]["vllm_max_model_len"] <= positions


@pytest.mark.parametrize("family", FAMILIES)
def test_omni_audios_per_row_within_the_vllm_limit(omni, family):
    """ms-swift #4210: vLLM refuses a prompt with more audios than limit_mm_per_prompt (default 1)."""
    limit = {"audio": omni[family]["settings"]["MAX_AUDIOS_PER_ROW"]}
    assert limit["audio"] == backbones.get(family).vllm_audio_limit
    serving = of(omni, family, "rlhf") + of(omni, family, "rollout") + of(omni, family, "deploy")
    assert len(serving) == 7 and all(c["args"]["vllm_limit_mm_per_prompt"] == limit for c in serving)
    # prepare and the budget refuse rows with more audios than that (the same value reaches safe_qaq.budget).
    from safe_qaq import recipe

    budget = recipe.budget_argv(omni[family]["settings"], "stage1")
    assert flag(budget, "--max-audios") == str(limit["audio"])


@pytest.fixture(scope="module")
def omni_module_names(omni) -> dict[str, list[str]]:
    """Every module name of the full-size models, built on the meta device (no memory, no weights); Qwen2.5-Omni's
    talker built too (enable_audio_output true), to show LoRA stays off it even when it is loaded. Qwen3-Omni is
    built with 4 of its 128 experts a layer: each expert's modules are named alike (``...mlp.experts.E.up_proj``),
    and 48 x 128 of them took most of this fixture's time."""
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration, Qwen3OmniMoeForConditionalGeneration

    names = {}
    for family, cls in (("qwen2_5_omni", Qwen2_5OmniForConditionalGeneration),
                        ("qwen3_omni", Qwen3OmniMoeForConditionalGeneration)):  # fmt: skip
        config = omni_config(family)
        config.enable_audio_output = family == "qwen2_5_omni"  # Qwen3-Omni's default talker config has no RoPE
        if family == "qwen3_omni":
            config.thinker_config.text_config.num_experts = 4
        with torch.device("meta"):
            model = cls(config)
        names[family] = [name for name, _ in model.named_modules()]
        del model
    return names


def lora_targets(config_kwargs: dict, names: list[str]) -> list[str]:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(**config_kwargs)
    return [name for name in names if check_target_module_exists(config, name)]


@pytest.mark.parametrize("family", FAMILIES)
def test_omni_lora_targets_stay_outside_every_encoder_and_the_talker(omni, omni_module_names, family):
    names, backbone = omni_module_names[family], backbones.get(family)
    layers = {"qwen2_5_omni": 28, "qwen3_omni": 48}[family]
    # Control: bare `--target_modules q_proj v_proj` also hits the audio encoder and the talker.
    former = lora_targets({"target_modules": ["q_proj", "v_proj"]}, names)
    assert any(n.startswith("thinker.audio_tower.") for n in former)
    assert family != "qwen2_5_omni" or any(n.startswith("talker.") for n in former)
    for command in of(omni, family, "rlhf") + of(omni, family, "sft"):
        args = command["args"]
        assert args["freeze_vit"] and args["tuner_type"] == "lora"
        targets = lora_targets({"target_modules": args["target_regex"]}, names)
        assert len(targets) == 2 * layers, targets[:4]
        assert all(re.fullmatch(r"thinker\.model\.layers\.\d+\.self_attn\.[qv]_proj", t) for t in targets)
        assert not any(t.startswith(backbone.encoder_prefixes) for t in targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_omni_generation_batch_divides_into_groups(omni, family):
    for command in of(omni, family, "rlhf"):
        args = command["args"]
        assert args["world_size"] == PAPER_WORLD
        total = args["per_device_train_batch_size"] * PAPER_WORLD * args["gradient_accumulation_steps"]
        assert total == args["generation_batch_size"] and total % args["num_generations"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_each_omni_stage_starts_from_the_previous_merged_model(omni, family):
    commands = omni[family]["commands"]
    training = [c for c in commands if c["route"] in ("rlhf", "sft")]
    exports = [c for c in commands if c["route"] == "export"]
    assert training[0]["args"]["model"] == str(omni[family]["standin"])
    for stage, export in zip(training, exports, strict=True):
        run = Path(flag(stage["argv"], "--output_dir"))
        assert flag(export["argv"], "--adapters") == str(run / "last-checkpoint")
    for previous, stage in itertools.pairwise(training):
        assert stage["args"]["model"] == str(Path(flag(previous["argv"], "--output_dir")) / "merged")
    for rollout in of(omni, family, "rollout"):
        (stage,) = [c for c in training if c["stage"] == rollout["stage"]]
        assert rollout["args"]["model"] == stage["args"]["model"]
