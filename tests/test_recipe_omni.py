"""`make check-recipe` for the Omni backbones: every stage command of the paper profile for Qwen2.5-Omni-7B and
Qwen3-Omni-30B-A3B-Instruct, built by safe_qaq.recipe and parsed by ms-swift 4.6's own argument classes under
torchrun (3 processes, the paper's launch), against config-only stand-ins (published config values, a tiny
tokenizer, no weights). The invariants of tests/test_recipe.py are asserted per family.

What is not run here: the stage scripts' token budget (safe_qaq.budget loads the model's processor, and
transformers' Qwen2.5-Omni/Qwen3-Omni processors need torchvision, which does not load on the CPU torch:
docs/backbones.md). The commands are the ones the scripts run (safe_qaq.recipe argv).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import pytest

from safe_qaq import backbones
from safe_qaq.stages import GRPO, TRAINING
from tests.helpers.recipe_support import launch_parse, torchrun_args

# Qwen2.5-Omni-7B: transformers' Qwen2_5OmniConfig defaults describe it (28 text layers, 3584 hidden, 32768
# positions, audio encoder 32 layers); the talker is not built (enable_audio_output false).
# Qwen3-Omni-30B-A3B-Instruct: 48 layers, 32 query / 4 key-value heads, 128 experts with 8 active (its model card,
# as keras-hub's preset quotes it); the rest is UNVERIFIED offline (no checkpoint, no hub here).
QWEN3_OMNI_TEXT = {
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "num_experts": 128,
    "num_experts_per_tok": 8, "hidden_size": 2048, "head_dim": 128, "moe_intermediate_size": 768,
    "vocab_size": 152064, "max_position_embeddings": 65536,
    "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True},
}  # fmt: skip
UNVERIFIED = {
    "qwen2_5_omni": ("generation_config.json",),
    "qwen3_omni": ("text_config.hidden_size", "text_config.head_dim", "text_config.moe_intermediate_size",
                   "text_config.vocab_size", "text_config.max_position_embeddings", "generation_config.json"),
}  # fmt: skip
FAMILIES = ("qwen2_5_omni", "qwen3_omni")
PAPER_WORLD = 3


def omni_config(family: str):
    if family == "qwen2_5_omni":
        from transformers import Qwen2_5OmniConfig

        config = Qwen2_5OmniConfig(enable_audio_output=False)
        config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    else:
        from transformers import Qwen3OmniMoeConfig

        config = Qwen3OmniMoeConfig(thinker_config={"text_config": dict(QWEN3_OMNI_TEXT)}, enable_audio_output=False)
        config.architectures = ["Qwen3OmniMoeForConditionalGeneration"]
    config.torch_dtype = "bfloat16"
    return config


def build_standin(family: str, tokenizer_dir: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for path in tokenizer_dir.iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    omni_config(family).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    """Per family: the stand-in, the recipe's commands (stage order), and what ms-swift parsed of each."""
    from safe_qaq import recipe
    from safe_qaq.toy.tiny_omni import build_tokenizer

    root = tmp_path_factory.mktemp("omni_recipe")
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir()
    build_tokenizer(tokenizer_dir)
    families = {}
    for family in FAMILIES:
        title = {"qwen2_5_omni": "Qwen2.5-Omni-7B", "qwen3_omni": "Qwen3-Omni-30B-A3B-Instruct"}[family]
        standin = build_standin(family, tokenizer_dir, root / title)
        env = {"PROFILE": "paper", "MODEL": str(standin), "MODEL_FAMILY": family,
               "DATA_DIR": str(root / "data"), "OUTPUT_ROOT": str(root / family)}  # fmt: skip
        s = recipe.load("paper", env)
        commands = []
        for st in TRAINING:
            # What a finished LoRA run leaves (`swift export` reads it) and the merged model the next stage starts
            # from, as tests/helpers/recipe_support.py's stand-in `swift` leaves them.
            checkpoint = s.run_dir(st.key) / "last-checkpoint"
            checkpoint.mkdir(parents=True)
            (checkpoint / "adapter_config.json").write_text("{}")
            saved = {
                "swift_version": "4.6.0",
                "tuner_type": "lora",
                "model": s.start_model(st.key),
                "model_type": s["MODEL_TYPE"],
                "template": s["TEMPLATE"],
                "torch_dtype": s["DTYPE"],
            }
            (checkpoint / "args.json").write_text(json.dumps(saved))
            shutil.copytree(standin, s.merged(st.key))
            route = "sft" if st.kind == "sft" else "rlhf"
            commands.append({"route": route, "stage": st.key, "argv": recipe.train_argv(s, st.key)})
            commands.append({"route": "export", "stage": st.key, "argv": recipe.merge_argv(s, st.key)})
        for st in GRPO:
            commands.append({"route": "rollout", "stage": st.key, "argv": recipe.rollout_argv(s, st.key)})
        deploy = recipe.deploy_argv(s, str(s.merged("realtime")))
        commands.append({"route": "deploy", "stage": "-", "argv": deploy})
        families[family] = {"standin": standin, "settings": s, "commands": commands}
    training = [c for f in families.values() for c in f["commands"] if c["route"] in ("rlhf", "sft")]
    plain = [c for f in families.values() for c in f["commands"] if c["route"] not in ("rlhf", "sft")]
    work = root / "parse"
    work.mkdir()
    launches = [(torchrun_args({"NPROC_PER_NODE": str(PAPER_WORLD)}), training), (None, plain)]
    jobs = [(launch, [{"route": c["route"], "argv": c["argv"]} for c in cs]) for launch, cs in launches]
    results = launch_parse(jobs, work)
    for (_, cs), result in zip(launches, results, strict=True):
        assert len(result["results"]) == len(cs)
        for command, parsed in zip(cs, result["results"], strict=True):
            command["args"] = parsed["args"]
    return families


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
    talker built too (enable_audio_output true), to show LoRA stays off it even when it is loaded."""
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration, Qwen3OmniMoeForConditionalGeneration

    names = {}
    for family, cls in (("qwen2_5_omni", Qwen2_5OmniForConditionalGeneration),
                        ("qwen3_omni", Qwen3OmniMoeForConditionalGeneration)):  # fmt: skip
        config = omni_config(family)
        config.enable_audio_output = family == "qwen2_5_omni"  # Qwen3-Omni's default talker config has no RoPE
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
