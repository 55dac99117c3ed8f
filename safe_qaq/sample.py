"""Rejection sampling, step 1: N completions per prompt, written as JSONL, resumable after any kill.

    python -m safe_qaq.sample --model MODEL_DIR --input data/prepared/offline_train.jsonl \\
        --output outputs/samples/samples.jsonl --n 16 --temperature 0.8 --top-p 0.95 --top-k 50

Each output line is one completion: every column of the prompt row (``messages``, ``audios``,
``answers``, ``conversation_stage``, ``task``, ``call_id``, ...) plus ``prompt_index``,
``prompt_id``, ``sample_index`` and ``completion``.  The N lines of a prompt are written
together, in input order, so the file is a sequence of complete groups.

Resuming: a rerun with the same settings reads the file, cuts it back to the end of the last
complete group (a torn line or a half-written group from a kill is removed) and generates
only the prompts that are missing.  A run with different settings refuses to mix into an
existing file (``--overwrite`` starts afresh).  Settings are kept beside the output in
``<output>.meta.json``.

Sharding for several GPUs: ``--num-shards K --shard-index I`` takes prompts ``I, I+K, ...``;
run one process per GPU with its own ``--output`` and give all files to ``process_samples``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safe_qaq.jsonl import dumps, iter_jsonl

META_SUFFIX = ".meta.json"


def prompt_id(row: dict[str, Any]) -> str:
    """Stable id of a prompt: its messages and audios (not its position, which shards change)."""
    key = json.dumps([row.get("messages"), row.get("audios")], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def _shard(rows: Iterator[tuple[int, dict[str, Any]]], index: int, count: int):
    for position, (line, row) in enumerate(rows):
        if position % count == index:
            if "messages" not in row:
                raise ValueError(f"line {line}: prompt row has no 'messages'")
            yield position, row


def recover(output: Path, n: int) -> tuple[int, set[int]]:
    """Cut ``output`` back to its last complete group; return (groups kept, prompt indices done)."""
    if not output.exists():
        return 0, set()
    done: set[int] = set()
    keep_bytes = offset = 0
    group_index, group_samples = None, set()
    with open(output, "rb") as handle:
        for raw in handle:
            offset += len(raw)
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("torn line")
                record = json.loads(raw)
                index, sample = int(record["prompt_index"]), int(record["sample_index"])
            except (ValueError, KeyError, TypeError):
                break  # everything from here on is a kill's leftovers
            if index != group_index:
                group_index, group_samples = index, set()
            if sample in group_samples or not 0 <= sample < n:
                break  # not something this sampler writes: keep only what precedes it
            group_samples.add(sample)
            if len(group_samples) == n:
                done.add(index)
                keep_bytes = offset
    if keep_bytes != output.stat().st_size:
        with open(output, "r+b") as handle:
            handle.truncate(keep_bytes)
    return len(done), done


def model_fingerprint(model: str) -> list[list[Any]] | None:
    """Names, sizes and mtimes of a local model's weight files: a retrained model is a different model."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    return [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(folder.iterdir())
        if f.suffix in (".safetensors", ".bin")
    ]


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "model_weights": model_fingerprint(args.model),
        "adapters": args.adapters,
        "input": str(Path(args.input).resolve()),
        "n": args.n,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "num_shards": args.num_shards,
        "shard_index": args.shard_index,
    }


def _check_settings(output: Path, settings: dict[str, Any], overwrite: bool) -> None:
    meta = Path(str(output) + META_SUFFIX)
    if overwrite:
        output.unlink(missing_ok=True)
    elif output.exists() and output.stat().st_size > 0:
        previous = json.loads(meta.read_text()) if meta.exists() else None
        if previous != settings:
            changed = sorted(k for k in settings if previous is None or previous.get(k) != settings[k])
            raise SystemExit(
                f"{output} was written with other settings ({', '.join(changed)} differ); "
                "resume with the same ones or pass --overwrite"
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(settings, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="N completions per prompt for rejection sampling (resumable).")
    parser.add_argument("--model", required=True, help="model dir (merged checkpoint) or served model name")
    parser.add_argument("--adapters", nargs="*", default=[], help="LoRA adapter dirs applied on load")
    parser.add_argument("--backend", default="pt", choices=("pt", "vllm", "openai"))
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint for --backend openai")
    parser.add_argument("--input", required=True, help="prompt rows (ms-swift jsonl)")
    parser.add_argument("--output", required=True, help="completions jsonl (appended to when resuming)")
    parser.add_argument("--n", type=int, default=16, help="completions per prompt")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument(
        "--seed", type=int, default=0, help="base seed (an engine call uses seed + its first prompt index)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per engine call")
    parser.add_argument("--limit", type=int, help="only the first LIMIT prompts of this shard (smoke runs)")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--shard-index", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output")
    args = parser.parse_args(argv)
    if not 0 <= args.shard_index < args.num_shards:
        parser.error("--shard-index must be in [0, --num-shards)")
    if args.n < 1:
        parser.error("--n must be >= 1")

    from tqdm import tqdm

    output = Path(args.output)
    settings = _settings(args)
    settings["limit"] = args.limit
    _check_settings(output, settings, args.overwrite)
    kept, done = recover(output, args.n)

    prompts = list(_shard(iter_jsonl(args.input), args.shard_index, args.num_shards))
    if args.limit is not None:
        prompts = prompts[: args.limit]
    todo = [(index, row) for index, row in prompts if index not in done]
    print(f"{len(prompts)} prompts, {kept} already sampled, {len(todo)} to go ({args.n} completions each)")
    if not todo:
        return 0

    from safe_qaq.engine import make_engine

    engine = make_engine(args.model, adapters=args.adapters, backend=args.backend, base_url=args.base_url)
    with open(output, "a", encoding="utf-8") as sink, tqdm(total=len(prompts), initial=kept, unit="prompt") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            texts = engine.generate(
                [row for _, row in batch],
                n=args.n,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=args.top_k,
                max_tokens=args.max_tokens,
                seed=args.seed + batch[0][0],
            )
            for (index, row), completions in zip(batch, texts, strict=True):
                if len(completions) != args.n:
                    raise RuntimeError(f"prompt {index}: engine returned {len(completions)} of {args.n} completions")
                pid = prompt_id(row)
                group = "".join(
                    dumps({**row, "prompt_index": index, "prompt_id": pid, "sample_index": k, "completion": text})
                    for k, text in enumerate(completions)
                )
                # One write per group, flushed to disk: a kill leaves at most one partial group at the end.
                sink.write(group)
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(1)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
