"""End to end: `make demo`'s chain (reduced) runs every stage on CPU, each stage starts from the previous
stage's model, leaves its output, and changes the weights it trains."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safe_qaq import recipe, stages
from safe_qaq.jsonl import read_jsonl

TRAINED = [stage.run_dir for stage in stages.TRAINING]


def weights(directory):
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.slow
def test_demo_chain_runs_every_stage(demo_chain, warm_model):
    import safe_qaq.toy.reward_plugin  # noqa: F401 -- registers smoke's EXTRA_PLUGINS reward (the toy-sized penalty)
    from safe_qaq.rewards import REWARDS

    out, stdout = demo_chain.out, demo_chain.stdout

    # every training stage saved a checkpoint and the model the next stage starts from
    for stage in TRAINED:
        assert (out / stage / "last-checkpoint" / "config.json").exists(), stage
        assert (out / stage / "merged" / "model.safetensors").exists(), stage
        assert not (out / stage / "merged" / "training_args.bin").exists(), stage  # no trainer state (a pickle)
    smoke = recipe.load("smoke", env={"OUTPUT_ROOT": str(out), "MODEL": str(warm_model)})
    start = {stage.run_dir: Path(smoke.start_model(stage.key)) for stage in stages.TRAINING}
    assert start["stage1_grpo"] == warm_model and start["stage2_lcrl"] == out / "stage2_rsft" / "merged"
    for stage, parent in start.items():
        args = json.loads((out / stage / "args.json").read_text())
        assert args["model"] == str(parent), stage
        # each stage moved the language model's weights and left the frozen audio tower as it found it
        before, after = weights(parent), weights(out / stage / "merged")
        moved = [n for n in before if not torch.equal(before[n], after[n])]
        assert any(n.startswith("language_model.") for n in moved), stage
        assert not any(n.startswith("audio_tower.") for n in moved), stage

    # the GRPO logs carry one column per reward of the stage's set
    for stage in stages.GRPO:
        logged = read_jsonl(out / stage.run_dir / "logging.jsonl")
        keys = set().union(*logged)
        for name in smoke.rewards(stage.key):
            assert f"rewards/{REWARDS[name].__name__}/mean" in keys, (stage.key, name)

    # stage 1 has something to learn from: the base answers the bundled calls in format (the base shipped before the
    # bundled-call phase wrote none at any temperature, so every sample scored 0 and the advantage was 0)
    samples = read_jsonl(out / "stage1_grpo" / "completions.jsonl")
    scores = [score for record in samples for score in record["PromptFormat"]]
    assert scores and max(scores) == 1.0, scores

    # rejection sampling: two shards, exactly n completions per prompt, then the filter's two files and its numbers
    for shard in (0, 1):
        per_prompt = {}
        for record in read_jsonl(out / "stage2_samples" / f"samples.shard{shard}.jsonl"):
            per_prompt.setdefault(record["prompt_index"], set()).add(record["sample_index"])
        assert len(per_prompt) == 1 and all(indices == set(range(8)) for indices in per_prompt.values())
    kept = read_jsonl(out / "stage2_samples" / "rsft.jsonl")
    unsolved = read_jsonl(out / "stage2_samples" / "unsolved.jsonl")
    assert len(kept) + len(unsolved) == 2
    stats = json.loads((out / "stage2_samples" / "process_stats.json").read_text())
    assert (stats["prompts"], stats["kept"]) == (2, len(kept))

    # evaluation of the final model with the transcript floor beside it; per-stage moves and curves
    metrics = (out / "eval" / "metrics.md").read_text(encoding="utf-8")
    assert "demo-final" in metrics and "floor" in metrics
    assert (out / "live").is_dir()
    for stage in stages.GRPO:
        assert (out / f"{stage.run_dir}_curves.png").exists(), stage.key
    assert "| 1 GRPO (SAFE-RL) | accuracy reward |" in stdout
    assert "| 3 real time (SAFE-Real) | stage reward |" in stdout
    for step in [stage.step for stage in stages.STAGES if stage.kind != "evaluate"] + ["4-evaluate", "4-live-calls"]:
        assert re.search(rf"{step}\s+ok", stdout), step


@pytest.mark.slow
def test_gpu_report_reads_every_stage_the_demo_leaves(demo_chain):
    """scripts/gpu_report.py (the part of gpu_check.sh a CPU can run) on the demo's real logs: GRPO's step times,
    SFT's trainer speed (its log has no step_time), the sampler's completions."""
    from tests.helpers.cli import load_gpu_report

    gpu_report = load_gpu_report()
    check = demo_chain.out / "gpu_check"
    check.mkdir(exist_ok=True)
    timed = ("1-grpo", "2a-sample", "2b-rsft", "2c-lcrl", "3-realtime")
    lines = [json.dumps({"stage": step, "ms": demo_chain.seconds[step] * 1000}) for step in timed]
    (check / "timings.jsonl").write_text("\n".join(lines) + "\n")
    assert gpu_report.main([str(demo_chain.out)]) == 0
    rows = {row["stage"]: row for row in json.loads((check / "report.json").read_text())}
    for step in ("1-grpo", "2c-lcrl", "3-realtime"):
        log = demo_chain.out / gpu_report.BY_STEP[step].run_dir / "logging.jsonl"
        times = [e["step_time"] for e in read_jsonl(log) if "loss" in e]
        assert rows[step]["steps"] == len(times) == 1 and rows[step]["s_per_step"] == pytest.approx(times[0])
        assert rows[step]["rollout_tokens_per_s"] > 0
    rsft = [e for e in read_jsonl(demo_chain.out / "stage2_rsft" / "logging.jsonl") if "loss" in e]
    assert rows["2b-rsft"]["steps"] == 1 and rows["2b-rsft"]["s_per_step"] == rsft[-1]["train_speed(s/it)"]
    assert rows["2a-sample"]["completions"] == 2 * 8 and rows["2a-sample"]["rollout_tokens_per_s"] > 0
    assert "| 2b-rsft |" in (check / "report.md").read_text()


@pytest.mark.slow
def test_sharded_sampling_feeds_process_samples_without_loss_or_duplicates(demo_chain):
    samples = demo_chain.out / "stage2_samples"
    listed = (samples / "shards.txt").read_text().split()
    assert listed == [str(samples / "samples.shard0.jsonl"), str(samples / "samples.shard1.jsonl")]
    shards = [{(r["prompt_id"], r["sample_index"]) for r in read_jsonl(path)} for path in listed]
    prompts = [{prompt for prompt, _ in shard} for shard in shards]
    assert all(len(p) == 1 for p in prompts) and not prompts[0] & prompts[1]  # SAMPLE_LIMIT=1 per shard
    assert all(len(shard) == 8 for shard in shards)  # smoke's SAMPLE_N=8 completions per prompt
    kept = read_jsonl(samples / "rsft.jsonl")
    unsolved = read_jsonl(samples / "unsolved.jsonl")
    from prompt import question_of
    from safe_qaq.sample import prompt_id

    # A kept row is its prompt plus the chosen completion as the assistant turn; an unsolved row is the prompt.
    out_ids = [prompt_id({**row, "messages": question_of(row["messages"])}) for row in kept] + [
        prompt_id(row) for row in unsolved
    ]
    assert sorted(out_ids) == sorted(prompts[0] | prompts[1])  # every prompt once, in one of the two files
