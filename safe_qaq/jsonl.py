"""JSONL for the whole pipeline: per-line reading with row-numbered errors, atomic writing, the resume contract.

Writing.  Every whole-file output (prepared rows, summaries, metrics, filtered samples) is
written beside its target and renamed into place (:func:`write_jsonl`, :func:`write_json`,
:func:`atomic_file`): a reader, or another node of a multi-node run, never sees half a file.

Reading.  Lines are decoded one at a time, so one bad byte, one malformed or absurdly nested
line rejects that line with a message naming the file and line, never the whole file with a
traceback.

Resuming.  Every long-running tool that appends to an output (``sample``, ``evaluate``'s
``predictions.jsonl``, ``live eval``'s ``live_results.jsonl``) follows one contract:

* ``<output>.meta.json`` holds the settings the output was written with: a fingerprint of the
  input (its content hash), of the model (path plus weight files) and every setting that
  changes results.  A rerun whose settings differ is refused with a message naming each
  difference, unless ``--overwrite`` discards the output (:func:`check_settings`);
* a kill leaves at most a torn last line (bytes after the last newline, wherever they stop,
  even inside a multibyte character).  It is cut off at the byte level before anything is
  appended (:func:`read_output`), so nothing is ever appended onto a fragment;
* nothing else is truncated or rewritten: a complete line that is not a record is refused, not
  dropped, and records beyond a smaller ``--limit`` stay in the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

META_SUFFIX = ".meta.json"


class JsonlError(ValueError):
    """A line of a JSONL file that is not a JSON object (names the file and line)."""


class ResumeError(ValueError):
    """An existing output that this run must not resume or touch (the message says why and what to do)."""


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def parse_line(raw: bytes, where: str) -> dict[str, Any]:
    """The JSON object of one raw line; :class:`JsonlError` naming ``where`` otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonlError(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonlError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise JsonlError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise JsonlError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise JsonlError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def iter_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | JsonlError]]:
    """``(line_number, record or JsonlError)`` per non-blank line: a bad line does not end the file."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, parse_line(raw, f"{path}:{number}")
            except JsonlError as exc:
                yield number, exc


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line; raise :class:`JsonlError` on a bad one."""
    for number, record in iter_lines(path):
        if isinstance(record, JsonlError):
            raise record
        yield number, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a (small) JSONL file; errors name the file and line."""
    return [record for _, record in iter_jsonl(path)]


def read_rows(path: str | Path, check=None, *, max_errors: int = 20) -> list[tuple[int, dict[str, Any]]]:
    """``(line, record)`` of every line of an input, checked as a whole before any work starts.

    ``check(record)`` returns a problem (a string) or None.  When any line is bad, raises one
    :class:`JsonlError` whose message lists the first ``max_errors`` problems, one line each.
    A missing file raises :class:`OSError` as usual.
    """
    rows, problems = [], []
    for number, record in iter_lines(path):
        problem = str(record) if isinstance(record, JsonlError) else (check(record) if check else None)
        if problem is None:
            rows.append((number, record))
            continue
        if not isinstance(record, JsonlError):
            problem = f"{path}:{number}: {problem}"
        problems.append(problem)
    if len(problems) == 1:
        raise JsonlError(problems[0])
    if problems:
        more = [f"... and {len(problems) - max_errors} more"] if len(problems) > max_errors else []
        raise JsonlError("\n".join([*problems[:max_errors], *more, f"{path}: {len(problems)} bad lines"]))
    return rows


def print_error(message: object) -> None:
    """``error: ...`` on stderr, one line per line of the message (one per bad row)."""
    for line in str(message).splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)


def os_error_message(exc: OSError) -> str:
    """``FILE: reason`` for a file that cannot be read or written (no traceback for a user's typo)."""
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line (UTF-8 text kept readable)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[str]]:
    """A text handle on a partial file beside ``path``, renamed onto ``path`` only if the block succeeds.

    The partial name carries the pid: the nodes of a multi-node run may write the same file at once.
    On an exception the partial file is removed and ``path`` keeps what it held.
    """
    path = Path(path)
    partial = Path(f"{path}.partial.{os.getpid()}")
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as JSONL, atomically; returns how many were written."""
    n = 0
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(dumps(row))
            n += 1
    return n


def write_json(path: str | Path, obj: Any, *, indent: int = 2) -> None:
    """Write one JSON document (UTF-8 text kept readable, a final newline), atomically."""
    with atomic_file(path) as handle:
        handle.write(json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


# ---------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Where an input is and what it holds.

    A content hash rather than size + mtime: it catches a file rewritten in place with the
    same size (or restored with ``cp -p``), and it costs little next to generation (prompt and
    call files are megabytes; SHA-256 reads about 1 GB/s).
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"path": str(Path(path).resolve()), "bytes": size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------
# The resume contract
# ---------------------------------------------------------------------------


def meta_path(output: str | Path) -> Path:
    return Path(str(output) + META_SUFFIX)


def read_meta(output: str | Path) -> dict[str, Any] | None:
    """The settings an output was written with, or None when there are none (or they are unreadable)."""
    try:
        meta = json.loads(meta_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is not _ABSENT else "(absent)"
    return text if len(text) <= width else text[: width - 3] + "..."


_ABSENT = object()


def settings_differences(previous: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """``key (old -> new)`` for every setting (dotted for nested ones) that differs."""
    old, new = _flatten(previous), _flatten(settings)
    keys = list(new) + [k for k in old if k not in new]
    return [
        f"{key} ({_short(old.get(key, _ABSENT))} -> {_short(new.get(key, _ABSENT))})"
        for key in keys
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]


def check_settings(output: str | Path, settings: dict[str, Any], *, overwrite: bool) -> None:
    """Allow appending to ``output`` under ``settings``, or raise :class:`ResumeError`.

    A non-empty output is resumed only when its ``.meta.json`` holds the same settings;
    ``overwrite`` deletes it instead.  Nothing is modified before the check passes.  On
    success the settings are (re)written beside the output.
    """
    output = Path(output)
    settings = json.loads(json.dumps(settings))  # the form they take on disk (tuples -> lists)
    if overwrite:
        output.unlink(missing_ok=True)
    elif output.exists() and output.stat().st_size > 0:
        previous = read_meta(output)
        if previous is None:
            raise ResumeError(
                f"{output} exists but {meta_path(output).name} (the settings it was written with) is missing or "
                "unreadable, so it cannot be resumed safely; use another output or pass --overwrite to discard it"
            )
        changed = settings_differences(previous, settings)
        if changed:
            raise ResumeError(
                f"{output} was written with other settings: {'; '.join(changed)}. "
                "Rerun with the same ones, use another output, or pass --overwrite to discard it"
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(meta_path(output), settings, indent=1)


def cut_torn_tail(output: str | Path) -> int:
    """Cut the bytes after the last newline (a line a kill left unfinished); return how many were cut.

    Works on bytes, so a tail that stops inside a multibyte UTF-8 character is cut like any other.
    """
    output = Path(output)
    if not output.exists():
        return 0
    with open(output, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end != size:
            handle.truncate(end)
    return size - end


def read_output(output: str | Path) -> list[dict[str, Any]]:
    """Records of an append-only output, after cutting a torn tail; ready to append to.

    Call after :func:`check_settings`.  A complete line that is not a record is not something a
    kill leaves: :class:`ResumeError` names it and the file is left as it is.
    """
    output = Path(output)
    cut = cut_torn_tail(output)
    if cut:
        print(f"{output}: cut {cut} bytes of an unfinished last line (an interrupted run)")
    if not output.exists():
        return []
    records = []
    for _, record in iter_lines(output):
        if isinstance(record, JsonlError):
            raise ResumeError(f"{record}; this tool never writes such a line: fix the file or pass --overwrite")
        records.append(record)
    return records


def append_records(handle: IO[str], records: list[dict[str, Any]]) -> None:
    """Write whole lines and push them to disk: a kill loses at most what is being written."""
    handle.write("".join(dumps(record) for record in records))
    handle.flush()
    os.fsync(handle.fileno())
