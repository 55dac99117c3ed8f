"""The table scripts/gpu_check.sh prints: per stage, seconds per step, peak GPU memory and rollout tokens/s.

    python scripts/gpu_report.py OUTPUT_ROOT

Reads what the stages left under OUTPUT_ROOT (ms-swift's logging.jsonl, args.json and completions.jsonl; the
sampler's and the evaluation's outputs) and what gpu_check.sh measured (gpu_check/timings.jsonl, one line per
stage with its wall milliseconds; gpu_check/<stage>.memory.csv, `nvidia-smi` samples of "index, MiB used").
Writes gpu_check/report.md and report.json beside them. A number that could not be measured is "n/a".

What the numbers are:
* s/step -- GRPO: ms-swift's `step_time` (rollout + training of one optimizer step); SFT: `train_speed(s/it)`.
* peak GPU memory -- the largest `memory.used` nvidia-smi saw on any GPU during the stage (vLLM included);
  ms-swift's own `memory(GiB)` (torch's reserved memory on rank 0) beside it.
* rollout tokens/s -- GRPO: completion tokens of a step (mean completion length x completions per step) over
  the step's time, so a lower bound on the generation rate; sampling and evaluation: completion tokens
  written over the stage's wall time, model loading included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the checkout's package
from safe_qaq.jsonl import read_jsonl as _read_jsonl
from safe_qaq.stages import STAGES
from safe_qaq.stages import stage as registry_stage
from safe_qaq.trainlog import read_log

# The step names gpu_check.sh times are the registry's (1-grpo, 2a-sample, ...).
BY_STEP = {s.step: s for s in STAGES}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return _read_jsonl(path) if path.is_file() else []


def peak_memory_gib(path: Path) -> float | None:
    """Largest `memory.used` (MiB) in an nvidia-smi CSV of "index, used" lines, in GiB."""
    if not path.is_file():
        return None
    used = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[1].isdigit():
            used.append(int(parts[1]))
    return round(max(used) / 1024, 1) if used else None


def training_numbers(run: Path) -> dict[str, Any]:
    log = run / "logging.jsonl"
    steps = [entry for entry in read_log(log) if "loss" in entry] if log.is_file() else []
    numbers: dict[str, Any] = {"steps": len(steps)}
    if not steps:
        return numbers
    if all("step_time" in entry for entry in steps):
        numbers["s_per_step"] = statistics.mean(entry["step_time"] for entry in steps)
    else:
        numbers["s_per_step"] = steps[-1].get("train_speed(s/it)")
    logged = [entry["memory(GiB)"] for entry in steps if "memory(GiB)" in entry]
    numbers["torch_memory_gib"] = max(logged) if logged else None
    args = json.loads((run / "args.json").read_text()) if (run / "args.json").is_file() else {}
    lengths = [entry["completions/mean_length"] for entry in steps if "completions/mean_length" in entry]
    if lengths and args:
        per_step = (
            args["per_device_train_batch_size"] * args.get("global_world_size", 1) * args["gradient_accumulation_steps"]
        )
        rates = [
            entry["completions/mean_length"] * per_step / entry["step_time"]
            for entry in steps
            if entry.get("step_time") and "completions/mean_length" in entry
        ]
        numbers["rollout_tokens_per_s"] = statistics.mean(rates) if rates else None
    return numbers


def completion_tokens(texts: list[str], tokenizer_dir: Path) -> int | None:
    if not texts or not (tokenizer_dir / "config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)


def generation_numbers(texts: list[str], tokenizer_dir: Path, seconds: float | None) -> dict[str, Any]:
    tokens = completion_tokens(texts, tokenizer_dir)
    numbers: dict[str, Any] = {"completions": len(texts)}
    if tokens is not None and seconds:
        numbers["rollout_tokens_per_s"] = tokens / seconds
    return numbers


def _field(folder: Path, pattern: str, key: str) -> list[str]:
    """``key`` of every record in the files matching ``pattern``."""
    return [record[key] for path in sorted(folder.glob(pattern)) for record in read_jsonl(path)]


def report(root: Path) -> list[dict[str, Any]]:
    check = root / "gpu_check"
    rows = []
    for timing in read_jsonl(check / "timings.jsonl"):
        stage, seconds = timing["stage"], timing["ms"] / 1000
        row: dict[str, Any] = {"stage": stage, "seconds": seconds}
        row["peak_gpu_gib"] = peak_memory_gib(check / f"{stage}.memory.csv")
        st = BY_STEP.get(stage)
        if st is not None and st.trains:
            row.update(training_numbers(root / st.run_dir))
        elif st is not None and st.kind == "sample":
            texts = _field(root / st.run_dir, "samples.shard*.jsonl", "completion")
            row.update(generation_numbers(texts, root / registry_stage(st.start).run_dir / "merged", seconds))
        elif st is not None and st.kind == "evaluate":
            texts = _field(root / st.run_dir, "*/predictions.jsonl", "prediction")
            row.update(generation_numbers(texts, root / registry_stage(st.start).run_dir / "merged", seconds))
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | wall s | steps | s/step | peak GPU memory (GiB) | torch reserved, rank 0 (GiB) | rollout tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['stage']} | {_fmt(row.get('seconds'), 0)} | {_fmt(row.get('steps'))} | "
            f"{_fmt(row.get('s_per_step'), 2)} | {_fmt(row.get('peak_gpu_gib'))} | "
            f"{_fmt(row.get('torch_memory_gib'))} | {_fmt(row.get('rollout_tokens_per_s'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_root", help="the OUTPUT_ROOT gpu_check.sh ran the stages into")
    args = parser.parse_args(argv)
    root = Path(args.output_root)
    rows = report(root)
    if not rows:
        print(f"no stage timings in {root / 'gpu_check' / 'timings.jsonl'}", file=sys.stderr)
        return 1
    text = markdown(rows)
    (root / "gpu_check" / "report.md").write_text(text, encoding="utf-8")
    (root / "gpu_check" / "report.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
