"""The toy reproduction's measurements: each stage's model on train and test, and the paper's claims.

``make toy`` (``scripts/toy.sh``) runs the real stage scripts with ``PROFILE=toy`` on the toy
calls (:mod:`safe_qaq.toy.data`) and, after each stage, measures its model with this module::

    python -m safe_qaq.toy measure --model outputs/toy/stage1_grpo/merged --name stage1 --data data/toy/prepared \\
        --out outputs/toy [--live]
    python -m safe_qaq.toy report --out outputs/toy      # table + claims -> report.json, report.md

``--data`` is any prepared toy set: the (split, kind) files it holds are measured, so a fresh set
(``python -m safe_qaq.toy.data --seed 7 --fresh 80``, test rows only) is measured the same way,
and ``report --out FRESH --runs outputs/toy`` reads the training logs from the run.

Per model, split (train/test) and kind (offline/real-time rows), greedy answers are scored with
the project's one parser and rewards: accuracy per task, format-valid rate, mean think length,
mean reward (the stage's reward set: accuracy + format, + stage on real-time rows), the null rate
on early-stage prefixes and the stage accuracy (real-time rows), and the greedy latency per
answer (batch size 1, median).  On early real-time prefixes it also reads the decision itself, not
only the greedy string: the probability the model puts on ``null`` against a label at the first
token where the two differ (:func:`null_probability`).  With ``--live`` the model also walks the
test calls with ``safe_qaq.live eval`` (fraud task, growing prefixes).  The claims are fixed here,
before any run, and only read numbers; a claim that does not hold is reported as not held.
"""

from __future__ import annotations

import argparse
import contextlib
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
from safe_qaq.rewards import log_key
from safe_qaq.stages import stage
from safe_qaq.trainlog import moved, read_log

# Rows measured per split and kind: the claims read the test split, so all of its offline rows and 120
# real-time ones (the same rows for every model); train is a smaller check of fit.  ~30 s a model on 2 cores.
DEFAULT_ROWS = {"train": {"offline": 48, "realtime": 48}, "test": {"offline": 100, "realtime": 120}}
LATENCY_ROWS = 24
STAGE_ORDER = ("base", "stage1", "rsft", "lcrl", "stage3")
#: The measured models: the warm base, then the stage registry's training stages (stage3 is its realtime run).
REGISTRY_KEY = {"stage1": "stage1", "rsft": "rsft", "lcrl": "lcrl", "stage3": "realtime"}
STAGE_TITLES = {"base": "warm base", **{name: stage(key).title for name, key in REGISTRY_KEY.items()}}


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
    per_task = []
    for task in TASKS:
        out[f"acc_{task}"] = _mean([s["correct"] for s in scored if s["task"] == task])
        if out[f"acc_{task}"] is not None:
            per_task.append(out[f"acc_{task}"])
    # The "mean test accuracy over the three tasks": each task counts once, whatever its row count.
    out["acc_tasks_mean"] = _mean(per_task)
    out["format_valid"] = _mean([s["format_ok"] for s in scored])
    out["think_mean"] = _mean([s["think"] for s in scored])
    out["reward_mean"] = _mean([s["reward"] for s in scored])
    realtime = [s for s in scored if s["realtime"]]
    if realtime:
        early = [s for s in realtime if s["gold_stage"] == EARLY_STAGE]
        out["early_null_rate"] = _mean([s["null"] for s in early])
        out["stage_accuracy"] = _mean([s["stage_ok"] for s in realtime])
        shares = [s["null_share"] for s in early if s.get("null_share") is not None]
        out["early_null_prob"] = _mean(shares)
        out["early_null_prob_n"] = len(shares)
    return out


class ModelMissing(SystemExit):
    """A model argument that names no model directory: one line, never a hub lookup."""


def check_model_dir(model: str) -> None:
    path = Path(model)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelMissing(f"--model {model}: no model directory there (no config.json); nothing is downloaded")


def null_probability(engine: Any, row: dict, text: str) -> dict[str, float] | None:
    """The decision behind a real-time answer: P(``null``) against P(a label) where the two first differ.

    The model's own answer is cut after its label field (``"scene":``); one teacher-forced forward
    gives the next-token distribution where ``null`` and the labels' values first tokenize apart
    (in the tiny tokenizer `` null`` vs `` "`` for scenes and fraud types, `` null`` vs `` true`` /
    `` false`` for fraud).  Returns ``p_null``, ``p_label`` (summed over the labels' distinct tokens)
    and ``null_share`` = p_null / (p_null + p_label); None when the answer has no label field.
    """
    import torch
    from swift.infer_engine import InferRequest

    from prompt import LABEL_FIELD, TASK_LABELS, answer_value, question_of

    task = resolve_task(row["answers"], row.get("task"))
    key = f'"{LABEL_FIELD[task]}":'
    start = text.find("<answer>")
    at = text.find(key, max(start, 0)) if start >= 0 else -1
    if at < 0:
        return None
    prefix = text[: at + len(key)]
    pt = engine.engine
    tokenizer = pt.processor.tokenizer if hasattr(pt.processor, "tokenizer") else pt.processor

    def ids(continuation: str) -> list[int]:
        return tokenizer(prefix + continuation, add_special_tokens=False)["input_ids"]

    null_ids = ids(" null")
    label_ids = [ids(" " + json.dumps(answer_value(task, label), ensure_ascii=False)) for label in TASK_LABELS[task]]

    def common(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    k = min(common(null_ids, other) for other in label_ids)
    if k >= len(null_ids):
        return None
    label_tokens = {other[k] for other in label_ids if len(other) > k and common(null_ids, other) == k}
    encoded = pt.template.encode(
        InferRequest(messages=question_of(row["messages"]), audios=list(row.get("audios") or []))
    )
    input_ids = list(encoded["input_ids"]) + null_ids[:k]
    with torch.no_grad():
        logits = pt.model(
            input_ids=torch.tensor([input_ids]),
            attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
            input_features=encoded["input_features"],
            feature_attention_mask=encoded["feature_attention_mask"],
        ).logits[0, -1]
    probs = torch.softmax(logits.float(), -1)
    p_null = float(probs[null_ids[k]])
    p_label = float(sum(probs[t] for t in label_tokens))
    share = p_null / (p_null + p_label) if p_null + p_label else 0.0
    return {"p_null": p_null, "p_label": p_label, "null_share": share}


def available_sets(data: Path, rows_per_set: dict[str, dict[str, int]]) -> dict[str, tuple[Path, int]]:
    """The (split/kind) row files ``data`` holds, of those asked for; an error when it holds none."""
    found = {}
    for split, kinds in rows_per_set.items():
        for kind, limit in kinds.items():
            path = data / f"{kind}_{split}.jsonl"
            if path.is_file() and path.stat().st_size:
                found[f"{split}/{kind}"] = (path, limit)
    if not found:
        wanted = ", ".join(f"{k}_{s}.jsonl" for s, ks in rows_per_set.items() for k in ks)
        raise SystemExit(f"--data {data}: no prepared toy rows there (looked for {wanted})")
    return found


def live(model: str, data: Path, out: Path, name: str, limit: int | None) -> dict[str, Any]:
    """``safe_qaq.live eval`` on the set's test calls (fraud task, turn-end prefixes); its metrics."""
    from safe_qaq import live as live_mod

    calls = data / "calls_test.jsonl"
    if not calls.is_file():
        raise SystemExit(f"--live: {calls} is not there (prepare writes it with the test split)")
    target = out / f"live_{name}"
    argv = ["eval", "--model", model, "--calls", str(calls), "--out", str(target), "--name", name,
            "--max-tokens", "96", "--overwrite", "--quiet"]  # fmt: skip
    if limit:
        argv += ["--limit", str(limit)]
    with contextlib.redirect_stdout(sys.stderr):
        code = live_mod.main(argv)
    if code != 0:
        raise SystemExit(f"live eval of {model} failed (exit {code})")
    metrics = json.loads((target / "live_metrics.json").read_text(encoding="utf-8"))
    results = read_jsonl(target / "live_results.jsonl")
    # Heard fraction per call, an undecided call counting as the whole call: "decided before the end" on average.
    heard = [min(1.0, r["decision_time_s"] / r["duration_s"]) if r["decided"] and r["duration_s"] else 1.0
             for r in results]  # fmt: skip
    return {
        "n_calls": metrics["n_calls"],
        "accuracy": metrics.get("accuracy"),
        "decided_rate": metrics["decided_rate"],
        "decision_time_s_mean": metrics["decision_time_s"]["mean"],
        "heard_fraction_mean": _mean(heard),
    }


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
    live_calls: int | None = 0,
) -> dict[str, Any]:
    """Greedy answers of ``model`` on the set's splits × offline/real-time rows; writes ``<out>/measure_<name>.json``.

    ``live_calls``: 0 skips the live walk, None walks every test call, N the first N.
    """
    check_model_dir(model)
    sets = available_sets(data, rows_per_set or DEFAULT_ROWS)
    from safe_qaq.engine import make_engine

    engine = make_engine(model, max_batch_size=batch_size)
    result: dict[str, Any] = {"name": name, "model": model, "data": str(data), "sets": {}}
    answers_path = out / f"answers_{name}.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    with open(answers_path, "w", encoding="utf-8") as sink:
        for key, (path, limit) in sets.items():
            rows = pick_rows(read_jsonl(path), limit)
            texts = []
            for lo in range(0, len(rows), batch_size):
                batch = rows[lo : lo + batch_size]
                texts += [t[0] for t in engine.generate(batch, temperature=0.0, max_tokens=max_tokens)]
            scored = [score_row(row, text) for row, text in zip(rows, texts, strict=True)]
            for row, text, s in zip(rows, texts, scored, strict=True):
                if s["realtime"] and s["gold_stage"] == EARLY_STAGE:
                    s.update(null_probability(engine, row, text) or {"null_share": None})
                sink.write(dumps({"set": key, "call_id": row.get("call_id"), "text": text, **s}))
            result["sets"][key] = summarise(scored)
    # Latency: batch size 1, greedy, the first offline test rows; the median is robust to a busy machine.
    latency_file = data / "offline_test.jsonl"
    if latency_file.is_file():
        rows = read_jsonl(latency_file)[:latency_rows]
        engine.generate(rows[:1], temperature=0.0, max_tokens=max_tokens)  # warm-up
        seconds = []
        for row in rows:
            start = time.perf_counter()
            engine.generate([row], temperature=0.0, max_tokens=max_tokens)
            seconds.append(time.perf_counter() - start)
        result["latency_ms"] = 1000 * statistics.median(seconds)
    if live_calls != 0:
        result["live"] = live(model, data, out, name, live_calls)
    (out / f"measure_{name}.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return result


# ---------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------


def _log(run: Path) -> list[dict]:
    path = run / "logging.jsonl"
    return [r for r in read_log(path) if "reward" in r] if path.exists() else []


def _moved(values: Sequence[float]) -> tuple[float | None, float | None]:
    return moved(values) if values else (None, None)


def claims(out: Path, measured: dict[str, dict]) -> list[dict[str, Any]]:
    """The paper's qualitative claims at toy scale, each held or not, with its numbers.

    ``out`` is the run's folder (training logs, samples); ``measured`` the measurements, of the run's
    own test split or of a fresh set.  The first four read what each reward pushes on; the rest read
    held-out accuracy and format (issue 16), their thresholds fixed here before any run.
    """
    found: list[dict[str, Any]] = []

    steps = _log(out / stage("stage1").run_dir)
    stds = [r.get("reward_std", 0.0) for r in steps]
    key = log_key("adaptive_classification")
    acc = [r[key] for r in steps if key in r]
    first, last = _moved(acc)
    nonzero = _mean([s > 0 for s in stds])
    found.append(
        {
            "name": "stage 1 GRPO raises the accuracy reward",
            "held": bool(steps) and nonzero is not None and nonzero >= 0.8 and first is not None and last > first,
            "numbers": {"steps": len(steps), "steps_with_reward_std_gt_0": nonzero, "acc_reward_first_part": first,
                        "acc_reward_last_part": last},
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
    found += heldout_claims(measured)
    return found


# Held-out thresholds (issue 16), in accuracy points (0.01 = 1 point).  Fixed before the run; never tuned after it.
STAGE1_GAIN = 0.08  # stage 1: mean test accuracy over the three tasks >= warm base + 8 points ...
STAGE1_TASK_DROP = 0.03  # ... and no task more than 3 points below the warm base
FORMAT_MIN = 0.95  # every stage, every test set
KEEP_ACC = 0.03  # RSFT vs stage 1, LCRL vs RSFT: accuracy no more than 3 points lower
LCRL_THINK_CUT = 0.30  # LCRL thinks >= 30 % shorter than RSFT
STAGE3_NULL_MIN = 0.50  # stage 3's early-prefix null rate
STAGE3_ACC_DROP = 0.05  # stage 3's offline test accuracy no more than 5 points below LCRL's


def _set(measured: dict[str, dict], name: str, key: str, needs: str) -> dict[str, Any] | None:
    """The stage's summary of one set, when it was measured and holds ``needs``."""
    summary = measured.get(name, {}).get("sets", {}).get(key)
    return summary if summary and summary.get(needs) is not None else None


def _below(a: float | None, b: float | None, points: float) -> bool:
    """``a`` is no more than ``points`` below ``b`` (both known)."""
    return a is not None and b is not None and a >= b - points - 1e-9


def heldout_claims(measured: dict[str, dict]) -> list[dict[str, Any]]:
    """Claims on held-out accuracy, format and the real-time decision (issue 16), each with its numbers."""
    found: list[dict[str, Any]] = []
    off = {name: _set(measured, name, "test/offline", "acc_tasks_mean") for name in STAGE_ORDER}
    rt = {name: _set(measured, name, "test/realtime", "early_null_rate") for name in STAGE_ORDER}
    tasks = [f"acc_{t}" for t in TASKS]

    base, s1 = off["base"], off["stage1"]
    if base and s1:
        gain = s1["acc_tasks_mean"] - base["acc_tasks_mean"]
        drops = {t: s1[t] - base[t] for t in tasks if s1.get(t) is not None and base.get(t) is not None}
        found.append({
            "name": "stage 1 GRPO raises mean test accuracy over the three tasks >= "
                    f"{100 * STAGE1_GAIN:.0f} points over the "
                    f"warm base, no task down > {100 * STAGE1_TASK_DROP:.0f} points, format-valid >= {FORMAT_MIN:.0%}",
            "held": gain >= STAGE1_GAIN - 1e-9 and all(d >= -STAGE1_TASK_DROP - 1e-9 for d in drops.values())
            and s1["format_valid"] >= FORMAT_MIN,
            "numbers": {"acc_base": base["acc_tasks_mean"], "acc_stage1": s1["acc_tasks_mean"], "gain": gain,
                        **{f"change_{t[4:]}": d for t, d in drops.items()}, "format_stage1": s1["format_valid"]},
        })  # fmt: skip

    rsft = off["rsft"]
    if s1 and rsft:
        found.append({
            "name": f"RSFT keeps stage 1's test accuracy (no more than {100 * KEEP_ACC:.0f} points lower) "
                    "and thinks shorter",
            "held": _below(rsft["acc_tasks_mean"], s1["acc_tasks_mean"], KEEP_ACC)
            and rsft["think_mean"] < s1["think_mean"],
            "numbers": {"acc_stage1": s1["acc_tasks_mean"], "acc_rsft": rsft["acc_tasks_mean"],
                        "think_stage1": s1["think_mean"], "think_rsft": rsft["think_mean"]},
        })  # fmt: skip

    lcrl = off["lcrl"]
    if rsft and lcrl and measured["rsft"].get("latency_ms") and measured["lcrl"].get("latency_ms"):
        a, b = measured["rsft"]["latency_ms"], measured["lcrl"]["latency_ms"]
        found.append({
            "name": f"LCRL thinks >= {LCRL_THINK_CUT:.0%} shorter than RSFT, test accuracy no more than "
                    f"{100 * KEEP_ACC:.0f} points lower, greedy latency lower (SAFE-LS vs SAFE-RL)",
            "held": lcrl["think_mean"] <= (1 - LCRL_THINK_CUT) * rsft["think_mean"]
            and _below(lcrl["acc_tasks_mean"], rsft["acc_tasks_mean"], KEEP_ACC) and b < a,
            "numbers": {"think_rsft": rsft["think_mean"], "think_lcrl": lcrl["think_mean"],
                        "acc_rsft": rsft["acc_tasks_mean"], "acc_lcrl": lcrl["acc_tasks_mean"],
                        "latency_ms_rsft": a, "latency_ms_lcrl": b},
        })  # fmt: skip

    formats = {
        f"{name}/{kind}": sets[name]["format_valid"]
        for name in STAGE_ORDER
        for kind, sets in (("offline", off), ("realtime", rt))
        if sets[name] and "format_valid" in sets[name]
    }
    if formats:
        found.append({
            "name": f"every stage answers in format on test: format-valid >= {FORMAT_MIN:.0%} (offline and real-time)",
            "held": all(v is not None and v >= FORMAT_MIN for v in formats.values()),
            "numbers": formats,
        })  # fmt: skip

    base_rt, lcrl_rt, s3_rt = rt["base"], rt["lcrl"], rt["stage3"]
    if base_rt and lcrl_rt and s3_rt:
        n3, nl, nb = s3_rt["early_null_rate"], lcrl_rt["early_null_rate"], base_rt["early_null_rate"]
        found.append({
            "name": f"stage 3 waits on early prefixes: null rate >= {STAGE3_NULL_MIN:.0%} and above LCRL's and the "
                    "warm base's (test)",
            "held": n3 is not None and nl is not None and nb is not None and n3 >= STAGE3_NULL_MIN and n3 > nl
            and n3 > nb,
            "numbers": {"early_null_base": nb, "early_null_lcrl": nl, "early_null_stage3": n3,
                        "p_null_base": base_rt.get("early_null_prob"), "p_null_lcrl": lcrl_rt.get("early_null_prob"),
                        "p_null_stage3": s3_rt.get("early_null_prob")},
        })  # fmt: skip
        found.append({
            "name": "stage 3 raises stage accuracy over LCRL (test)",
            "held": s3_rt["stage_accuracy"] > lcrl_rt["stage_accuracy"],
            "numbers": {"stage_acc_lcrl": lcrl_rt["stage_accuracy"], "stage_acc_stage3": s3_rt["stage_accuracy"]},
        })  # fmt: skip
    live_lcrl, live_s3 = (measured.get(n, {}).get("live") for n in ("lcrl", "stage3"))
    if live_lcrl and live_s3:
        found.append({
            "name": "stage 3 on `live eval` of the test calls: decision accuracy >= LCRL's, the mean decision before "
                    "the end of the call",
            "held": live_s3["accuracy"] is not None and live_lcrl["accuracy"] is not None
            and live_s3["accuracy"] >= live_lcrl["accuracy"] and live_s3["heard_fraction_mean"] < 1.0,
            "numbers": {"live_acc_lcrl": live_lcrl["accuracy"], "live_acc_stage3": live_s3["accuracy"],
                        "heard_fraction_stage3": live_s3["heard_fraction_mean"],
                        "decision_s_stage3": live_s3["decision_time_s_mean"], "calls": live_s3["n_calls"]},
        })  # fmt: skip
    if lcrl and off["stage3"]:
        s3 = off["stage3"]
        found.append({
            "name": "stage 3 keeps offline test accuracy: no more than "
                    f"{100 * STAGE3_ACC_DROP:.0f} points below LCRL's",
            "held": _below(s3["acc_tasks_mean"], lcrl["acc_tasks_mean"], STAGE3_ACC_DROP),
            "numbers": {"acc_lcrl": lcrl["acc_tasks_mean"], "acc_stage3": s3["acc_tasks_mean"]},
        })  # fmt: skip
    return found


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

COLUMNS = (
    ("acc_tasks_mean", "acc (3 tasks)", True),
    ("acc_scene", "scene", True),
    ("acc_fraud", "fraud", True),
    ("acc_fraud_type", "type", True),
    ("format_valid", "format ok", True),
    ("think_mean", "think t", False),
    ("reward_mean", "reward", False),
    ("early_null_rate", "early null", True),
    ("early_null_prob", "P(null) early", True),
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
            latency = f"{m['latency_ms']:.0f}" if key == "test/offline" and m.get("latency_ms") else ""
            lines.append(f"| {STAGE_TITLES[name]} | {key} ({summary['n']}) | " + " | ".join(cells) + f" | {latency} |")
    live_rows = [(n, measured[n]["live"]) for n in STAGE_ORDER if n in measured and measured[n].get("live")]
    if live_rows:
        lines += ["", "| stage | live eval (fraud, test calls) | decision acc | decided | mean decision s | heard |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, lv in live_rows:
            lines.append(
                f"| {STAGE_TITLES[name]} | {lv['n_calls']} calls | {_cell(lv['accuracy'], True)} | "
                f"{_cell(lv['decided_rate'], True)} | {_cell(lv['decision_time_s_mean'], False)} | "
                f"{_cell(lv['heard_fraction_mean'], True)} |"
            )
    return "\n".join(lines)


def report(out: Path, runs: Path | None = None) -> dict[str, Any]:
    measured = {}
    for name in STAGE_ORDER:
        path = out / f"measure_{name}.json"
        if path.exists():
            measured[name] = json.loads(path.read_text())
    found = claims(runs or out, measured)
    payload = {"stages": measured, "claims": found, "runs": str(runs or out)}
    (out / "report.json").write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    lines = [
        "# Toy reproduction (CPU, tiny model, synthetic calls: verifies the training machinery, not fraud detection)",
        "",
        "Accuracy, format, null and stage columns in %; acc (3 tasks) = the mean of the scene, fraud and fraud-type "
        "accuracies (chance 14 / 50 / 12.5); think t = the think-length estimate; reward = accuracy + format "
        "(+ stage on real-time rows) as GRPO scores them; early null = greedy answers null on early prefixes; "
        "P(null) early = the probability on null against a label where the two first differ, mean on early prefixes; "
        "latency = greedy, batch 1, median, offline test rows. CPU training is not bit-reproducible: expect a spread.",
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
    m = sub.add_parser("measure", help="greedy answers of one model on a prepared toy set's rows")
    m.add_argument("--model", required=True, help="a model directory (never a hub name)")
    m.add_argument("--name", required=True, choices=STAGE_ORDER)
    m.add_argument("--data", required=True, help="a prepared toy set (offline_*.jsonl, realtime_*.jsonl)")
    m.add_argument("--out", required=True)
    m.add_argument("--max-tokens", type=int, default=96)
    m.add_argument("--limit", type=int, help="at most this many rows per set (a quick check, not a measurement)")
    m.add_argument("--live", type=int, nargs="?", const=-1, default=0, metavar="N",
                   help="also walk the test calls with `safe_qaq.live eval` (all of them, or the first N)")  # fmt: skip
    r = sub.add_parser("report", help="table and claims from the measurements in --out")
    r.add_argument("--out", required=True)
    r.add_argument("--runs", help="the run's folder (training logs), when --out holds a fresh set's measurements")
    args = parser.parse_args(argv)
    if args.command == "measure":
        live_calls = None if args.live == -1 else args.live
        try:
            rows = DEFAULT_ROWS
            if args.limit:
                rows = {split: {kind: min(n, args.limit) for kind, n in kinds.items()} for split, kinds in rows.items()}
            result = measure(args.model, args.name, Path(args.data), Path(args.out), max_tokens=args.max_tokens,
                             live_calls=live_calls, rows_per_set=rows)  # fmt: skip
        except SystemExit as error:
            if isinstance(error.code, str):
                print(f"error: {error.code}", file=sys.stderr)
                return 2
            raise
        print(table({args.name: result}))
        return 0
    payload = report(Path(args.out), Path(args.runs) if args.runs else None)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return 0 if payload["claims"] else 1


if __name__ == "__main__":
    sys.exit(main())
