"""`make check-recipe`: the paper recipe (PROFILE=paper) checked on CPU, without a GPU or the 7B weights.

The stage scripts run for real with stand-in `swift`/`python` executables that record each command, for the
default launch, vLLM server mode, two nodes, sampler shards and a resumed stage. Every recorded `swift` command
is then parsed by ms-swift 4.6's own argument classes, under torchrun with the world size it would run with,
against a config-only Qwen2-Audio-7B-Instruct (tests/helpers/paper_recipe.py, a session fixture it shares with
tests/test_recipe_omni.py). The tests assert what ms-swift does
not check itself. The only stubs are GPU-only checks, named in tests/helpers/recipe_parse.py's STUBS.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import swift

from safe_qaq.audio import MAX_AUDIOS_PER_ROW
from safe_qaq.jsonl import read_jsonl
from tests.helpers.paper_recipe import MULTI_NODE, TRAINING, Recipe
from tests.helpers.recipe_support import MODEL_POSITIONS, UNVERIFIED, read_log, run_script

pytestmark = pytest.mark.recipe


@pytest.fixture(scope="module")
def recipe(paper_recipe) -> Recipe:
    """Every scenario's recorded commands and what ms-swift parsed of them (tests/helpers/paper_recipe.py)."""
    return paper_recipe


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def flag_values(argv: list[str], name: str) -> list[str]:
    """Every value after ``name`` up to the next flag."""
    if name not in argv:
        return []
    values = []
    for item in argv[argv.index(name) + 1 :]:
        if item.startswith("--"):
            break
        values.append(item)
    return values


def test_the_standin_is_qwen2_audio_7b_instruct_without_weights(recipe):
    config = json.loads((recipe.standin / "config.json").read_text())
    assert config["text_config"]["max_position_embeddings"] == MODEL_POSITIONS == 8192
    assert config["audio_config"]["encoder_layers"] == 32 and config["audio_token_index"] == 151646
    assert not list(recipe.standin.glob("*.safetensors"))
    print("stand-in values not verified offline:", ", ".join(UNVERIFIED))


def test_every_command_is_accepted_by_ms_swift(recipe):
    """Parser, __post_init__ and the leftover-argument check passed for every recorded command (fixture)."""
    routes = Counter(c["route"] for scenario in recipe.logs.values() for c in scenario if c["tool"] == "swift")
    assert routes["rlhf"] >= 10 and routes["sft"] >= 3 and routes["export"] >= 8 and routes["rollout"] == 3
    assert routes["deploy"] == 1
    parsed_routes = {c["route"] for s in recipe.logs.values() for c in s if id(c) in recipe.parsed}
    assert parsed_routes == {"rlhf", "sft", "export", "rollout", "deploy"}
    # Only GPU-only checks were stubbed, and each is named.
    assert set(recipe.stubs) == {
        "bf16 on a GPU", "DeepSpeed package", "vLLM server connection", "GPU count", "vLLM import"
    }  # fmt: skip
    rollout_pipeline = Path(swift.__file__).parent / "pipelines" / "infer" / "rollout.py"
    assert "args_class = RolloutArguments" in rollout_pipeline.read_text()  # what the vLLM-free parse uses
    for scenario in ("paper", "server", "node0"):
        for command in recipe.commands(scenario, "swift"):
            assert id(command) in recipe.parsed, (scenario, command["route"])


def test_context_lengths_fit_the_model(recipe):
    for scenario in ("paper", "server", "node0", "resume"):
        for command in recipe.commands(scenario, "swift", "rlhf"):
            args = recipe.args(command)
            # GRPO checks --max_length on the prompt; prompt + completion must fit the positions.
            assert args["max_length"] + args["max_completion_length"] <= MODEL_POSITIONS
            assert args["truncation_strategy"] == "delete"  # never the default left truncation
            if args["vllm_mode"] == "colocate":
                assert args["vllm_max_model_len"] <= MODEL_POSITIONS
        for command in recipe.commands(scenario, "swift", "sft"):
            args = recipe.args(command)
            assert args["max_length"] <= MODEL_POSITIONS and args["truncation_strategy"] == "delete"
    serving = recipe.commands("server", "swift", "rollout") + recipe.commands("paper", "swift", "deploy")
    for command in serving:
        assert recipe.args(command)["vllm_max_model_len"] <= MODEL_POSITIONS


def test_training_rows_fit_the_budget_and_the_audio_limit(recipe):
    from safe_qaq.budget import Counter

    counter = Counter.load(str(recipe.standin))
    for command in recipe.commands("paper", "swift"):
        if command["route"] not in TRAINING:
            continue
        args = recipe.args(command)
        dataset = Path(args["dataset"][0])
        assert dataset.parent.name == "budget"  # the checked copy, not the raw file
        rows = read_jsonl(dataset)
        assert rows and all(len(row["audios"]) <= MAX_AUDIOS_PER_ROW for row in rows)
        reserved = args.get("max_completion_length", 0) if command["route"] == "rlhf" else 0
        assert max(counter.tokens(row) for row in rows) + reserved <= MODEL_POSITIONS


def test_audios_per_row_limit_is_the_one_setting(recipe):
    expected = {"audio": MAX_AUDIOS_PER_ROW}
    colocate = [recipe.args(c) for c in recipe.commands("paper", "swift", "rlhf")]
    assert colocate and all(a["vllm_limit_mm_per_prompt"] == expected for a in colocate)
    servers = [recipe.args(c) for c in recipe.commands("server", "swift", "rollout")]
    servers += [recipe.args(c) for c in recipe.commands("paper", "swift", "deploy")]
    assert len(servers) == 4 and all(a["vllm_limit_mm_per_prompt"] == expected for a in servers)
    (deploy,) = recipe.commands("paper", "swift", "deploy")
    assert recipe.args(deploy)["infer_backend"] == "vllm" and recipe.args(deploy)["served_model_name"] == "safe-qaq"


def test_vllm_engines_default_to_the_same_audio_limit(monkeypatch, tmp_path):
    """safe_qaq.engine's vLLM backend (sampling, evaluation). Stub: the vLLM engine itself (GPU only)."""
    import swift.infer_engine

    from safe_qaq.engine import make_engine

    seen = {}

    class RecordingVllmEngine:
        def __init__(self, model, **kwargs):
            seen.update(kwargs)

    # Set in the lazy module's namespace: reading the real attribute first would import vLLM.
    monkeypatch.setitem(vars(swift.infer_engine), "VllmEngine", RecordingVllmEngine)
    # a model folder (make_engine refuses a name that is no folder) of the default family
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_audio"}')
    make_engine(str(tmp_path), backend="vllm")
    assert seen["limit_mm_per_prompt"] == {"audio": MAX_AUDIOS_PER_ROW}


@pytest.fixture(scope="module")
def qwen2_audio_7b_module_names(recipe) -> list[str]:
    """Every module name of Qwen2-Audio-7B-Instruct, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, Qwen2AudioForConditionalGeneration

    config = AutoConfig.from_pretrained(recipe.standin)
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    return [name for name, _ in model.named_modules()]


def lora_targets(target_modules, names: list[str]) -> list[str]:
    """The modules peft puts LoRA on for ``target_modules`` (peft's own matcher)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=target_modules)
    return [name for name in names if check_target_module_exists(config, name)]


def test_lora_targets_stay_outside_the_audio_tower(recipe, qwen2_audio_7b_module_names):
    names = qwen2_audio_7b_module_names
    # Control: the recipe's former `--target_modules q_proj v_proj` also hits the audio tower's 32 layers.
    former = lora_targets(["q_proj", "v_proj"], names)
    assert sum(name.startswith("audio_tower.") for name in former) == 64
    for scenario in ("paper", "server", "node0"):
        for command in recipe.commands(scenario, "swift"):
            if command["route"] not in TRAINING:
                continue
            args = recipe.args(command)
            assert args["freeze_vit"] and args["tuner_type"] == "lora"
            targets = lora_targets(args["target_modules"], names)
            assert len(targets) == 64, targets[:4]  # q_proj and v_proj of the 32 language-model layers
            assert all(re.fullmatch(r"language_model\.model\.layers\.\d+\.self_attn\.[qv]_proj", t) for t in targets)


def test_generation_batch_divides_into_groups(recipe):
    for scenario, world in (("paper", 3), ("server", 3), ("node0", 6), ("node1", 6), ("gpu_check", 1)):
        for command in recipe.commands(scenario, "swift", "rlhf"):
            args = recipe.args(command)
            assert args["world_size"] == world
            total = args["per_device_train_batch_size"] * world * args["gradient_accumulation_steps"]
            assert total == args["generation_batch_size"] and total % args["num_generations"] == 0


def test_each_stage_starts_from_the_previous_stage_merged_model(recipe):
    for scenario in ("paper", "server", "node0"):
        commands = recipe.commands(scenario, "swift")
        training = [c for c in commands if c["route"] in TRAINING]
        exports = [c for c in commands if c["route"] == "export"]
        assert len(training) == len(exports) == 4
        assert recipe.args(training[0])["model"] == str(recipe.standin)
        for stage, export in zip(training, exports, strict=True):
            run = Path(flag(stage["argv"], "--output_dir"))
            assert flag(export["argv"], "--adapters") == str(run / "last-checkpoint")
            assert flag(export["argv"], "--output_dir") == str(run / "merged.partial")  # renamed when complete
        for previous, stage in itertools.pairwise(training):
            assert flag(stage["argv"], "--model") == str(Path(flag(previous["argv"], "--output_dir")) / "merged")
        sample = recipe.commands(scenario, "python", "safe_qaq.sample")
        if sample:
            stage1 = Path(flag(training[0]["argv"], "--output_dir"))
            assert flag(sample[0]["argv"], "--model") == str(stage1 / "merged")
            assert recipe.args(training[1])["model"] == str(stage1 / "merged")


def test_sampling_evaluation_and_rollouts_use_the_same_generation_settings(recipe):
    from safe_qaq.evaluate import build_parser

    grpo = [recipe.args(c) for c in recipe.commands("paper", "swift", "rlhf")]
    (sample,) = recipe.commands("paper", "python", "safe_qaq.sample")
    (evaluate,) = recipe.commands("paper", "python", "safe_qaq.evaluate")
    parsed = build_parser().parse_args(evaluate["argv"])  # the real CLI accepts the script's arguments
    settings = {
        "repetition_penalty": {a["repetition_penalty"] for a in grpo}
        | {float(flag(sample["argv"], "--repetition-penalty")), parsed.repetition_penalty},
        "max_tokens": {a["max_completion_length"] for a in grpo}
        | {int(flag(sample["argv"], "--max-tokens")), parsed.max_tokens},
        "backend": {flag(sample["argv"], "--backend"), parsed.backend},
    }
    assert settings == {"repetition_penalty": {1.0}, "max_tokens": {2048}, "backend": {"vllm"}}
    # Explicit everywhere: the model's generation_config (repetition_penalty 1.1) is never the fallback.
    for name in ("--temperature", "--top-p", "--top-k", "--repetition-penalty", "--max-tokens", "--seed"):
        assert flag(sample["argv"], name) is not None and flag(evaluate["argv"], name) is not None, name
    assert parsed.temperature == 0.0
    assert (float(flag(sample["argv"], "--temperature")), float(flag(sample["argv"], "--top-p"))) == (0.8, 0.95)
    assert all((a["temperature"], a["top_p"], a["top_k"]) == (0.9, 1.0, -1) for a in grpo)


def test_server_mode_serves_the_model_each_stage_starts_from(recipe):
    rollouts = recipe.commands("server", "swift", "rollout")
    grpo = recipe.commands("server", "swift", "rlhf")
    assert len(rollouts) == len(grpo) == 3
    for rollout, stage in zip(rollouts, grpo, strict=True):
        assert recipe.args(rollout)["model"] == recipe.args(stage)["model"]
        assert recipe.args(rollout)["port"] == recipe.server_port
        args = recipe.args(stage)
        assert args["vllm_mode"] == "server" and args["vllm_clients"] == [
            {"hosts": ["127.0.0.1"], "server_ports": [recipe.server_port], "base_urls": None}
        ]


def test_two_nodes_merge_and_sample_on_node_0_only(recipe):
    node0, node1 = recipe.logs["node0"], recipe.logs["node1"]
    assert [c["route"] for c in node1] == ["rlhf", "sft", "rlhf", "rlhf"]  # training only
    assert Counter(c["route"] for c in node0)["export"] == 4
    for a, b in zip(recipe.commands("node0", "swift", "rlhf"), recipe.commands("node1", "swift", "rlhf"), strict=True):
        assert a["argv"] == b["argv"] and (a["env"]["NODE_RANK"], b["env"]["NODE_RANK"]) == ("0", "1")
    text = "\n".join(recipe.outputs["node1"])
    assert text.count("training done; node 0 merges") == 4
    # Node 1 ran beside node 0 and started each stage from what node 0 merged (it waited for each that was not there).
    print("node 1 waited:", [line for line in text.splitlines() if "waiting for node 0" in line])
    assert "sampling runs on node 0 only" in text


def test_sample_shards_feed_process_samples_exactly(recipe):
    samples = recipe.commands("shards", "python", "safe_qaq.sample")
    (process,) = recipe.commands("shards", "python", "safe_qaq.process_samples")
    assert sorted(int(flag(c["argv"], "--shard-index")) for c in samples) == [0, 1, 2, 3]
    assert {flag(c["argv"], "--num-shards") for c in samples} == {"4"}
    assert sorted(c["env"]["CUDA_VISIBLE_DEVICES"] for c in samples) == ["0", "1", "2", "3"]
    outputs = [flag(c["argv"], "--output") for c in samples]
    inputs = process["argv"][: process["argv"].index("--output")]
    assert sorted(inputs) == sorted(outputs) and len(set(outputs)) == 4  # not the stale shard 7


def test_resume_continues_the_same_run_on_the_same_rows(recipe):
    (resumed,) = recipe.commands("resume", "swift", "rlhf")
    first = recipe.commands("paper", "swift", "rlhf")[0]
    args = recipe.args(resumed)
    assert args["resume_from_checkpoint"].endswith("stage1_grpo/checkpoint-100")
    assert flag(resumed["argv"], "--dataset") == flag(first["argv"], "--dataset")
    assert "(token counts reused)" in recipe.outputs["resume"][0]
    without = [a for a in resumed["argv"] if a not in ("--resume_from_checkpoint", args["resume_from_checkpoint"])]
    assert without == first["argv"]


def test_scripts_refuse_what_would_fail_on_the_gpus(recipe, tmp_path):
    env = {**recipe.env, "RECIPE_LOG": str(tmp_path / "log.jsonl"), "OUTPUT_ROOT": str(tmp_path / "out")}
    # 3 x 2 x 8 = 48 completions are not groups of 9: refused before anything starts.
    result = run_script("run_swift_grpo_stage1.sh", {**env, "NPROC_PER_NODE": "2"}, check=False)
    assert result.returncode == 2 and "not a multiple of NUM_GENERATIONS" in result.stderr
    # A vLLM context longer than the model's positions: refused with the reason.
    result = run_script("run_swift_grpo_stage1.sh", {**env, "VLLM_MAX_MODEL_LEN": "10240"}, check=False)
    assert result.returncode == 1 and "longer than the model's 8192 positions" in result.stderr
    # A node other than 0 that never sees node 0's merged model says why instead of waiting forever.
    result = run_script(
        "run_swift_sft_stage2_RSFT.sh", {**env, **MULTI_NODE, "NODE_RANK": "1", "NODE_WAIT_SECONDS": "0"}, check=False
    )
    assert result.returncode == 1 and "filesystem every node shares" in result.stderr
    assert not read_log(tmp_path / "log.jsonl")


def test_gpu_check_runs_the_recipe_for_two_steps_on_the_gpus_it_finds(recipe):
    training = [c for c in recipe.logs["gpu_check"] if c["route"] in TRAINING]
    assert [c["route"] for c in training] == ["rlhf", "sft", "rlhf", "rlhf"]
    for command in training:
        args = recipe.args(command)
        assert args["max_steps"] == 2 and args["world_size"] == 1 and command["env"]["NPROC_PER_NODE"] == "1"
        assert args.get("use_vllm", True) and args["max_length"] <= MODEL_POSITIONS
    grpo = [recipe.args(c) for c in training if c["route"] == "rlhf"]
    assert all(a["gradient_accumulation_steps"] == 3 and a["generation_batch_size"] == 9 for a in grpo)
    routes = [c["route"] for c in recipe.logs["gpu_check"]]
    assert routes.count("export") == 4 and "safe_qaq.sample" in routes and "safe_qaq.evaluate" in routes
    text = recipe.outputs["gpu_check"][0]
    assert "| stage | wall s | steps | s/step | peak GPU memory (GiB)" in text
    for stage in ("1-grpo", "2a-sample", "2b-rsft", "2c-lcrl", "3-realtime", "4-evaluate"):
        assert f"| {stage} |" in text
    assert "| 1-grpo |" in text and "| 2.0 |" in text  # the stand-in nvidia-smi's 2048 MiB peak
