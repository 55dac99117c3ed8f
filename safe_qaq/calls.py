"""The call model shared by data preparation, the transcript floor and live inference.

One place for: the call record (id, audio, duration, labels, turns), a call's gold label per
task, where a listed audio path points, the pauses between turns, and which ``[start, end)``
millisecond pieces a prefix (or the whole call) is sent to the model as.  Because
``prepare`` and ``live`` plan chunks with the same functions and cut them with
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

from prompt import FRAUD, TASK_LABELS, TASKS
from safe_qaq.audio import MAX_AUDIO_SECONDS
from safe_qaq.jsonl import iter_jsonl

#: How a call longer than one chunk is sent: as consecutive chunks, or only its first chunk.
LONG_CALL_POLICIES = ("chunk", "truncate")
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
        """A call from a metadata-format record listed in the file ``listed_in``.

        Lenient about labels and turns (an unknown label has no gold, an untimed turn no pause);
        strict about what cannot be used: raises :class:`RowError` for a record without an id or
        a usable audio path.
        """
        if not isinstance(obj, dict):
            raise RowError("bad_record", f"row is a JSON {type(obj).__name__}, not an object")
        call_id = obj.get("id")
        if isinstance(call_id, int) and not isinstance(call_id, bool):
            call_id = str(call_id)
        if not isinstance(call_id, str) or not call_id.strip():
            raise RowError("bad_record", f"'id' must be a non-empty string, got {call_id!r}")
        duration = obj.get("duration")
        turns = obj.get("turns")
        turns = [t for t in turns if isinstance(t, dict)] if isinstance(turns, list) else []
        return cls(
            call_id=call_id.strip(),
            audio=resolve_audio(obj.get("audio"), listed_in),
            duration=float(duration) if _finite(duration) and duration > 0 else None,
            scene=_text(obj.get("scene")),
            label=_text(obj.get("label")),
            fraud_type=_text(obj.get("fraud_type")),
            turns=turns or None,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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
# Pauses and chunks
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
