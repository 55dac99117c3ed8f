"""Merging records into calls: records that point at the same audio file are one call.

So the scene / fraud / fraud-type files of the TeleAntiFraud release rebuild the three-round
conversation.  Records that disagree about a call are rejected, never resolved by a guess.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from safe_qaq.calls import Call, RowError, check_consistent
from safe_qaq.prepare.records import Record
from safe_qaq.prepare.sources import Origin


@dataclass(kw_only=True)
class MergedCall(Call):
    """Records merged by audio file; one call of the output (the first origin named it)."""

    id_explicit: bool
    origins: list[Origin]
    references: dict[str, str] = field(default_factory=dict)


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
    check_consistent(merged.label, merged.fraud_type)
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
