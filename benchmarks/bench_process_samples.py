"""Wall time, throughput and peak memory of ``python -m safe_qaq.process_samples`` at full scale.

Writes a synthetic ``sample.py`` output for TeleAntiFraud-28k's size -- 28,000 prompts × 16
completions -- streamed to a temp file (never held in memory): real prompt rows (messages from
``prompt.build_messages``, rounds 1-3 with the earlier rounds carried, one or two audio paths,
gold columns), each completion a ``<think>`` of 100-400 characters and an answer that is
correct, wrong, invalid or malformed (seeded mix).  Then runs the real CLI on it as a
subprocess and reports wall time, completions/s and the subprocess's peak RSS.

Target: peak RSS <= 300 MB (memory must not grow with the number of completions).

    python benchmarks/bench_process_samples.py [--prompts 28000] [--n 16] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prompt  # noqa: E402
from safe_qaq.jsonl import dumps  # noqa: E402
from safe_qaq.sample import prompt_id  # noqa: E402

TARGET_RSS_MB = 300
_CJK_POOL = sorted({c for text in prompt.PROMPTS.values() for c in text if "\u4e00" <= c <= "\u9fff"})


def _text_pool(rng: random.Random, size: int = 1 << 20) -> str:
    """A long random Chinese text; think texts are slices of it (cheap, and distinct by offset)."""
    chars = rng.choices(_CJK_POOL, k=size)
    for i in range(12, size, 13):  # punctuation every dozen characters, as reasoning reads
        chars[i] = rng.choice("，。；：")
    return "".join(chars)


def _completion(rng: random.Random, pool: str, task: str, gold: str, skill: float) -> str:
    start = rng.randrange(len(pool) - 400)
    think = pool[start : start + rng.randint(100, 400)]
    kinds = ["correct", "wrong", "invalid", "no_think", "bad_json", "plain"]
    kind = rng.choices(kinds, weights=[100 * skill, 70 * (1 - skill), 5, 8, 9, 8])[0]
    if kind == "plain":
        return think
    label = gold if kind in ("correct", "no_think") else rng.choice([x for x in prompt.TASK_LABELS[task] if x != gold])
    value: object = prompt.answer_value(task, label) if kind != "invalid" else "不确定"
    obj = {prompt.LABEL_FIELD[task]: value, "reason": think[:30], "confidence": round(rng.random(), 2)}
    body = json.dumps(obj, ensure_ascii=False)
    if kind == "bad_json":
        body = body[: len(body) // 2]
    if rng.random() < 0.5:
        body = f"```json\n{body}\n```"
    head = "" if kind == "no_think" else f"<think>{think}</think>\n"
    return f"{head}<answer>{body}</answer>"


def _prompt_rows(rng: random.Random, prompts: int):
    """Prompt rows as ``safe_qaq.prepare`` writes them: per call, rounds scene → fraud → fraud type."""
    call = 0
    while True:
        call += 1
        scene, fraud = rng.choice(prompt.SCENES), rng.random() < 0.5
        label = prompt.FRAUD if fraud else prompt.NORMAL
        golds = [("scene", scene), ("fraud", label)] + (
            [("fraud_type", rng.choice(prompt.FRAUD_TYPES))] if fraud else []
        )
        n_audios = 2 if rng.random() < 0.25 else 1  # long calls come as 30 s chunks
        audios = [f"/data/teleantifraud/audio/call_{call:06d}_{k}.flac" for k in range(n_audios)]
        history: list[tuple[str, str]] = []
        for task, gold in golds:
            yield {
                "messages": prompt.build_messages(task, n_audios=n_audios, history=history),
                "audios": audios,
                "answers": gold,
                "conversation_stage": prompt.COMPLETE,
                "task": task,
                "call_id": f"call_{call:06d}",
            }
            prompts -= 1
            if prompts == 0:
                return
            history.append((task, prompt.format_answer(task, gold)))


def write_samples(path: Path, prompts: int, n: int, seed: int) -> int:
    """Stream ``prompts × n`` sample.py lines to ``path``; returns its size in bytes."""
    rng = random.Random(seed)
    pool = _text_pool(rng)
    with open(path, "w", encoding="utf-8") as sink:
        for index, row in enumerate(_prompt_rows(rng, prompts)):
            pid = prompt_id(row)
            skill = rng.choice([0.0, 0.1, 0.3, 0.6, 0.9])  # how often this prompt is answered right
            sink.write(
                "".join(
                    dumps(
                        {
                            **row,
                            "prompt_index": index,
                            "prompt_id": pid,
                            "sample_index": k,
                            "completion": _completion(rng, pool, row["task"], row["answers"], skill),
                        }
                    )
                    for k in range(n)
                )
            )
    return path.stat().st_size


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=28_000)
    parser.add_argument("--n", type=int, default=16, help="completions per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where to write (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_process_samples_"))
    work.mkdir(parents=True, exist_ok=True)
    samples, kept, unsolved = work / "samples.jsonl", work / "rsft.jsonl", work / "unsolved.jsonl"
    try:
        start = time.perf_counter()
        size = write_samples(samples, args.prompts, args.n, args.seed)
        lines = args.prompts * args.n
        print(f"wrote {lines:,} completions ({size / 1e6:,.0f} MB) in {time.perf_counter() - start:.1f} s: {samples}")

        command = [sys.executable, "-m", "safe_qaq.process_samples", str(samples)]
        command += ["--output", str(kept), "--unsolved", str(unsolved)]
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        # Max RSS over waited-for children; this is the only child the script starts.
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(result.stdout, end="")
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            raise SystemExit(f"process_samples exited {result.returncode}")

        n_kept, n_unsolved = _count_lines(kept), _count_lines(unsolved)
        if n_kept + n_unsolved != args.prompts:
            raise SystemExit(f"{n_kept} kept + {n_unsolved} unsolved != {args.prompts} prompts")
        print("\n| prompts × n | input | wall | completions/s | peak RSS | kept / unsolved |")
        print("|---|---|---|---|---|---|")
        print(
            f"| {args.prompts:,} × {args.n} | {size / 1e6:,.0f} MB | {wall:.1f} s | {lines / wall:,.0f} | "
            f"{peak_mb:.0f} MB | {n_kept:,} / {n_unsolved:,} |"
        )
        print(f"target peak RSS <= {TARGET_RSS_MB} MB: {'met' if peak_mb <= TARGET_RSS_MB else 'MISSED'}")
    finally:
        if args.keep:
            print(f"kept files in {work}")
        else:
            for path in (samples, kept, unsolved):
                path.unlink(missing_ok=True)
            if not args.workdir:
                work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
