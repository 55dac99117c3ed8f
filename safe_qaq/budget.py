"""The token budget of training rows, checked before a stage starts: nothing is ever silently truncated.

Why: ms-swift's default for GRPO is ``--truncation_strategy left``, which keeps every ``<|AUDIO|>`` token
of a row over ``--max_length`` and cuts the system prompt and the question instead; for multimodal SFT
its lazy dataset silently swaps an over-long row for another. And Qwen2-Audio-7B-Instruct has 8192
positions, so prompt + completion must fit in them. The stage scripts therefore run this first:

* the model's context (``max_position_embeddings``) must hold ``--max-length`` and the vLLM context;
* a row fits when its tokens -- the template's text, one ``<|AUDIO|>`` per audio-encoder frame, the
  answer for SFT rows -- plus ``--completion-tokens`` (GRPO's completion budget) stay within
  ``--max-length``, and it carries at most ``--max-audios`` audios (vLLM's ``limit_mm_per_prompt``);
* rows that fit are written to ``--out``; the others go to ``<out>.over_budget.jsonl`` with the reason,
  and the count is printed. More than ``--max-drop-fraction`` dropped (or nothing kept) stops the stage.

Counting is exact and cheap: the template encodes the text alone (audio is not decoded), and each
audio adds the encoder frames its length gives, read from the file header -- the same arithmetic as
the ``qwen2_audio_expanded`` template.  With ``--cache-dir`` the counts are kept under a key made of the
dataset's bytes, the tokenizer and config files and the code, so a resumed stage, the other nodes of a
multi-node run and a later stage on the same rows reuse them.

Usage::

    python -m safe_qaq.budget --model MODEL --dataset rows.jsonl --out run/budget/rows.jsonl \\
        --max-length 8192 --completion-tokens 2048 --max-audios 8
    # count several sets into the cache with one ms-swift load (the stages then reuse the counts)
    python -m safe_qaq.budget count --model MODEL --cache-dir OUTPUT_ROOT/.budget_cache a.jsonl b.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safe_qaq.jsonl import JsonlError, atomic_file, dumps, iter_jsonl, write_json
from safe_qaq.models import ModelError, _sha256, max_positions, model_fingerprint, resolve_model

FEATURE_RATE = 16000  # Qwen2-Audio's feature extractor: 16 kHz, hop 160, at most 3000 mel frames (30 s)
HOP_LENGTH = 160
MAX_MEL_FRAMES = 3000
COUNTS_VERSION = 1


class BudgetError(Exception):
    """A problem with the inputs that stops the stage (the message says which and why)."""


def audio_tokens(path: str, backbone: Any = None) -> int:
    """Audio tokens the family's template writes for ``path``, from its header (not decoded): for a family whose
    feature extractor cuts (Backbone.max_audio_seconds), what is left -- prepare's chunking keeps every chunk
    within it, so nothing is cut (ms-swift #9113)."""
    import soundfile as sf

    from safe_qaq import backbones

    backbone = backbone or backbones.get(backbones.DEFAULT_FAMILY)
    try:
        info = sf.info(path)
        samples = math.ceil(info.frames * FEATURE_RATE / info.samplerate)
    except RuntimeError:  # a format libsndfile cannot open; librosa (what ms-swift falls back to) can
        if not os.path.isfile(path):
            raise FileNotFoundError(f"missing audio file {path}") from None
        import librosa

        samples = math.ceil(librosa.get_duration(path=path) * FEATURE_RATE)
    return backbone.audio_tokens(samples)


@dataclass
class Counter:
    """Counts a row's tokens with the training template; built once per model."""

    template: Any
    max_position_embeddings: int
    backbone: Any = None

    @classmethod
    def load(cls, model: str) -> Counter:
        from swift.model import get_model_processor
        from swift.template import get_template

        from safe_qaq import backbones

        backbone = backbones.resolve(None, model)  # the recipe has refused a MODEL_FAMILY the config contradicts
        if backbone.template_plugin:  # registers the family's fixed template
            import importlib

            importlib.import_module(backbone.template_plugin.removesuffix(".py").replace("/", "."))
        _, processor = get_model_processor(model, model_type=backbone.model_type, load_model=False)
        template = get_template(processor, template_type=backbone.template)
        template.set_mode("train")
        return cls(template, int(processor.model_info.max_model_len), backbone)

    def tokens(self, row: dict[str, Any]) -> int:
        """Tokens of ``row`` as training encodes it (prompt, and the answer when the row has one)."""
        from swift.template import Template, TemplateInputs

        audios = list(row.get("audios") or [])
        inputs = TemplateInputs.from_dict({"messages": row["messages"], "audios": list(audios)}).chosen
        self.template._preprocess_inputs(inputs)
        # The stock Template._encode: the text with one audio token per audio, without decoding any audio (the
        # Omni templates decode audio in train mode only; their text is the same in vllm mode).
        mode = self.template.mode
        if self.backbone is not None:
            self.template.set_mode(self.backbone.text_count_mode)
        try:
            text_tokens = len(Template._encode(self.template, inputs)["input_ids"])
        finally:
            self.template.set_mode(mode)
        return text_tokens + sum(audio_tokens(path, self.backbone) - 1 for path in audios)


@dataclass
class Summary:
    rows: int = 0
    kept: int = 0
    too_long: int = 0
    too_many_audios: int = 0
    unreadable: int = 0
    longest_kept: int = 0
    limit: int = 0
    dropped_examples: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.too_long + self.too_many_audios + self.unreadable


def _dropped_path(out: Path) -> Path:
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    return Path(f"{stem}.over_budget.jsonl")


def _describe(summary: Summary, args: argparse.Namespace) -> str:
    prompt = f"{summary.limit} tokens" + (
        f" (MAX_LENGTH {args.max_length} - {args.completion_tokens} completion)" if args.completion_tokens else ""
    )
    return (
        f"budget: {summary.rows} rows of {args.dataset}: {summary.kept} kept, {summary.dropped} dropped "
        f"({summary.too_long} over {prompt}, {summary.too_many_audios} with more than {args.max_audios} audios, "
        f"{summary.unreadable} with an unreadable audio); longest kept {summary.longest_kept} tokens -> {args.out}"
    )


def check_context(max_positions: int, max_length: int, vllm_max_model_len: int | None, model: str) -> None:
    for name, value in (("MAX_LENGTH", max_length), ("VLLM_MAX_MODEL_LEN", vllm_max_model_len)):
        if value is not None and value > max_positions:
            raise BudgetError(
                f"{name} {value} is longer than the model's {max_positions} positions "
                f"(max_position_embeddings of {model}); set {name} <= {max_positions}"
            )


def counts_key(dataset: Path, model: str) -> str:
    """What the token counts of ``dataset`` depend on: its bytes, the model's tokenizer and config, the code."""
    from importlib.metadata import version

    here = Path(__file__).parent
    fingerprint = model_fingerprint(model) or {}
    parts = {
        "version": COUNTS_VERSION,
        "dataset_sha256": _sha256(dataset),
        # the tokenizer, not the path or the weights: a merged copy with the same tokenizer counts the same
        "files": fingerprint.get("tokenizer"),
        "positions": fingerprint.get("positions"),
        "ms_swift": version("ms-swift"),  # without importing it: a reuse stays cheap
        "template_plugin": _sha256(here / "qwen2_audio_template.py"),
        "budget": _sha256(Path(__file__)),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def load_counter(model: str) -> Counter:
    try:
        return Counter.load(model)
    except Exception as error:  # ms-swift raises many kinds for a model it cannot resolve
        raise BudgetError(f"cannot load the tokenizer and config of {model}: {error}") from error


def count_rows(dataset: Path, model: str, counter: Counter | None = None) -> list[dict[str, Any]]:
    """Per row: its audios and tokens, or why it could not be counted (ms-swift loaded once)."""
    counter = counter or load_counter(model)
    counts = []
    for line_number, row in iter_jsonl(dataset):
        entry: dict[str, Any] = {
            "row": line_number,
            "audios": len(row.get("audios") or []),
            "call_id": row.get("call_id"),
        }
        try:
            entry["tokens"] = counter.tokens(row)
        except Exception as error:  # soundfile/librosa raise many kinds for a file they cannot read
            entry["error"] = f"unreadable_audio: {error}"
        counts.append(entry)
    return [{"max_position_embeddings": counter.max_position_embeddings}, *counts]


def run(args: argparse.Namespace) -> Summary:
    dataset, out = Path(args.dataset), Path(args.out)
    if not dataset.is_file():
        raise BudgetError(f"{dataset}: no such file")
    limit = args.max_length - args.completion_tokens
    if limit <= 0:
        raise BudgetError(
            f"--completion-tokens {args.completion_tokens} leaves no room in --max-length {args.max_length}"
        )
    try:
        resolve_model(args.model)
    except ModelError as error:
        raise BudgetError(str(error)) from None
    positions = max_positions(args.model)
    if positions is not None:
        check_context(positions, args.max_length, args.vllm_max_model_len, args.model)

    # Token counts are cached by content: a resumed stage, the other nodes, a later stage on the same rows
    # with a merged copy of the same tokenizer, or other budget settings reuse them without loading ms-swift.
    cache = Path(args.cache_dir) / f"{counts_key(dataset, args.model)}.json" if args.cache_dir else None
    reused = cache is not None and cache.is_file()
    if reused:
        header, *counts = json.loads(cache.read_text(encoding="utf-8"))
    else:
        header, *counts = count_rows(dataset, args.model)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache, [header, *counts], indent=None)
    check_context(header["max_position_embeddings"], args.max_length, args.vllm_max_model_len, args.model)

    summary = Summary(limit=limit)
    dropped_path = _dropped_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Renamed into place whole (kept rows last): the other nodes of a multi-node run may write the same files.
    with atomic_file(out) as kept, atomic_file(dropped_path) as drop:
        for (line_number, row), count in zip(iter_jsonl(dataset), counts, strict=True):
            summary.rows += 1
            tokens, audios = count.get("tokens"), count["audios"]
            if audios > args.max_audios:
                reason, summary.too_many_audios = "too_many_audios", summary.too_many_audios + 1
            elif "error" in count:
                reason, summary.unreadable = count["error"], summary.unreadable + 1
            elif tokens > limit:
                reason, summary.too_long = "too_long", summary.too_long + 1
            else:
                summary.kept += 1
                summary.longest_kept = max(summary.longest_kept, tokens)
                kept.write(dumps(row))
                continue
            record = {"row": line_number, "reason": reason, "tokens": tokens, "limit": limit, "audios": audios}
            record["call_id"] = row.get("call_id")
            drop.write(dumps(record))
            if len(summary.dropped_examples) < 5:
                summary.dropped_examples.append(f"line {line_number}: {reason} ({tokens} tokens, {audios} audios)")
    print(_describe(summary, args) + (" (token counts reused)" if reused else ""))
    for example in summary.dropped_examples:
        print(f"  dropped {example}")
    _check_fraction(summary, args, dropped_path)
    return summary


def _check_fraction(summary: Summary, args: argparse.Namespace, dropped_path: Path) -> None:
    if summary.kept == 0:
        raise BudgetError(f"no row of {args.dataset} fits the budget (listed in {dropped_path})")
    if summary.dropped > args.max_drop_fraction * summary.rows:
        raise BudgetError(
            f"{summary.dropped} of {summary.rows} rows of {args.dataset} are over budget, more than "
            f"--max-drop-fraction {args.max_drop_fraction} (listed in {dropped_path}); shorten the calls "
            "(prepare --max-duration), lower MAX_COMPLETION_LENGTH, or raise MAX_DROP_FRACTION"
        )


def count_into_cache(model: str, cache_dir: Path, datasets: list[Path]) -> list[tuple[Path, int, bool]]:
    """Each dataset's token counts into the cache (one ms-swift load for all); (dataset, rows, already cached)."""
    try:
        resolve_model(model)
    except ModelError as error:
        raise BudgetError(str(error)) from None
    missing = [str(d) for d in datasets if not d.is_file()]
    if missing:
        raise BudgetError(f"no such file: {', '.join(missing)}")
    counter, done = None, []
    for dataset in datasets:
        cache = cache_dir / f"{counts_key(dataset, model)}.json"
        if cache.is_file():
            done.append((dataset, len(json.loads(cache.read_text(encoding="utf-8"))) - 1, True))
            continue
        counter = counter or load_counter(model)
        counts = count_rows(dataset, model, counter)
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, counts, indent=None)
        done.append((dataset, len(counts) - 1, False))
    return done


def count_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.budget count", description=count_into_cache.__doc__)
    parser.add_argument("--model", required=True, help="local model folder (its tokenizer and config)")
    parser.add_argument("--cache-dir", required=True, help="where the stages' budget checks look for counts")
    parser.add_argument("datasets", nargs="+", type=Path, help="row files (ms-swift jsonl)")
    args = parser.parse_args(argv)
    try:
        done = count_into_cache(args.model, Path(args.cache_dir), args.datasets)
    except (BudgetError, JsonlError) as error:
        print(f"budget: {error}", file=sys.stderr)
        return 1
    for dataset, rows, cached in done:
        print(f"budget: {rows} rows of {dataset} counted{' before (cached)' if cached else ''} -> {args.cache_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["count"]:
        return count_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local model folder (its tokenizer and config)")
    parser.add_argument("--dataset", required=True, help="training rows (ms-swift jsonl)")
    parser.add_argument("--out", required=True, help="where the rows that fit are written")
    parser.add_argument("--max-length", type=int, required=True, help="prompt + completion tokens (MAX_LENGTH)")
    parser.add_argument(
        "--completion-tokens", type=int, default=0, help="tokens reserved for generation (GRPO); 0 for SFT rows"
    )
    parser.add_argument("--max-audios", type=int, required=True, help="most <audio> entries per row")
    parser.add_argument("--vllm-max-model-len", type=int, help="vLLM context, checked against the model's too")
    parser.add_argument("--max-drop-fraction", type=float, default=0.05, help="stop when more rows than this drop")
    parser.add_argument("--cache-dir", help="token counts kept here by content (dataset, tokenizer, code) for reuse")
    args = parser.parse_args(argv)
    try:
        run(args)
    except BudgetError as error:
        print(f"budget: {error}", file=sys.stderr)
        return 1
    except JsonlError as error:
        print(f"budget: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
