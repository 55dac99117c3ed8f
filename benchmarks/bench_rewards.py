"""Cost of the stage-1 reward set, called exactly as ms-swift's GRPO trainer calls it.

GRPO scores a batch of 27 completions (per-device batch 3 × 9 generations) by calling each
reward function once with the same ``completions`` list and the gold columns as lists.  The
stage-1 set is ``prompt_format`` + ``adaptive_classification`` + ``think_length_reward_300``.
This script measures, on a seeded realistic mix of completions (all three tasks, offline and
real-time rows, think texts of 100-600 CJK characters, fenced and bare JSON, wrong answers,
invalid labels, malformed answers, trailing text):

* completions per second of the three reward calls, with per-sample logging off and on;
* the same for a bare pass (one ``re.search`` for the answer block + ``json.loads`` per
  completion: the least any reward set must do) and the ratio (target: rewards <= 3× bare);
* the cost of one reward call (27 completions, logging on) after 0 / 10k / 100k lines are
  already in the log (target: flat -- the reference re-read and rewrote its log every call).

The parse cache is cleared before every repetition (else later repetitions would be free) but
not between the three calls of one batch: sharing one parse per completion is the design.

    python benchmarks/bench_rewards.py [--batches 200] [--repeats 7] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prompt  # noqa: E402
import rewards  # noqa: E402
from safe_qaq.answer import _think_length_regex, parse_answer, think_length  # noqa: E402

STAGE1 = ("prompt_format", "adaptive_classification", "think_length_reward_300")
PROMPTS_PER_BATCH, GENERATIONS = 3, 9  # the paper's per-device batch 3 × G = 9
BATCH = PROMPTS_PER_BATCH * GENERATIONS
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)

# Think texts are drawn from the characters of the project's own prompts (realistic CJK mix)
# with punctuation and a few ASCII runs, as a model's reasoning would have.
_CJK_POOL = sorted({c for text in prompt.PROMPTS.values() for c in text if "\u4e00" <= c <= "\u9fff"})
_ASCII_WORDS = ("APP", "ID", "110", "2024", "OK", "VIP", "QQ", "123456")


def think_text(rng: random.Random, n_cjk: int) -> str:
    parts: list[str] = []
    for i in range(n_cjk):
        parts.append(rng.choice(_CJK_POOL))
        if i % 13 == 12:
            parts.append(rng.choice("，。；：！？"))
        elif i % 47 == 46:
            parts.append(" " + rng.choice(_ASCII_WORDS) + " ")
    return "".join(parts)


def _other_label(rng: random.Random, task: str, gold: str) -> str:
    return rng.choice([label for label in prompt.TASK_LABELS[task] if label != gold])


def completion(rng: random.Random, task: str, gold: str, stage: str, realtime: bool) -> str:
    """One completion of a seeded kind (weights roughly what a mid-training policy emits)."""
    field = prompt.LABEL_FIELD[task]
    kind = rng.choices(
        ["correct", "wrong", "invalid", "null", "trailing", "no_think", "unclosed", "bad_json", "no_json", "plain"],
        weights=[35, 22, 4, 5, 6, 6, 5, 7, 4, 6],
    )[0]
    think = think_text(rng, rng.randint(100, 600))
    if kind == "plain":  # rambling without any tags
        return think
    label = gold if kind in ("correct", "trailing", "no_think") else _other_label(rng, task, gold)
    value: object = prompt.answer_value(task, label)
    if kind == "invalid":
        value = rng.choice(["yes", 3, "不确定"]) if task == "fraud" else rng.choice([3, True, "其他"])
    obj: dict[str, object] = {}
    if realtime:
        obj["conversation_stage"] = stage if rng.random() < 0.7 else rng.choice(prompt.STAGES)
    obj[field] = None if (kind == "null" and realtime) else value
    obj["reason"] = think[: rng.randint(10, 40)]
    obj["confidence"] = round(rng.random(), 2)
    body = json.dumps(obj, ensure_ascii=False, indent=rng.choice([None, 2]))
    if kind == "bad_json":
        body = body[: rng.randint(5, max(6, len(body) - 2))]  # cut mid-object
    elif kind == "no_json":
        body = label
    if rng.random() < 0.5:
        body = f"```json\n{body}\n```"
    answer = f"<answer>{body}" + ("" if kind == "unclosed" else "</answer>")
    head = "" if kind == "no_think" else f"<think>{think}</think>" + rng.choice(["", "\n", "\n\n"])
    tail = "\n" + think[: rng.randint(5, 80)] if kind == "trailing" else ""
    return head + answer + tail


def build_batches(n_batches: int, seed: int) -> list[dict[str, list]]:
    """GRPO-shaped batches: 3 prompts × 9 generations, gold columns repeated per generation."""
    rng = random.Random(seed)
    batches = []
    for _ in range(n_batches):
        columns: dict[str, list] = {"completions": [], "answers": [], "conversation_stage": [], "task": []}
        columns["messages"] = []
        for _ in range(PROMPTS_PER_BATCH):
            task = rng.choice(prompt.TASKS)
            gold = rng.choice(prompt.TASK_LABELS[task])
            realtime = rng.random() < 0.3
            stage = rng.choice(prompt.STAGES) if realtime else prompt.COMPLETE
            messages = prompt.build_messages(task, mode="realtime" if realtime else "offline")
            for _ in range(GENERATIONS):
                columns["completions"].append(completion(rng, task, gold, stage, realtime))
                columns["answers"].append(gold)
                columns["conversation_stage"].append(stage)
                columns["task"].append(task)
                columns["messages"].append(messages)
        batches.append(columns)
    return batches


def set_log(path: str | None) -> None:
    """Point the reward log at ``path`` (None: off); rewards caches the handle, so drop it."""
    if rewards._LOG is not None and rewards._LOG._file is not None:
        rewards._LOG._file.close()
    rewards._LOG = None
    if path is None:
        os.environ.pop(rewards.LOG_ENV, None)
    else:
        os.environ[rewards.LOG_ENV] = path


def rewards_pass(batches: list[dict[str, list]], funcs: list[Callable]) -> None:
    for batch in batches:
        columns = {k: v for k, v in batch.items() if k != "completions"}
        for func in funcs:  # same list object every call, like the trainer
            func(batch["completions"], **columns)


def bare_pass(batches: list[dict[str, list]]) -> None:
    for batch in batches:
        for text in batch["completions"]:
            match = _ANSWER_RE.search(text)
            if match:
                try:  # noqa: SIM105 - contextlib.suppress would slow the baseline itself
                    json.loads(match.group(1))
                except ValueError:
                    pass


def timed(run: Callable[[], None], repeats: int) -> float:
    """Median seconds of ``run`` over ``repeats``, parse cache cleared before each."""
    times = []
    for _ in range(repeats):
        parse_answer.cache_clear()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def log_growth(batches: list[dict[str, list]], funcs: list[Callable], work: Path, sizes: list[int], calls: int):
    """Median seconds per reward call (27 completions, logging on) with ``size`` lines already logged."""
    template = {
        "time": time.time(),
        "step": 1,
        "reward": "prompt_format",
        "index": 0,
        "answers": "fraud",
        "conversation_stage": "complete",
        "score": 1.0,
    }
    texts = [t for b in batches for t in b["completions"]]
    results = {}
    for size in sizes:
        path = work / f"prefilled_{size}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for i in range(size):  # realistic lines (~1-2 KB, the completions themselves)
                handle.write(json.dumps({**template, "completion": texts[i % len(texts)]}, ensure_ascii=False) + "\n")
        set_log(str(path))
        per_call = []
        for i in range(calls):
            batch = batches[i % len(batches)]
            columns = {k: v for k, v in batch.items() if k != "completions"}
            func = funcs[i % len(funcs)]
            parse_answer.cache_clear()  # include the parse: the first of a batch's three calls
            start = time.perf_counter()
            func(batch["completions"], **columns)
            per_call.append(time.perf_counter() - start)
        set_log(None)
        results[size] = (statistics.median(per_call), path.stat().st_size)
        path.unlink()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200, help="GRPO batches of 27 completions")
    parser.add_argument("--repeats", type=int, default=7, help="repetitions per measurement (median reported)")
    parser.add_argument("--calls", type=int, default=300, help="reward calls timed per log size")
    parser.add_argument("--log-sizes", type=int, nargs="+", default=[0, 10_000, 100_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile one logging-off rewards pass")
    args = parser.parse_args(argv)

    batches = build_batches(args.batches, args.seed)
    n = args.batches * BATCH
    funcs = [rewards.REWARDS[name](args=None) for name in STAGE1]
    chars = [len(t) for b in batches for t in b["completions"]]
    print(f"{n} completions in {args.batches} batches of {BATCH}; mean {statistics.mean(chars):.0f} chars")
    scores = [rewards.REWARDS["adaptive_classification"](args=None)(**{k: v for k, v in b.items() if k != "messages"})
              for b in batches[:20]]  # fmt: skip
    flat = [s for batch in scores for s in batch]
    mix = {v: round(flat.count(v) / len(flat), 2) for v in sorted(set(flat))}
    print(f"accuracy scores in the mix (first 20 batches): {mix}")
    thinks = [parse_answer(t).think for b in batches for t in b["completions"]]
    # The fast think-length estimate must equal its regex definition on this mix too.
    assert all(think_length(t) == _think_length_regex(t) for t in thinks), "think_length differs from its definition"

    with tempfile.TemporaryDirectory(prefix="bench_rewards_") as tmp:
        work = Path(tmp)
        set_log(None)
        bare = timed(lambda: bare_pass(batches), args.repeats)
        off = timed(lambda: rewards_pass(batches, funcs), args.repeats)
        set_log(str(work / "rewards.jsonl"))
        on = timed(lambda: rewards_pass(batches, funcs), args.repeats)
        set_log(None)
        logged_mb = (work / "rewards.jsonl").stat().st_size / 1e6

        print(f"\n| pass ({len(STAGE1)} rewards × batch {BATCH}) | completions/s | time / bare |")
        print("|---|---|---|")
        print(f"| bare regex + json.loads | {n / bare:,.0f} | 1.00× |")
        print(f"| rewards, logging off | {n / off:,.0f} | {off / bare:.2f}× |")
        print(f"| rewards, logging on | {n / on:,.0f} | {on / bare:.2f}× |")
        print(f"(logging wrote {logged_mb:.0f} MB over {args.repeats} repetitions)")
        verdict = "met" if off <= 3 * bare else "MISSED"
        print(f"target rewards (logging off) <= 3× bare: {verdict} ({off / bare:.2f}×)")

        growth = log_growth(batches, funcs, work, args.log_sizes, args.calls)
        print(f"\n| lines already logged | log size after | ms per call ({BATCH} completions, logging on) |")
        print("|---|---|---|")
        for size, (seconds, nbytes) in growth.items():
            print(f"| {size:,} | {nbytes / 1e6:.0f} MB | {seconds * 1e3:.3f} |")
        base = growth[args.log_sizes[0]][0]
        worst = max(s for s, _ in growth.values())
        print(f"largest / first: {worst / base:.2f}× (target: flat)")

    if args.profile:
        profiler = cProfile.Profile()
        parse_answer.cache_clear()
        profiler.enable()
        rewards_pass(batches, funcs)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
