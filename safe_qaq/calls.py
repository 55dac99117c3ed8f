"""The call model shared by data preparation, the transcript floor, evaluation and live inference.

One place for: the call record (id, audio, duration, labels, turns) and its one parser
(:meth:`Call.from_json`, strict, used by ``prepare`` and by every reader of call files), a
call's gold label per task, where a listed audio path points, the pauses between turns, the
real-time prefixes of a call and the stage each one is labelled with, and which
``[start, end)`` millisecond pieces a prefix (or the whole call) is sent to the model as.
Because ``prepare`` and ``live`` plan with the same functions and cut with
:func:`safe_qaq.audio.cut_chunks`, live inference hears exactly the chunks training heard.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompt import (
    COMPLETE,
    EARLY_STAGE,
    FRAUD,
    FRAUD_LABELS,
    FRAUD_TYPES,
    LATE_STAGE,
    NORMAL,
    SCENES,
    TASK_LABELS,
    TASKS,
)
from safe_qaq.audio import MAX_AUDIO_SECONDS
from safe_qaq.jsonl import iter_jsonl

#: How a call longer than one chunk is sent: as consecutive chunks, or only its first chunk.
LONG_CALL_POLICIES = ("chunk", "truncate")
SPEAKERS = ("caller", "callee")
DEFAULT_CHUNK_MS = round(MAX_AUDIO_SECONDS * 1000)


class RowError(ValueError):
    """A record that cannot be used: ``code`` is a short category, the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class Call:
    """One phone call: its audio file (absolute path), labels (None when unknown) and turns."""

    call_id: str
    audio: str
    duration: float | None = None
    scene: str | None = None
    label: str | None = None  # fraud / normal
    fraud_type: str | None = None
    turns: list[dict[str, Any]] | None = None

    def gold(self, task: str) -> str | None:
        """The gold label for ``task``, or None when it is unknown or the task does not apply.

        A fraud type is asked only of fraud calls, so a normal call has none.
        """
        if task == "scene":
            value = self.scene
        elif task == "fraud":
            value = self.label
        elif task == "fraud_type":
            value = self.fraud_type if self.label == FRAUD else None
        else:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return value if value in TASK_LABELS[task] else None

    def to_json(self) -> dict[str, Any]:
        """The call in our metadata format (README "Input formats")."""
        return {
            "id": self.call_id,
            "audio": self.audio,
            "duration": self.duration,
            "scene": self.scene,
            "label": self.label,
            "fraud_type": self.fraud_type,
            "turns": self.turns or [],
        }

    @classmethod
    def from_json(cls, obj: Any, listed_in: str | os.PathLike) -> Call:
        """A call from a metadata-format record listed in the file ``listed_in`` (README "Input formats").

        Strict, the one parser of the format (``prepare`` and every reader of call files): raises
        :class:`RowError` saying why for an id that is not a non-empty string, an unusable audio
        path, an unknown label, a normal call with a fraud type, a record with neither a scene nor
        a fraud label, a duration that is not a positive number, or turns that are not timed,
        ordered ``{speaker, start, end, text}`` objects.  A fraud type alone implies a fraud call.
        """
        if not isinstance(obj, dict):
            raise RowError("bad_record", f"row is a JSON {type(obj).__name__}, not an object")
        call_id = obj.get("id")
        if not isinstance(call_id, str) or not call_id.strip():
            raise RowError("bad_record", f"'id' must be a non-empty string, got {call_id!r}")
        audio = resolve_audio(obj.get("audio"), listed_in)
        scene = _check_label(obj.get("scene"), SCENES, "scene")
        label = _check_label(obj.get("label"), FRAUD_LABELS, "label")
        fraud_type = _check_label(obj.get("fraud_type"), FRAUD_TYPES, "fraud_type")
        duration = obj.get("duration")
        if duration is not None and _number(duration, "'duration'") <= 0:
            raise RowError("bad_record", f"'duration' must be positive, got {duration}")
        turns = _check_turns(obj.get("turns"))
        check_consistent(label, fraud_type)
        if label is None and fraud_type is not None:
            label = FRAUD  # only fraud calls have a fraud type
        if scene is None and label is None:
            raise RowError("unknown_label", "record has no label: need at least one of scene, label, fraud_type")
        return cls(
            call_id=call_id.strip(),
            audio=audio,
            duration=None if duration is None else float(duration),
            scene=scene,
            label=label,
            fraud_type=fraud_type,
            turns=turns,
        )


def check_consistent(label: str | None, fraud_type: str | None) -> None:
    """:class:`RowError` for a normal call with a fraud type (also checked when records are merged)."""
    if label == NORMAL and fraud_type is not None:
        raise RowError("conflict", f"a {NORMAL} call cannot have fraud_type {fraud_type!r}")


def _check_label(value: Any, allowed: Sequence[str], key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise RowError("unknown_label", f"unknown {key} {value!r}; expected one of {', '.join(allowed)}")
    return value


def _number(value: Any, what: str) -> float:
    if not _finite(value):
        raise RowError("bad_record", f"{what} must be a finite number, got {value!r}")
    return float(value)


def _check_turns(turns: Any) -> list[dict[str, Any]] | None:
    if turns is None or turns == []:
        return None
    if not isinstance(turns, list):
        raise RowError("bad_record", f"'turns' must be a list, got {type(turns).__name__}")
    checked = []
    previous_start = 0.0
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowError("bad_record", f"turn {i} is not an object")
        if turn.get("speaker") not in SPEAKERS:
            raise RowError("bad_record", f"turn {i}: speaker must be one of {SPEAKERS}, got {turn.get('speaker')!r}")
        start, end = _number(turn.get("start"), f"turn {i} start"), _number(turn.get("end"), f"turn {i} end")
        if not 0.0 <= start <= end:
            raise RowError("bad_record", f"turn {i}: need 0 <= start <= end, got start={start} end={end}")
        if start < previous_start:
            raise RowError("bad_record", f"turn {i} starts at {start} s, before the previous turn ({previous_start} s)")
        previous_start = start
        text = turn.get("text", "")
        if not isinstance(text, str):
            raise RowError("bad_record", f"turn {i}: text must be a string")
        checked.append({"speaker": turn["speaker"], "start": start, "end": end, "text": text})
    return checked


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_calls(path: str | os.PathLike) -> list[Call]:
    """The calls of a metadata-format JSONL file (``data/calls/metadata.jsonl``, ``calls_test.jsonl``).

    Raises ``ValueError`` naming the file and line of the first record that cannot be used.
    """
    calls = []
    for number, obj in iter_jsonl(path):
        try:
            calls.append(Call.from_json(obj, path))
        except RowError as exc:
            raise RowError(exc.code, f"{path}:{number}: {exc}") from None
    return calls


# ---------------------------------------------------------------------------
# Audio paths
# ---------------------------------------------------------------------------


def resolve_audio(value: Any, listed_in: str | os.PathLike) -> str:
    """The absolute path of an audio entry found in the file ``listed_in``; :class:`RowError` if unusable.

    ``value`` is a path string or ``{"url"|"path": ...}`` (OpenAI-style content parts); ``~`` and
    ``file://`` are understood.  A relative path is relative to the listing file's folder; when
    nothing is there but the path exists relative to the working directory, that file is used.
    Remote URLs are refused: nothing here reaches the network.
    """
    if isinstance(value, dict):
        value = value.get("url") or value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise RowError("bad_record", f"audio path must be a non-empty string, got {value!r}")
    value = value.strip()
    if "\0" in value:
        raise RowError("bad_record", f"audio path {value!r} contains a NUL character")
    try:
        value.encode(sys.getfilesystemencoding(), "surrogateescape")
    except UnicodeEncodeError:
        raise RowError("bad_record", f"audio path {value!r} is not a valid file name (unpaired surrogate)") from None
    if value.startswith(("http://", "https://")):
        raise RowError("bad_record", f"remote audio {value!r} is not supported: nothing here reaches the network")
    value = os.path.expanduser(value.removeprefix("file://"))
    resolved = os.path.abspath(Path(listed_in).resolve().parent / value)
    if not os.path.isabs(value) and not os.path.exists(resolved) and os.path.exists(value):
        return os.path.abspath(value)
    return resolved


# ---------------------------------------------------------------------------
# Pauses, real-time prefixes and their stage, chunks
# ---------------------------------------------------------------------------


def turn_boundaries_ms(turns: Sequence[dict[str, Any]] | None, duration_ms: int) -> list[int]:
    """Cut points between turns, in ms: the middle of each pause (the turn end when turns overlap).

    Turns are taken in order of their start; turns without numeric times are ignored.  Only
    points strictly inside ``(0, duration_ms)`` are kept.
    """
    timed = sorted((t for t in turns or () if _finite(t.get("start")) and _finite(t.get("end"))), key=_start)
    points = set()
    for current, following in itertools.pairwise(timed):
        end = current["end"]
        point = round(500 * (end + max(following["start"], end)))
        if 0 < point < duration_ms:
            points.add(point)
    return sorted(points)


def _start(turn: dict[str, Any]) -> float:
    return turn["start"]


def stage_of(fraction: float, early_max: float, complete_min: float) -> str:
    """The gold stage of a prefix that covers ``fraction`` of the call (README, "Real time")."""
    if fraction >= complete_min:
        return COMPLETE
    if fraction <= early_max:
        return EARLY_STAGE
    return LATE_STAGE


def _nearest(points: Sequence[int], target: float) -> int:
    """The point closest to ``target``; a tie goes to the earlier point."""
    return min(points, key=lambda p: (abs(p - target), p))


def plan_prefixes(
    duration_ms: int,
    boundaries_ms: Sequence[int],
    fractions: Sequence[float],
    *,
    early_max: float,
    complete_min: float,
    min_prefix_ms: int,
) -> list[tuple[int, str]]:
    """``(end_ms, stage)`` of the growing prefixes of a call; the last one is the whole call.

    Each target fraction is cut at the nearest turn boundary (at the exact time when there
    are no turns); prefixes shorter than ``min_prefix_ms`` and duplicates are skipped.
    """
    ends = set()
    for fraction in fractions:
        target = fraction * duration_ms
        end = _nearest(boundaries_ms, target) if boundaries_ms else round(target / 10.0) * 10
        if min_prefix_ms <= end < duration_ms:
            ends.add(end)
    return [(end, stage_of(end / duration_ms, early_max, complete_min)) for end in [*sorted(ends), duration_ms]]


def chunk_bounds(
    end_ms: int, split_points_ms: Sequence[int] = (), chunk_ms: int = DEFAULT_CHUNK_MS
) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` ms pieces of ``[0, end_ms]``, each at most ``chunk_ms`` long.

    A piece ends at the last preferred split point (a pause between turns) in its second half,
    else exactly ``chunk_ms`` after its start.  The pieces depend only on the split points
    before them, so every prefix of a call shares its leading chunks with the whole call and
    the cut files are written once.
    """
    if end_ms <= 0:
        raise ValueError(f"end_ms must be positive, got {end_ms}")
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
    points = sorted(set(split_points_ms))
    bounds: list[tuple[int, int]] = []
    start = 0
    while end_ms - start > chunk_ms:
        limit = start + chunk_ms
        candidates = [p for p in points if start + chunk_ms // 2 < p <= limit]
        stop = candidates[-1] if candidates else limit
        bounds.append((start, stop))
        start = stop
    bounds.append((start, end_ms))
    return bounds


def plan_chunks(
    end_ms: int,
    boundaries_ms: Sequence[int] = (),
    *,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    long_call: str = "chunk",
) -> list[tuple[int, int]]:
    """The ``[start, end)`` ms pieces the prefix ``[0, end_ms)`` of a call is sent as, one per ``<audio>``.

    ``chunk``: consecutive pieces of at most ``chunk_ms``, split in pauses (:func:`chunk_bounds`);
    ``truncate``: only the first ``chunk_ms``.  ``boundaries_ms`` are the call's pauses
    (:func:`turn_boundaries_ms`).
    """
    if long_call not in LONG_CALL_POLICIES:
        raise ValueError(f"long_call must be one of {LONG_CALL_POLICIES}, got {long_call!r}")
    if long_call == "truncate":
        return [(0, min(end_ms, chunk_ms))]
    return chunk_bounds(end_ms, [b for b in boundaries_ms if b < end_ms], chunk_ms)
