"""Transcript floor: char n-gram TF-IDF + logistic regression on the calls' transcripts.

Why: an audio model that reasons for hundreds of tokens should beat a bag of character
n-grams read off the transcript; if it does not, the audio pipeline is not earning its
cost.  The floor is trained on the train split's transcripts and scored on the test split
with the same metrics as the model (:mod:`safe_qaq.metrics`), one classifier per task:
scene (all calls), fraud (all calls), fraud type (fraud calls only, as the model is asked).

CLI::

    python -m safe_qaq.floor --calls-train data/prepared/calls_train.jsonl \\
        --calls-test data/prepared/calls_test.jsonl [--out outputs/floor]

Nothing is persisted but the metrics (JSON/Markdown/PNG): the model trains in a second.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

from prompt import TASKS
from safe_qaq.calls import Call, load_calls
from safe_qaq.jsonl import write_json
from safe_qaq.metrics import Sample, markdown_table, per_class_markdown, report, sample_from_label

SYSTEM = "floor: char n-gram TF-IDF + LR (transcript)"


def transcript(call: Call) -> str:
    """The call's words in order (speaker names left out: they would leak the synthesis template)."""
    return "\n".join(str(turn.get("text", "")) for turn in call.turns or [])


class _Constant:
    """Predicts the one class seen in training (LogisticRegression needs two)."""

    def __init__(self, label: str):
        self.label = label

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.label] * len(texts)


def fit(texts: Sequence[str], labels: Sequence[str], *, c: float = 10.0, seed: int = 0):
    """A char 1–3-gram TF-IDF + logistic-regression pipeline (deterministic)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(set(labels)) < 2:
        return _Constant(Counter(labels).most_common(1)[0][0])
    # char n-grams, not words: Chinese has no spaces, and 1-3 chars cover most words
    pipe = make_pipeline(
        TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=1),
        LogisticRegression(C=c, max_iter=2000, random_state=seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny training sets
        pipe.fit(list(texts), list(labels))
    return pipe


def floor_samples(
    train_calls: Sequence[Call],
    test_calls: Sequence[Call],
    *,
    keep: Collection[tuple[str, str]] | None = None,
    c: float = 10.0,
) -> list[Sample]:
    """Train per task on ``train_calls``, score ``test_calls``.

    ``keep`` -- (call_id, task) pairs to score, so the floor is measured on exactly the
    rows a model was evaluated on (e.g. after ``--limit``); None scores every test call.
    """
    samples: list[Sample] = []
    for task in TASKS:
        train = [(transcript(c_), g) for c_ in train_calls if (g := c_.gold(task)) is not None]
        test = [
            (c_, g)
            for c_ in test_calls
            if (g := c_.gold(task)) is not None and (keep is None or (c_.call_id, task) in keep)
        ]
        if not train or not test:
            continue
        model = fit([t for t, _ in train], [g for _, g in train], c=c)
        preds = model.predict([transcript(c_) for c_, _ in test])
        samples += [
            sample_from_label(task, gold, str(pred), call_id=call.call_id)
            for (call, gold), pred in zip(test, preds, strict=True)
        ]
    return samples


def floor_report(calls_train: str | Path, calls_test: str | Path, *, keep=None, c: float = 10.0) -> dict:
    """The floor's metric report (same shape as a model's) from two call files."""
    samples = floor_samples(load_calls(calls_train), load_calls(calls_test), keep=keep, c=c)
    return report(samples, SYSTEM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls-train", required=True, help="train-split calls (metadata format jsonl)")
    parser.add_argument("--calls-test", required=True, help="test-split calls (metadata format jsonl)")
    parser.add_argument("--out", help="directory for metrics.json, metrics.md and confusion PNGs")
    parser.add_argument("--C", type=float, default=10.0, dest="c", help="inverse regularisation strength")
    args = parser.parse_args(argv)
    try:
        rep = floor_report(args.calls_train, args.calls_test, c=args.c)
    except (OSError, ValueError) as exc:  # a missing file, or a row naming its file and line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not rep["tasks"]:
        print("error: no test call carries a known label", file=sys.stderr)
        return 1
    table = markdown_table([rep])
    print(table)
    if args.out:
        from safe_qaq.plots import confusion_png

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", rep)
        (out / "metrics.md").write_text(table + "\n\n" + per_class_markdown(rep), encoding="utf-8")
        for task, m in rep["tasks"].items():
            confusion_png(m, out / f"confusion_{task}.png", title=f"floor — {task}")
        print(f"\nwrote {out}/metrics.json, metrics.md, confusion_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
