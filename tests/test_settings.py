"""The one definition of every setting (recipes/*.yaml through safe_qaq.recipe) and the stage registry: what the
stage scripts run is what the recipe builds, in Python, and a dry run prints exactly that."""

from __future__ import annotations

import os
import re
import select
import subprocess
from pathlib import Path

import pytest

from safe_qaq import recipe, stages
from safe_qaq.audio import MAX_AUDIOS_PER_ROW
from tests.helpers.cli import ROOT, dry_run_commands

SCRIPTS = [s.script for s in stages.STAGES]
DIST = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "PROFILE")


def script_env(**extra: str) -> dict[str, str]:
    keys = set(recipe.load("paper", env={}))
    env = {k: v for k, v in os.environ.items() if k not in DIST and k not in keys and not k.startswith("SAMPLE_")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / script), *args], env=script_env(DRY_RUN="1", **env), cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


# --- the settings --------------------------------------------------------------------------------------------------


def test_profiles_are_overlays_and_the_environment_wins():
    paper, smoke, toy = (recipe.load(p, env={}) for p in ("paper", "smoke", "toy"))
    assert (paper["TUNER"], smoke["TUNER"], toy["TUNER"]) == ("lora", "full", "full")
    assert (paper["GRPO_LR"], smoke["GRPO_LR"], toy["GRPO_LR"]) == (3e-5, 5e-4, 1e-3)  # toy: smoke, then its own
    assert toy.origin["TUNER"] == "smoke" and toy.origin["GRPO_LR"] == "toy" and paper.origin["TUNER"] == "paper"
    env = recipe.load("toy", env={"GRPO_LR": "2e-4", "USE_VLLM": "true", "MAX_STEPS": "7", "STAGE1_REWARDS": "a b"})
    assert (env["GRPO_LR"], env["USE_VLLM"], env["MAX_STEPS"], env["STAGE1_REWARDS"]) == (2e-4, True, 7, ["a", "b"])
    assert env.origin["GRPO_LR"] == "env"


def test_derived_values_follow_their_source():
    paper = recipe.load("paper", env={"MAX_LENGTH": "4096", "TARGET_MODULES": "q_proj k_proj"})
    assert paper["VLLM_MAX_MODEL_LEN"] == 4096
    assert paper["LORA_TARGET_REGEX"] == r"^language_model\..*\.(q_proj|k_proj)$"
    assert paper["BUDGET_CACHE"] == str(Path(paper["OUTPUT_ROOT"]) / ".budget_cache")
    assert paper["MAX_AUDIOS_PER_ROW"] == MAX_AUDIOS_PER_ROW  # the one bound, from safe_qaq/audio.py


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"USE_VLLM": "maybe"}, "USE_VLLM='maybe': expected true or false"),
        ({"GRPO_BATCH": "three"}, "GRPO_BATCH='three': expected a number"),
        ({"TUNER": "qlora"}, "TUNER must be lora or full"),
        ({"PROFILE": "fast"}, "PROFILE must be one of paper, smoke, toy"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_with_its_name(env, message):
    with pytest.raises(recipe.RecipeError, match=message.replace("(", r"\(")):
        recipe.load(env=env)


def test_an_overlay_key_the_recipe_does_not_define_is_refused(tmp_path, monkeypatch):
    for name in ("paper", "smoke"):
        (tmp_path / f"{name}.yaml").write_text((recipe.RECIPES / f"{name}.yaml").read_text())
    (tmp_path / "smoke.yaml").write_text("GRPO_LRR: 1e-3\n")  # a typo must not be a silent no-op
    monkeypatch.setattr(recipe, "RECIPES", tmp_path)
    with pytest.raises(recipe.RecipeError, match=r"smoke\.yaml: GRPO_LRR is not a recipe setting"):
        recipe.load("smoke", env={})


def test_deepspeed_is_turned_off_by_an_empty_value():
    on = recipe.train_argv(recipe.load("paper", env={}), "stage1")
    off = recipe.train_argv(recipe.load("paper", env={"DEEPSPEED": ""}), "stage1")
    assert on[on.index("--deepspeed") + 1] == "zero2" and "--deepspeed" not in off


def test_the_generation_batch_must_make_whole_groups():
    with pytest.raises(recipe.RecipeError, match=r"\(3\) x processes \(2\) x GRAD_ACC \(8\) = 48 is not a multiple"):
        recipe.train_argv(recipe.load("paper", env={"NPROC_PER_NODE": "2"}), "stage1")
    recipe.train_argv(recipe.load("paper", env={"NPROC_PER_NODE": "2", "GRAD_ACC": "3"}), "stage1")  # 18 = 2 x 9


def test_the_docs_tables_are_generated_from_the_recipe():
    text = recipe.DOC.read_text(encoding="utf-8")
    assert recipe.render_doc(text) == text, "docs/recipe.md is stale: run `python -m safe_qaq.recipe docs`"
    # and the check can fail: a value edited by hand is not what the recipe says
    assert recipe.render_doc(text.replace("| `GRPO_LR` | 3e-05 |", "| `GRPO_LR` | 1e-05 |")) == text
    assert "| `GRPO_LR` | 3e-05 |" in text


def test_no_value_of_the_recipe_is_spelled_in_a_script():
    """The scripts hold no setting: each value lives in recipes/ (the audio bound in safe_qaq/audio.py)."""
    scripts = [ROOT / s for s in SCRIPTS] + [ROOT / "scripts" / "common.sh", ROOT / "scripts" / "rollout.sh"]
    keys = set(recipe.load("paper", env={}))
    for path in scripts:
        text = path.read_text()
        for spelled in ('"audio": 8', "3e-5", "zero2", "think_length_", "adaptive_classification"):
            assert spelled not in text, (path.name, spelled)
        # no recipe setting gets a default in bash (`${X:-value}` / `${X:=value}`)
        defaults = {m for m in re.findall(r"\$\{(\w+):[-=][^}]", text) if m in keys} - {"NODE_RANK"}  # unset: node 0
        assert not defaults, (path.name, defaults)


# --- the registry --------------------------------------------------------------------------------------------------


def test_the_registry_chains_each_stage_to_the_previous_merged_model():
    s = recipe.load("paper", env={})
    assert s.start_model("stage1") == s["MODEL"]
    for key, previous in (("sample", "stage1"), ("rsft", "stage1"), ("lcrl", "rsft"), ("realtime", "lcrl")):
        assert s.start_model(key) == str(s.path("OUTPUT_ROOT") / stages.stage(previous).run_dir / "merged")
    assert [st.script for st in stages.STAGES] == [
        "run_swift_grpo_stage1.sh", "sample.sh", "process_samples.sh", "run_swift_sft_stage2_RSFT.sh",
        "run_swift_grpo_stage2_LCRL.sh", "run_swift_grpo_stage3.sh", "evaluate.sh",
    ]  # fmt: skip
    assert all((ROOT / st.script).is_file() for st in stages.STAGES)
    with pytest.raises(KeyError, match="unknown stage 'stage9'"):
        stages.stage("stage9")


# --- dry runs ------------------------------------------------------------------------------------------------------


def test_plan_gives_each_part_the_recipe_builds_in_one_call(capsys, monkeypatch):
    """What the stage scripts load with one Python start-up: each part's arguments, in the order asked, and each
    stage's run folder among the env lines."""
    monkeypatch.setenv("PROFILE", "paper")
    s = recipe.load("paper")
    names = ("start", "dataset", "budget", "train", "merge")
    assert recipe.main(["plan", "stage1", *names]) == 0
    fields = capsys.readouterr().out.split("\0")[:-1]
    parts = []
    while fields:
        n, fields = int(fields[0]), fields[1:]
        parts.append(fields[:n])
        fields = fields[n:]
    assert parts == [recipe.argv_for(s, "stage1", part, []) for part in names]
    assert recipe.main(["plan", "sample", "sample:1"]) == 0
    assert capsys.readouterr().out.split("\0")[1:-1] == recipe.sample_argv(s, 1)
    assert recipe.main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for st in stages.STAGES:
        assert f"RUN_DIR_{st.key}={s.run_dir(st.key)}" in lines
    assert recipe.main(["plan", "stage1", "nonsense"]) == 2
    assert "unknown command part 'nonsense'" in capsys.readouterr().err


def test_a_dry_run_prints_every_stage_command_and_runs_nothing(tmp_path):
    out = tmp_path / "out dir [x]"  # a space and glob characters: every path must stay one quoted argument
    env = {"OUTPUT_ROOT": str(out), "MODEL": str(tmp_path / "model")}
    s = recipe.load("paper", env=env)
    printed = {}
    for script in SCRIPTS:
        result = dry_run(script, **env)
        assert result.returncode == 0, (script, result.stderr)
        printed[script] = dry_run_commands(result.stdout)
    assert not out.exists()  # nothing ran, nothing was written
    python = printed["run_swift_grpo_stage1.sh"][0][0]
    for key in ("stage1", "lcrl", "realtime"):
        budget, train, merge = printed[stages.stage(key).script]
        assert budget == [python, *recipe.budget_argv(s, key)]
        assert train == ["swift", "rlhf", *recipe.train_argv(s, key)]
        assert merge == ["swift", "export", *recipe.merge_argv(s, key)]
    budget, train, merge = printed["run_swift_sft_stage2_RSFT.sh"]
    assert train == ["swift", "sft", *recipe.train_argv(s, "rsft")]
    assert printed["sample.sh"] == [[python, *recipe.sample_argv(s, 0)]]
    assert printed["evaluate.sh"] == [[python, *recipe.eval_argv(s)]]
    assert printed["process_samples.sh"][0][:3] == [python, "-m", "safe_qaq.process_samples"]


def test_extra_arguments_reach_swift_unchanged():
    result = dry_run("run_swift_grpo_stage1.sh", "--max_steps", "3", "--report_to", "none")
    assert result.returncode == 0, result.stderr
    train = dry_run_commands(result.stdout)[1]
    assert train[:2] == ["swift", "rlhf"] and train[-4:] == ["--max_steps", "3", "--report_to", "none"]


def test_fewer_gpus_than_sampler_shards_is_one_error_line():
    result = dry_run("sample.sh", SAMPLE_SHARDS="4", SAMPLE_GPUS="0 1")
    assert result.returncode == 2
    expected = "recipe: SAMPLE_SHARDS=4 needs one GPU each, SAMPLE_GPUS lists 2 (0 1)"
    assert result.stderr.strip().splitlines() == [expected]
    result = dry_run("sample.sh", SAMPLE_SHARDS="2", SAMPLE_GPUS="5 7")
    shards = dry_run_commands(result.stdout)
    assert [c[:2] for c in shards] == [["env", "CUDA_VISIBLE_DEVICES=5"], ["env", "CUDA_VISIBLE_DEVICES=7"]]


def test_a_stale_merged_model_is_not_taken_for_this_runs_on_another_node(tmp_path):
    """Node 1 waits for node 0's merge of THIS run's checkpoint, compared by content, not by modification time."""
    run = tmp_path / "stage1_grpo"
    (run / "last-checkpoint").mkdir(parents=True)
    (run / "last-checkpoint" / "trainer_state.json").write_text('{"log_history": [1]}')
    (run / "merged").mkdir()
    (run / "merged" / "config.json").write_text("{}")
    (run / "merged" / "source_checkpoint.txt").write_text(recipe.checkpoint_token(run) + "\n")
    env = script_env(OUTPUT_ROOT=str(tmp_path), NNODES="2", NODE_RANK="1", NODE_WAIT_SECONDS="0")
    check = f"source {ROOT / 'scripts' / 'common.sh'}; require_stage stage1 run_swift_grpo_stage1.sh; echo ready"

    def node1():
        return subprocess.run(["bash", "-c", check], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert node1().stdout.strip() == "ready"
    # A rerun wrote a new checkpoint; the old merged model is still there (node 0 is merging): node 1 must not take it.
    (run / "last-checkpoint" / "trainer_state.json").write_text('{"log_history": [2]}')
    result = node1()
    assert result.returncode == 1 and "filesystem every node shares" in result.stderr and "ready" not in result.stdout


def test_node_1_takes_the_token_of_the_checkpoint_node_0_finishes_saving(tmp_path):
    """Node 1's training can end before rank 0 (on node 0) has saved the checkpoint: the token it waits for is read
    again at each check, so a checkpoint written after the wait began still matches its merged model."""
    run = tmp_path / "stage1_grpo"
    run.mkdir()
    env = script_env(
        OUTPUT_ROOT=str(tmp_path), NNODES="2", NODE_RANK="1", NODE_WAIT_SECONDS="60", NODE_POLL_SECONDS="1"
    )
    check = f"source {ROOT / 'scripts' / 'common.sh'}; require_stage stage1 run_swift_grpo_stage1.sh; echo ready"
    node1 = subprocess.Popen(["bash", "-c", check], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        # Node 1 is waiting (no checkpoint, no merged model yet) before node 0 writes anything: its first line says so.
        ready, _, _ = select.select([node1.stdout], [], [], 60)
        first = node1.stdout.readline() if ready else ""
        assert "node 1: waiting for node 0 to write" in first, first
        (run / "last-checkpoint").mkdir()
        (run / "last-checkpoint" / "trainer_state.json").write_text('{"log_history": [1]}')
        (run / "merged.partial").mkdir()
        (run / "merged.partial" / "config.json").write_text("{}")
        (run / "merged.partial" / "source_checkpoint.txt").write_text(recipe.checkpoint_token(run) + "\n")
        (run / "merged.partial").rename(run / "merged")
        out, _ = node1.communicate(timeout=60)
    finally:
        if node1.poll() is None:
            node1.kill()
    assert node1.returncode == 0 and out.splitlines()[-1] == "ready", out


def test_per_run_replacements_come_from_the_environment_the_settings_were_loaded_with(monkeypatch, tmp_path):
    monkeypatch.setenv("EVAL_DATA", "/elsewhere/rows.jsonl")
    monkeypatch.setenv("REWARD_FUNCS", "prompt_format")
    s = recipe.load("smoke", env={"EVAL_DATA": str(tmp_path / "rows.jsonl"), "STAGE1_MODEL": str(tmp_path)})
    assert s.dataset("evaluate") == tmp_path / "rows.jsonl"
    assert s.rewards("stage1") == list(s["STAGE1_REWARDS"]) and s.start_model("stage1") == str(tmp_path)
    assert recipe.load("smoke").dataset("evaluate") == Path("/elsewhere/rows.jsonl")  # os.environ by default
