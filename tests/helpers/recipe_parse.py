"""Parse recorded `swift` commands exactly as the `swift` entry point does, on CPU (run by tests/test_recipe.py).

Usage (under torchrun with the command's own launch arguments, or plainly for commands swift runs without it):

    python tests/helpers/recipe_parse.py COMMANDS.json RESULTS.json

COMMANDS.json is a list of ``{"route": "rlhf"|"sft"|"export"|"rollout"|"deploy", "argv": [...]}``. Each argv goes
through the route's pipeline class: ``SwiftPipeline._parse_args`` -- ms-swift's parser, every
``__post_init__`` and the leftover-argument check -- the code ``swift <route>`` runs before it loads a model.
Local rank 0 writes what was parsed to RESULTS.json.

Only checks that need a GPU are stubbed, each by name (``STUBS``); everything else is ms-swift's own code.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

STUBS = {
    "bf16 on a GPU": "transformers' TrainingArguments asks for an Ampere+ GPU when bf16 is on",
    "DeepSpeed package": "deepspeed needs CUDA to install; a stand-in distribution answers the version check and "
    "starts the process group (gloo) where deepspeed.comm would (NCCL)",
    "vLLM server connection": "server mode connects to a running `swift rollout` while parsing; a recorder takes "
    "the host and port instead",
    "GPU count": "`swift rollout` checks the local GPU count against its vLLM parallel sizes",
    "vLLM import": "the `swift rollout` pipeline module imports vLLM; its argument class is parsed without it",
}


def install_stubs(recorded: list[dict[str, Any]]) -> None:
    fake = Path(tempfile.mkdtemp(prefix="fake_deepspeed_"))
    (fake / "deepspeed").mkdir()
    (fake / "deepspeed" / "__init__.py").write_text('__version__ = "0.19.8"\n')
    (fake / "deepspeed" / "comm.py").write_text(
        "import torch.distributed as _dist\n"
        "def is_initialized():\n    return _dist.is_initialized()\n"
        "def init_distributed(dist_backend=None, auto_mpi_discovery=False, **kwargs):\n"
        "    _dist.init_process_group(backend='gloo')\n"
    )
    (fake / "deepspeed-0.19.8.dist-info").mkdir()
    (fake / "deepspeed-0.19.8.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: deepspeed\nVersion: 0.19.8\n"
    )
    sys.path.insert(0, str(fake))

    import transformers.training_args

    transformers.training_args.is_torch_bf16_gpu_available = lambda: True

    import swift.rlhf_trainers

    class RecordingVLLMClient:
        def __init__(self, base_urls=None, hosts=None, server_ports=None, **kwargs):
            recorded.append({"hosts": hosts, "server_ports": server_ports, "base_urls": base_urls})

        def close_communicator(self):
            pass

        def init_communicator(self, device=None):
            pass

    swift.rlhf_trainers.VLLMClient = RecordingVLLMClient

    import swift.arguments.deploy_args

    swift.arguments.deploy_args.get_device_count = lambda: 1


def pipeline_class(route: str):
    if route == "rlhf":
        from swift.pipelines.train.rlhf import SwiftRLHF

        return SwiftRLHF
    if route == "sft":
        from swift.pipelines.train.sft import SwiftSft

        return SwiftSft
    if route == "export":
        from swift.pipelines.export.export import SwiftExport

        return SwiftExport
    if route == "deploy":
        from swift.pipelines.infer.deploy import SwiftDeploy

        return SwiftDeploy
    if route == "rollout":
        # swift/pipelines/infer/rollout.py imports vLLM (GPU only) at import time; its pipeline class
        # SwiftRolloutDeploy declares `args_class = RolloutArguments` (asserted in tests/test_recipe.py).
        from swift.arguments import RolloutArguments

        return type("SwiftRolloutDeploy", (), {"args_class": RolloutArguments})
    raise ValueError(f"no parse route for `swift {route}`")


def plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


FIELDS = (
    "model", "model_type", "template", "dataset", "output_dir", "adapters", "merge_lora", "external_plugins",
    "max_length", "truncation_strategy", "target_modules", "target_regex", "freeze_vit", "freeze_aligner",
    "tuner_type", "lora_rank", "lora_alpha", "torch_dtype", "use_vllm", "vllm_mode", "vllm_max_model_len",
    "vllm_limit_mm_per_prompt", "vllm_server_host", "vllm_server_port", "vllm_gpu_memory_utilization",
    "temperature", "top_p", "top_k", "repetition_penalty", "max_completion_length", "num_generations",
    "per_device_train_batch_size", "gradient_accumulation_steps", "global_world_size", "resume_from_checkpoint",
    "seed", "reward_funcs", "rlhf_type", "learning_rate", "beta", "warmup_ratio", "num_train_epochs", "max_steps",
    "sleep_level", "port", "deepspeed", "infer_backend", "served_model_name",
)  # fmt: skip


def summarize(args: Any) -> dict[str, Any]:
    out = {name: plain(getattr(args, name)) for name in FIELDS if hasattr(args, name)}
    if "deepspeed" in out:
        out["deepspeed"] = getattr(args, "deepspeed", None) is not None
    training = getattr(args, "training_args", None)
    if training is not None:
        out["bf16"] = bool(training.bf16)
        out["generation_batch_size"] = getattr(training, "generation_batch_size", None)
        out["world_size"] = training.world_size
    return out


def main() -> int:
    commands = json.loads(Path(sys.argv[1]).read_text())
    recorded_clients: list[dict[str, Any]] = []
    install_stubs(recorded_clients)
    from swift.pipelines.base import SwiftPipeline

    results = []
    for command in commands:
        cls = pipeline_class(command["route"])
        holder = type("ParseOnly", (), {"args_class": cls.args_class})()
        before = len(recorded_clients)
        args = SwiftPipeline._parse_args(holder, list(command["argv"]))
        summary = summarize(args)
        summary["vllm_clients"] = recorded_clients[before:]
        results.append({"route": command["route"], "args": summary})
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one result file per node
        Path(sys.argv[2]).write_text(json.dumps({"stubs": STUBS, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
