"""The toy reproduction's measurements: each stage's model on train and test, and the paper's claims.

``make toy`` (``scripts/toy.sh``) runs the real stage scripts with ``PROFILE=toy`` on the toy
calls (:mod:`safe_qaq.toy_data`) and, after each stage, measures its model with this module::

    python -m safe_qaq.toy measure --model outputs/toy/stage1_grpo/merged --name stage1 --data data/toy/prepared \\
        --out outputs/toy
    python -m safe_qaq.toy report --out outputs/toy      # table + claims -> report.json, report.md

Per model, split (train/test) and kind (offline/real-time rows), greedy answers are scored with
the project's one parser and rewards: accuracy per task, format-valid rate, mean think length,
mean reward (the stage's reward set: accuracy + format, + stage on real-time rows), the null rate
on early-stage prefixes and the stage accuracy (real-time rows), and the greedy latency per
answer (batch size 1, median).  The claims are fixed here, before any run, and only read numbers;
a claim that does not hold is reported as not held.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prompt import EARLY_STAGE, TASKS
from safe_qaq.answer import judge, parse_answer, resolve_stage, resolve_task
from safe_qaq.jsonl import dumps, read_jsonl

# Rows measured per split and kind: the claims read the test split, so all of its offline rows and 120
# real-time ones (the same rows for every model); train is a smaller check of fit.  ~30 s a model on 2 cores.
DEFAULT_ROWS = {"train": {"offline": 48, "realtime": 48}, "test": {"offline": 100, "realtime": 120}}
LATENCY_ROWS = 24
STAGE_ORDER = ("base", "stage1", "rsft", "lcrl", "stage3")
STAGE_TITLES = {
    "base": "warm base",
    "stage1": "1 GRPO (SAFE-RL)",
    "rsft": "2b RSFT (SAFE-RS)",
    "lcrl": "2c LCRL (SAFE-LS)",
    "stage3": "3 real time (SAFE-Real)",
}


def pick_rows(rows: Sequence[dict], limit: int, seed: int = 0) -> list[dict]:
    """A fixed, seeded subset (the same rows for every model), in file order."""
    if len(rows) <= limit:
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def score_row(row: dict, text: str) -> dict[str, Any]:
    """One greedy answer scored as GRPO would score it (rewards.py), plus what the table reads."""
    from rewards import accuracy_score, format_score, stage_score

    task = resolve_task(row["answers"], row.get("task"))
    stage = resolve_stage(row.get("conversation_stage"))
    realtime = "prefix_end_s" in row
    parsed = parse_answer(text)
    reward = accuracy_score(parsed, task, row["answers"], stage) + format_score(parsed, task)
    if realtime:
        reward += stage_score(parsed, stage)
    return {
        "task": task,
        "gold_stage": stage,
        "realtime": realtime,
        "correct": judge(parsed, task, row["answers"], stage).is_correct,
        "format_ok": parsed.tags_ok and parsed.schema_error(task) is None,
        "think": parsed.think_tokens,
        "reward": reward,
        "null": parsed.obj is not None and parsed.label(task) is None,
        "stage_ok": parsed.stage() == stage,
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(scored: Sequence[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(scored)}
    out["accuracy"] = _mean([s["correct"] for s in scored])
    for task in TASKS:
        out[f"acc_{task}"] = _mean([s["correct"] for s in scored if s["task"] == task])
    out["format_valid"] = _mean([s["format_ok"] for s in scored])
    out["think_mean"] = _mean([s["think"] for s in scored])
    out["reward_mean"] = _mean([s["reward"] for s in scored])
    realtime = [s for s in scored if s["realtime"]]
    if realtime:
        out["early_null_rate"] = _mean([s["null"] for s in realtime if s["gold_stage"] == EARLY_STAGE])
        out["stage_accuracy"] = _mean([s["stage_ok"] for s in realtime])
    return out


def measure(
    model: str,
    name: str,
    data: Path,
    out: Path,
    *,
    rows_per_set: dict[str, dict[str, int]] | None = None,
    max_tokens: int = 96,
    batch_size: int = 16,
    latency_rows: int = LATENCY_ROWS,
) -> dict[str, Any]:
    """Greedy answers of ``model`` on train/test × offline/real-time rows; writes ``<out>/measure_<name>.json``."""
    from safe_qaq.engine import make_engine

    rows_per_set = rows_per_set or DEFAULT_ROWS
    engine = make_engine(model, max_batch_size=batch_size)
    result: dict[str, Any] = {"name": name, "model": model, "sets": {}}
    answers_path = out / f"answers_{name}.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    with open(answers_path, "w", encoding="utf-8") as sink:
        for split, kinds in rows_per_set.items():
            for kind, limit in kinds.items():
                rows = pick_rows(read_jsonl(data / f"{kind}_{split}.jsonl"), limit)
                texts = []
                for lo in range(0, len(rows), batch_size):
                    batch = rows[lo : lo + batch_size]
                    texts += [t[0] for t in engine.generate(batch, temperature=0.0, max_tokens=max_tokens)]
                scored = [score_row(row, text) for row, text in zip(rows, texts, strict=True)]
                for row, text, s in zip(rows, texts, scored, strict=True):
                    sink.write(dumps({"set": f"{split}/{kind}", "call_id": row.get("call_id"), "text": text, **s}))
                result["sets"][f"{split}/{kind}"] = summarise(scored)
    # Latency: batch size 1, greedy, the first offline test rows; the median is robust to a busy machine.
    rows = read_jsonl(data / "offline_test.jsonl")[:latency_rows]
    engine.generate(rows[:1], temperature=0.0, max_tokens=max_tokens)  # warm-up
    seconds = []
    for row in rows:
        start = time.perf_counter()
        engine.generate([row], temperature=0.0, max_tokens=max_tokens)
        seconds.append(time.perf_counter() - start)
    result["latency_ms"] = 1000 * statistics.median(seconds)
    (out / f"measure_{name}.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return result


# ---------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------


def _log(run: Path) -> list[dict]:
    path = run / "logging.jsonl"
    return [r for r in read_jsonl(path) if "reward" in r] if path.exists() else []


def _quarters(values: Sequence[float]) -> tuple[float | None, float | None]:
    q = max(1, len(values) // 4)
    return _mean(values[:q]), _mean(values[-q:])


def claims(out: Path, measured: dict[str, dict]) -> list[dict[str, Any]]:
    """The paper's qualitative claims at toy scale, each held or not, with its numbers."""
    found: list[dict[str, Any]] = []

    steps = _log(out / "stage1_grpo")
    stds = [r.get("reward_std", 0.0) for r in steps]
    acc = [r["rewards/AdaptiveClassification/mean"] for r in steps if "rewards/AdaptiveClassification/mean" in r]
    first, last = _quarters(acc)
    nonzero = _mean([s > 0 for s in stds])
    found.append(
        {
            "name": "stage 1 GRPO raises the accuracy reward",
            "held": bool(steps) and nonzero is not None and nonzero >= 0.8 and first is not None and last > first,
            "numbers": {"steps": len(steps), "steps_with_reward_std_gt_0": nonzero, "acc_reward_first_quarter": first,
                        "acc_reward_last_quarter": last},
        }
    )  # fmt: skip

    stats_path = out / "stage2_samples" / "process_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    rsft_args = out / "stage2_rsft" / "args.json"
    trained_on = json.loads(rsft_args.read_text()).get("dataset") if rsft_args.exists() else None
    kept_file = out / "stage2_samples" / "rsft.jsonl"
    kept_fraction = stats["kept"] / stats["prompts"] if stats.get("prompts") else None
    # RSFT reads the pre-flight's copy of the kept file (rows over MAX_LENGTH dropped): every row it trained on
    # must be a kept completion, none a gold answer.
    kept_rows = {dumps(r) for r in read_jsonl(kept_file)} if kept_file.exists() else set()
    trained_rows = [dumps(r) for f in trained_on or [] for r in read_jsonl(f)] if trained_on else []
    from_kept = sum(r in kept_rows for r in trained_rows)
    found.append(
        {
            "name": "rejection sampling keeps a correct completion for >= half the prompts, and RSFT trains on them",
            "held": kept_fraction is not None and kept_fraction >= 0.5 and bool(trained_rows)
            and from_kept == len(trained_rows),
            "numbers": {"prompts": stats.get("prompts"), "kept": stats.get("kept"), "kept_fraction": kept_fraction,
                        "think_mean_all": stats.get("think_mean_all"), "think_mean_kept": stats.get("think_mean_kept"),
                        "rsft_rows": len(trained_rows), "rsft_rows_from_kept": from_kept},
        }
    )  # fmt: skip

    rsft, lcrl = measured.get("rsft"), measured.get("lcrl")
    if rsft and lcrl:
        a, b = rsft["sets"]["test/offline"], lcrl["sets"]["test/offline"]
        shorter = b["think_mean"] <= 0.7 * a["think_mean"]
        same_acc = b["accuracy"] >= a["accuracy"] - 0.05
        faster = lcrl["latency_ms"] < rsft["latency_ms"]
        found.append(
            {
                "name": "LCRL shortens thinking >= 30% at accuracy within 5 points, and answers faster (test split)",
                "held": shorter and same_acc and faster,
                "numbers": {"think_rsft": a["think_mean"], "think_lcrl": b["think_mean"],
                            "think_change": b["think_mean"] / a["think_mean"] - 1 if a["think_mean"] else None,
                            "acc_rsft": a["accuracy"], "acc_lcrl": b["accuracy"],
                            "latency_ms_rsft": rsft["latency_ms"], "latency_ms_lcrl": lcrl["latency_ms"]},
            }
        )  # fmt: skip

    stage3 = measured.get("stage3")
    if lcrl and stage3:
        a, b = lcrl["sets"]["test/realtime"], stage3["sets"]["test/realtime"]
        found.append(
            {
                "name": "stage 3 learns to wait: more nulls on early prefixes, higher stage accuracy (test split)",
                "held": b["early_null_rate"] > a["early_null_rate"] and b["stage_accuracy"] > a["stage_accuracy"],
                "numbers": {"early_null_lcrl": a["early_null_rate"], "early_null_stage3": b["early_null_rate"],
                            "stage_acc_lcrl": a["stage_accuracy"], "stage_acc_stage3": b["stage_accuracy"]},
            }
        )  # fmt: skip
    return found


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

COLUMNS = (
    ("accuracy", "acc", True),
    ("acc_scene", "scene", True),
    ("acc_fraud", "fraud", True),
    ("acc_fraud_type", "type", True),
    ("format_valid", "format ok", True),
    ("think_mean", "think t", False),
    ("reward_mean", "reward", False),
    ("early_null_rate", "early null", True),
    ("stage_accuracy", "stage acc", True),
)


def _cell(value: Any, pct: bool) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.0f}" if pct else f"{value:.1f}"


def table(measured: dict[str, dict]) -> str:
    head = "| stage | rows | " + " | ".join(title for _, title, _ in COLUMNS) + " | latency ms |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in STAGE_ORDER:
        if name not in measured:
            continue
        m = measured[name]
        for key, summary in m["sets"].items():
            cells = [_cell(summary.get(k), pct) for k, _, pct in COLUMNS]
            latency = f"{m['latency_ms']:.0f}" if key == "test/offline" else ""
            lines.append(f"| {STAGE_TITLES[name]} | {key} ({summary['n']}) | " + " | ".join(cells) + f" | {latency} |")
    return "\n".join(lines)


def report(out: Path) -> dict[str, Any]:
    measured = {}
    for name in STAGE_ORDER:
        path = out / f"measure_{name}.json"
        if path.exists():
            measured[name] = json.loads(path.read_text())
    found = claims(out, measured)
    payload = {"stages": measured, "claims": found}
    (out / "report.json").write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    lines = [
        "# Toy reproduction (CPU, tiny model, synthetic calls: verifies the training machinery, not fraud detection)",
        "",
        "Accuracy, format, null and stage columns in %; think t = the think-length estimate; reward = accuracy + "
        "format (+ stage on real-time rows) as GRPO scores them; latency = greedy, batch 1, median, offline test rows.",
        "",
        table(measured),
        "",
        "## Claims",
        "",
    ]
    for claim in found:
        numbers = ", ".join(f"{k}={_fmt(v)}" for k, v in claim["numbers"].items())
        lines.append(f"- **{'held' if claim['held'] else 'NOT held'}** — {claim['name']} ({numbers})")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return payload


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.toy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="greedy answers of one model on the toy's train and test rows")
    m.add_argument("--model", required=True)
    m.add_argument("--name", required=True, choices=STAGE_ORDER)
    m.add_argument("--data", required=True, help="prepared toy data (offline_*.jsonl, realtime_*.jsonl)")
    m.add_argument("--out", required=True)
    m.add_argument("--max-tokens", type=int, default=96)
    r = sub.add_parser("report", help="table and claims from the measurements in --out")
    r.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "measure":
        result = measure(args.model, args.name, Path(args.data), Path(args.out), max_tokens=args.max_tokens)
        print(table({args.name: result}))
        return 0
    payload = report(Path(args.out))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return 0 if payload["claims"] else 1


if __name__ == "__main__":
    sys.exit(main())
