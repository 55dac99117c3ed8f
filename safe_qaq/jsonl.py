"""Small JSONL helpers shared by the pipeline tools: streaming reads with row-numbered errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class JsonlError(ValueError):
    """A line of a JSONL file that is not a JSON object (names the file and line)."""


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line; raise :class:`JsonlError` on a bad one."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JsonlError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise JsonlError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a (small) JSONL file; errors name the file and line."""
    return [record for _, record in iter_jsonl(path)]


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line (UTF-8 text kept readable)."""
    return json.dumps(record, ensure_ascii=False) + "\n"
