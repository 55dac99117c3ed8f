"""The live loop shared by ``python -m safe_qaq.live`` (files) and the service (streams).

Everything that decides *what the model hears and when* lives here, once:

* :class:`PrefixPlanner` -- where prefixes end while audio arrives: at the call's turn ends when
  they are known, else at pauses a voice-activity detector finds (:class:`PauseDetector`), and
  every ``hop`` seconds when no pause came (docs/method.md#live-inference);
* :class:`StreamChunks` -- the chunk files of a prefix cut from a stream, keeping in memory only
  the audio a later prefix can still need;
* :func:`answer_prefixes` -- one batch of prefixes (of one or many calls) through the round chain
  (scene, then fraud, ...), with the earlier rounds' answers carried in the conversation;
* :func:`make_step` / :func:`call_result` -- the decision rule and the per-call result.

A file is fed to the same planner in one piece, a stream frame by frame; the planner works on
fixed 30 ms VAD frames from the first sample, so both see the same prefixes with the same
split points, however the audio arrived.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prompt import FRAUD, TASKS, build_messages
from safe_qaq.answer import parse_answer
from safe_qaq.audio import MAX_AUDIOS_PER_ROW, SAMPLE_RATE, ms_to_samples, samples_to_ms, write_flac
from safe_qaq.calls import DEFAULT_CHUNK_MS, plan_chunks
from safe_qaq.engine import GREEDY, Sampling

#: webrtcvad frames: 30 ms at 16 kHz.
VAD_FRAME_MS = 30
VAD_FRAME = SAMPLE_RATE * VAD_FRAME_MS // 1000
#: Silence (non-speech frames after speech) that counts as a pause.  Tuned on the bundled calls: with
#: 210 ms at aggressiveness 3 the detector finds 122 of their 134 turn ends (within 0.4 s), plus 22 pauses
#: inside turns; 300 ms finds 93.
DEFAULT_PAUSE_S = 0.21
DEFAULT_VAD_MODE = 3
#: Speech frames that must come before a silence for it to be a pause (a click is no turn).
MIN_SPEECH_FRAMES = 3
PREFIX_RULES = ("turns", "vad", "hop")


class PauseDetector:
    """Finds pauses in 16 kHz audio fed in pieces of any size, causally and deterministically.

    webrtcvad (Google's WebRTC detector) classifies each 30 ms frame; a pause is ``pause_ms`` of
    non-speech after at least ``MIN_SPEECH_FRAMES`` speech frames.  Its cut point is the middle of
    those ``pause_ms`` (training cuts in the middle of the pause between turns), known
    ``pause_ms / 2`` after it.  ``step`` consumes one frame; callers drive it frame by frame.
    """

    def __init__(self, pause_s: float = DEFAULT_PAUSE_S, mode: int = DEFAULT_VAD_MODE):
        import webrtcvad  # webrtcvad-wheels: a C extension with wheels, no model download, no torch

        if not pause_s > 0:
            raise ValueError(f"pause must be positive, got {pause_s}")
        self.pause_frames = max(1, round(pause_s * 1000 / VAD_FRAME_MS))
        self.pause_ms = self.pause_frames * VAD_FRAME_MS
        self._vad = webrtcvad.Vad(mode)
        self._speech = 0
        self._silence = 0

    def step(self, frame: np.ndarray, frame_end_ms: int) -> int | None:
        """Classify one 30 ms int16 frame ending at ``frame_end_ms``; the pause point (ms) when one completes."""
        if self._vad.is_speech(frame.tobytes(), SAMPLE_RATE):
            self._speech += 1
            self._silence = 0
            return None
        self._silence += 1
        if self._speech >= MIN_SPEECH_FRAMES and self._silence == self.pause_frames:
            self._speech = 0
            return frame_end_ms - self.pause_ms // 2
        return None


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, exactly inverting soundfile's int16 -> float32 (x / 32768)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")


@dataclass
class Prefix:
    """A prefix ``[0, end_ms)`` and the split points (pauses) its chunks may be cut at."""

    end_ms: int
    splits_ms: tuple[int, ...]

    @property
    def end_s(self) -> float:
        return self.end_ms / 1000


class PrefixPlanner:
    """Where the prefixes of one call end, decided while its audio arrives.

    ``rule``: ``turns`` -- at the given turn boundaries (a file with turn times); ``vad`` -- at the
    pauses :class:`PauseDetector` finds, and ``hop_s`` after the last prefix when none came; ``hop``
    -- every ``hop_s``.  The whole call is always the last prefix (:meth:`finish`).  A pause found
    at or before the last prefix end (the hop got there first) ends no prefix and splits no chunk,
    so no later prefix changes the chunks of an earlier one.  Prefixes whose chunks would exceed
    ``MAX_AUDIOS_PER_ROW`` are not produced: :attr:`capped_ms` then says how far the call is heard.
    """

    def __init__(
        self,
        *,
        rule: str = "vad",
        hop_s: float = 5.0,
        boundaries_ms: Sequence[int] = (),
        pause_s: float = DEFAULT_PAUSE_S,
        chunk_ms: int = DEFAULT_CHUNK_MS,
    ):
        if rule not in PREFIX_RULES:
            raise ValueError(f"rule must be one of {PREFIX_RULES}, got {rule!r}")
        self.hop_ms = round(hop_s * 1000)
        if self.hop_ms <= 0:
            raise ValueError(f"hop must be positive, got {hop_s}")
        self.rule = rule
        self.chunk_ms = chunk_ms
        self._boundaries = sorted({int(b) for b in boundaries_ms if b > 0})
        # split points known so far: the turn boundaries up front, or the pauses as they are found
        self.splits: list[int] = list(self._boundaries) if rule != "vad" else []
        self._detector = PauseDetector(pause_s) if rule == "vad" else None
        self._pending = np.empty(0, dtype="<i2")
        self._frames = 0
        self.heard_samples = 0
        self.last_end = 0
        self.capped_ms: int | None = None  # the last prefix that fits, once one did not
        self.finished = False

    @property
    def heard_ms(self) -> int:
        return samples_to_ms(self.heard_samples)

    def _emit(self, end_ms: int, out: list[Prefix]) -> None:
        if end_ms <= self.last_end or self.capped_ms is not None:
            return
        splits = tuple(s for s in self.splits if s < end_ms)
        if len(plan_chunks(end_ms, splits, chunk_ms=self.chunk_ms)) > MAX_AUDIOS_PER_ROW:
            self.capped_ms = self.last_end
            return
        self.last_end = end_ms
        out.append(Prefix(end_ms, splits))

    def _due_at(self, now_ms: int, out: list[Prefix], *, final: bool = False) -> None:
        """Prefixes due once ``now_ms`` is heard (strictly before it unless ``final``)."""
        if self.rule == "turns":
            for b in self._boundaries:
                if self.last_end < b < now_ms or (not final and b == now_ms):
                    self._emit(b, out)
            return
        while self.last_end + self.hop_ms < now_ms or (not final and self.last_end + self.hop_ms == now_ms):
            before = self.last_end
            self._emit(self.last_end + self.hop_ms, out)
            if self.last_end == before:  # capped
                return

    def feed(self, samples: np.ndarray) -> list[Prefix]:
        """Take 16 kHz float samples; return the prefixes that are now due, in order."""
        if self.finished:
            raise RuntimeError("audio fed after the call finished")
        out: list[Prefix] = []
        self.heard_samples += len(samples)
        pcm = np.concatenate([self._pending, to_pcm16(np.asarray(samples, dtype=np.float32))])
        n = len(pcm) // VAD_FRAME
        for i in range(n):
            self._frames += 1
            now = self._frames * VAD_FRAME_MS
            if self._detector is not None:
                point = self._detector.step(pcm[i * VAD_FRAME : (i + 1) * VAD_FRAME], now)
                if point is not None and point > self.last_end:
                    self.splits.append(point)
                    self._emit(point, out)
            self._due_at(now, out)
        self._pending = pcm[n * VAD_FRAME :]
        return out

    def finish(self) -> list[Prefix]:
        """The call ended: the prefixes still due, the whole call last."""
        if self.finished:
            return []
        self.finished = True
        out: list[Prefix] = []
        total = self.heard_ms
        if total <= 0:
            return out
        self._due_at(total, out, final=True)
        self._emit(total, out)
        return out

    def cap(self) -> list[Prefix]:
        """End the call where it is now (the longest call allowed was reached)."""
        return self.finish()


def plan_file(samples: np.ndarray, **planner_kwargs) -> tuple[list[Prefix], int | None]:
    """Every prefix of a whole recording, as a stream of it would get them; and where it was capped."""
    planner = PrefixPlanner(**planner_kwargs)
    prefixes = planner.feed(samples) + planner.finish()
    return prefixes, planner.capped_ms


class StreamChunks:
    """Cuts the chunk files of a stream's prefixes under ``folder``, holding little audio in memory.

    A prefix is sent as :func:`safe_qaq.calls.plan_chunks` pieces, cut the way
    :func:`safe_qaq.audio.cut_chunks` cuts a file's (a whole call in one piece is every sample,
    as a source file sent whole is).  Pieces before the last one of a prefix never change for
    later prefixes (:class:`PrefixPlanner` adds no split point before a prefix end), so they are
    written once and the audio before the last piece is dropped.
    """

    def __init__(self, folder: str | Path, chunk_ms: int = DEFAULT_CHUNK_MS):
        self.folder = Path(folder)
        self.chunk_ms = chunk_ms
        self._buf = np.empty(0, dtype=np.float32)
        self._base = 0  # sample index of _buf[0]
        self._written: dict[tuple[int, int], str] = {}

    @property
    def held_samples(self) -> int:
        return len(self._buf)

    def add(self, samples: np.ndarray) -> None:
        self._buf = np.concatenate([self._buf, np.asarray(samples, dtype=np.float32)])

    def _piece(self, a: int, b: int | None) -> np.ndarray:
        lo = a - self._base
        if lo < 0:
            raise RuntimeError(f"audio at sample {a} was already dropped")
        return self._buf[lo:] if b is None else self._buf[lo : b - self._base]

    def paths(self, prefix: Prefix, *, whole: bool = False) -> list[str]:
        """The files of ``prefix``; ``whole``: it is the entire call (its last piece takes every sample)."""
        bounds = plan_chunks(prefix.end_ms, prefix.splits_ms, chunk_ms=self.chunk_ms)
        out = []
        for k, (start, end) in enumerate(bounds):
            last = k == len(bounds) - 1
            key = (start, -1 if last and whole and len(bounds) == 1 else end)
            if key not in self._written:
                if key[1] == -1:  # as a source file sent whole: every sample, not whole ms
                    piece, name = self._piece(0, None), "whole.flac"
                else:
                    piece = self._piece(ms_to_samples(start), ms_to_samples(end))
                    name = f"{start:07d}-{end:07d}.flac"
                path = self.folder / name
                write_flac(path, piece)
                self._written[key] = str(path)
            out.append(self._written[key])
        # every later prefix starts its last piece at or after this one's
        keep_from = ms_to_samples(bounds[-1][0])
        if keep_from > self._base:
            self._buf = self._buf[keep_from - self._base :].copy()
            self._base = keep_from
        return out


# ---------------------------------------------------------------------------
# Asking the model and reading its answer
# ---------------------------------------------------------------------------


def round_chain(task: str, history: bool) -> tuple[str, ...]:
    """The rounds asked per prefix: the tasks up to ``task`` (real-time data's order), or ``task`` alone."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return TASKS[: TASKS.index(task) + 1] if history else (task,)


def answer_prefixes(
    engine,
    audios: Sequence[list[str]],
    chain: Sequence[str],
    *,
    sampling: Sampling = GREEDY,
    batch_size: int = 8,
) -> list[tuple[list[tuple[str, str]], float]]:
    """Ask every prefix (its chunk files) the rounds of ``chain``, batched across prefixes.

    Returns per prefix its ``(task, answer text)`` per round and the model seconds it waited.
    """
    carried: list[list[tuple[str, str]]] = [[] for _ in audios]
    latency = [0.0] * len(audios)
    for round_task in chain:
        requests = [
            {"messages": build_messages(round_task, mode="realtime", n_audios=len(a), history=h), "audios": list(a)}
            for a, h in zip(audios, carried, strict=True)
        ]
        for lo in range(0, len(requests), batch_size):
            start = time.perf_counter()
            outs = engine.generate(requests[lo : lo + batch_size], n=1, **sampling.as_kwargs())
            elapsed = time.perf_counter() - start
            for i, texts in enumerate(outs, start=lo):
                carried[i].append((round_task, texts[0] if texts else ""))
                latency[i] += elapsed
    return list(zip(carried, latency, strict=True))


def confidence_of(parsed) -> float | None:
    """The answer's confidence when it is a finite number (booleans are not numbers here)."""
    value = parsed.obj.get("confidence") if parsed.obj is not None else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_step(text: str, task: str, threshold: float) -> dict:
    """What one real-time answer says: stage, label (None for null/unusable), confidence, decided."""
    parsed = parse_answer(text)
    label = parsed.prediction(task)
    confidence = confidence_of(parsed)
    stage = parsed.stage()
    decided = label is not None and (threshold <= 0 or (confidence is not None and confidence >= threshold))
    return {
        "stage": stage if isinstance(stage, str) else None,
        "label": label,
        "null": parsed.label(task) is None,  # an explicit null ("not enough audio yet"), not a failure
        "confidence": confidence,
        "decided": decided,
        "format_error": parsed.schema_error(task),
        "think": parsed.think,
    }


def is_alarm(task: str, label: str | None) -> bool:
    """A decision that should alert the user: fraud, or any fraud type."""
    return label is not None and (label == FRAUD if task == "fraud" else task == "fraud_type")


def make_step(
    round_no: int, end_s: float, answers: list[tuple[str, str]], latency: float, task: str, threshold: float
) -> dict:
    """One timeline row: the last round's answer read by the decision rule, the earlier rounds as history."""
    text = answers[-1][1]
    step = {"round": round_no, "end_s": end_s, **read_step(text, task, threshold)}
    step["latency_s"] = round(latency, 4)
    step["text"] = text
    if len(answers) > 1:
        step["history"] = [{"task": t, "text": x} for t, x in answers[:-1]]
    return step


@dataclass
class CallLog:
    """What one call has been heard and answered so far (the inputs of :func:`call_result`)."""

    call_id: str
    audio: str | None
    gold: str | None = None
    duration: float = 0.0
    ends: list[float] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)

    @property
    def decision(self) -> dict | None:
        return next((s for s in self.steps if s["decided"]), None)


def call_result(log: CallLog, task: str, threshold: float) -> dict:
    """The result of one call, as ``live call`` prints and ``live eval`` saves it."""
    decision = log.decision
    label = decision["label"] if decision else None
    return {
        "call_id": log.call_id,
        "audio": log.audio,
        "task": task,
        "gold": log.gold,
        "duration_s": round(log.duration, 3),
        "threshold": threshold,
        "prefix_ends": log.ends,
        "decided": decision is not None,
        "decision_label": label,
        "decision_confidence": decision["confidence"] if decision else None,
        "decision_time_s": decision["end_s"] if decision else None,
        "decision_round": decision["round"] if decision else None,
        "rounds_used": len(log.steps),
        "alarm": is_alarm(task, label),
        "correct": None if log.gold is None else label == log.gold,
        "steps": log.steps,
    }
