"""`make check-recipe`'s scenarios, run once per session (tests/conftest.py, `paper_recipe`).

The stage scripts run for real with stand-in `swift`/`python` executables that record each command, for the
default launch, vLLM server mode, two nodes, sampler shards, a resumed stage and the GPU check. Every recorded
`swift` command, and the Omni backbones' commands (tests/helpers/omni_recipe.py), is then parsed by ms-swift 4.6's
own argument classes under torchrun with the world size it would run with: one launch per world, all started at
once, so each world's processes start (and import ms-swift) once for every command of that world.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from safe_qaq import budget
from tests.helpers.omni_recipe import PAPER_WORLD, omni_commands
from tests.helpers.recipe_support import (
    build_standin,
    finish_parse,
    free_port,
    read_log,
    run_script,
    start_parse,
    stop_parse,
    torchrun_args,
    write_standin_tools,
)

CHAIN = [
    "run_swift_grpo_stage1.sh",
    "sample.sh",
    "process_samples.sh",
    "run_swift_sft_stage2_RSFT.sh",
    "run_swift_grpo_stage2_LCRL.sh",
    "run_swift_grpo_stage3.sh",
    "evaluate.sh",
]
SERVER_CHAIN = [
    ("scripts/rollout.sh", "stage1"),
    ("run_swift_grpo_stage1.sh",),
    ("sample.sh",),
    ("process_samples.sh",),
    ("run_swift_sft_stage2_RSFT.sh",),
    ("scripts/rollout.sh", "lcrl"),
    ("run_swift_grpo_stage2_LCRL.sh",),
    ("scripts/rollout.sh", "realtime"),
    ("run_swift_grpo_stage3.sh",),
]
TRAINING = ("rlhf", "sft")
MULTI_NODE = {"NNODES": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


class Recipe:
    """Every scenario's recorded commands, the scripts' outputs, and what ms-swift parsed."""

    def __init__(self, root: Path, standin: Path, prepared: Path, env: dict[str, str]):
        self.root, self.standin, self.prepared, self.env = root, standin, prepared, env
        self.logs: dict[str, list[dict]] = {}
        self.outputs: dict[str, list[str]] = {}
        self.parsed: dict[int, dict] = {}  # id(command) -> parsed args

    def run(self, scenario: str, steps, extra: dict[str, str] | None = None) -> None:
        log = self.root / f"{scenario}.jsonl"
        env = {**self.env, **(extra or {}), "RECIPE_LOG": str(log)}
        self.outputs[scenario] = []
        started = time.time()
        for step in steps:
            step = (step,) if isinstance(step, str) else step
            result = run_script(step[0], env, *step[1:])
            self.outputs[scenario].append(result.stdout + result.stderr)
        self.logs[scenario] = read_log(log)
        print(f"scenario {scenario}: {len(steps)} scripts, {time.time() - started:.1f} s")

    def commands(self, scenario: str, tool: str | None = None, route: str | None = None) -> list[dict]:
        return [
            c
            for c in self.logs[scenario]
            if (tool is None or c["tool"] == tool) and (route is None or c["route"] == route)
        ]

    def args(self, command: dict) -> dict:
        return self.parsed[id(command)]


def build_recipe(root: Path, tiny_model: Path, prepared: Path) -> Recipe:
    standin = build_standin(tiny_model, root / "Qwen2-Audio-7B-Instruct")
    tools = write_standin_tools(root / "bin")
    env = {
        "PROFILE": "paper",
        "MODEL": str(standin),
        "DATA_DIR": str(prepared),
        "OUTPUT_ROOT": str(root / "outputs"),
        "RECIPE_STANDIN": str(standin),
        "RECIPE_RSFT_ROWS": str(prepared / "sft_train.jsonl"),
        "BUDGET_CACHE": str(root / "budget_cache"),  # shared by every scenario, as by a user's reruns
        **tools,
    }
    recipe = Recipe(root, standin, prepared, env)
    started = time.time()
    # The token counts of every row set the scenarios check, counted once (as the demo does); each script's budget
    # check still runs and reuses them (the cold path is tests/test_budget.py's).
    sets = [prepared / f"{name}.jsonl" for name in ("offline_train", "sft_train", "realtime_train")]
    assert budget.main(["count", "--model", str(standin), "--cache-dir", env["BUDGET_CACHE"], *map(str, sets)]) == 0
    # One parse launch per world the commands would run in, each started as soon as its scenarios' scripts are done,
    # so that its processes import ms-swift while the next scripts run.
    work = root / "parse"
    work.mkdir()
    launches: list = []
    parsing: list = []

    def start(batch) -> None:
        jobs = [(launch, [{"route": c["route"], "argv": c["argv"]} for c in commands]) for launch, commands in batch]
        parsing.extend(start_parse(jobs, work, first=len(launches)))
        launches.extend(batch)

    try:
        # The two nodes run at once on a fresh shared OUTPUT_ROOT, as on two machines: node 1 finds no merged model
        # of the previous stage until node 0 has trained and merged it, so it waits for it (wait_for_node0).
        # NODE_WAIT_SECONDS bounds the wait when node 0 fails; node 1 looks every second (the recipe: 5).
        nodes = {**MULTI_NODE, "OUTPUT_ROOT": str(root / "outputs_two_nodes"), "NODE_WAIT_SECONDS": "120",
                 "NODE_POLL_SECONDS": "1"}  # fmt: skip
        node1 = threading.Thread(target=recipe.run, args=("node1", CHAIN, {**nodes, "NODE_RANK": "1"}))
        node1.start()
        try:
            recipe.run("node0", CHAIN, {**nodes, "NODE_RANK": "0"})
        finally:
            node1.join()
        assert "node1" in recipe.logs, "node 1's scenario failed (its error is printed above)"
        pair, port = [], str(free_port())
        for scenario in ("node0", "node1"):
            node_commands = [c for c in recipe.logs[scenario] if c["route"] in TRAINING]
            launch = torchrun_args(node_commands[0]["env"])
            # The nodes' address (10.0.0.1 in the scripts' environment) is this machine here.
            launch[launch.index("--master_addr") + 1] = "127.0.0.1"
            launch[launch.index("--master_port") + 1] = port
            pair.append((launch, node_commands))
        start(pair)  # together: the two nodes must rendezvous

        recipe.run("paper", [*CHAIN, ("scripts/serve.sh", str(root / "outputs" / "stage3_realtime" / "merged"))])
        # A free port: ms-swift's rollout arguments move to the next free one when theirs is taken.
        recipe.server_port = free_port()
        recipe.run("server", SERVER_CHAIN, {"VLLM_MODE": "server", "VLLM_SERVER_PORT": str(recipe.server_port)})
        checkpoint = root / "outputs" / "stage1_grpo" / "checkpoint-100"
        checkpoint.mkdir(parents=True, exist_ok=True)
        recipe.run("resume", ["run_swift_grpo_stage1.sh"], {"RESUME_FROM_CHECKPOINT": str(checkpoint)})
        # The paper's launch (3 processes), with the Omni backbones' commands of that world.
        single = [c for s in ("paper", "server", "resume") for c in recipe.logs[s] if c["route"] in TRAINING]
        single_launch = torchrun_args(single[0]["env"])
        assert all(torchrun_args(c["env"]) == single_launch for c in single)
        recipe.omni = omni_commands(root / "omni")
        omni = [c for family in recipe.omni.values() for c in family["commands"]]
        assert torchrun_args({"NPROC_PER_NODE": str(PAPER_WORLD)}) == single_launch
        start([(single_launch, single + [c for c in omni if c["route"] in TRAINING])])

        samples = root / "outputs" / "stage2_samples"
        (samples / "samples.shard7.jsonl").write_text("")  # left by an earlier run with more shards
        recipe.run("shards", ["sample.sh", "process_samples.sh"], {"SAMPLE_SHARDS": "4"})
        recipe.run("gpu_check", ["scripts/gpu_check.sh"], {"OUTPUT_ROOT": str(root / "gpu_check_outputs")})
        print(f"scripts: {time.time() - started:.0f} s")
        one_gpu = [c for c in recipe.logs["gpu_check"] if c["route"] in TRAINING]
        plain = [c for s in ("paper", "server", "node0") for c in recipe.logs[s] if c["route"] not in TRAINING]
        plain = [c for c in plain if c["tool"] == "swift"]  # run without torchrun: export, rollout, deploy
        start(
            [
                (torchrun_args(one_gpu[0]["env"]), one_gpu),
                (None, plain + [c for c in omni if c["route"] not in TRAINING]),
            ]
        )
    except BaseException:
        stop_parse(parsing)
        raise
    results = finish_parse(parsing)
    print(f"scripts and parse: {time.time() - started:.0f} s")
    recipe.stubs = results[0]["stubs"]  # the same in every launch
    for (_, commands), result in zip(launches, results, strict=True):
        assert len(result["results"]) == len(commands)
        for command, parsed in zip(commands, result["results"], strict=True):
            recipe.parsed[id(command)] = parsed["args"]
    for command in omni:
        command["args"] = recipe.parsed[id(command)]
    return recipe
