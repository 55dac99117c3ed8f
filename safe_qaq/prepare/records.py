"""The two record formats ``prepare`` reads: our metadata format and the TeleAntiFraud release.

A row becomes a :class:`Record` (a call's audio with some of its labels) or raises
:class:`~safe_qaq.calls.RowError`.  Our metadata format is parsed by the call model's one parser
(:meth:`safe_qaq.calls.Call.from_json`), as every reader of call files parses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prompt import FRAUD, NORMAL, TASKS, format_answer, task_of_label
from safe_qaq.answer import parse_answer
from safe_qaq.calls import Call, RowError, resolve_audio
from safe_qaq.prepare.sources import Origin, snippet


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


def parse_metadata_record(obj: dict[str, Any], origin: Origin, listed_in: Path) -> Record:
    """Our metadata format (data/calls/metadata.jsonl), checked by :meth:`safe_qaq.calls.Call.from_json`."""
    call = Call.from_json(obj, listed_in)
    return Record(
        origin=origin,
        audio=call.audio,
        call_id=call.call_id,
        scene=call.scene,
        label=call.label,
        fraud_type=call.fraud_type,
        turns=call.turns,
        duration=call.duration,
    )


def parse_reference_answer(answer: Any) -> tuple[str, str, str | None]:
    """``(task, gold label, reference answer or None)`` from a TeleAntiFraud ``answer``.

    A bare label (``"fraud"``, a scene, a fraud type) has no reference answer.  A full answer
    in our ``<think>…</think><answer>{json}</answer>`` format is kept as the reference when it
    is well formed; one with a bare label in ``<answer>`` keeps its reasoning as the think text.
    """
    if not isinstance(answer, str):
        raise RowError("unknown_label", f"'answer' must be a string, got {snippet(answer, 80)}")
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
        f"unknown label in 'answer' {snippet(text, 80)!r}; expected a scene, {FRAUD}/{NORMAL} or a fraud type",
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
