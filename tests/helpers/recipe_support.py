"""The recipe checked without a GPU: a config-only Qwen2-Audio-7B-Instruct, stand-in `swift`/`python`, and the
parse of every recorded command with ms-swift's own argument classes (tests/helpers/recipe_parse.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.cli import ROOT

# Qwen2-Audio-7B-Instruct's published config. The audio values and audio_token_index equal transformers'
# Qwen2AudioConfig defaults (which describe that model); hidden size, layers, heads, kv heads and rope_theta equal
# Qwen2Config's defaults. The rest could not be checked offline (no checkpoint, no hub here): UNVERIFIED.
TEXT_CONFIG = {
    "model_type": "qwen2",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 156032,
    "max_position_embeddings": 8192,
    "rope_theta": 10000.0,
}
AUDIO_CONFIG = {
    "model_type": "qwen2_audio_encoder",
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "max_source_positions": 1500,
}
AUDIO_TOKEN_INDEX = 151646
GENERATION_REPETITION_PENALTY = 1.1
UNVERIFIED = (
    "text_config.intermediate_size",
    "text_config.vocab_size",
    "text_config.max_position_embeddings",
    "generation_config.repetition_penalty",
)
MODEL_POSITIONS = TEXT_CONFIG["max_position_embeddings"]
TOKENIZER_FILES = (
    "added_tokens.json", "chat_template.jinja", "merges.txt", "preprocessor_config.json", "processor_config.json",
    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
)  # fmt: skip
DIST_ENV = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")


def build_standin(tiny_model: Path, out: Path) -> Path:
    """config.json and generation_config.json of the 7B model, the tiny model's tokenizer, no weights."""
    from transformers import GenerationConfig, Qwen2AudioConfig

    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tiny_model / name).exists():
            shutil.copy(tiny_model / name, out / name)
    config = Qwen2AudioConfig(
        audio_config=dict(AUDIO_CONFIG), text_config=dict(TEXT_CONFIG), audio_token_index=AUDIO_TOKEN_INDEX
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    config.torch_dtype = "bfloat16"
    config.save_pretrained(out)
    GenerationConfig(repetition_penalty=GENERATION_REPETITION_PENALTY, do_sample=True).save_pretrained(out)
    return out


STANDIN_SWIFT = r"""
import json, os, shutil, sys
from pathlib import Path

argv = sys.argv[1:]
env = {k: os.environ.get(k) for k in %(dist_env)r}
with open(os.environ["RECIPE_LOG"], "a") as log:
    log.write(json.dumps({"tool": "swift", "route": argv[0], "argv": argv[1:], "env": env,
                          "script": os.environ.get("RECIPE_SCRIPT")}) + "\n")

def value(flag):
    return argv[argv.index(flag) + 1] if flag in argv else None

route = argv[0]
if route in ("sft", "rlhf") and os.environ.get("NODE_RANK", "0") == "0":
    # What a finished LoRA run leaves that the scripts and `swift export` read (global rank 0 saves).
    checkpoint = Path(value("--output_dir")) / "last-checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "adapter_config.json").write_text("{}")
    saved = {"swift_version": "4.6.0", "tuner_type": value("--tuner_type"), "model": value("--model"),
             "model_type": value("--model_type"), "template": value("--template"),
             "torch_dtype": value("--torch_dtype"), "truncation_strategy": value("--truncation_strategy")}
    (checkpoint / "args.json").write_text(json.dumps(saved))
elif route == "export":
    # Written fresh, as `swift export` writes them (the scripts compare modification times).
    shutil.copytree(os.environ["RECIPE_STANDIN"], value("--output_dir"), copy_function=shutil.copy)
"""

STANDIN_PYTHON = r"""
import json, os, shutil, sys
from pathlib import Path

argv = sys.argv[1:]
module = argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else None
if module not in ("safe_qaq.sample", "safe_qaq.process_samples", "safe_qaq.evaluate"):
    os.execv(%(python)r, [%(python)r, *argv])  # the scripts' own checks (safe_qaq.budget) run for real
env = {k: os.environ.get(k) for k in %(dist_env)r}
with open(os.environ["RECIPE_LOG"], "a") as log:
    log.write(json.dumps({"tool": "python", "route": module, "argv": argv[2:], "env": env,
                          "script": os.environ.get("RECIPE_SCRIPT")}) + "\n")

def value(flag):
    return argv[argv.index(flag) + 1] if flag in argv else None

if module == "safe_qaq.sample":
    Path(value("--output")).touch()
elif module == "safe_qaq.process_samples":
    shutil.copy(os.environ["RECIPE_RSFT_ROWS"], value("--output"))
    Path(value("--unsolved")).touch()
"""


STANDIN_NVIDIA_SMI = """#!/bin/sh
# One GPU, and two memory samples for scripts/gpu_check.sh's poller.
if [ "$1" = "-L" ]; then echo "GPU 0: stand-in (UUID: GPU-0)"; exit 0; fi
echo "0, 1024"
echo "0, 2048"
"""


def write_standin_tools(bin_dir: Path) -> dict[str, str]:
    """Stand-in `swift` and `python` that record their arguments (RECIPE_LOG) and leave what the next step reads."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(STANDIN_NVIDIA_SMI)
    smi.chmod(0o755)
    tools = {"NVIDIA_SMI": str(smi)}
    for name, body in (("swift", STANDIN_SWIFT), ("python", STANDIN_PYTHON)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + body % {"dist_env": DIST_ENV, "python": sys.executable})
        path.chmod(0o755)
        tools[name.upper()] = str(path)
    return tools


def run_script(script: str, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a stage script from the repository with ``env`` on top of a clean distributed environment."""
    base = {k: v for k, v in os.environ.items() if k not in DIST_ENV and not k.startswith(("SAMPLE_", "VLLM_"))}
    full = {**base, **env, "RECIPE_SCRIPT": script, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        ["bash", str(ROOT / script), *args], env=full, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_args(env: dict[str, str | None]) -> list[str] | None:
    """The launch arguments `swift` itself derives from the environment (swift.cli.main.get_torchrun_args)."""
    from swift.cli.main import get_torchrun_args

    saved = {k: os.environ.get(k) for k in DIST_ENV}
    try:
        for key in DIST_ENV:
            os.environ.pop(key, None)
            if env.get(key) is not None:
                os.environ[key] = env[key]
        return get_torchrun_args()
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def parse_env() -> dict[str, str]:
    """The parse processes: CPU, offline, quiet, this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        # CPU processes join over gloo (NCCL needs GPUs); the world size and ranks are torchrun's, as on GPUs.
        ACCELERATE_USE_CPU="true",
        PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}",
    )
    return env


def launch_parse(launches: list[tuple[list[str] | None, list[dict[str, Any]]]], workdir: Path) -> list[list[dict]]:
    """Start every launch at once (a multi-node group must rendezvous) and return each rank-0 result list.

    A launch is (torchrun arguments or None for a plain process, commands). Each runs tests/helpers/recipe_parse.py
    the way `swift` runs its entry file: ``python -m torch.distributed.run <args> FILE argv``.
    """
    return finish_parse(start_parse(launches, workdir))


def start_parse(launches: list[tuple[list[str] | None, list[dict[str, Any]]]], workdir: Path, first: int = 0) -> list:
    """:func:`launch_parse`'s start; launches started together are numbered from ``first`` in ``workdir``."""
    started = []
    for i, (launch, commands) in enumerate(launches, start=first):
        commands_path, results_path = workdir / f"commands{i}.json", workdir / f"results{i}.json"
        commands_path.write_text(json.dumps(commands))
        driver = [str(ROOT / "tests" / "helpers" / "recipe_parse.py"), str(commands_path), str(results_path)]
        argv = [sys.executable, *(["-m", "torch.distributed.run", *launch] if launch is not None else []), *driver]
        log = open(workdir / f"parse{i}.log", "w")  # noqa: SIM115 - closed by finish_parse
        process = subprocess.Popen(argv, env=parse_env(), stdout=log, stderr=subprocess.STDOUT)
        started.append({"process": process, "log": log, "path": workdir / f"parse{i}.log", "launch": launch,
                        "results": results_path})  # fmt: skip
    return started


def finish_parse(started: list) -> list[list[dict]]:
    """Wait for launches from :func:`start_parse` and return each rank-0 result list (in order)."""
    failures = []
    try:
        for job in started:
            code = job["process"].wait(timeout=600)
            if code != 0:
                failures.append(f"launch {job['launch']} exited {code}:\n{job['path'].read_text()[-5000:]}")
    finally:
        stop_parse(started)  # a launch that hangs (a rendezvous that never completes)
    if failures:
        raise AssertionError("\n".join(failures))
    return [json.loads(job["results"].read_text()) if job["results"].exists() else None for job in started]


def stop_parse(started: list) -> None:
    """Stop launches from :func:`start_parse` (the fixture failed before waiting for them)."""
    for job in started:
        if job["process"].poll() is None:
            job["process"].kill()
            job["process"].wait()
        job["log"].close()
