"""The distributed chain the tests share: the real stage scripts (PROFILE=smoke with the recipe's LoRA tuner, one
step) from the shipped warm base. (From a random model no answer is in format, every reward ties, GRPO's advantages
are zero and the step moves no weight.) Stage-1 GRPO as a two-"node" run on localhost (two launches, NNODES=2, one
process each, so world size 2), merged by node 0 alone. CPU processes join over gloo (ACCELERATE_USE_CPU=true).
Built once per session (tests/conftest.py, `lora_chain`). Sampling in shards runs in the demo chain (below).

One two-node launch stands for both multi-process cases: a node's processes start under torchrun exactly as
`--nproc_per_node N` starts them, and the paper's launches (3 processes a node, 2 nodes) are parsed under torchrun by
tests/test_recipe.py. Node 1 waiting for node 0's merged model between stages is run by that file's two-node
scenario, with both nodes running at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from safe_qaq.jsonl import read_jsonl
from tests.helpers.cli import ROOT, cli_env, write_jsonl
from tests.helpers.recipe_support import DIST_ENV, free_port


def launch_env(root: Path, model: Path, prepared: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in DIST_ENV and not k.startswith(("SAMPLE_", "VLLM_"))}
    env = cli_env(base=clean)
    env.update(
        PROFILE="smoke",
        MODEL=str(model),
        DATA_DIR=str(prepared),
        OUTPUT_ROOT=str(root / "outputs"),
        MAX_STEPS="1",
        WARMUP_RATIO="0",  # with one step, any warm-up makes it a step at learning rate 0 (nothing would move)
        # The recipe's tuner and stage-1 rewards (LoRA on the language model, merged on node 0; the CPU profiles
        # default to full tuning), at the smallest sizes: 2 ranks x 2 completions.
        TUNER="lora",
        STAGE1_REWARDS="adaptive_classification prompt_format think_length_reward_300",
        NUM_GENERATIONS="2",
        GRPO_BATCH="2",
        GRAD_ACC="1",
        RSFT_BATCH="2",
        RSFT_GRAD_ACC="1",
        SAVE_STEPS="1",
        ACCELERATE_USE_CPU="true",  # gloo between CPU processes; on GPUs ms-swift uses NCCL
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        SAFE_QAQ_REWARD_LOG=str(root / "rewards.jsonl"),
    )
    env.update(extra)
    return env


def start(script: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed by finish()
    process = subprocess.Popen(["bash", str(ROOT / script)], env=env, stdout=handle, stderr=subprocess.STDOUT)
    process.log_handle = handle
    return process


def finish(process: subprocess.Popen, log: Path, timeout: int = 600) -> str:
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.log_handle.close()
    text = log.read_text()
    assert code == 0, f"{log.name} exited {code}:\n{text[-6000:]}"
    return text


class Chain:
    def __init__(self, root: Path):
        self.root = root
        self.out = root / "outputs"
        self.logs: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def run(self, name: str, script: str, env: dict[str, str]) -> str:
        started = time.time()
        self.logs[name] = finish(start(script, env, self.root / f"{name}.log"), self.root / f"{name}.log")
        self.seconds[name] = time.time() - started
        return self.logs[name]


def build_chain(root: Path, model: Path, prepared: Path) -> Chain:
    """The chain itself (tests/conftest.py's session fixture `lora_chain`, shared by test_distributed and
    test_learning)."""
    chain = Chain(root)
    # Stage 1's rows with a `solution` column, which ms-swift copies into its completions log: test_learning maps
    # each logged completion back to its row to recompute the rewards.
    rows = read_jsonl(prepared / "offline_train.jsonl")
    tagged = [{**row, "solution": f"row{i}"} for i, row in enumerate(rows)]
    chain.stage1_rows = write_jsonl(root / "stage1_rows.jsonl", tagged)
    env = launch_env(root, model, prepared, STAGE1_DATASET=str(chain.stage1_rows))
    chain.stage1_rewards = env["STAGE1_REWARDS"].split()
    # Two "nodes" on localhost sharing OUTPUT_ROOT (a shared filesystem), started together.
    nodes = {**env, "NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    started = time.time()
    launches = [
        (rank, start("run_swift_grpo_stage1.sh", {**nodes, "NODE_RANK": rank}, root / f"stage1_node{rank}.log"))
        for rank in ("0", "1")
    ]
    for rank, process in launches:
        chain.logs[f"stage1_node{rank}"] = finish(process, root / f"stage1_node{rank}.log")
    chain.seconds["stage1"] = time.time() - started
    print("launch wall seconds:", {k: round(v) for k, v in chain.seconds.items()})
    return chain


class DemoChain:
    """`make demo`'s chain (scripts/demo.sh, reduced): its outputs, what it printed, and each step's seconds."""

    def __init__(self, out: Path, stdout: str):
        self.out, self.stdout = out, stdout
        self.seconds = {m[1]: float(m[2]) for m in re.finditer(r"^(\S+)\s+ok\s+(\d+)s", stdout, re.MULTILINE)}


class DemoJob:
    """scripts/demo.sh from the shipped warm base, one step a stage, sampling in two shards, started in the
    background (tests/conftest.py's `demo_job`); :meth:`wait` gives its :class:`DemoChain`."""

    def __init__(self, root: Path, warm_model: Path):
        out = root / "outputs"
        env = {
            "OUTPUT_ROOT": str(out),
            "DATA_DIR": str(root / "prepared"),
            "MODEL": str(warm_model),
            "MAX_STEPS": "1",
            "WARMUP_RATIO": "0",  # with one step, any warm-up makes it a step at learning rate 0
            "SAMPLE_SHARDS": "2",  # two sampler processes (one per GPU on a GPU node), SAMPLE_LIMIT prompts each
            "SAMPLE_LIMIT": "1",
            "EVAL_LIMIT": "3",
            "LIVE_LIMIT": "1",
        }
        env = cli_env(env)
        self.out, self.log = out, root / "demo.out"
        self.handle = open(self.log, "w")  # noqa: SIM115 - closed by stop()
        command = ["bash", str(ROOT / "scripts" / "demo.sh")]
        # A session of its own, so that stop() ends the stage processes too, not only bash.
        self.process = subprocess.Popen(
            command, cwd=root, env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.chain: DemoChain | None = None

    def wait(self, timeout: int = 900) -> DemoChain:
        if self.chain is None:
            try:
                code = self.process.wait(timeout=timeout)
            finally:
                self.stop()
            text = self.log.read_text()
            print(text)
            assert code == 0, f"scripts/demo.sh exited {code}:\n{text[-6000:]}"
            self.chain = DemoChain(self.out, text)
        return self.chain

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.handle.close()
