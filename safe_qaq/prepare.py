"""Turn phone-call records into the ms-swift jsonl files every training stage reads.

Usage::

    python -m safe_qaq.prepare --input data/calls/metadata.jsonl --out data/prepared

Inputs (``--input`` may repeat; the format is detected per row):

* our metadata JSONL -- ``{"id", "audio", "duration", "scene", "label", "fraud_type", "turns"}``
  with ``audio`` relative to the metadata file (``data/calls/metadata.jsonl``);
* the TeleAntiFraud release -- a JSON list (or JSONL) of
  ``{"prompt": [..., {"role": "user", "content": [{"type": "audio", "audio_url": "audio/x.wav"}, ...]}],
  "answer": "fraud"}`` with audio relative to the JSON file.  The record's audio and label
  are kept; the questions asked are ours (prompt.py).  Records that point at the same audio
  file are merged into one call, so the scene / fraud / fraud-type files of the release
  rebuild the three-round conversation.

Outputs in ``--out`` (README "Data" explains the columns, the stage rule and the long-call policy):
``offline_{train,test}.jsonl`` and ``realtime_{train,test}.jsonl`` (GRPO prompts),
``sft_{train,test}.jsonl`` and ``sft_realtime_{train,test}.jsonl`` (gold-answer SFT rows),
``calls_{train,test}.jsonl``, ``split.json``, ``rejects.jsonl``, ``summary.json`` and
``audio/`` (cut chunks and prefixes, written once and reused by later runs).

Every audio is size-checked from its header, then decoded once, resampled to 16 kHz mono and
checked; a bad row is written to ``rejects.jsonl`` with the file, row and reason, never dropped
silently.  Calls are planned and cut with :mod:`safe_qaq.calls` and
:func:`safe_qaq.audio.cut_chunks`, as live inference cuts them.  The exit status is 1 when more
than ``--max-reject-fraction`` of the rows were rejected (default 5%).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
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
    STAGES,
    TASKS,
    build_messages,
    format_answer,
    task_of_label,
)
from safe_qaq import audio as audio_utils
from safe_qaq.answer import parse_answer
from safe_qaq.calls import LONG_CALL_POLICIES, Call, RowError, plan_chunks, resolve_audio, turn_boundaries_ms
from safe_qaq.jsonl import dumps

SPEAKERS = ("caller", "callee")
OUTPUT_KINDS = ("offline", "realtime", "sft", "sft_realtime")
MAX_LOGGED_REJECTS = 20


@dataclass(frozen=True)
class Options:
    test_fraction: float = 0.25
    seed: int = 0
    long_call: str = "chunk"  # "chunk" | "truncate"
    chunk_seconds: float = audio_utils.MAX_AUDIO_SECONDS
    max_audios: int = audio_utils.MAX_AUDIOS_PER_ROW
    prefix_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    early_max_fraction: float = 0.35
    complete_min_fraction: float = 1.0
    min_prefix_seconds: float = 2.0
    early_sft_answer: str = "null"  # "null" | "gold"
    max_reject_fraction: float = 0.05
    min_duration: float = 1.0
    max_duration: float = 600.0
    duration_tolerance: float = 1.0
    silence_dbfs: float = audio_utils.DEFAULT_SILENCE_DBFS
    workers: int = 1
    progress: bool = True

    def check(self) -> None:
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"--test-fraction must be in [0, 1], got {self.test_fraction}")
        if self.long_call not in LONG_CALL_POLICIES:
            raise ValueError(f"--long-call must be chunk or truncate, got {self.long_call!r}")
        if not 1 <= self.max_audios <= audio_utils.MAX_AUDIOS_PER_ROW:
            raise ValueError(
                f"--max-audios must be in [1, {audio_utils.MAX_AUDIOS_PER_ROW}], got {self.max_audios}: the stage "
                "scripts and engines take at most safe_qaq.audio.MAX_AUDIOS_PER_ROW audios per row"
            )
        if not 0.0 < self.chunk_seconds <= audio_utils.MAX_AUDIO_SECONDS:
            raise ValueError(
                f"--chunk-seconds must be in (0, {audio_utils.MAX_AUDIO_SECONDS:g}]: "
                "Qwen2-Audio's feature extractor drops audio past 30 s"
            )
        if not all(0.0 < f < 1.0 for f in self.prefix_fractions):
            raise ValueError(f"--prefix-fractions must lie in (0, 1), got {self.prefix_fractions}")
        if not 0.0 <= self.early_max_fraction < self.complete_min_fraction <= 1.0:
            raise ValueError("need 0 <= --early-max-fraction < --complete-min-fraction <= 1")
        if self.early_sft_answer not in ("null", "gold"):
            raise ValueError(f"--early-sft-answer must be null or gold, got {self.early_sft_answer!r}")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(f"--max-reject-fraction must be in [0, 1], got {self.max_reject_fraction}")
        if not 0.0 < self.min_duration < self.max_duration:
            raise ValueError("need 0 < --min-duration < --max-duration")


# ---------------------------------------------------------------------------
# Reading records
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a record came from: input file and 1-based line (JSONL) or list index (JSON list)."""

    input: str
    row: int

    def __str__(self) -> str:
        return f"{self.input}:{self.row}"


@dataclass
class Record:
    """One parsed input row: a call's audio with some of its labels."""

    origin: Origin
    audio: str  # absolute path
    call_id: str | None  # None: derived from the audio file name
    scene: str | None = None
    label: str | None = None
    fraud_type: str | None = None
    turns: list[dict[str, Any]] | None = None
    duration: float | None = None
    references: dict[str, str] = field(default_factory=dict)  # task -> reference answer text


@dataclass(kw_only=True)
class MergedCall(Call):
    """Records merged by audio file; one call of the output (the first origin named it)."""

    id_explicit: bool
    origins: list[Origin]
    references: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    origin: Origin
    code: str
    reason: str
    call_id: str | None = None
    audio: str | None = None
    raw: str | None = None

    def to_json(self) -> dict[str, Any]:
        row = {"input": self.origin.input, "row": self.origin.row, "code": self.code, "reason": self.reason}
        if self.call_id is not None:
            row["call_id"] = self.call_id
        if self.audio is not None:
            row["audio"] = self.audio
        if self.raw is not None:
            row["raw"] = self.raw
        return row

    def __str__(self) -> str:
        where = f" [audio: {_snippet(self.audio, 200)}]" if self.audio else ""
        return f"{self.origin}: {self.reason}{where}"


def _snippet(value: Any, limit: int = 500) -> str:
    """A short, printable excerpt of a row for rejects.jsonl (unpaired surrogates escaped, so it encodes)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_NOT_UTF8 = "not valid UTF-8 (a byte that is not UTF-8, or an unpaired \\ud800-\\udfff escape)"


def _has_surrogate(obj: Any) -> bool:
    """Whether a parsed JSON value holds an unpaired surrogate: an undecodable byte or a lone escape."""
    stack = [obj]
    while stack:  # iterative: a deeply nested row must not exhaust the stack here
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _parse(text: str, what: str) -> tuple[Any, RowError | None]:
    try:
        obj = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        return None, RowError("malformed_json", f"malformed JSON {what}: {exc}")
    except RecursionError:
        return None, RowError("malformed_json", f"malformed JSON {what}: nested too deeply")
    if _has_surrogate(obj):
        return None, RowError("bad_encoding", f"{what} text is {_NOT_UTF8}")
    return obj, None


def _count_json_values(text: str) -> int | None:
    """How many JSON values ``text`` holds back to back, or None when it is not such a sequence."""
    decoder = json.JSONDecoder()
    index, count = _JSON_SPACE.match(text).end(), 0
    while index < len(text):
        try:
            _, index = decoder.raw_decode(text, index)
        except (ValueError, RecursionError):
            return None
        count += 1
        index = _JSON_SPACE.match(text, index).end()
    return count


def read_rows(path: Path) -> Iterator[tuple[Origin, Any, RowError | None]]:
    """Yield ``(origin, object, error)`` per row of a JSON list or JSONL file.

    JSONL is decoded line by line, so a byte that is not UTF-8 rejects its line only.  A file
    whose rows cannot be told apart -- a JSON list that does not parse, a UTF-16 file, JSON
    objects pretty-printed over many lines -- yields one error row for the whole file (origin
    row 0): its rows cannot be counted, so the run fails whatever the reject limit.
    """
    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield Origin(name, 0), None, RowError("unreadable", f"cannot read the file: {exc.strerror or exc}")
        return
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        error = RowError("bad_encoding", "file is UTF-16 (it starts with a byte-order mark); save it as UTF-8")
        yield Origin(name, 0), None, error
        return
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    if data.lstrip().startswith(b"["):
        # Undecodable bytes become unpaired surrogates: they reject the item that holds them.
        try:
            items = json.loads(data.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError) as exc:
            detail = exc if isinstance(exc, ValueError) else "nested too deeply"
            yield Origin(name, 0), None, RowError("malformed_json", f"file is not valid JSON: {detail}")
            return
        for index, item in enumerate(items, start=1):
            if _has_surrogate(item):
                yield Origin(name, index), _snippet(item), RowError("bad_encoding", f"record text is {_NOT_UTF8}")
            else:
                yield Origin(name, index), item, None
        return
    lines = data.split(b"\n")
    first = next((line for line in lines if line.strip()), b"")
    if first and _parse(first.decode("utf-8", "surrogateescape"), "line")[1] is not None:
        n_values = _count_json_values(data.decode("utf-8", "surrogateescape"))
        n_lines = sum(1 for line in lines if line.strip())
        if n_values and n_lines > n_values:
            what = "one JSON value" if n_values == 1 else f"{n_values} JSON values"
            yield (
                Origin(name, 0),
                None,
                RowError(
                    "malformed_json",
                    f"file is {what} pretty-printed over {n_lines} lines, not JSON Lines: put each record "
                    "on one line (or the records in a JSON list)",
                ),
            )
            return
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        origin = Origin(name, number)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            yield origin, _snippet(raw.decode("utf-8", "backslashreplace")), RowError("bad_encoding", reason)
            continue
        obj, error = _parse(line, "line")
        yield origin, (_snippet(line) if error else obj), error


def _check_label(value: Any, allowed: Sequence[str], key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise RowError("unknown_label", f"unknown {key} {value!r}; expected one of {', '.join(allowed)}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
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


def parse_metadata_record(obj: dict[str, Any], origin: Origin, listed_in: Path) -> Record:
    """Our metadata format (data/calls/metadata.jsonl)."""
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
    record = Record(
        origin=origin,
        audio=audio,
        call_id=call_id.strip(),
        scene=scene,
        label=label,
        fraud_type=fraud_type,
        turns=_check_turns(obj.get("turns")),
        duration=None if duration is None else float(duration),
    )
    _check_consistent(record.label, record.fraud_type)
    if record.label is None and record.fraud_type is not None:
        record.label = FRAUD  # only fraud calls have a fraud type
    if record.scene is None and record.label is None:
        raise RowError("unknown_label", "record has no label: need at least one of scene, label, fraud_type")
    return record


def _check_consistent(label: str | None, fraud_type: str | None) -> None:
    if label == NORMAL and fraud_type is not None:
        raise RowError("conflict", f"a {NORMAL} call cannot have fraud_type {fraud_type!r}")


def parse_reference_answer(answer: Any) -> tuple[str, str, str | None]:
    """``(task, gold label, reference answer or None)`` from a TeleAntiFraud ``answer``.

    A bare label (``"fraud"``, a scene, a fraud type) has no reference answer.  A full answer
    in our ``<think>…</think><answer>{json}</answer>`` format is kept as the reference when it
    is well formed; one with a bare label in ``<answer>`` keeps its reasoning as the think text.
    """
    if not isinstance(answer, str):
        raise RowError("unknown_label", f"'answer' must be a string, got {_snippet(answer, 80)}")
    text = answer.strip()
    task = task_of_label(text)
    if task is not None:
        return task, text, None
    parsed = parse_answer(text)
    if parsed.obj is not None:
        hits = [(t, parsed.prediction(t)) for t in TASKS if parsed.prediction(t) is not None]
        if len(hits) == 1:
            task, label = hits[0]
            if parsed.tags_ok and parsed.schema_error(task) is None:
                return task, label, text
            reason = parsed.obj.get("reason")
            return task, label, format_answer(task, label, reason=reason if isinstance(reason, str) else "")
    elif parsed.answer_block is not None:
        label = parsed.answer_block.strip().strip("\"'")
        task = task_of_label(label)
        if task is not None:
            return task, label, format_answer(task, label, think=parsed.think or "")
    raise RowError(
        "unknown_label",
        f"unknown label in 'answer' {_snippet(text, 80)!r}; expected a scene, {FRAUD}/{NORMAL} or a fraud type",
    )


def parse_teleantifraud_record(obj: dict[str, Any], origin: Origin, listed_in: Path) -> Record:
    """A TeleAntiFraud release record: ``{"prompt": [...messages...], "answer": "..."}``."""
    messages = obj.get("prompt")
    if not isinstance(messages, list):
        raise RowError("bad_record", "'prompt' must be a list of messages")
    audios = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "audio":
                    audios.append(part.get("audio_url", part.get("audio")))
    if len(audios) != 1:
        raise RowError("bad_record", f"record has {len(audios)} audio parts in its user turns; expected exactly 1")
    audio = resolve_audio(audios[0], listed_in)
    task, label, reference = parse_reference_answer(obj.get("answer"))
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj["id"].strip() else None
    record = Record(origin=origin, audio=audio, call_id=call_id)
    if task == "scene":
        record.scene = label
    elif task == "fraud":
        record.label = label
    else:
        record.label, record.fraud_type = FRAUD, label
    if reference is not None:
        record.references[task] = reference
    return record


def parse_record(obj: Any, origin: Origin, listed_in: Path) -> Record:
    if not isinstance(obj, dict):
        raise RowError("bad_record", f"row is a JSON {type(obj).__name__}, not an object")
    if "prompt" in obj:
        return parse_teleantifraud_record(obj, origin, listed_in)
    if "audio" in obj or "id" in obj:
        return parse_metadata_record(obj, origin, listed_in)
    raise RowError(
        "bad_record",
        "unrecognised record: expected our metadata keys (id, audio, scene, label, ...) "
        "or TeleAntiFraud keys (prompt, answer)",
    )


def _derived_ids(audio: str) -> Iterator[str]:
    """Candidate ids for a record without one: the file stem, then more of its path."""
    parts = Path(audio).with_suffix("").parts
    for depth in range(1, len(parts) + 1):
        yield "/".join(parts[-depth:])


class CallTable:
    """Merges records by audio file and assigns unique call ids."""

    def __init__(self) -> None:
        self.by_audio: dict[str, MergedCall] = {}
        self.by_id: dict[str, MergedCall] = {}

    def add(self, record: Record) -> None:
        key = os.path.realpath(record.audio)
        call = self.by_audio.get(key)
        if call is None:
            call_id = record.call_id or self._fresh_id(record.audio)
            if call_id in self.by_id:
                other = self.by_id[call_id]
                raise RowError("duplicate_id", f"call id {call_id!r} is already used by {other.origins[0]}")
            call = MergedCall(call_id=call_id, audio=record.audio, id_explicit=record.call_id is not None, origins=[])
            merged = _merge(call, record)
            self.by_audio[key] = self.by_id[call_id] = merged
            return
        if record.call_id is not None and call.id_explicit and record.call_id != call.call_id:
            raise RowError(
                "duplicate_id", f"same audio as call {call.call_id!r} ({call.origins[0]}) but id {record.call_id!r}"
            )
        merged = _merge(call, record)
        if record.call_id is not None and not call.id_explicit:  # an explicit id names the call
            if record.call_id in self.by_id:
                raise RowError("duplicate_id", f"call id {record.call_id!r} is already used by another audio file")
            del self.by_id[call.call_id]
            merged.call_id, merged.id_explicit = record.call_id, True
            self.by_id[merged.call_id] = merged
        else:
            self.by_id[merged.call_id] = merged
        self.by_audio[key] = merged

    def _fresh_id(self, audio: str) -> str:
        for candidate in _derived_ids(audio):
            if candidate not in self.by_id:
                return candidate
        return "call-" + hashlib.sha1(audio.encode()).hexdigest()[:12]

    def calls(self) -> list[MergedCall]:
        return sorted(self.by_audio.values(), key=lambda c: c.call_id)


def _merge(call: MergedCall, record: Record) -> MergedCall:
    """A new call with ``record`` merged in (``call`` is untouched when a conflict raises)."""
    merged = MergedCall(
        **{**call.__dict__, "origins": [*call.origins, record.origin], "references": dict(call.references)}
    )
    for key in ("scene", "label", "fraud_type"):
        new, old = getattr(record, key), getattr(merged, key)
        if new is not None and old is not None and new != old:
            raise RowError(
                "conflict", f"{key} {new!r} conflicts with {old!r} from {call.origins[0]} for the same audio"
            )
        if new is not None:
            setattr(merged, key, new)
    _check_consistent(merged.label, merged.fraud_type)
    # Two records of one audio file must agree on what it holds: which one would be right is unknown.
    if record.duration is not None and merged.duration is not None and record.duration != merged.duration:
        raise RowError(
            "conflict",
            f"duration {record.duration:g} s conflicts with {merged.duration:g} s from {call.origins[0]} "
            "for the same audio",
        )
    if record.turns is not None and merged.turns is not None and record.turns != merged.turns:
        raise RowError("conflict", f"turns differ from those of {call.origins[0]} for the same audio")
    if merged.turns is None:
        merged.turns = record.turns
    if merged.duration is None:
        merged.duration = record.duration
    for task, text in record.references.items():
        merged.references.setdefault(task, text)
    return merged


# ---------------------------------------------------------------------------
# Audio: decode once, check, cut prefixes and chunks (runs in worker processes)
# ---------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Job:
    call_id: str
    audio: str
    segment_dir: str
    declared_duration: float | None
    turns: tuple[tuple[float, float], ...] | None  # (start, end) seconds
    options: Options


def _fail(code: str, reason: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "reason": reason}


def process_call(job: Job) -> dict[str, Any]:
    """Decode, check and cut one call; never raises for bad input (returns ``ok: False``)."""
    opts = job.options
    try:
        samples = audio_utils.decode(job.audio, silence_dbfs=opts.silence_dbfs, max_seconds=opts.max_duration)
    except audio_utils.AudioError as exc:
        return _fail(exc.code, f"{exc} (--max-duration)" if exc.code in ("duration", "too_large") else str(exc))
    duration = len(samples) / audio_utils.SAMPLE_RATE
    if duration < opts.min_duration:
        return _fail("duration", f"audio is {duration:.2f} s, shorter than --min-duration {opts.min_duration:g} s")
    if duration > opts.max_duration:
        return _fail("duration", f"audio is {duration:.1f} s, longer than --max-duration {opts.max_duration:g} s")
    if job.declared_duration is not None and abs(job.declared_duration - duration) > opts.duration_tolerance:
        return _fail("duration", f"metadata says {job.declared_duration:g} s but the audio is {duration:.2f} s long")
    turns = [{"start": s, "end": e} for s, e in job.turns] if job.turns else None
    last = max((t["end"] for t in turns), default=0.0) if turns else 0.0
    if last > duration + opts.duration_tolerance:
        return _fail("turns", f"turns end at {last:g} s, after the end of the audio ({duration:.2f} s)")

    duration_ms = audio_utils.samples_to_ms(len(samples))
    chunk_ms = round(opts.chunk_seconds * 1000)
    boundaries = turn_boundaries_ms(turns, duration_ms)

    def chunks(end_ms: int) -> list[tuple[int, int]]:
        return plan_chunks(end_ms, boundaries, chunk_ms=chunk_ms, long_call=opts.long_call)

    whole = chunks(duration_ms)
    if len(whole) > opts.max_audios:
        return _fail(
            "too_many_chunks",
            f"audio is {duration:.1f} s: {len(whole)} chunks of at most {opts.chunk_seconds:g} s, more than "
            f"--max-audios {opts.max_audios} (the <audio> entries one row may carry); "
            f"--long-call truncate keeps its first {opts.chunk_seconds:g} s instead",
        )
    made: dict[str, str] = {}  # prefixes share leading chunks with the whole call: cut each once

    def audios_for(end_ms: int) -> list[str]:
        return audio_utils.cut_chunks(samples, chunks(end_ms), job.segment_dir, source=job.audio, made=made)

    long_call = duration_ms > chunk_ms
    offline_audios = audios_for(duration_ms)

    prefixes = plan_prefixes(
        duration_ms,
        boundaries,
        opts.prefix_fractions,
        early_max=opts.early_max_fraction,
        complete_min=opts.complete_min_fraction,
        min_prefix_ms=round(opts.min_prefix_seconds * 1000),
    )
    if opts.long_call == "truncate" and long_call:
        # The model hears at most the first chunk; label that prefix by how much of the call it is.
        clipped = {}
        for end, _ in prefixes:
            end = min(end, chunk_ms)
            clipped[end] = stage_of(end / duration_ms, opts.early_max_fraction, opts.complete_min_fraction)
        prefixes = sorted(clipped.items())
    planned = [
        {"end_s": end / 1000, "stage": stage, "audios": offline_audios if end == duration_ms else audios_for(end)}
        for end, stage in prefixes
    ]
    statuses = Counter(made.values())
    return {
        "ok": True,
        "duration": duration_ms / 1000,  # whole ms, the unit of every cut (prefix_end_s <= this)
        "offline_audios": offline_audios,
        "prefixes": planned,
        "chunked": long_call and opts.long_call == "chunk",
        "truncated": long_call and opts.long_call == "truncate",
        "written": statuses["written"],
        "reused": statuses["reused"],
    }


# ---------------------------------------------------------------------------
# Split and rows
# ---------------------------------------------------------------------------


def split_calls(calls: Sequence[Call], test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Deterministic, seeded train/test split by call, stratified by the fraud label."""
    strata: dict[str, list[str]] = {}
    for call in calls:
        strata.setdefault(call.label or "unlabelled", []).append(call.call_id)
    train, test = [], []
    for stratum in sorted(strata):
        ids = sorted(strata[stratum])
        random.Random(f"{seed}:{stratum}").shuffle(ids)
        n_test = round(len(ids) * test_fraction)
        if len(ids) >= 2 and 0.0 < test_fraction < 1.0:
            n_test = min(max(n_test, 1), len(ids) - 1)  # both sides see every stratum
        test += ids[:n_test]
        train += ids[n_test:]
    return {"train": sorted(train), "test": sorted(test)}


def _row(messages, audios, gold, stage, task, call_id, extra=None) -> dict[str, Any]:
    row = {
        "messages": messages,
        "audios": list(audios),
        "answers": gold,
        "conversation_stage": stage,
        "task": task,
        "call_id": call_id,
    }
    if extra:
        row.update(extra)
    return row


def build_rows(call: Call, result: dict[str, Any], options: Options) -> dict[str, list[dict[str, Any]]]:
    """All output rows of one call, keyed by kind (offline / realtime / sft / sft_realtime)."""
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in OUTPUT_KINDS}
    tasks = [t for t in TASKS if call.gold(t) is not None]

    audios = result["offline_audios"]
    history: list[tuple[str, str]] = []
    for task in tasks:
        gold = call.gold(task)
        answer = call.references.get(task) or format_answer(task, gold)
        messages = build_messages(task, mode="offline", n_audios=len(audios), history=history)
        rows["offline"].append(_row(messages, audios, gold, COMPLETE, task, call.call_id))
        messages = build_messages(task, mode="offline", n_audios=len(audios), history=history, answer=answer)
        rows["sft"].append(_row(messages, audios, gold, COMPLETE, task, call.call_id))
        history.append((task, answer))

    duration = round(result["duration"], 3)
    for prefix in result["prefixes"]:
        stage, audios = prefix["stage"], prefix["audios"]
        extra = {"prefix_end_s": prefix["end_s"], "call_duration_s": duration}
        history, sft_history = [], []
        for task in tasks:
            gold = call.gold(task)
            carried = format_answer(task, gold, mode="realtime", stage=stage)
            messages = build_messages(task, mode="realtime", n_audios=len(audios), history=history)
            rows["realtime"].append(_row(messages, audios, gold, stage, task, call.call_id, extra))
            # SFT target: at early_stage the "not enough audio yet" answer unless --early-sft-answer gold.
            target_label = None if stage == EARLY_STAGE and options.early_sft_answer == "null" else gold
            target = format_answer(task, target_label, mode="realtime", stage=stage)
            messages = build_messages(task, mode="realtime", n_audios=len(audios), history=sft_history, answer=target)
            rows["sft_realtime"].append(_row(messages, audios, gold, stage, task, call.call_id, extra))
            history.append((task, carried))
            sft_history.append((task, target))
    return rows


def call_record(call: Call, duration: float) -> dict[str, Any]:
    """The accepted call in our metadata format (absolute audio path, decoded duration)."""
    return {**call.to_json(), "duration": round(duration, 3)}


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomic write: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps(row))
            n += 1
    os.replace(tmp, path)
    return n


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def _progress(iterable, *, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="call", file=sys.stderr, dynamic_ncols=True)


def _map(jobs: list[Job], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(process_call, jobs)
        return
    chunksize = max(1, min(16, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(process_call, jobs, chunksize=chunksize)


def prepare(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, options: Options | None = None) -> dict:
    """Run the whole conversion; returns the summary (also written to ``out/summary.json``)."""
    options = options or Options()
    options.check()
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rejects: list[Reject] = []
    fatal: list[str] = []
    table = CallTable()
    n_records = 0
    input_stats = []

    # 1. Read and merge records (cheap; no audio yet).
    for raw_path in inputs:
        path = Path(raw_path)
        kinds: Counter[str] = Counter()
        for origin, obj, error in read_rows(path):
            n_records += 1
            if error is not None:
                if origin.row == 0:
                    fatal.append(f"{path}: {error}")
                rejects.append(Reject(origin, error.code, str(error), raw=obj))
                kinds["malformed"] += 1
                continue
            try:
                table.add(parse_record(obj, origin, path))
                kinds["teleantifraud" if "prompt" in obj else "metadata"] += 1  # once added: a row counts once
            except RowError as exc:
                kinds["rejected"] += 1
                audio = obj.get("audio") if isinstance(obj, dict) and isinstance(obj.get("audio"), str) else None
                call_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
                rejects.append(Reject(origin, exc.code, str(exc), call_id=call_id, audio=audio, raw=_snippet(obj)))
        if sum(kinds.values()) == 0:
            fatal.append(f"{path}: no records")
        input_stats.append({"path": str(path), "rows": dict(sorted(kinds.items()))})

    # 2. Decode, check and cut each call's audio once (in parallel).
    calls = table.calls()
    audio_root = out / "audio"
    jobs = [
        Job(
            call_id=call.call_id,
            audio=call.audio,
            segment_dir=str(audio_utils.chunk_dir(audio_root, call.call_id, call.audio)),
            declared_duration=call.duration,
            turns=tuple((t["start"], t["end"]) for t in call.turns) if call.turns else None,
            options=options,
        )
        for call in calls
    ]
    results: dict[str, dict[str, Any]] = {}
    audio_started = time.perf_counter()
    progress = _progress(_map(jobs, options.workers), total=len(jobs), enabled=options.progress, desc="audio")
    for call, result in zip(calls, progress, strict=True):
        if result["ok"]:
            results[call.call_id] = result
        else:
            for origin in call.origins:
                rejects.append(Reject(origin, result["code"], result["reason"], call_id=call.call_id, audio=call.audio))
    audio_wall = time.perf_counter() - audio_started
    accepted = [call for call in calls if call.call_id in results]

    # 3. Split by call, build and write the rows.
    split = split_calls(accepted, options.test_fraction, options.seed)
    side_of = {cid: side for side, ids in split.items() for cid in ids}
    outputs: dict[str, list[dict[str, Any]]] = {f"{k}_{s}": [] for k in OUTPUT_KINDS for s in ("train", "test")}
    call_rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for call in accepted:
        side = side_of[call.call_id]
        for kind, rows in build_rows(call, results[call.call_id], options).items():
            outputs[f"{kind}_{side}"].extend(rows)
        call_rows[side].append(call_record(call, results[call.call_id]["duration"]))
    counts = {f"{name}.jsonl": write_jsonl(out / f"{name}.jsonl", rows) for name, rows in outputs.items()}
    for side, rows in call_rows.items():
        counts[f"calls_{side}.jsonl"] = write_jsonl(out / f"calls_{side}.jsonl", rows)
    write_json(out / "split.json", split)
    write_jsonl(out / "rejects.jsonl", (r.to_json() for r in rejects))

    # 4. Summary.
    n_rejected = len(rejects)
    # Every row read is either in an accepted call or in rejects.jsonl: nothing is dropped silently.
    assert sum(len(call.origins) for call in accepted) + n_rejected == n_records, "row accounting is off"
    durations = [results[c.call_id]["duration"] for c in accepted]
    total_audio = sum(durations)
    wall = time.perf_counter() - started
    summary = {
        "inputs": input_stats,
        "records": n_records,
        "records_accepted": sum(len(call.origins) for call in accepted),
        "records_rejected": n_rejected,
        "reject_fraction": round(n_rejected / n_records, 4) if n_records else 1.0,
        "max_reject_fraction": options.max_reject_fraction,
        "rejects_by_code": dict(sorted(Counter(r.code for r in rejects).items())),
        "fatal": fatal,
        "calls": {"accepted": len(accepted), "train": len(split["train"]), "test": len(split["test"])},
        "audio": {
            "total_s": round(total_audio, 2),
            "max_s": round(max(durations), 2) if durations else 0.0,
            "mean_s": round(total_audio / len(durations), 2) if durations else 0.0,
            "long_call_policy": options.long_call,
            "chunk_s": options.chunk_seconds,
            "calls_over_chunk": sum(1 for d in durations if d > options.chunk_seconds),
            "chunked_calls": sum(1 for r in results.values() if r["chunked"]),
            "truncated_calls": sum(1 for r in results.values() if r["truncated"]),
            "segments_written": sum(r["written"] for r in results.values()),
            "segments_reused": sum(r["reused"] for r in results.values()),
        },
        "rows": counts,
        "by_task_stage": _count(outputs, ("task", "conversation_stage")),
        "by_label": _count(outputs, ("task", "answers")),
        "timing": {
            "wall_s": round(wall, 3),
            "audio_wall_s": round(audio_wall, 3),
            "workers": options.workers,
            "audio_s_per_wall_s": round(total_audio / wall, 1) if wall > 0 else None,
        },
        "options": {k: v for k, v in asdict(options).items() if k != "progress"},
    }
    write_json(out / "summary.json", summary)
    summary["rejects"] = rejects  # for the caller's report; not serialised
    return summary


# Table order: tasks, stages and labels as prompt.py lists them (task "fraud" is also a label).
_TASK_ORDER = {v: i for i, v in enumerate(TASKS)}
_VALUE_ORDER = {v: i for i, v in enumerate((*STAGES, *SCENES, *FRAUD_LABELS, *FRAUD_TYPES))}


def _order(key: tuple[str, ...]) -> tuple:
    kind, task, value = key
    return kind, _TASK_ORDER.get(task, 99), task, _VALUE_ORDER.get(value, 99), value


def _count(outputs: dict[str, list[dict[str, Any]]], keys: tuple[str, str]) -> dict[str, dict[str, int]]:
    """``{"offline|scene|complete": {"train": n, "test": n}}`` over the GRPO prompt files."""
    table: dict[tuple[str, ...], dict[str, int]] = {}
    for kind in ("offline", "realtime"):
        for side in ("train", "test"):
            for row in outputs[f"{kind}_{side}"]:
                cell = table.setdefault((kind, *(str(row[k]) for k in keys)), {"train": 0, "test": 0})
                cell[side] += 1
    ordered = sorted(table.items(), key=lambda item: _order(item[0]))
    return {"|".join(key): cell for key, cell in ordered}


def _pad(text: str, width: int) -> str:
    """Left-justify by display width: CJK characters take two terminal columns."""
    shown = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, width - shown)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as plain-text tables (what the CLI prints)."""
    lines = []
    audio = summary["audio"]
    calls = summary["calls"]
    lines.append(
        f"calls: {calls['accepted']} accepted ({calls['train']} train / {calls['test']} test); "
        f"records: {summary['records']} read, {summary['records_rejected']} rejected "
        f"({100 * summary['reject_fraction']:.1f}%, limit {100 * summary['max_reject_fraction']:.1f}%)"
    )
    lines.append(
        f"audio: {audio['total_s']:.1f} s total, max {audio['max_s']:.1f} s, mean {audio['mean_s']:.1f} s; "
        f"{audio['calls_over_chunk']} calls over {audio['chunk_s']:g} s -> {audio['chunked_calls']} chunked, "
        f"{audio['truncated_calls']} truncated (--long-call {audio['long_call_policy']}); "
        f"segments {audio['segments_written']} written, {audio['segments_reused']} reused"
    )
    if summary["rejects_by_code"]:
        lines.append("rejects: " + ", ".join(f"{k}={v}" for k, v in summary["rejects_by_code"].items()))
    lines.append("")
    lines.append(f"{'file':<28}{'rows':>7}")
    for name, n in summary["rows"].items():
        lines.append(f"{name:<28}{n:>7}")
    for title, key in (("task / stage", "by_task_stage"), ("task / gold label", "by_label")):
        lines.append("")
        lines.append(f"{'prompt rows by ' + title:<40}{'train':>7}{'test':>7}")
        for name, cell in summary[key].items():
            lines.append(f"{_pad(name.replace('|', ' / '), 40)}{cell['train']:>7}{cell['test']:>7}")
    timing = summary["timing"]
    lines.append("")
    lines.append(
        f"time: {timing['wall_s']:.2f} s wall ({timing['workers']} workers), "
        f"{timing['audio_s_per_wall_s']} s of audio per wall second"
    )
    return "\n".join(lines)


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("need at least one fraction")
    return values


def build_parser() -> argparse.ArgumentParser:
    defaults = Options()
    p = argparse.ArgumentParser(
        prog="python -m safe_qaq.prepare",
        description="Convert call records (our metadata JSONL or the TeleAntiFraud JSON/JSONL release) "
        "into ms-swift jsonl for every training stage. See the README's Data section.",
    )
    p.add_argument("--input", action="append", required=True, help="input file; repeat for several")
    p.add_argument("--out", required=True, help="output folder (e.g. data/prepared)")
    p.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the train/test split")
    p.add_argument(
        "--long-call",
        choices=("chunk", "truncate"),
        default=defaults.long_call,
        help="calls over --chunk-seconds: split into consecutive <=30 s <audio> chunks, or keep the first 30 s",
    )
    p.add_argument("--chunk-seconds", type=float, default=defaults.chunk_seconds)
    p.add_argument(
        "--max-audios",
        type=int,
        default=defaults.max_audios,
        help="most <audio> chunks one row may carry (vLLM's limit_mm_per_prompt in the stage scripts); "
        "a longer call is rejected (too_many_chunks) unless --long-call truncate",
    )
    p.add_argument(
        "--prefix-fractions",
        type=_fractions,
        default=defaults.prefix_fractions,
        help="real-time prefixes: fractions of the call, each cut at the nearest turn boundary (the "
        "whole call is always added)",
    )
    p.add_argument("--early-max-fraction", type=float, default=defaults.early_max_fraction)
    p.add_argument("--complete-min-fraction", type=float, default=defaults.complete_min_fraction)
    p.add_argument("--min-prefix-seconds", type=float, default=defaults.min_prefix_seconds)
    p.add_argument(
        "--early-sft-answer",
        choices=("null", "gold"),
        default=defaults.early_sft_answer,
        help="SFT target of early_stage real-time rows: the null 'not enough audio' answer or the gold label",
    )
    p.add_argument("--max-reject-fraction", type=float, default=defaults.max_reject_fraction)
    p.add_argument("--min-duration", type=float, default=defaults.min_duration)
    p.add_argument("--max-duration", type=float, default=defaults.max_duration)
    p.add_argument(
        "--duration-tolerance",
        type=float,
        default=defaults.duration_tolerance,
        help="seconds a declared duration or the last turn end may differ from the audio",
    )
    p.add_argument("--silence-dbfs", type=float, default=defaults.silence_dbfs, help="RMS below this is 'silent'")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    p.add_argument("--no-progress", action="store_true")
    return p


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        test_fraction=args.test_fraction,
        seed=args.seed,
        long_call=args.long_call,
        chunk_seconds=args.chunk_seconds,
        max_audios=args.max_audios,
        prefix_fractions=args.prefix_fractions,
        early_max_fraction=args.early_max_fraction,
        complete_min_fraction=args.complete_min_fraction,
        min_prefix_seconds=args.min_prefix_seconds,
        early_sft_answer=args.early_sft_answer,
        max_reject_fraction=args.max_reject_fraction,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        duration_tolerance=args.duration_tolerance,
        silence_dbfs=args.silence_dbfs,
        workers=max(1, args.workers),
        progress=not args.no_progress,
    )
    try:
        options.check()
        for path in args.input:
            if not Path(path).is_file():
                raise ValueError(f"--input {path}: no such file")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out}: exists and is not a folder")
    except ValueError as exc:
        _stderr(f"error: {exc}")
        return 2
    summary = prepare(args.input, args.out, options)
    rejects = summary.pop("rejects")
    for reject in rejects[:MAX_LOGGED_REJECTS]:
        _stderr(f"REJECT {reject}")
    if len(rejects) > MAX_LOGGED_REJECTS:
        _stderr(f"... {len(rejects) - MAX_LOGGED_REJECTS} more rejects")
    if rejects:
        _stderr(f"warning: {len(rejects)} rows rejected; see {Path(args.out) / 'rejects.jsonl'}")
    print(format_summary(summary))
    for problem in summary["fatal"]:
        _stderr(f"error: {problem}")
    if summary["fatal"]:
        return 1
    if summary["reject_fraction"] > options.max_reject_fraction:
        _stderr(
            f"error: rejected {100 * summary['reject_fraction']:.1f}% of the rows, "
            f"above --max-reject-fraction {100 * options.max_reject_fraction:.1f}%"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
