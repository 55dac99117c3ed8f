"""Live-call inference: decide on a call while it is still going (docs/method.md#live-inference).

The call is fed to the model as growing prefixes -- at each turn end when the turn times
are known, else at the pauses a voice-activity detector finds and every ``--hop`` seconds
when none came (as the service does for a live stream; :mod:`safe_qaq.stream` is the loop
both share) -- with the real-time prompt.  A prefix whose
answer carries a label (not ``null``) with ``confidence >= --threshold`` is the decision;
a fraud decision raises the alarm.  A ``null``, or a label below the threshold, means
"feed more audio".  A call heard to the end without such an answer stays undecided.

By default each prefix is asked the way the real-time data asks it: the rounds before the
target task (scene, then fraud, ...) come first and their answers are carried in the
conversation (``--no-history`` asks the target task alone).

One call::

    python -m safe_qaq.live call --model MODEL [--adapters CKPT] --audio call.wav [--plot timeline.png]
    python -m safe_qaq.live call --model MODEL --calls data/calls/metadata.jsonl --call-id ID

A test set (decision time, rounds, decision accuracy / F1, fraud recall and false-alarm
rate by fraction of the call heard)::

    python -m safe_qaq.live eval --model MODEL --calls data/prepared/calls_test.jsonl --out outputs/live

``--backend openai --base-url URL`` sends the requests to ``swift deploy`` / ``vllm serve``.
Prefixes are cut from the audio (16 kHz mono), split into chunks of at most ``--chunk-s``
seconds (Qwen2-Audio's feature extractor keeps 30 s per audio) as data preparation splits
them, and cached as FLAC files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prompt import FRAUD, NORMAL, TASKS
from safe_qaq.audio import (
    MAX_AUDIO_SECONDS,
    MAX_AUDIOS_PER_ROW,
    SAMPLE_RATE,
    AudioError,
    chunk_dir,
    cut_chunks,
    decode,
    samples_to_ms,
)
from safe_qaq.calls import load_calls, plan_chunks, turn_boundaries_ms
from safe_qaq.engine import (
    GREEDY,
    Sampling,
    add_engine_arguments,
    engine_from_args,
    engine_identity,
    sampling_from_args,
)
from safe_qaq.jsonl import (
    ResumeError,
    append_records,
    check_settings,
    file_fingerprint,
    os_error_message,
    print_error,
    read_output,
)
from safe_qaq.metrics import sample_from_label, task_metrics
from safe_qaq.stream import (
    DEFAULT_PAUSE_S,
    CallLog,
    Prefix,
    answer_prefixes,
    call_result,
    confidence_of,
    is_alarm,
    make_step,
    plan_file,
    read_step,
    round_chain,
)

__all__ = ["confidence_of", "is_alarm", "read_step"]  # the decision rule, re-exported from safe_qaq.stream

DEFAULT_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))


# ---------------------------------------------------------------------------
# Audio prefixes
# ---------------------------------------------------------------------------


class PrefixCutter:
    """Cuts ``[0, end)`` of a call into chunks of at most ``chunk_s`` under ``cache_dir``.

    The pieces are planned (:func:`safe_qaq.calls.plan_chunks`, splitting in pauses between
    turns) and cut (:func:`safe_qaq.audio.cut_chunks`) by the functions data preparation uses,
    so a prefix is sent as exactly the chunks training saw; a whole call that fits one chunk is
    sent as its original file, as in training.  Every prefix of a call shares its leading
    chunks, which are written once and reused across runs.
    """

    def __init__(self, cache_dir: str | Path, chunk_s: float = MAX_AUDIO_SECONDS):
        if chunk_s <= 0:
            raise ValueError("chunk_s must be positive")
        self.cache_dir = Path(cache_dir)
        self.chunk_ms = round(chunk_s * 1000)
        self._audio: dict[str, np.ndarray] = {}
        self._made: dict[str, str] = {}  # chunk files this run already holds

    def audio(self, path: str | Path) -> np.ndarray:
        key = str(Path(path).resolve())
        if key not in self._audio:
            if len(self._audio) >= 64:  # a test set is walked in lockstep; keep memory bounded
                self._audio.pop(next(iter(self._audio)))
            self._audio[key] = decode(path)
        return self._audio[key]

    def duration(self, path: str | Path) -> float:
        return len(self.audio(path)) / SAMPLE_RATE

    def duration_ms(self, path: str | Path) -> int:
        return samples_to_ms(len(self.audio(path)))

    def chunks(self, end_ms: int, split_points_ms: Sequence[int] = ()) -> list[tuple[int, int]]:
        """The ``[start, end)`` ms pieces the prefix ``[0, end_ms)`` is sent as."""
        return plan_chunks(end_ms, split_points_ms, chunk_ms=self.chunk_ms)

    def prefix_ms(self, path: str | Path, end_ms: int, split_points_ms: Sequence[int] = ()) -> list[str]:
        wav = self.audio(path)
        end_ms = max(1, min(end_ms, samples_to_ms(len(wav))))
        folder = chunk_dir(self.cache_dir, Path(path).stem, path)
        return cut_chunks(wav, self.chunks(end_ms, split_points_ms), folder, source=path, made=self._made)

    def prefix(self, path: str | Path, end_s: float, split_points_s: Sequence[float] = ()) -> list[str]:
        return self.prefix_ms(path, round(end_s * 1000), [round(p * 1000) for p in split_points_s])


def _prefix_ends_ms(duration_ms: int, *, hop_s: float, boundaries_ms: Sequence[int] | None) -> list[int]:
    if duration_ms <= 0:
        raise ValueError(f"duration must be positive, got {duration_ms} ms")
    if boundaries_ms is not None:
        ends = list(boundaries_ms)
    else:
        hop_ms = round(hop_s * 1000)
        if hop_ms <= 0:
            raise ValueError(f"hop must be positive, got {hop_s}")
        ends = [hop_ms * k for k in range(1, math.ceil(duration_ms / hop_ms))]
    return [*sorted({e for e in ends if 0 < e < duration_ms}), duration_ms]


def prefix_ends(duration_s: float, *, hop_s: float = 5.0, turns: Sequence[dict] | None = None) -> list[float]:
    """Where the prefixes end, in seconds; always the whole call last.

    With ``turns``: after each turn, in the pause before the next one (where data preparation
    cuts the real-time training rows); otherwise every ``hop_s`` seconds.
    """
    duration_ms = round(duration_s * 1000)
    boundaries = turn_boundaries_ms(turns, duration_ms) if turns else None
    return [ms / 1000 for ms in _prefix_ends_ms(duration_ms, hop_s=hop_s, boundaries_ms=boundaries)]


# ---------------------------------------------------------------------------
# The decision loop
# ---------------------------------------------------------------------------


@dataclass
class LiveCall:
    """One call to walk through: audio, optional turn times (for turn-end prefixes) and gold label."""

    call_id: str
    audio: str
    turns: list[dict] | None = None
    gold: str | None = None


@dataclass
class _State:
    call: LiveCall
    prefixes: list[Prefix]
    log: CallLog
    next: int = 0
    done: bool = False


def prefix_rule(call: LiveCall, *, use_turns: bool = True, vad: bool = True) -> str:
    """The rule a call's prefixes end by: its turn ends when known, else detected pauses, else every hop."""
    if use_turns and call.turns:
        return "turns"
    return "vad" if vad else "hop"


def _state_of(
    call: LiveCall,
    cutter: PrefixCutter,
    *,
    hop_s: float,
    use_turns: bool,
    vad: bool = True,
    pause_s: float = DEFAULT_PAUSE_S,
    gold: str | None = None,
) -> _State | None:
    """The prefixes to walk for one call, or None (warned about) when its audio cannot be used.

    The planner a stream uses (:class:`safe_qaq.stream.PrefixPlanner`) is fed the whole file.
    Chunks split in the call's pauses between turns, as training's did, also when ``use_turns``
    is off and the prefixes end every ``hop_s`` (the ``vad`` rule splits at the pauses it finds).
    Prefixes needing more than ``MAX_AUDIOS_PER_ROW`` chunks are not sent: no training row holds
    more, and the engines refuse them.
    """
    try:
        samples = cutter.audio(call.audio)
    except AudioError as exc:  # one unreadable file should not sink a test set
        print(f"warning: skipping call {call.call_id}: {exc}", file=sys.stderr)
        return None
    duration_ms = samples_to_ms(len(samples))
    rule = prefix_rule(call, use_turns=use_turns, vad=vad)
    prefixes, capped = plan_file(
        samples,
        rule=rule,
        hop_s=hop_s,
        boundaries_ms=turn_boundaries_ms(call.turns, duration_ms),
        pause_s=pause_s,
        chunk_ms=cutter.chunk_ms,
    )
    if capped is not None:
        heard = f"the first {capped / 1000:.1f} s" if prefixes else "nothing"
        print(
            f"warning: call {call.call_id} ({duration_ms / 1000:.1f} s) needs more than {MAX_AUDIOS_PER_ROW} "
            f"chunks of at most {cutter.chunk_ms / 1000:g} s; sending {heard} of it",
            file=sys.stderr,
        )
        if not prefixes:
            return None
    ends = [p.end_s for p in prefixes]
    return _State(call, prefixes, CallLog(call.call_id, call.audio, call.gold, duration_ms / 1000, ends))


def _result(state: _State, task: str, threshold: float) -> dict:
    return call_result(state.log, task, threshold)


def run_live(
    engine,
    calls: Sequence[LiveCall],
    *,
    task: str = "fraud",
    threshold: float = 0.8,
    hop_s: float = 5.0,
    use_turns: bool = True,
    vad: bool = True,
    pause_s: float = DEFAULT_PAUSE_S,
    history: bool = True,
    max_rounds: int | None = None,
    cache_dir: str | Path = "outputs/live_cache",
    chunk_s: float = MAX_AUDIO_SECONDS,
    batch_size: int = 8,
    sampling: Sampling = GREEDY,
    on_result: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Walk every call through its prefixes until it is decided or heard to the end.

    Calls advance in lockstep -- round k of every undecided call goes to the engine as one
    batch -- so a vLLM engine or a deployment stays busy.  Returns one result per call
    (:func:`safe_qaq.stream.call_result`), in input order, less calls whose audio cannot be read
    (warned about); ``on_result`` sees each as soon as its call finishes.
    """
    from tqdm import tqdm

    chain = round_chain(task, history)
    cutter = PrefixCutter(cache_dir, chunk_s)
    states = []
    for call in calls:
        state = _state_of(call, cutter, hop_s=hop_s, use_turns=use_turns, vad=vad, pause_s=pause_s)
        if state is not None:
            states.append(state)
    bar = tqdm(total=len(states), desc="live", unit="call", disable=not progress)
    active = list(states)
    while active:
        audios = [
            cutter.prefix_ms(s.call.audio, s.prefixes[s.next].end_ms, s.prefixes[s.next].splits_ms) for s in active
        ]
        answered = answer_prefixes(engine, audios, chain, sampling=sampling, batch_size=batch_size)
        for state, (answers, lat) in zip(active, answered, strict=True):
            step = make_step(state.next + 1, state.log.ends[state.next], answers, lat, task, threshold)
            state.log.steps.append(step)
            steps = len(state.log.steps)
            last = state.next + 1 >= len(state.prefixes) or (max_rounds is not None and steps >= max_rounds)
            if step["decided"] or last:
                state.done = True
                if on_result:
                    on_result(_result(state, task, threshold))
                bar.update(1)
            else:
                state.next += 1
        active = [s for s in active if not s.done]
    bar.close()
    return [_result(s, task, threshold) for s in states]


# ---------------------------------------------------------------------------
# Test-set metrics
# ---------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def live_metrics(results: Sequence[dict], fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict:
    """Decision time, rounds, decision accuracy/F1, and what is decided by each fraction of the call heard.

    Undecided calls count as wrong and raise no alarm.  ``by_fraction[f]``: a call counts
    when its decision came after at most ``f`` of its audio (decision time / duration).
    """
    if not results:
        raise ValueError("no live results")
    task = results[0]["task"]
    decided = [r for r in results if r["decided"]]
    times = [r["decision_time_s"] for r in decided]
    heard = {id(r): r["decision_time_s"] / r["duration_s"] for r in decided if r["duration_s"]}
    gold_known = [r for r in results if r["gold"] is not None]
    out: dict = {
        "task": task,
        "n_calls": len(results),
        "threshold": results[0].get("threshold"),
        "decided_rate": len(decided) / len(results),
        "decision_time_s": {"mean": _mean(times), "median": float(np.median(times)) if times else None},
        "decision_fraction_mean": _mean(list(heard.values())),
        "rounds_used_mean": _mean([r["rounds_used"] for r in results]),
        "rounds_to_decision_mean": _mean([r["decision_round"] for r in decided]),
    }
    if gold_known:
        out["accuracy"] = _mean([bool(r["correct"]) for r in gold_known])
        decided_known = [r for r in gold_known if r["decided"]]
        out["accuracy_decided"] = _mean([bool(r["correct"]) for r in decided_known])
        decision = task_metrics([sample_from_label(task, r["gold"], r["decision_label"]) for r in gold_known])
        out["decision"] = decision
        out["weighted_f1"] = decision["weighted_f1"]
    frauds = [r for r in gold_known if r["gold"] == FRAUD] if task == "fraud" else []
    normals = [r for r in gold_known if r["gold"] == NORMAL] if task == "fraud" else []

    def by(rs: Sequence[dict], f: float, want: Callable[[dict], bool]) -> float | None:
        hits = [r["decided"] and heard.get(id(r), math.inf) <= f + 1e-9 and want(r) for r in rs]
        return _mean(hits)

    rows = []
    for f in fractions:
        row = {"fraction": f, "decided_rate": by(results, f, lambda r: True)}
        if gold_known:
            row["accuracy"] = by(gold_known, f, lambda r: bool(r["correct"]))
        if frauds:
            row["fraud_recall"] = by(frauds, f, lambda r: r["alarm"])
        if normals:
            row["false_alarm_rate"] = by(normals, f, lambda r: r["alarm"])
        rows.append(row)
    out["by_fraction"] = rows
    if frauds:
        out["fraud_recall"] = _mean([r["alarm"] for r in frauds])
    if normals:
        out["false_alarm_rate"] = _mean([r["alarm"] for r in normals])
    return out


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.2f}"


def live_markdown(m: dict, system: str = "model") -> str:
    """Summary row and the by-fraction table."""
    lines = [
        "| system | task | calls | decided | decision time s (mean / median) | rounds | acc | weighted F1 "
        "| fraud recall | false alarms |",
        "|" + "---|" * 10,
        "| "
        + " | ".join(
            [
                system,
                m["task"],
                str(m["n_calls"]),
                _fmt(m["decided_rate"], True),
                f"{_fmt(m['decision_time_s']['mean'])} / {_fmt(m['decision_time_s']['median'])}",
                _fmt(m["rounds_used_mean"]),
                _fmt(m.get("accuracy"), True),
                _fmt(m.get("weighted_f1"), True),
                _fmt(m.get("fraud_recall"), True),
                _fmt(m.get("false_alarm_rate"), True),
            ]
        )
        + " |",
        "",
    ]
    keys = [k for k in ("decided_rate", "accuracy", "fraud_recall", "false_alarm_rate") if k in m["by_fraction"][0]]
    lines.append("| fraction heard | " + " | ".join(keys) + " |")
    lines.append("|" + "---|" * (len(keys) + 1))
    for row in m["by_fraction"]:
        lines.append(f"| {row['fraction']:.1f} | " + " | ".join(_fmt(row[k], True) for k in keys) + " |")
    return "\n".join(lines)


def print_timeline(result: dict, file=None) -> None:
    """time, stage, label, confidence per round, then the decision."""
    file = file or sys.stdout  # looked up per call, so redirected/captured stdout works
    print(f"call {result['call_id']} ({result['duration_s']:.1f} s, task {result['task']})", file=file)
    print(f"{'round':>5} {'heard s':>8}  {'stage':<12} {'label':<10} {'conf':>5}", file=file)
    for s in result["steps"]:
        label = s["label"] if s["label"] is not None else ("null" if s.get("null") else "–")
        conf = "–" if s["confidence"] is None else f"{s['confidence']:.2f}"
        mark = (
            "  <- decision" if s["decided"] else ("  (format: " + s["format_error"] + ")" if s["format_error"] else "")
        )
        print(f"{s['round']:>5} {s['end_s']:>8.1f}  {s['stage'] or '–':<12} {label:<10} {conf:>5}{mark}", file=file)
    if result["decided"]:
        alarm = "ALARM: fraud suspected" if result["alarm"] else "no alarm"
        print(
            f"decision after {result['decision_time_s']:.1f} s ({result['decision_round']} rounds): "
            f"{result['decision_label']} -> {alarm}",
            file=file,
        )
    else:
        print(f"no decision after the whole call ({result['rounds_used']} rounds)", file=file)
    if result["gold"] is not None:
        print(f"gold: {result['gold']}", file=file)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def calls_from_file(path: str | Path, task: str) -> list[LiveCall]:
    """LiveCalls of a metadata-format jsonl, less the calls the task does not apply to (types of normal calls)."""
    out = []
    for call in load_calls(path):
        gold = call.gold(task)
        if task == "fraud_type" and gold is None:
            continue
        out.append(LiveCall(call.call_id, call.audio, call.turns, gold))
    return out


def _engine(args):
    try:
        return engine_from_args(args, max_batch_size=args.batch_size)
    except Exception as exc:  # a missing or broken model: one line, not a traceback
        raise RuntimeError(f"cannot load model {args.model!r}: {type(exc).__name__}: {exc}") from None


def _common(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p, defaults=GREEDY)  # greedy: a decision should not depend on the dice
    p.add_argument("--task", choices=TASKS, default="fraud")
    p.add_argument("--threshold", type=float, default=0.8, help="decide at the first non-null label this confident")
    p.add_argument("--hop", type=float, default=5.0, help="seconds between prefixes when turn times are unknown")
    p.add_argument(
        "--no-turns", action="store_true", help="ignore known turn times: cut as for a stream (pauses, else --hop)"
    )
    p.add_argument("--no-vad", action="store_true", help="without turn times, cut every --hop s, not at pauses")
    p.add_argument(
        "--pause", type=float, default=DEFAULT_PAUSE_S, help="seconds of non-speech the detector calls a pause"
    )
    p.add_argument("--no-history", action="store_true", help="ask the target task alone, without the earlier rounds")
    p.add_argument("--max-rounds", type=int, default=None)
    p.add_argument("--chunk-s", type=float, default=MAX_AUDIO_SECONDS, help="longest audio chunk per <audio>")
    p.add_argument("--cache-dir", default=None, help="where prefix WAVs go (default: outputs/live_cache)")
    p.add_argument("--batch-size", type=int, default=8)


def _run_kwargs(args) -> dict:
    """What run_live needs from the options; everything here but batch_size changes the results."""
    return {
        "task": args.task,
        "threshold": args.threshold,
        "hop_s": args.hop,
        "use_turns": not args.no_turns,
        "vad": not args.no_vad,
        "pause_s": args.pause,
        "history": not args.no_history,
        "max_rounds": args.max_rounds,
        "chunk_s": args.chunk_s,
        "batch_size": args.batch_size,
        "sampling": sampling_from_args(args),
    }


def _calls(args) -> list[LiveCall]:
    """The calls of ``--calls`` for the task; a file that is not a calls file is one error line."""
    try:
        calls = calls_from_file(args.calls, args.task)
    except (KeyError, TypeError, AttributeError) as exc:  # a record without the fields a call needs
        raise ValueError(f"{args.calls}: not a calls file ({type(exc).__name__}: {exc})") from None
    seen: set[str] = set()
    for call in calls:
        if not isinstance(call.audio, str) or not call.audio:
            raise ValueError(f"{args.calls}: call {call.call_id} has no audio path")
        if call.call_id in seen:
            raise ValueError(f"{args.calls}: call id {call.call_id!r} appears twice; results are kept by call id")
        seen.add(call.call_id)
    return calls


def cmd_call(args) -> int:
    if args.calls:
        matches = [c for c in _calls(args) if c.call_id == args.call_id]
        if not matches:
            print(f"error: call {args.call_id!r} not in {args.calls}", file=sys.stderr)
            return 1
        call = matches[0]
    else:
        if not Path(args.audio).is_file():
            print(f"error: {args.audio}: no such file", file=sys.stderr)
            return 2
        call = LiveCall(Path(args.audio).stem, args.audio)
    kwargs = _run_kwargs(args)
    results = run_live(_engine(args), [call], cache_dir=args.cache_dir or "outputs/live_cache", **kwargs)
    if not results:
        print(f"error: call {call.call_id}: its audio could not be read (see the warning above)", file=sys.stderr)
        return 1
    result = results[0]
    print_timeline(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    if args.plot:
        from safe_qaq.plots import timeline_png

        timeline_png(result, args.plot, threshold=args.threshold)
    return 0


RESULTS = "live_results.jsonl"


def eval_settings(args) -> dict:
    """What decides ``live_results.jsonl``: the calls file's content, the model, generation and loop settings."""
    run = _run_kwargs(args)
    sampling = run.pop("sampling")
    run.pop("batch_size")
    return {
        "tool": "safe_qaq.live eval",
        "input": file_fingerprint(args.calls),
        "engine": engine_identity(args),
        "sampling": asdict(sampling),
        "live": run,
    }


def cmd_eval(args) -> int:
    """Walk a test set of calls, resumably (the contract of :mod:`safe_qaq.jsonl`), then score it."""
    out = Path(args.out)
    results_path = out / RESULTS
    calls = _calls(args)[: args.limit]
    if not calls:
        raise ValueError(f"{args.calls}: no calls to walk for task {args.task} (an empty file, or --limit 0?)")
    check_settings(results_path, eval_settings(args), overwrite=args.overwrite)
    done: dict[str, dict] = {}
    for number, rec in enumerate(read_output(results_path), start=1):
        if not isinstance(rec.get("call_id"), str):
            raise ResumeError(f"{results_path}: record {number} has no call_id; fix the file or pass --overwrite")
        done[rec["call_id"]] = rec  # results for calls past a smaller --limit stay in the file, unused
    todo = [c for c in calls if c.call_id not in done]
    print(f"{len(calls)} calls, {len(calls) - len(todo)} already done, {len(todo)} to go")
    if todo:
        engine = _engine(args)
        with open(results_path, "a", encoding="utf-8") as f:

            def save(rec: dict) -> None:
                done[rec["call_id"]] = rec
                append_records(f, [rec])  # a killed run keeps every finished call

            try:
                run_live(
                    engine,
                    todo,
                    cache_dir=args.cache_dir or out / "prefixes",
                    on_result=save,
                    progress=not args.quiet,
                    **_run_kwargs(args),
                )
            except Exception as exc:  # finished calls are kept; a rerun resumes
                raise RuntimeError(f"generation failed: {type(exc).__name__}: {exc}") from None
    results = [done[c.call_id] for c in calls if c.call_id in done]
    missing = len(calls) - len(results)
    if not results:
        raise ValueError(f"{args.calls}: no call could be walked (unreadable audio, see the warnings above)")
    metrics = live_metrics(results)
    (out / "live_metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
    table = live_markdown(metrics, args.name or Path(args.model.rstrip("/")).name)
    (out / "live_metrics.md").write_text(table + "\n", encoding="utf-8")
    from safe_qaq.plots import live_curve_png

    live_curve_png(metrics, out / "live_curve.png")
    print(table)
    print(f"\nwrote {out}/live_results.jsonl, live_metrics.json, live_metrics.md, live_curve.png")
    if missing:
        lost = f"{missing} of {len(calls)} calls have no result (warned above)"
        print(f"error: {lost}; they are not in the metrics, and a rerun retries them", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.live", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    call = sub.add_parser("call", help="walk one call through its prefixes and print the timeline")
    _common(call)
    src = call.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="audio file (prefixes at detected pauses, else every --hop seconds)")
    src.add_argument("--calls", help="metadata-format jsonl holding --call-id (turn-end prefixes, gold label)")
    call.add_argument("--call-id")
    call.add_argument("--out", help="result JSON")
    call.add_argument("--plot", help="timeline PNG")
    ev = sub.add_parser("eval", help="real-time metrics over a test set of calls")
    _common(ev)
    ev.add_argument("--calls", required=True, help="calls jsonl, e.g. data/prepared/calls_test.jsonl")
    ev.add_argument("--out", required=True, help="output directory (live_results.jsonl is resumed when present)")
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--name", help="system name in the table")
    ev.add_argument("--overwrite", action="store_true")
    ev.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "call" and args.calls and not args.call_id:
        parser.error("--calls needs --call-id")
    if args.batch_size < 1 or args.hop <= 0 or args.chunk_s <= 0 or (args.max_rounds or 1) < 1:
        parser.error("--batch-size and --max-rounds must be >= 1, --hop and --chunk-s > 0")
    if not args.pause > 0:
        parser.error(f"--pause must be > 0 seconds, got {args.pause}")
    if getattr(args, "limit", None) is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    try:
        sampling_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return cmd_call(args) if args.command == "call" else cmd_eval(args)
    except (ValueError, RuntimeError) as exc:  # bad calls, a refused resume, a failed model or generation
        print_error(exc)
        return 1
    except OSError as exc:
        print_error(os_error_message(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
