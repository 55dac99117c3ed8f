"""The recipe: every setting once (``recipes/*.yaml``), resolved for a profile and the environment, and the exact
commands of each stage built from it (the stage registry, :mod:`safe_qaq.stages`).

Resolution, lowest to highest: ``recipes/paper.yaml`` (the published recipe), the profile's overlay
(``recipes/<PROFILE>.yaml``, which may ``inherit`` another), then an environment variable of the same name. An
overlay or environment key the recipe does not define is an error, not a silent no-op.

The stage scripts call this module for their commands and run them themselves (``swift rlhf`` / ``swift sft``)::

    python -m safe_qaq.recipe show [--profile P]      # the resolved settings
    python -m safe_qaq.recipe env                      # NAME=value lines, what scripts/common.sh loads
    python -m safe_qaq.recipe argv STAGE PART [N]      # one command, NUL-separated (PART: train, budget, merge, ...)
    python -m safe_qaq.recipe table                    # the docs' recipe table (docs/recipe.md)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safe_qaq import backbones
from safe_qaq.audio import MAX_AUDIOS_PER_ROW
from safe_qaq.stages import STAGES, stage

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
PROFILES = ("paper", "smoke", "toy")
# Keys whose recipe value is null but whose values are numbers when set.
INT_KEYS = {"MAX_STEPS", "NNODES", "NODE_RANK", "MASTER_PORT", "SAMPLE_LIMIT"}
# Keys holding a path: a relative value is taken from the repository root (what the scripts have always done).
PATH_KEYS = {"MODEL", "DATA_DIR", "OUTPUT_ROOT", "BUDGET_CACHE"}
REWARD_PLUGIN = "rewards.py"


class RecipeError(ValueError):
    """A setting that cannot work, with the reason; the CLI prints it as one line."""


def _flatten(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # a section of paper.yaml
            for inner, v in _flatten(path, value).items():
                if inner in flat:
                    raise RecipeError(f"{path}: {inner} is defined twice")
                flat[inner] = v
        else:
            flat[key] = value
    return flat


def _read(name: str) -> dict[str, Any]:
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"PROFILE must be one of {', '.join(PROFILES)}: no {path}")
    with open(path, encoding="utf-8") as f:
        return _flatten(path, yaml.safe_load(f) or {})


def _coerce(key: str, text: str, like: Any) -> Any:
    """An environment value, typed like the recipe's value of the same key."""
    if text == "" and not isinstance(like, str):
        return [] if isinstance(like, list) else None
    try:
        if isinstance(like, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(like, int) or (like is None and key in INT_KEYS):
            return int(text)
        if isinstance(like, float):
            return float(text)
    except ValueError:
        kind = "true or false" if isinstance(like, bool) else "a number"
        raise RecipeError(f"{key}={text!r}: expected {kind}") from None
    if isinstance(like, list):
        return text.split()
    return text


@dataclass
class Settings(Mapping):
    """The resolved recipe of one profile: a read-only mapping NAME -> value."""

    profile: str
    data: dict[str, Any]
    origin: dict[str, str]  # where each value came from: paper, the overlay's name, or env
    # The environment it was loaded with: the per-run replacements below (a stage's dataset, its reward set, stage
    # 1's model) are read from it, so settings loaded for another environment never mix in this process's.
    env: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def path(self, key: str) -> Path:
        return Path(self.data[key])

    # --- where things are ----------------------------------------------------------------------------------
    def run_dir(self, key: str) -> Path:
        return self.path("OUTPUT_ROOT") / stage(key).run_dir

    def merged(self, key: str) -> Path:
        return self.run_dir(key) / "merged"

    def start_model(self, key: str) -> str:
        """The model a stage starts from: the previous stage's merged model, or MODEL (stage 1)."""
        s = stage(key)
        if s.start is None:
            return self.env.get("STAGE1_MODEL") or str(self["MODEL"])
        return str(self.merged(s.start))

    def dataset(self, key: str) -> Path:
        s = stage(key)
        if s.dataset_env and self.env.get(s.dataset_env):
            return Path(self.env[s.dataset_env])
        folder = self.run_dir(s.dataset_from) if s.dataset_from else self.path("DATA_DIR")
        return folder / s.dataset

    def rewards(self, key: str) -> list[str]:
        s = stage(key)
        if self.env.get("REWARD_FUNCS"):  # one stage's set replaced for one run
            return self.env["REWARD_FUNCS"].split()
        return list(self[s.rewards]) if s.rewards else []

    def processes(self) -> int:
        return int(self["NPROC_PER_NODE"] or 1) * int(self["NNODES"] or 1)


def load(profile: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``profile`` (default: $PROFILE, else paper) with ``env`` (default: os.environ) on top."""
    env = os.environ if env is None else env
    profile = profile or env.get("PROFILE") or "paper"
    base = _read("paper")
    origin = dict.fromkeys(base, "paper")
    chain, name = [], profile
    while name != "paper":
        if name in chain:
            raise RecipeError(f"recipes/{name}.yaml: inherit loops back ({' -> '.join([*chain, name])})")
        chain.append(name)
        overlay = _read(name)
        name = overlay.pop("inherit", "paper")
        chain[-1] = (chain[-1], overlay)  # type: ignore[call-overload]
    values = dict(base)
    for name, overlay in reversed(chain):  # type: ignore[misc]
        for key, value in overlay.items():
            if key not in base:
                raise RecipeError(f"recipes/{name}.yaml: {key} is not a recipe setting (recipes/paper.yaml)")
            values[key], origin[key] = value, name
    for key in base:
        if key in env:
            values[key], origin[key] = _coerce(key, env[key], base[key]), "env"
    for key in PATH_KEYS:  # a file's relative path is from the repository, the environment's from where you are
        if values.get(key) and not Path(str(values[key])).is_absolute():
            values[key] = os.path.abspath(values[key]) if origin[key] == "env" else str(ROOT / str(values[key]))
    _derive(values)
    settings = Settings(profile, values, origin, env)
    validate(settings)
    return settings


def _derive(values: dict[str, Any]) -> None:
    if values.get("BUDGET_CACHE") is None:
        values["BUDGET_CACHE"] = str(Path(values["OUTPUT_ROOT"]) / ".budget_cache")
    if values.get("VLLM_MAX_MODEL_LEN") is None:
        values["VLLM_MAX_MODEL_LEN"] = values["MAX_LENGTH"]
    # The backbone entry (safe_qaq.backbones) decides what names a family: model type, template, LoRA, vLLM.
    try:
        backbone = backbones.resolve(values.get("MODEL_FAMILY"), values["MODEL"])
    except backbones.BackboneError as error:
        raise RecipeError(str(error)) from None
    values["MODEL_FAMILY"] = backbone.family
    if values.get("MODEL_TYPE") in (None, ""):
        values["MODEL_TYPE"] = backbone.model_type
    elif values["MODEL_TYPE"] != backbone.model_type:
        raise RecipeError(
            f"MODEL_TYPE={values['MODEL_TYPE']} does not match MODEL_FAMILY={backbone.family} "
            f"(model type {backbone.model_type}); unset MODEL_TYPE or pick the family"
        )
    if values.get("TEMPLATE") in (None, ""):
        values["TEMPLATE"] = backbone.template
    if not values.get("LORA_TARGET_REGEX"):
        # Anchored at the language model (peft matches it against full module names): the encoders' q/v
        # projections, the projectors and an Omni model's talker stay frozen.
        values["LORA_TARGET_REGEX"] = backbone.lora_target_regex(values["TARGET_MODULES"])
    if values.get("SERVE_BACKEND") is None:
        values["SERVE_BACKEND"] = "vllm" if values["USE_VLLM"] else "transformers"
    # The one bound, shared with prepare and the engines; a family's vLLM limit may only lower it.
    values["MAX_AUDIOS_PER_ROW"] = min(MAX_AUDIOS_PER_ROW, backbone.vllm_audio_limit)


def validate(s: Settings) -> None:
    """What would fail on the GPUs, refused before anything starts."""
    if s["TUNER"] not in ("lora", "full"):
        raise RecipeError(f"TUNER must be lora or full, got {s['TUNER']!r}")
    if s["VLLM_MODE"] not in ("colocate", "server"):
        raise RecipeError(f"VLLM_MODE must be colocate or server, got {s['VLLM_MODE']!r}")


# --- the commands ------------------------------------------------------------------------------------------------


def check_generation_batch(s: Settings) -> None:
    """ms-swift needs per-device batch x processes x grad-acc to be a multiple of G (whole groups)."""
    total = int(s["GRPO_BATCH"]) * s.processes() * int(s["GRAD_ACC"])
    if total % int(s["NUM_GENERATIONS"]):
        raise RecipeError(
            f"GRPO_BATCH ({s['GRPO_BATCH']}) x processes ({s.processes()}) x GRAD_ACC ({s['GRAD_ACC']}) = {total} "
            f"is not a multiple of NUM_GENERATIONS ({s['NUM_GENERATIONS']}); the recipe's 3 x 3 x 8 uses 3 "
            "training GPUs"
        )


def _plugins(s: Settings, rewards: bool) -> list[str]:
    # Extra plugins first: a reward they register is then exposed by rewards.py, loaded last.
    template = backbones.get(s["MODEL_FAMILY"]).template_plugin
    files = [*([template] if template else []), *(s["EXTRA_PLUGINS"] if rewards else []),
             *([REWARD_PLUGIN] if rewards else [])]  # fmt: skip
    return [str(ROOT / f) if not Path(f).is_absolute() else f for f in files]


def _plugin_flag(s: Settings, rewards: bool) -> list[str]:
    # A family without a template plugin and no rewards loads none: a bare --external_plugins is an error.
    files = _plugins(s, rewards)
    return ["--external_plugins", *files] if files else []


def budget_out(s: Settings, key: str) -> Path:
    return s.run_dir(key) / "budget" / s.dataset(key).name


def budget_argv(s: Settings, key: str) -> list[str]:
    """`python -m safe_qaq.budget`: the rows of the stage's dataset that fit MAX_LENGTH, kept beside the run."""
    st = stage(key)
    completion = s["MAX_COMPLETION_LENGTH"] if st.kind == "grpo" else 0  # an SFT row holds its answer
    return [
        "-m", "safe_qaq.budget", "--model", s.start_model(key), "--dataset", str(s.dataset(key)),
        "--out", str(budget_out(s, key)), "--max-length", str(s["MAX_LENGTH"]),
        "--completion-tokens", str(completion), "--max-audios", str(s["MAX_AUDIOS_PER_ROW"]),
        "--vllm-max-model-len", str(s["VLLM_MAX_MODEL_LEN"]), "--max-drop-fraction", str(s["MAX_DROP_FRACTION"]),
        "--cache-dir", str(s["BUDGET_CACHE"]),
    ]  # fmt: skip


def _common_train(s: Settings) -> list[str]:
    if s["TUNER"] == "lora":
        tuner = ["--tuner_type", "lora", "--lora_rank", str(s["LORA_RANK"]), "--lora_alpha", str(s["LORA_ALPHA"]),
                 "--target_regex", s["LORA_TARGET_REGEX"]]  # fmt: skip
    else:
        tuner = ["--tuner_type", "full"]  # the audio tower and projector stay frozen (--freeze_vit)
    argv = [
        "--model_type", s["MODEL_TYPE"], "--template", s["TEMPLATE"], *_model_kwargs(s), "--check_model", "false",
        "--torch_dtype", s["DTYPE"], *tuner, "--freeze_vit", "true", "--truncation_strategy", "delete",
        "--num_train_epochs", str(s["NUM_EPOCHS"]), "--seed", str(s["SEED"]),
        "--save_steps", str(s["SAVE_STEPS"]), "--save_total_limit", "2", "--logging_steps", str(s["LOGGING_STEPS"]),
        "--dataloader_num_workers", str(s["DATALOADER_WORKERS"]), "--add_version", "false",
        "--report_to", s["REPORT_TO"],
    ]  # fmt: skip
    if s["MAX_STEPS"]:
        argv += ["--max_steps", str(s["MAX_STEPS"])]
    if s["DEEPSPEED"]:
        argv += ["--deepspeed", s["DEEPSPEED"]]
    if s["RESUME_FROM_CHECKPOINT"]:
        argv += ["--resume_from_checkpoint", s["RESUME_FROM_CHECKPOINT"]]
    return argv


def _vllm_limit(s: Settings) -> str:
    return f'{{"audio": {s["MAX_AUDIOS_PER_ROW"]}}}'


def _model_kwargs(s: Settings) -> list[str]:
    """The family's environment for ms-swift (an Omni model's talker stays unloaded), set by ms-swift itself from
    --model_kwargs in every process it starts."""
    env = backbones.get(s["MODEL_FAMILY"]).env
    return ["--model_kwargs", json.dumps(env, sort_keys=True)] if env else []


def sft_argv(
    s: Settings,
    model: str,
    dataset: str,
    output: str,
    *,
    loss_scale: str = "last_round",
    plugins: tuple[str, ...] = (),
    overrides: dict[str, str] | None = None,
) -> list[str]:
    """The arguments after `swift sft`: RSFT's, and (with ``overrides``, ``--flag: value``) any other SFT of the
    project -- the toy's warm start, the learning tests -- so the command is written once.

    ``last_round``: loss on the last assistant turn only. The earlier turns of a round-2/3 row are the carried gold
    answers of rounds 1-2, not kept samples (ms-swift's default trains on every turn).
    """
    argv = [
        "--model", model, "--dataset", dataset, "--output_dir", output,
        *(["--external_plugins", *_plugins(s, False), *plugins] if _plugins(s, False) or plugins else []),
        "--max_length", str(s["MAX_LENGTH"]), "--loss_scale", loss_scale, "--learning_rate", str(s["RSFT_LR"]),
        "--per_device_train_batch_size", str(s["RSFT_BATCH"]), "--gradient_accumulation_steps",
        str(s["RSFT_GRAD_ACC"]), "--warmup_ratio", str(s["WARMUP_RATIO"]), *_common_train(s),
    ]  # fmt: skip
    for flag, value in (overrides or {}).items():
        if flag in argv:
            argv[argv.index(flag) + 1] = str(value)
        else:
            argv += [flag, str(value)]
    return argv


def train_argv(s: Settings, key: str) -> list[str]:
    """The arguments after `swift rlhf` (GRPO stages) or `swift sft` (RSFT)."""
    st = stage(key)
    model, dataset, output = s.start_model(key), str(budget_out(s, key)), str(s.run_dir(key))
    if st.kind == "sft":
        return sft_argv(s, model, dataset, output)
    if st.kind != "grpo":
        raise RecipeError(f"stage {key} does not train")
    check_generation_batch(s)
    vllm = ["--use_vllm", "true" if s["USE_VLLM"] else "false"]
    if s["USE_VLLM"]:
        vllm += ["--vllm_mode", s["VLLM_MODE"]]
        if s["VLLM_MODE"] == "server":  # the server's own limits are set where it starts (rollout_argv)
            vllm += ["--vllm_server_host", s["VLLM_SERVER_HOST"], "--vllm_server_port", str(s["VLLM_SERVER_PORT"])]
        else:
            vllm += ["--vllm_gpu_memory_utilization", str(s["VLLM_GPU_MEMORY_UTILIZATION"]),
                     "--vllm_max_model_len", str(s["VLLM_MAX_MODEL_LEN"]),
                     "--vllm_limit_mm_per_prompt", _vllm_limit(s), "--sleep_level", "1"]  # fmt: skip
    completion = int(s["MAX_COMPLETION_LENGTH"])
    # GRPO applies --max_length to the prompt alone (the completion is appended unchecked), so the prompt gets what
    # the completion leaves of MAX_LENGTH; `delete` drops, never truncates, a prompt over it.
    return [
        "--rlhf_type", "grpo", "--model", model, "--dataset", dataset, "--output_dir", output,
        *_plugin_flag(s, True), "--reward_funcs", *s.rewards(key),
        "--num_generations", str(s["NUM_GENERATIONS"]), "--temperature", str(s["TEMPERATURE"]),
        "--top_p", str(s["GRPO_TOP_P"]), "--top_k", str(s["GRPO_TOP_K"]),
        "--repetition_penalty", str(s["REPETITION_PENALTY"]), "--max_completion_length", str(completion),
        "--max_length", str(int(s["MAX_LENGTH"]) - completion), "--beta", str(s["KL_BETA"]),
        "--learning_rate", str(s["GRPO_LR"]), "--per_device_train_batch_size", str(s["GRPO_BATCH"]),
        "--gradient_accumulation_steps", str(s["GRAD_ACC"]),
        "--warmup_ratio", str(s["WARMUP_RATIO"] if st.warmup else 0), "--log_completions", "true",
        *_common_train(s), *vllm,
    ]  # fmt: skip


def merge_argv(s: Settings, key: str) -> list[str]:
    """LoRA: the arguments after `swift export` (adapter folded in); full: `python -m safe_qaq.checkpoint`'s."""
    checkpoint, partial = s.run_dir(key) / "last-checkpoint", s.merged(key).with_name("merged.partial")
    if s["TUNER"] == "lora":
        return ["--adapters", str(checkpoint), "--merge_lora", "true", "--output_dir", str(partial),
                *_plugin_flag(s, False), "--template", s["TEMPLATE"], *_model_kwargs(s)]  # fmt: skip
    return ["-m", "safe_qaq.checkpoint", str(checkpoint), str(partial)]


def checkpoint_marker(s: Settings, key: str) -> Path:
    """The file every finished checkpoint of the run has (LoRA adapter or full model)."""
    return s.run_dir(key) / "last-checkpoint" / ("adapter_config.json" if s["TUNER"] == "lora" else "config.json")


def sample_gpus(s: Settings) -> list[str]:
    shards = int(s["SAMPLE_SHARDS"])
    gpus = str(s["SAMPLE_GPUS"]).replace(",", " ").split() if s["SAMPLE_GPUS"] else [str(i) for i in range(shards)]
    if len(gpus) < shards:
        listed = " ".join(gpus)
        raise RecipeError(f"SAMPLE_SHARDS={shards} needs one GPU each, SAMPLE_GPUS lists {len(gpus)} ({listed})")
    return gpus[:shards]


def sample_argv(s: Settings, shard: int) -> list[str]:
    """`python -m safe_qaq.sample` for one shard: every generation setting explicit, as evaluate's are."""
    out = s.run_dir("sample")
    argv = [
        "-m", "safe_qaq.sample", "--model", s.start_model("sample"), "--input", str(s.dataset("sample")),
        "--backend", s["SAMPLE_BACKEND"], "--n", str(s["SAMPLE_N"]), "--temperature", str(s["SAMPLE_TEMPERATURE"]),
        "--top-p", str(s["SAMPLE_TOP_P"]), "--top-k", str(s["SAMPLE_TOP_K"]),
        "--repetition-penalty", str(s["REPETITION_PENALTY"]), "--max-tokens", str(s["MAX_COMPLETION_LENGTH"]),
        "--seed", str(s["SEED"]), "--num-shards", str(s["SAMPLE_SHARDS"]), "--shard-index", str(shard),
        "--output", str(out / f"samples.shard{shard}.jsonl"),
    ]  # fmt: skip
    if s["SAMPLE_LIMIT"]:
        argv += ["--limit", str(s["SAMPLE_LIMIT"])]
    return argv


def process_argv(s: Settings, shards: list[str]) -> list[str]:
    out = s.run_dir("process")
    return ["-m", "safe_qaq.process_samples", *shards, "--output", str(out / "rsft.jsonl"),
            "--unsolved", str(out / "unsolved.jsonl")]  # fmt: skip


def eval_argv(s: Settings) -> list[str]:
    """`python -m safe_qaq.evaluate`: greedy, with the rollouts' repetition penalty and completion budget."""
    run = Path(s["EVAL_RUN"]) if s["EVAL_RUN"] else s.run_dir(stage("evaluate").start)
    model = s["EVAL_MODEL"] or str(run / "merged")
    out = s["EVAL_OUT"] or str(s.path("OUTPUT_ROOT") / "eval" / run.name)
    backend = s["EVAL_BACKEND"] or s["SAMPLE_BACKEND"]
    argv = [
        "-m", "safe_qaq.evaluate", "--model", model, "--backend", backend, "--data", str(s.dataset("evaluate")),
        "--out", out, "--temperature", "0", "--top-p", "1.0", "--top-k", "-1",
        "--repetition-penalty", str(s["REPETITION_PENALTY"]), "--max-tokens", str(s["MAX_COMPLETION_LENGTH"]),
        "--seed", str(s["SEED"]),
    ]  # fmt: skip
    if backend == "openai":
        if not s["EVAL_BASE_URL"]:
            raise RecipeError("EVAL_BACKEND=openai needs EVAL_BASE_URL, e.g. http://127.0.0.1:8000/v1")
        argv += ["--base-url", s["EVAL_BASE_URL"]]
    return argv


def rollout_argv(s: Settings, key: str) -> list[str]:
    """`swift rollout` (vLLM server mode) for a GRPO stage: the model it starts from, the colocated limits."""
    if stage(key).kind != "grpo":
        raise RecipeError(f"{key} is not a GRPO stage: expected one of stage1, lcrl, realtime")
    return [
        "--model", s.start_model(key), "--model_type", s["MODEL_TYPE"], "--template", s["TEMPLATE"], *_model_kwargs(s),
        *_plugin_flag(s, False), "--torch_dtype", s["DTYPE"], "--port", str(s["VLLM_SERVER_PORT"]),
        "--vllm_max_model_len", str(s["VLLM_MAX_MODEL_LEN"]), "--vllm_limit_mm_per_prompt", _vllm_limit(s),
        "--vllm_gpu_memory_utilization", str(s["ROLLOUT_GPU_MEMORY_UTILIZATION"]),
    ]  # fmt: skip


def deploy_argv(s: Settings, model: str) -> list[str]:
    """`swift deploy` of a trained model: the OpenAI-compatible endpoint evaluate/live/the service reach."""
    argv = [
        "--model", model, "--model_type", s["MODEL_TYPE"], "--template", s["TEMPLATE"], *_model_kwargs(s),
        *_plugin_flag(s, False), "--torch_dtype", s["DTYPE"], "--infer_backend", s["SERVE_BACKEND"],
        "--served_model_name", s["SERVED_MODEL_NAME"], "--host", s["SERVE_HOST"], "--port", str(s["SERVE_PORT"]),
    ]  # fmt: skip
    if s["SERVE_BACKEND"] == "vllm":
        argv += ["--vllm_max_model_len", str(s["VLLM_MAX_MODEL_LEN"]), "--vllm_limit_mm_per_prompt", _vllm_limit(s)]
    return argv


def checkpoint_token(run_dir: Path) -> str:
    """What identifies the run's last checkpoint by content, so nodes on a shared filesystem agree on "this run's
    output" without comparing modification times written by different machines' clocks."""
    checkpoint = Path(run_dir) / "last-checkpoint"
    digest = hashlib.sha256()
    for name in ("trainer_state.json", "args.json", "adapter_config.json", "config.json"):
        path = checkpoint / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def argv_for(s: Settings, key: str, part: str, extra: list[str]) -> list[str]:
    """One command of stage ``key`` (``-`` for deploy, which serves any model)."""
    builders = {
        "train": lambda: train_argv(s, key),
        "budget": lambda: budget_argv(s, key),
        "merge": lambda: merge_argv(s, key),
        "rollout": lambda: rollout_argv(s, key),
        "sample": lambda: sample_argv(s, int(extra[0])),
        "process": lambda: process_argv(s, extra),
        "evaluate": lambda: eval_argv(s),
        "deploy": lambda: deploy_argv(s, extra[0]),
        "gpus": lambda: sample_gpus(s),
        "dataset": lambda: [str(s.dataset(key))],
        # the stage this one starts from, and its script (nothing for stage 1)
        "start": lambda: [stage(key).start, stage(stage(key).start).script] if stage(key).start else [],
    }
    if part not in builders:
        raise RecipeError(f"unknown command part {part!r} for stage {key}: expected one of {', '.join(builders)}")
    return builders[part]()


# --- docs --------------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "–"
    if value == "":
        return "(off)"
    return str(value)


def table() -> str:
    """The recipe table of docs/recipe.md: every key with its paper value and what each CPU profile changes."""
    with open(RECIPES / "paper.yaml", encoding="utf-8") as f:
        sections = yaml.safe_load(f)
    overlays = {}
    for name in PROFILES[1:]:
        overlay, chain = {}, name
        while chain != "paper":
            data = _read(chain)
            parent = data.pop("inherit", "paper")
            overlay = {**data, **overlay}
            chain = parent
        overlays[name] = overlay
    lines = ["| setting | paper | smoke (`make demo`) | toy (`make toy`) |", "|---|---|---|---|"]
    for section, keys in sections.items():
        lines.append(f"| **{section}** | | | |")
        for key, value in keys.items():
            cells = [_show(overlays[p][key]) if key in overlays[p] else "" for p in PROFILES[1:]]
            lines.append(f"| `{key}` | {_show(value)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def stage_table() -> str:
    """The stage table of docs/recipe.md, from the registry."""
    lines = ["| step | stage | script | run folder | starts from | data | rewards (recipe key) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for st in STAGES:
        start = f"`{stage(st.start).run_dir}/merged`" if st.start else ("`MODEL`" if st.key == "stage1" else "–")
        data = f"`{stage(st.dataset_from).run_dir}/{st.dataset}`" if st.dataset_from else f"`{st.dataset}`"
        lines.append(f"| {st.step} | {st.title} | `{st.script}` | `{st.run_dir}` | {start} | {data} | "
                     f"{f'`{st.rewards}`' if st.rewards else ''} |")  # fmt: skip
    return "\n".join(lines) + "\n"


DOC = ROOT / "docs" / "recipe.md"
BEGIN, END = "<!-- generated by `python -m safe_qaq.recipe docs`: begin -->", "<!-- generated: end -->"


def render_doc(text: str) -> str:
    """docs/recipe.md with the block between the markers replaced by the current tables."""
    if BEGIN not in text or END not in text:
        raise RecipeError(f"{DOC}: the markers of the generated block are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{stage_table()}\n{table()}{END}{tail}"


# --- CLI ---------------------------------------------------------------------------------------------------------


def _env_line(key: str, value: Any) -> str:
    if isinstance(value, list):
        value = " ".join(map(str, value))
    elif isinstance(value, bool):
        value = "true" if value else "false"
    elif value is None:
        value = ""
    text = str(value)
    if "\n" in text:
        raise RecipeError(f"{key}: a value may not span lines")
    return f"{key}={text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.recipe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="the resolved settings and where each comes from")
    show.add_argument("--profile")
    sub.add_parser("env", help="NAME=value lines for the stage scripts")
    sub.add_parser("get", help="one resolved value").add_argument("key")
    one = sub.add_parser("argv", help="one command's arguments, NUL-separated")
    one.add_argument("stage")
    one.add_argument("part")
    one.add_argument("extra", nargs="*")
    plan = sub.add_parser(
        "plan", help="several commands of one stage (PART or PART:ARG): each COUNT then its arguments, NUL-separated"
    )
    plan.add_argument("stage")
    plan.add_argument("parts", nargs="+")
    sub.add_parser("token", help="the content token of a run's last checkpoint").add_argument("run_dir")
    sub.add_parser("table", help="the docs' recipe and stage tables")
    sub.add_parser("docs", help="rewrite the generated tables of docs/recipe.md")
    args = parser.parse_args(argv)
    try:
        if args.command == "table":
            sys.stdout.write(table() + "\n" + stage_table())
            return 0
        if args.command == "docs":
            DOC.write_text(render_doc(DOC.read_text(encoding="utf-8")), encoding="utf-8")
            print(DOC)
            return 0
        if args.command == "token":
            print(checkpoint_token(Path(args.run_dir)))
            return 0
        s = load(getattr(args, "profile", None))
        if args.command == "show":
            for key, value in s.items():
                print(f"{key:32} {_show(value):60} ({s.origin.get(key, 'derived')})")
        elif args.command == "get":
            if args.key not in s:
                raise RecipeError(f"{args.key} is not a recipe setting (recipes/paper.yaml)")
            print(_env_line(args.key, s[args.key]).split("=", 1)[1])
        elif args.command == "env":
            # The settings, then each stage's run folder (RUN_DIR_<key>), so a script needs no second call for one.
            lines = [_env_line(k, v) for k, v in s.items()]
            lines += [_env_line(f"RUN_DIR_{st.key}", s.run_dir(st.key)) for st in STAGES]
            print("\n".join(lines))
        elif args.command == "plan":
            # One call per stage script instead of one per command: each call pays Python's start-up.
            out = []
            for spec in args.parts:
                part, _, extra = spec.partition(":")
                built = argv_for(s, args.stage, part, [extra] if extra else [])
                out += [str(len(built)), *built]
            sys.stdout.write("".join(f"{a}\0" for a in out))
        else:
            sys.stdout.write("".join(f"{a}\0" for a in argv_for(s, args.stage, args.part, args.extra)))
    except (RecipeError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) else str(error)
        print(f"recipe: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
