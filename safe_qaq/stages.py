"""The stage registry: every stage of the pipeline once, in order, read by the stage scripts (through
:mod:`safe_qaq.recipe`), the plots, the toy, the GPU report, the demo and the tests.

A stage names its script, its run folder under ``OUTPUT_ROOT``, the stage whose merged model it starts from, its
dataset (a file of ``DATA_DIR``, overridable by an environment variable), its reward set (a recipe key), and the
training-log metric that shows it moved.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A training-log series: a fixed ``logging.jsonl`` key, or the mean of the first reward in the stage's set whose
    name starts with ``reward`` (the log key then follows the reward's class: safe_qaq.rewards.log_key)."""

    label: str
    key: str | None = None
    reward: str | None = None


@dataclass(frozen=True)
class Stage:
    key: str  # what scripts and commands call it: stage1, sample, process, rsft, lcrl, realtime, evaluate
    step: str  # its place in the demo/toy/GPU-check tables: 1-grpo, 2a-sample, ...
    title: str
    script: str
    kind: str  # grpo | sft | sample | process | evaluate
    run_dir: str | None = None  # under OUTPUT_ROOT
    start: str | None = None  # the stage whose merged model this one starts from; None: MODEL
    dataset: str | None = None  # a file of DATA_DIR, or of the run folder of ``dataset_from``
    dataset_from: str | None = None  # the stage that writes the dataset; None: DATA_DIR
    dataset_env: str | None = None  # the environment variable that replaces it
    rewards: str | None = None  # the recipe key of the reward set
    warmup: bool = True  # GRPO warm-up (WARMUP_RATIO); stage 3 has none
    targets: tuple[Metric, ...] = ()

    @property
    def trains(self) -> bool:
        return self.kind in ("grpo", "sft")


ACCURACY = Metric("accuracy reward", reward="adaptive_classification")
STAGES: tuple[Stage, ...] = (
    Stage("stage1", "1-grpo", "1 GRPO (SAFE-RL)", "run_swift_grpo_stage1.sh", "grpo", "stage1_grpo",
          dataset="offline_train.jsonl", dataset_env="STAGE1_DATASET", rewards="STAGE1_REWARDS", targets=(ACCURACY,)),
    Stage("sample", "2a-sample", "2a rejection sampling", "sample.sh", "sample", "stage2_samples", start="stage1",
          dataset="offline_train.jsonl", dataset_env="SAMPLE_INPUT"),
    Stage("process", "2a-filter", "2a shortest correct sample", "process_samples.sh", "process", "stage2_samples",
          dataset="samples.shard*.jsonl", dataset_from="sample"),
    Stage("rsft", "2b-rsft", "2b RSFT (SAFE-RS)", "run_swift_sft_stage2_RSFT.sh", "sft", "stage2_rsft",
          start="stage1", dataset="rsft.jsonl", dataset_from="process", dataset_env="RSFT_DATASET",
          targets=(Metric("SFT loss", key="loss"),)),
    Stage("lcrl", "2c-lcrl", "2c LCRL (SAFE-LS)", "run_swift_grpo_stage2_LCRL.sh", "grpo", "stage2_lcrl",
          start="rsft", dataset="offline_train.jsonl", dataset_env="LCRL_DATASET", rewards="LCRL_REWARDS",
          targets=(Metric("length penalty", reward="think_length_penalty"),
                   Metric("completion tokens", key="completions/mean_length"))),
    Stage("realtime", "3-realtime", "3 real time (SAFE-Real)", "run_swift_grpo_stage3.sh", "grpo", "stage3_realtime",
          start="lcrl", dataset="realtime_train.jsonl", dataset_env="REALTIME_DATASET", rewards="REALTIME_REWARDS",
          warmup=False, targets=(Metric("stage reward", reward="stage_classification"),)),
    Stage("evaluate", "4-evaluate", "4 evaluation", "evaluate.sh", "evaluate", "eval", start="lcrl",
          dataset="offline_test.jsonl", dataset_env="EVAL_DATA"),
)  # fmt: skip
BY_KEY = {stage.key: stage for stage in STAGES}
TRAINING = tuple(stage for stage in STAGES if stage.trains)
GRPO = tuple(stage for stage in STAGES if stage.kind == "grpo")
#: The run that holds the pipeline's final model (what the demo evaluates and `make serve` serves).
FINAL = "realtime"


def stage(key: str) -> Stage:
    try:
        return BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown stage {key!r}: expected one of {', '.join(BY_KEY)}") from None


def by_run_dir(name: str) -> Stage:
    for s in STAGES:
        if s.run_dir == name:
            return s
    raise KeyError(f"no stage writes {name!r}: expected one of {', '.join(s.run_dir for s in TRAINING)}")


def main() -> int:
    """``python -m safe_qaq.stages``: one line per stage (key, step, script, kind, run folder), for shell loops."""
    for s in STAGES:
        print(s.key, s.step, s.script, s.kind, s.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
