"""Reading an input file row by row, whatever its shape: a JSON list or JSON Lines, told apart by sniffing.

Each row comes with its :class:`Origin` (file and row) and either its parsed JSON value or the
:class:`~safe_qaq.calls.RowError` that rejects it; a file whose rows cannot be told apart is one
error row (row 0).  What a row means is :mod:`safe_qaq.prepare.records`' job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safe_qaq.calls import RowError


@dataclass(frozen=True)
class Origin:
    """Where a record came from: input file and 1-based line (JSONL) or list index (JSON list)."""

    input: str
    row: int

    def __str__(self) -> str:
        return f"{self.input}:{self.row}"


@dataclass(frozen=True)
class Reject:
    """A row that is not used, and why: one line of ``rejects.jsonl``."""

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
        where = f" [audio: {snippet(self.audio, 200)}]" if self.audio else ""
        return f"{self.origin}: {self.reason}{where}"


def snippet(value: Any, limit: int = 500) -> str:
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


def iter_input_rows(path: Path) -> Iterator[tuple[Origin, Any, RowError | None]]:
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
                yield Origin(name, index), snippet(item), RowError("bad_encoding", f"record text is {_NOT_UTF8}")
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
            yield origin, snippet(raw.decode("utf-8", "backslashreplace")), RowError("bad_encoding", reason)
            continue
        obj, error = _parse(line, "line")
        yield origin, (snippet(line) if error else obj), error
