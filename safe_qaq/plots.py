"""Pictures: confusion matrices, live-call timelines and curves, training curves.

CLI::

    python -m safe_qaq.plots curves RUN_DIR [--out curves.png]

reads every ms-swift ``logging.jsonl`` under RUN_DIR (``swift sft``/``swift rlhf`` write
one per ``vN-...`` output folder) and writes ``curves.png`` beside each: loss, KL, the total
reward, each reward function's mean (± std), completion lengths, and any other
``rewards/`` or ``completions/`` key the installed ms-swift logs.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt
import numpy as np

from safe_qaq.trainlog import moves_table, read_log, series, stage_moves

# Chinese labels (scenes, fraud types) need a CJK font; use one when the system has it,
# otherwise matplotlib draws boxes and we fall back to the label's index in prompt.py.
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC")


def _cjk_font() -> str | None:
    from matplotlib import font_manager

    available = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in _CJK_FONTS if name in available), None)


def _has_cjk(texts: Sequence[str]) -> bool:
    return any(re.search("[\u3000-\u9fff]", t) for t in texts)


def _tick_labels(labels: Sequence[str], task: str) -> tuple[list[str], str]:
    """Tick texts and an axis note.  Without a CJK font a Chinese label is drawn as its index
    in prompt.py's label tuple (stable across runs); metrics.md carries the names."""
    from prompt import TASK_LABELS

    if not _has_cjk(labels):
        return list(labels), ""
    font = _cjk_font()
    if font:
        plt.rcParams["font.sans-serif"] = [font, *plt.rcParams["font.sans-serif"]]
        return list(labels), ""
    canonical = TASK_LABELS.get(task, ())
    ticks = [f"#{canonical.index(x)}" if x in canonical else x for x in labels]
    return ticks, f" (#i = prompt.TASK_LABELS['{task}'][i])"


# ---------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------


def confusion_png(task_metrics: dict, path: str | Path, title: str | None = None) -> Path:
    """Confusion matrix of one task (rows gold, columns predicted + the no-label column)."""
    conf = task_metrics["confusion"]
    matrix = np.asarray(conf["matrix"], dtype=float)
    rows, cols = conf["rows"], conf["columns"]
    row_ticks, note = _tick_labels(rows, task_metrics["task"])
    col_ticks, _ = _tick_labels(cols, task_metrics["task"])
    size = max(4.0, 0.7 * len(cols) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # row-normalised: recall per gold class
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j, i, f"{int(matrix[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black"
            )
    ax.set_xticks(range(len(cols)), col_ticks, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), row_ticks)
    ax.set_xlabel("predicted" + note, fontsize=8)
    ax.set_ylabel("gold")
    ax.set_title(title or f"{task_metrics['task']}: weighted F1 {100 * task_metrics['weighted_f1']:.1f}")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# Live calls
# ---------------------------------------------------------------------------

_LABEL_COLOURS = {"fraud": "tab:red", "normal": "tab:green", None: "tab:gray"}


def timeline_png(result: dict, path: str | Path, threshold: float | None = None) -> Path:
    """One live call: confidence of each round's answer over the audio heard, and the decision."""
    steps = result["steps"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for step in steps:
        colour = _LABEL_COLOURS.get(step["label"], "tab:blue")
        conf = step["confidence"] if step["confidence"] is not None else 0.0
        ax.scatter(step["end_s"], conf, color=colour, s=40, zorder=3)
        if step["label"] is not None:
            text = _tick_labels([step["label"]], result["task"])[0][0]
        else:  # an explicit null asks for more audio; anything else is a failed answer
            text = "null" if step.get("null", True) else "no label"
        ax.annotate(text, (step["end_s"], conf), fontsize=7)
    ax.plot([s["end_s"] for s in steps], [s["confidence"] or 0.0 for s in steps], color="lightgray", zorder=1)
    if threshold is not None:
        ax.axhline(threshold, color="black", linestyle=":", linewidth=1, label=f"threshold {threshold:g}")
    if result.get("decision_time_s") is not None:
        colour = "tab:red" if result.get("alarm") else "tab:green"
        decision = _tick_labels([result["decision_label"]], result["task"])[0][0]
        ax.axvline(result["decision_time_s"], color=colour, linewidth=2, label=f"decision: {decision}")
    ax.set_xlim(0, max(result.get("duration_s") or 0, *(s["end_s"] for s in steps)) * 1.05)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("seconds of audio heard")
    ax.set_ylabel("confidence")
    ax.set_title(f"live call {result.get('call_id') or ''} ({result['task']})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def live_curve_png(live_metrics: dict, path: str | Path) -> Path:
    """Over a test set: what has been decided (and how well) by each fraction of the call heard."""
    rows = live_metrics["by_fraction"]
    x = [r["fraction"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    lines_ = [("decided_rate", "decided"), ("accuracy", "correct decision")]
    lines_ += [("fraud_recall", "fraud recall"), ("false_alarm_rate", "false-alarm rate")]
    for key, name in lines_:
        if key in rows[0]:
            ax.plot(x, [r[key] for r in rows], marker="o", label=name)
    ax.set_xlabel("fraction of the call heard")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"live decisions ({live_metrics['task']}, n={live_metrics['n_calls']})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------


def curve_panels(keys: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Which keys go in which panel: (title, keys), from whatever keys the log has.

    ``rewards/<name>/mean`` gets a panel per reward function (its ``/std`` drawn as a band);
    completion lengths share a panel; any other ``rewards/`` / ``completions/`` key gets its own.
    """
    keys = list(dict.fromkeys(keys))
    panels: list[tuple[str, list[str]]] = []
    used: set[str] = set()

    def add(title: str, members: list[str]) -> None:
        members = [k for k in members if k in keys and k not in used]
        if members:
            panels.append((title, members))
            used.update(members)

    for base in ("loss", "kl", "reward"):
        add(base, [base, f"eval_{base}"])
    for key in keys:
        match = re.fullmatch(r"(eval_)?rewards/(.+)/mean", key)
        if match and key not in used:
            add(f"reward: {match.group(2)}", [key])
            used.add(key.removesuffix("/mean") + "/std")
    add("completion length", [k for k in keys if re.fullmatch(r"(eval_)?completions/\w*length", k)])
    for key in keys:
        if key not in used and re.match(r"(eval_)?(rewards?|completions?)/", key) and not key.endswith("/std"):
            add(key, [key])
    add("reward std", [k for k in keys if k in ("reward_std", "frac_reward_zero_std")])
    add("token accuracy", [k for k in keys if k in ("token_acc", "eval_token_acc")])
    return panels


def curves_png(log_path: str | Path, out: str | Path) -> Path:
    """Plot every training curve of one ``logging.jsonl``."""
    records = read_log(log_path)
    if not records:
        raise ValueError(f"{log_path}: no training log records")
    keys = [k for rec in records for k in rec]
    panels = [(t, ks) for t, ks in curve_panels(keys) if any(series(records, k)[0] for k in ks)]
    if not panels:
        raise ValueError(f"{log_path}: no loss, KL, reward or completion keys to plot")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, (title, members) in zip(axes.flat, panels, strict=False):
        for key in members:
            xs, ys = series(records, key)
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=key)
            std_key = key.removesuffix("/mean") + "/std" if key.endswith("/mean") else None
            if std_key:
                sx, sd = series(records, std_key)
                if sx == xs:
                    lo = np.asarray(ys) - np.asarray(sd)
                    hi = np.asarray(ys) + np.asarray(sd)
                    ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(members) > 1:
            ax.legend(fontsize=6)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.suptitle(str(log_path), fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Curves for every ``logging.jsonl`` under a run directory (``curves.png`` beside each)."""
    run_dir = Path(run_dir)
    logs = [run_dir] if run_dir.is_file() else sorted(run_dir.rglob("logging.jsonl"))
    if not logs:
        raise FileNotFoundError(f"no logging.jsonl under {run_dir}")
    if out is not None and len(logs) > 1:
        raise ValueError(f"--out names one file but {run_dir} holds {len(logs)} logs; omit --out")
    return [curves_png(log, out if out is not None else log.parent / "curves.png") for log in logs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.plots", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    curves = sub.add_parser("curves", help="plot ms-swift training curves from logging.jsonl")
    curves.add_argument("run_dirs", nargs="+", metavar="run_dir", help="run output directory (or a logging.jsonl file)")
    where = curves.add_mutually_exclusive_group()
    where.add_argument("--out", help="PNG path, for one run (default: curves.png beside each logging.jsonl)")
    where.add_argument("--out-dir", help="write each run's curves here as RUN_curves.png (RUN: the run folder's name)")
    moves = sub.add_parser("moves", help="each stage's target metric, first vs last part of its steps")
    moves.add_argument("output_root", help="the stage scripts' OUTPUT_ROOT")
    args = parser.parse_args(argv)
    if args.command == "moves":
        rows = stage_moves(args.output_root)
        if not rows:
            print(f"error: no stage training logs under {args.output_root}", file=sys.stderr)
            return 1
        print(moves_table(rows))
        return 0
    if args.out and len(args.run_dirs) > 1:
        parser.error("--out names one file; with several runs use --out-dir")
    paths = []
    try:
        for run_dir in args.run_dirs:
            out = Path(args.out_dir) / f"{Path(run_dir).name}_curves.png" if args.out_dir else args.out
            paths += plot_run(run_dir, out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
