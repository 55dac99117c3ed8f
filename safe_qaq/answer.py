"""The one answer parser: rewards, the rejection filter and evaluation all read answers here.

A completion is expected to look like::

    <think>reasoning</think> <answer>```json {"is_fraud": true, "reason": "...", "confidence": 0.9} ```</answer>

What is extracted (docs/method.md#what-the-parser-reads):

* ``tags_ok`` -- ``<think>…</think>``, then only whitespace, then ``<answer>…</answer>``,
  anywhere in the text (what ``re.search(r"<think>.*?</think>\\s*<answer>.*?</answer>", s, re.S)``
  finds, computed in one linear pass instead of a backtracking regex).
* ``think`` -- inside the first ``<think>…</think>``, stripped (None when there is none).
* ``answer_block`` -- from the first ``<answer>`` to the next ``</answer>``.
* ``obj`` -- the first JSON object of the answer block: inside a ``` fence when there is
  one, else from the block's first ``{``; text after the object is ignored; raw newlines
  and tabs inside strings are accepted (``strict=False``).
* ``trailing_chars`` -- length of the whitespace-stripped text after the last ``</answer>``.
* ``think_tokens`` -- the reference's token estimate of the think text (see :func:`think_length`).

Nothing here guesses a label from free text: a label is read only from the answer JSON.
Every function is total (never raises on any ``str``) and linear in the text length.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from prompt import EARLY_STAGE, LABEL_FIELD, STAGES, TASK_LABELS, TASKS, gold_label_of_value, task_of_label

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
FENCE = "```"
STAGE_FIELD = "conversation_stage"


class _Missing:
    """Marks an absent JSON key, which is not the same as an explicit ``null``."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

_WHITESPACE = re.compile(r"\s*")
_CJK = re.compile("[\u4e00-\u9fff]")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
_PUNCTUATION = re.compile("[,.!?;:()\"'\\-，。！？；：（）“”‘’]")
_DECODER = json.JSONDecoder(strict=False)


_MARKS = ",.!?;:()\"'-，。！？；：（）“”‘’"


def _think_length_tables() -> tuple[bytes, bytes, bytes]:
    """Byte tables for :func:`think_length`: UTF-16 high/low byte -> group bits, and ASCII alnum -> 'a'."""
    groups: dict[int, set[int]] = {}  # high byte -> low bytes of the marks sharing it
    for mark in _MARKS:
        groups.setdefault(ord(mark) >> 8, set()).add(ord(mark) & 0xFF)
    high, low = bytearray(256), bytearray(256)
    for bit, (hi, lows) in enumerate(sorted(groups.items())):
        high[hi] |= 1 << bit
        for lo in lows:
            low[lo] |= 1 << bit
    cjk_bit = 1 << len(groups)  # U+4E00–U+9FFF: high byte 0x4E–0x9F, any low byte
    assert cjk_bit < 256, "one byte per unit"
    for hi in range(0x4E, 0xA0):
        high[hi] |= cjk_bit
    for lo in range(256):
        low[lo] |= cjk_bit
    alnum = bytes(0x61 if chr(c).isascii() and chr(c).isalnum() else 0x20 for c in range(256))
    return bytes(high), bytes(low), alnum


_MARK_HIGH, _MARK_LOW, _ALNUM_TO_SPACED = _think_length_tables()


def think_length(think: str | None) -> float:
    """Token estimate ``t`` of a think text, as the reference computes it.

    With L = characters, C = CJK characters (U+4E00–U+9FFF), W = runs of ``[A-Za-z0-9]+``,
    P = punctuation marks ``, . ! ? ; : ( ) " ' -`` and ``，。！？；：（）“”‘’``::

        t = C + W + P + (L - C - W - P) / 4

    >>> think_length("诈骗, 2 calls")   # C=2, W=2, P=1, L=11 -> 5 + 6/4
    6.5
    """
    if not think:
        return 0.0
    # The regex definition (_think_length_regex) costs ~25 µs on a 350-character think, most of a
    # reward step; these byte-table passes give the same integers in ~3 µs.
    # One UTF-16 unit per BMP character (a surrogate pair, bytes 0xD8-0xDF, for the rest).  Each
    # unit's high and low byte map to group bits; the unit is a CJK character or a punctuation
    # mark exactly when the two share a bit, so one AND + popcount counts C + P.
    units = think.encode("utf-16-le", "surrogatepass")
    high = int.from_bytes(units[1::2].translate(_MARK_HIGH), "little")
    low = int.from_bytes(units[::2].translate(_MARK_LOW), "little")
    cjk_punct = (high & low).bit_count()
    # Every non-ASCII character becomes one '?', which ends an alphanumeric run as it did; a run
    # starts wherever an 'a' follows a space (a leading space marks a run at the very start).
    words = (b" " + think.encode("ascii", "replace").translate(_ALNUM_TO_SPACED)).count(b" a")
    return cjk_punct + words + (len(think) - cjk_punct - words) / 4


def _think_length_regex(think: str | None) -> float:
    """:func:`think_length` as the definition reads (kept as the reference the fast one must equal)."""
    if not think:
        return 0.0
    cjk = len(_CJK.findall(think))
    words = len(_ALNUM_RUN.findall(think))
    punct = len(_PUNCTUATION.findall(think))
    return cjk + words + punct + (len(think) - cjk - words - punct) / 4


def _tags_in_order(text: str, think_close: int, answer_open: int, answer_close: int) -> bool:
    """``<think>.*?</think>\\s*<answer>.*?</answer>`` is found somewhere in ``text``.

    Linear: a match exists iff some ``</think>`` after the first ``<think>`` is followed by
    whitespace and ``<answer>``, and a ``</answer>`` comes after that ``<answer>``.  If the
    first such ``</think><answer>`` has no ``</answer>`` after it, no later one has either.
    ``think_close`` is the first ``</think>`` after the first ``<think>``; ``answer_open`` /
    ``answer_close`` are the first ``<answer>`` and the first ``</answer>`` after it (-1: none).
    """
    if think_close < 0 or answer_close < 0:
        return False
    close = think_close
    while True:
        after = close + len(THINK_CLOSE)
        if not text.startswith(ANSWER_OPEN, after):
            after = _WHITESPACE.match(text, after).end()
        if text.startswith(ANSWER_OPEN, after):
            # the first <answer> is closed by answer_close; a later one needs its own </answer>
            return after == answer_open or text.find(ANSWER_CLOSE, after + len(ANSWER_OPEN)) >= 0
        close = text.find(THINK_CLOSE, close + len(THINK_CLOSE))
        if close < 0:
            return False


def _json_object(block: str) -> tuple[dict[str, Any] | None, str | None]:
    """First JSON object of an answer block, and the reason when there is none."""
    segment = block
    fence = block.find(FENCE)
    if fence >= 0:
        inner = fence + len(FENCE)
        end = block.find(FENCE, inner)
        segment = block[inner:] if end < 0 else block[inner:end]
    brace = segment.find("{")
    if brace < 0:
        return None, "no JSON object in the answer" + (" fence" if fence >= 0 else "")
    try:
        obj, _ = _DECODER.raw_decode(segment, brace)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        return None, f"answer JSON does not parse: {str(exc)[:120]}"
    return obj, None


class ParsedAnswer(NamedTuple):
    """Everything the rewards, the filter and the evaluation read from one completion.

    Immutable (a named tuple: cheap to build, one per completion per step).  ``obj`` is
    shared between callers through the parse cache: treat it as read-only.
    """

    tags_ok: bool
    think: str | None
    answer_block: str | None
    obj: dict[str, Any] | None
    error: str | None  # why there is no answer JSON; None when ``obj`` parsed
    trailing_chars: int
    think_tokens: float

    def label(self, task: str) -> Any:
        """The raw JSON value of the task's label field: a value, ``None`` or :data:`MISSING`."""
        if self.obj is None:
            return MISSING
        return self.obj.get(LABEL_FIELD[task], MISSING)

    def stage(self) -> Any:
        """The raw ``conversation_stage`` value: a value, ``None`` or :data:`MISSING`."""
        return MISSING if self.obj is None else self.obj.get(STAGE_FIELD, MISSING)

    def prediction(self, task: str) -> str | None:
        """The predicted gold-label string (``True`` -> ``'fraud'``), or None if null/absent/invalid."""
        return gold_label_of_value(task, self.label(task))

    def schema_error(self, task: str) -> str | None:
        """Why the answer JSON is not valid for ``task`` (None when it is)."""
        if self.obj is None:
            return self.error or "no answer JSON"
        return schema_error(self.obj, task)


def schema_error(obj: Any, task: str) -> str | None:
    """Why ``obj`` is not a valid answer object for ``task`` (None when it is).

    Valid: the label key is present -- a string for scene / fraud type, a JSON boolean for
    ``is_fraud``; ``null`` only when ``conversation_stage`` is also present (the real-time
    schema, where ``conversation_stage`` must be a string); ``reason`` a string;
    ``confidence`` a finite number (not a boolean) in [0, 1].  Extra keys are fine.
    """
    if not isinstance(obj, Mapping):
        return f"answer JSON is a {type(obj).__name__}, not an object"
    field = LABEL_FIELD[task]
    if field not in obj:
        return f"missing key {field!r}"
    realtime = STAGE_FIELD in obj
    if realtime and not isinstance(obj[STAGE_FIELD], str):
        return f"{STAGE_FIELD!r} must be a string"
    value = obj[field]
    if value is None:
        if not realtime:
            return f"{field!r} is null outside the real-time schema"
    elif task == "fraud":
        if not isinstance(value, bool):
            return f"{field!r} must be a JSON boolean"
    elif not isinstance(value, str):
        return f"{field!r} must be a string"
    if not isinstance(obj.get("reason"), str):
        return "'reason' must be a string"
    confidence = obj.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        return "'confidence' must be a number"
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        return "'confidence' must be a finite number in [0, 1]"
    return None


@functools.lru_cache(maxsize=2048)
def parse_answer(text: str) -> ParsedAnswer:
    """Parse one completion.  Cached: the rewards of one GRPO step share a single parse."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    # Each tag is searched once; the tag-order check reuses these positions.
    think_open = text.find(THINK_OPEN)
    think_close = text.find(THINK_CLOSE, think_open + len(THINK_OPEN)) if think_open >= 0 else -1
    think = text[think_open + len(THINK_OPEN) : think_close].strip() if think_close >= 0 else None
    answer_open = text.find(ANSWER_OPEN)
    answer_close = text.find(ANSWER_CLOSE, answer_open + len(ANSWER_OPEN)) if answer_open >= 0 else -1
    if answer_close >= 0:
        block = text[answer_open + len(ANSWER_OPEN) : answer_close]
        obj, error = _json_object(block)
        if obj is not None and not isinstance(obj, dict):  # defensive: raw_decode at '{' gives a dict
            obj, error = None, "answer JSON is not an object"
    else:
        block, obj = None, None
        error = "no <answer> tag" if answer_open < 0 else "<answer> is not closed"
    last_close = text.rfind(ANSWER_CLOSE)
    trailing = len(text[last_close + len(ANSWER_CLOSE) :].strip()) if last_close >= 0 else 0
    return ParsedAnswer(
        _tags_in_order(text, think_close, answer_open, answer_close),
        think,
        block,
        obj,
        error,
        trailing,
        think_length(think),
    )


# ---------------------------------------------------------------------------
# Correctness: one notion for the accuracy reward, the rejection filter and evaluation
# ---------------------------------------------------------------------------


class Verdict(enum.Enum):
    """How an answer's label compares with the gold label (docs/method.md#correctness)."""

    CORRECT = "correct"  # label equals gold
    NULL_EARLY = "null_early"  # explicit null while the gold stage is early_stage
    INVALID = "invalid"  # not null, but outside the label set or of the wrong type
    WRONG = "wrong"  # an allowed label, not the gold one
    NULL = "null"  # explicit null at a later stage
    ABSENT = "absent"  # label key absent from the answer JSON
    NO_ANSWER = "no_answer"  # no answer JSON at all

    @property
    def is_correct(self) -> bool:
        return self in (Verdict.CORRECT, Verdict.NULL_EARLY)


class GoldError(ValueError):
    """A dataset row whose gold columns cannot be scored (names the reason)."""


def resolve_task(gold: Any, task: Any = None) -> str:
    """The task of a row: its ``task`` column when present, else the task of its gold label.

    Raises :class:`GoldError` when the gold label is unknown or belongs to another task.
    """
    inferred = task_of_label(gold)
    if task is None or task == "":
        if inferred is None:
            raise GoldError(f"gold label {gold!r} is not a known label and the row has no 'task'")
        return inferred
    if task not in TASKS:
        raise GoldError(f"unknown task {task!r}; expected one of {TASKS}")
    if gold not in TASK_LABELS[task]:
        raise GoldError(f"gold label {gold!r} is not a {task} label")
    return task


def resolve_stage(stage: Any) -> str:
    """The gold stage of a row; rows without one are offline, i.e. ``complete``."""
    if stage is None or stage == "":
        return STAGES[-1]
    if stage not in STAGES:
        raise GoldError(f"unknown conversation_stage {stage!r}; expected one of {STAGES}")
    return stage


def judge(parsed: ParsedAnswer, task: str, gold: str, gold_stage: str = STAGES[-1]) -> Verdict:
    """Compare a parsed answer with the gold label of its task."""
    if parsed.obj is None:
        return Verdict.NO_ANSWER
    value = parsed.label(task)
    if value is MISSING:
        return Verdict.ABSENT
    if value is None:
        return Verdict.NULL_EARLY if gold_stage == EARLY_STAGE else Verdict.NULL
    predicted = gold_label_of_value(task, value)
    if predicted is None:
        return Verdict.INVALID
    return Verdict.CORRECT if predicted == gold else Verdict.WRONG
