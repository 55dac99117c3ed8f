"""End to end: `make demo`'s chain (reduced) runs every stage on CPU and each leaves its output."""

import json
import re

import pytest

from safe_qaq.jsonl import read_jsonl
from tests.conftest import ROOT, run_cli

STAGE_SCRIPTS = {
    "stage1_grpo": "run_swift_grpo_stage1.sh",
    "stage2_lcrl": "run_swift_grpo_stage2_LCRL.sh",
    "stage3_realtime": "run_swift_grpo_stage3.sh",
}


def default_reward_names(script: str) -> list[str]:
    match = re.search(r'REWARD_FUNCS="\$\{REWARD_FUNCS:-([\w ]+)\}"', (ROOT / script).read_text())
    assert match, f"{script} sets no default REWARD_FUNCS"
    return match.group(1).split()


@pytest.mark.slow
def test_demo_chain_runs_every_stage(tmp_path, tiny_model):
    from rewards import REWARDS

    out = tmp_path / "outputs"
    env = {
        "OUTPUT_ROOT": str(out),
        "DATA_DIR": str(tmp_path / "prepared"),
        "MODEL": str(tiny_model),
        "MAX_STEPS": "1",
        "SAMPLE_LIMIT": "2",
        "EVAL_LIMIT": "3",
        "LIVE_LIMIT": "1",
    }
    result = run_cli(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=tmp_path, timeout=900, env=env)
    print(result.stdout)

    # every training stage saved a LoRA checkpoint and a merged model for the next stage
    for stage in ("stage1_grpo", "stage2_rsft", "stage2_lcrl", "stage3_realtime"):
        assert (out / stage / "last-checkpoint" / "adapter_config.json").exists(), stage
        assert (out / stage / "merged" / "model.safetensors").exists(), stage
    # each stage started from the previous one's merged model, not from the base model
    chain = {
        "stage2_rsft": out / "stage1_grpo" / "merged",
        "stage2_lcrl": out / "stage2_rsft" / "merged",
        "stage3_realtime": out / "stage2_lcrl" / "merged",
    }
    for stage, parent in chain.items():
        args = json.loads((out / stage / "args.json").read_text())
        assert args["model"] == str(parent), stage

    # the GRPO logs carry one column per reward the stage used
    for stage, script in STAGE_SCRIPTS.items():
        logged = read_jsonl(out / stage / "logging.jsonl")
        keys = set().union(*logged)
        for name in default_reward_names(script):
            assert f"rewards/{REWARDS[name].__name__}/mean" in keys, (stage, name)

    # rejection sampling: exactly n completions per prompt, then the filter's two files
    samples = read_jsonl(out / "stage2_samples" / "samples.shard0.jsonl")
    per_prompt = {}
    for record in samples:
        per_prompt.setdefault(record["prompt_index"], set()).add(record["sample_index"])
    assert len(per_prompt) == 2 and all(indices == set(range(4)) for indices in per_prompt.values())
    kept = out / "stage2_samples" / "rsft.jsonl"
    unsolved = out / "stage2_samples" / "unsolved.jsonl"
    assert kept.exists() and unsolved.exists()
    assert len(read_jsonl(kept)) + len(read_jsonl(unsolved)) == 2

    # evaluation of the final model, with the transcript floor beside it
    metrics = (out / "eval" / "metrics.md").read_text(encoding="utf-8")
    assert "demo-final" in metrics and "floor" in metrics
    assert (out / "live").is_dir() and (out / "stage1_curves.png").exists()
    for step in ("1-grpo-stage1", "2a-sample", "2b-rsft", "2c-lcrl", "3-realtime", "4-evaluate"):
        assert re.search(rf"{step}\s+ok", result.stdout), step
