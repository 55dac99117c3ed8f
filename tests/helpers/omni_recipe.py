"""The paper profile's commands for the Omni backbones (Qwen2.5-Omni-7B, Qwen3-Omni-30B-A3B-Instruct), against
config-only stand-ins: published config values, a tiny tokenizer, no weights. They are parsed together with the
Qwen2-Audio scenarios in one set of launches (tests/helpers/paper_recipe.py); tests/test_recipe_omni.py asserts on
them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


def omni_commands(root: Path) -> dict[str, dict]:
    """Per family: the stand-in, the settings, and the recipe's commands in stage order (not yet parsed)."""
    from safe_qaq import recipe
    from safe_qaq.stages import GRPO, TRAINING
    from safe_qaq.toy.tiny_omni import build_tokenizer

    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir(parents=True)
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
    return families
