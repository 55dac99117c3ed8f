"""SAFE-QAQ reward functions: the one registry, pure Python (no ms-swift import).

The top-level ``rewards.py`` is the ms-swift plugin that puts this registry into ``swift.rewards.orms``
(``swift rlhf --external_plugins rewards.py --reward_funcs NAME ...``); scoring, tests and benchmarks import this
module without the trainer. Formulas with worked examples: docs/method.md#rewards. ms-swift builds each class as
``cls(args=GRPOConfig)`` and calls it with ``completions``, ``messages`` and every extra dataset column as keyword
lists. These rewards read:

=========================  ==========================================  ================================
name                       what it scores                              dataset columns
=========================  ==========================================  ================================
prompt_format              tags + answer-JSON schema, max 1.0          answers, task (optional)
adaptive_classification    label vs gold, +5 / 0 / -3                  answers, conversation_stage, task
stage_classification       real-time stage vs gold, +5 / 0 / -3        conversation_stage
think_length_reward_200    think-length bonus up to 5 (T=200)          --
think_length_reward_300    think-length bonus up to 5 (T=300)          --
think_length_penalty_200   LCRL length penalty (S=200, M=5)            --
think_length_penalty_300   LCRL length penalty (S=300, M=5)            --
think_length_penalty_500   LCRL length penalty (S=500, M=7)            --
=========================  ==========================================  ================================

The parametrized rewards come from factories, one call per parameter set (:func:`get_think_length_reward`,
:func:`get_think_length_penalty`); the eight names above are the published scripts'. Another size (the CPU toy's
S = 16, say) is one more factory call registered by whoever needs it (:func:`register`), never a recipe default.

``answers`` is the gold label (a scene, ``fraud``/``normal`` or a fraud type);
``conversation_stage`` the gold stage (missing = ``complete``); ``task`` is optional
(``scene``/``fraud``/``fraud_type``) since the three label sets are disjoint.  A batch may
mix tasks and stages: every sample is scored against its own row.

Rewards never raise inside the trainer.  A sample that cannot be scored (an unknown gold
label, a column of the wrong length, any unexpected error) gets the reward's ``floor`` and a
warning; every completion of that prompt gets the same floor, so GRPO's group-relative
advantage is zero and the row teaches nothing rather than crashing the run.

All rewards read completions through :func:`safe_qaq.answer.parse_answer`, which is cached:
the rewards of one step parse each completion once.

Per-sample logging: set ``SAFE_QAQ_REWARD_LOG=/path/rewards.jsonl`` and every reward call
appends one JSON line per sample it scored (constant cost per call).  Each process logs the
completions it scored: rank 0 (or a single process) into that path, rank N into
``/path/rewards.rankN.jsonl`` beside it (:func:`rank_log_path`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import IO, Any, ClassVar

from prompt import COMPLETE, STAGES, TASKS
from safe_qaq.answer import MISSING, ParsedAnswer, Verdict, judge, parse_answer, resolve_stage, resolve_task

logger = logging.getLogger("safe_qaq.rewards")

ACCURACY_POINTS: dict[Verdict, float] = {
    Verdict.CORRECT: 5.0,
    Verdict.NULL_EARLY: 5.0,
    Verdict.INVALID: -3.0,
    Verdict.WRONG: 0.0,
    Verdict.NULL: 0.0,
    Verdict.ABSENT: 0.0,
    Verdict.NO_ANSWER: 0.0,
}
LOG_ENV = "SAFE_QAQ_REWARD_LOG"


# ---------------------------------------------------------------------------
# Pure scoring functions (one sample each)
# ---------------------------------------------------------------------------


def format_score(parsed: ParsedAnswer, task: str) -> float:
    """``+0.5`` tags in order, ``+0.5`` more for a valid answer JSON, ``-0.001`` per trailing char.

    score = 0                                   without ``<think>…</think>\\s*<answer>…</answer>``
          = 0.5 + 0.5·[JSON valid for task] − 0.001·n   otherwise,
    n = length of the stripped text after the last ``</answer>``.

    >>> ok = '<think>a</think><answer>{"scene": "外卖服务", "reason": "r", "confidence": 1}</answer>'
    >>> format_score(parse_answer(ok), "scene")
    1.0
    >>> round(format_score(parse_answer('<think>a</think><answer>{"scene": 3}</answer> xyz'), "scene"), 3)
    0.497
    """
    if not parsed.tags_ok:
        return 0.0
    score = 0.5 if parsed.schema_error(task) else 1.0
    return score - 0.001 * parsed.trailing_chars


def accuracy_score(parsed: ParsedAnswer, task: str, gold: str, gold_stage: str = COMPLETE) -> float:
    """``+5`` correct (or explicit ``null`` at ``early_stage``), ``-3`` invalid label, else ``0``.

    >>> accuracy_score(parse_answer('<answer>{"is_fraud": true}</answer>'), "fraud", "fraud")
    5.0
    >>> accuracy_score(parse_answer('<answer>{"is_fraud": "yes"}</answer>'), "fraud", "fraud")
    -3.0
    >>> accuracy_score(parse_answer('<answer>{"is_fraud": null}</answer>'), "fraud", "fraud", "early_stage")
    5.0
    """
    return ACCURACY_POINTS[judge(parsed, task, gold, gold_stage)]


def stage_score(parsed: ParsedAnswer, gold_stage: str) -> float:
    """Real-time stage reward.

    score = 0   no answer JSON
          = −3  ``conversation_stage`` present, non-null and not a stage
          = −3  gold or predicted stage is ``complete`` and no label field has a non-null value
          = +5  predicted stage == gold stage
          = 0   otherwise

    >>> early = '<answer>{"conversation_stage": "early_stage", "is_fraud": null}</answer>'
    >>> stage_score(parse_answer(early), "early_stage")
    5.0
    >>> stage_score(parse_answer('<answer>{"conversation_stage": "complete", "is_fraud": null}</answer>'), "complete")
    -3.0
    """
    if parsed.obj is None:
        return 0.0
    predicted = parsed.stage()
    if predicted is not MISSING and predicted is not None and predicted not in STAGES:
        return -3.0
    has_label = any(parsed.label(task) is not None and parsed.label(task) is not MISSING for task in TASKS)
    if (gold_stage == COMPLETE or predicted == COMPLETE) and not has_label:
        return -3.0
    return 5.0 if predicted == gold_stage else 0.0


def think_length_bonus(parsed: ParsedAnswer, target: int) -> float:
    """Reward for thinking at all, saturating at ``target`` estimated tokens (used without SFT).

    score = 0                                  no think block, or t = 0
          = max(0.5, 5·ln(t+1)/ln(T+1))        0 < t ≤ T
          = 5                                  t > T

    >>> think_length_bonus(parse_answer("<think>" + "诈" * 200 + "</think>"), 200)
    5.0
    """
    t = parsed.think_tokens
    if parsed.think is None or t <= 0:
        return 0.0
    if t > target:
        return 5.0
    return max(0.5, 5.0 * math.log(t + 1) / math.log(target + 1))


def think_length_penalty(parsed: ParsedAnswer, start: int, cap: float) -> float:
    """LCRL penalty for thinking longer than ``start`` estimated tokens.

    score = 0                                              no think block, or t ≤ S
          = −clamp(M·ln(t−S+10)/ln(1000), 0.1·M, M)        t > S
    (a jump to ≈ −M/3 just past S, reaching −M at t = S + 990).

    >>> round(think_length_penalty(parse_answer("<think>" + "诈" * 201 + "</think>"), 200, 5), 3)
    -1.736
    """
    t = parsed.think_tokens
    if parsed.think is None or t <= start:
        return 0.0
    return -min(max(cap * math.log(t - start + 10) / math.log(1000), 0.1 * cap), cap)


# ---------------------------------------------------------------------------
# Per-sample JSONL log (opt-in, append-only, one file per process)
# ---------------------------------------------------------------------------


def rank_log_path(path: str, rank: str | None) -> str:
    """Where the process of global rank ``rank`` logs: ``path`` itself on rank 0 (and in a
    single-process run), ``<stem>.rank<N><suffix>`` beside it on rank N.

    One file per rank because ms-swift scores each rank's own completions: logging on rank 0
    alone would lose the others', and ranks appending to one shared file could interleave
    partial lines (and cannot, over NFS, safely share an append at all).

    >>> rank_log_path("/logs/rewards.jsonl", "2"), rank_log_path("/logs/rewards.jsonl", None)
    ('/logs/rewards.rank2.jsonl', '/logs/rewards.jsonl')
    """
    rank = (rank or "").strip()
    if not (rank.isascii() and rank.isdigit()) or int(rank) == 0:
        return path
    stem, suffix = os.path.splitext(path)
    return f"{stem}.rank{int(rank)}{suffix}"


class RewardLog:
    """Appends one JSON line per scored sample; the file is opened once, never re-read."""

    def __init__(self, path: str | None):
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> RewardLog:
        """``$SAFE_QAQ_REWARD_LOG`` for this process (``RANK`` is torchrun's global rank); off when unset."""
        path = os.environ.get(LOG_ENV) or None
        return cls(rank_log_path(path, os.environ.get("RANK")) if path else None)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.path is None or not records:
            return
        text = "".join(_ENCODER.encode(r) + "\n" for r in records)
        with self._lock:
            if self._file is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                # errors="replace": a completion may hold a lone surrogate, which strict UTF-8 cannot write
                self._file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - kept open
            self._file.write(text)
            self._file.flush()


_LOG: RewardLog | None = None
# What json.dumps(ensure_ascii=False) uses, built once rather than per record.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def _reward_log() -> RewardLog:
    global _LOG
    if _LOG is None:
        _LOG = RewardLog.from_env()
    return _LOG


# ---------------------------------------------------------------------------
# Reward classes (ms-swift's calling convention; the plugin adds its ORM base)
# ---------------------------------------------------------------------------


def _column(values: Any, n: int, name: str) -> list[Any]:
    """A dataset column as a list of length n (absent -> Nones; wrong length -> error markers)."""
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        values = [values] * n
    if len(values) != n:
        return [_BadColumn(f"column {name!r} has {len(values)} values for {n} completions")] * n
    return list(values)


class _BadColumn:
    def __init__(self, reason: str):
        self.reason = reason


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):  # a chat message
        return str(completion.get("content") or "")
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return "" if completion is None else str(completion)


class SafeQaqReward:
    """Shared driver: per-sample scoring against each row's own gold, never raising."""

    name: ClassVar[str]
    floor: ClassVar[float]  # the score of a sample that cannot be scored
    needs_gold: ClassVar[bool] = True

    def __init__(self, args: Any = None, **kwargs: Any):
        self.args = args  # the trainer's config (ms-swift passes it); unused by these rules
        self._warned: set[str] = set()

    def score(self, parsed: ParsedAnswer, task: str | None, gold: str | None, stage: str) -> float:
        raise NotImplementedError

    def __call__(
        self,
        completions: Sequence[Any],
        answers: Any = None,
        conversation_stage: Any = None,
        task: Any = None,
        **kwargs: Any,
    ) -> list[float]:
        try:
            n = len(completions)
        except TypeError:
            self._warn("completions is not a list")
            return []
        golds = _column(answers, n, "answers")
        stages = _column(conversation_stage, n, "conversation_stage")
        tasks = _column(task, n, "task")
        log = _reward_log()
        logging_on, state = log.enabled, kwargs.get("trainer_state")
        resolved: dict[tuple[Any, Any, Any], tuple[str | None, str | None, str]] = {}
        score, gold_of_row, isfinite = self.score, self._gold_of_row, math.isfinite  # hot loop
        scores: list[float] = []
        records: list[dict[str, Any]] = []
        for i in range(n):
            text = ""
            try:
                completion = completions[i]
                text = completion if type(completion) is str else _completion_text(completion)
                row_task, gold, stage = gold_of_row(resolved, golds[i], stages[i], tasks[i])
                value = float(score(parse_answer(text), row_task, gold, stage))
                if not isfinite(value):
                    raise ValueError(f"non-finite score {value}")
            except Exception as exc:  # a reward must never take the trainer down
                self._warn(f"{type(exc).__name__}: {exc}")
                value = self.floor
            scores.append(value)
            if logging_on:
                records.append(self._record(i, text, golds[i], stages[i], value, state))
        try:
            log.write(records)
        except Exception as exc:  # a full disk must not take the trainer down either
            self._warn(f"reward log not written: {type(exc).__name__}: {exc}")
        return scores

    def _gold_of_row(self, resolved: dict, gold: Any, stage: Any, task: Any) -> tuple[str | None, str | None, str]:
        """:meth:`_gold`, memoised per call: a GRPO batch repeats each row's columns G times."""
        key = (gold, stage, task)
        try:
            return resolved[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable cell: resolve it uncached (it will fail the same way)
            return self._gold(gold, stage, task)
        # Only str/None cells resolve without raising, so equal keys always mean equal columns.
        resolved[key] = result = self._gold(gold, stage, task)
        return result

    def _gold(self, gold: Any, stage: Any, task: Any) -> tuple[str | None, str | None, str]:
        for value in (gold, stage, task):
            if isinstance(value, _BadColumn):
                raise ValueError(value.reason)
        if not self.needs_gold:
            return None, None, COMPLETE
        return resolve_task(gold, task), gold, resolve_stage(stage)

    def _record(self, i: int, text: str, gold: Any, stage: Any, value: float, state: Any) -> dict[str, Any]:
        return {
            "time": round(time.time(), 3),
            "step": getattr(state, "global_step", None),
            "reward": self.name,
            "index": i,
            "answers": gold if isinstance(gold, (str, type(None))) else str(gold),
            "conversation_stage": stage if isinstance(stage, (str, type(None))) else str(stage),
            "score": value,
            "completion": text,
        }

    def _warn(self, reason: str) -> None:
        if reason not in self._warned and len(self._warned) < 100:
            self._warned.add(reason)
            logger.warning("%s: sample scored %s (floor): %s", self.name, self.floor, reason)


class PromptFormat(SafeQaqReward):
    """``prompt_format``: see :func:`format_score`. Range: at most 1.0 (0.5 − 0.001·n with trailing text)."""

    name = "prompt_format"
    floor = 0.0

    def score(self, parsed, task, gold, stage):
        return format_score(parsed, task)


class AdaptiveClassification(SafeQaqReward):
    """``adaptive_classification``: see :func:`accuracy_score`. Range: {−3, 0, 5}."""

    name = "adaptive_classification"
    floor = -3.0

    def score(self, parsed, task, gold, stage):
        return accuracy_score(parsed, task, gold, stage)


class StageClassification(SafeQaqReward):
    """``stage_classification``: see :func:`stage_score`. Range: {−3, 0, 5}."""

    name = "stage_classification"
    floor = -3.0

    def _gold(self, gold, stage, task):
        if isinstance(stage, _BadColumn):
            raise ValueError(stage.reason)
        return None, None, resolve_stage(stage)  # only the stage matters here

    def score(self, parsed, task, gold, stage):
        return stage_score(parsed, stage)


class ThinkLengthReward(SafeQaqReward):
    """Think-length bonus: see :func:`think_length_bonus`. Range: {0} ∪ [0.5, 5]."""

    target: ClassVar[int]
    floor = 0.0
    needs_gold = False

    def score(self, parsed, task, gold, stage):
        return think_length_bonus(parsed, self.target)


class ThinkLengthPenalty(SafeQaqReward):
    """LCRL length penalty: see :func:`think_length_penalty`. Range: {0} ∪ [−M, −0.1·M]."""

    start: ClassVar[int]
    cap: ClassVar[float]
    needs_gold = False

    def score(self, parsed, task, gold, stage):
        return think_length_penalty(parsed, self.start, self.cap)


def get_think_length_reward(target: int) -> type[ThinkLengthReward]:
    """The think-length bonus saturating at ``target`` tokens, registered as ``think_length_reward_<target>``.

    >>> reward = get_think_length_reward(300)
    >>> reward.name, reward.__name__, reward()(["<think>" + "诈" * 400 + "</think>"])
    ('think_length_reward_300', 'ThinkLengthReward300', [5.0])
    """
    return type(f"ThinkLengthReward{target}", (ThinkLengthReward,), {
        "name": f"think_length_reward_{target}", "target": target, "__module__": __name__,
        "__doc__": f"``think_length_reward_{target}``: :func:`think_length_bonus` with T = {target}.",
    })  # fmt: skip


def get_think_length_penalty(start: int, cap: float = 5.0) -> type[ThinkLengthPenalty]:
    """The LCRL penalty past ``start`` tokens, capped at ``cap``, named ``think_length_penalty_<start>``.

    The class name (``ThinkLengthPenalty<start>``) is what ms-swift's logs show (``rewards/<class>/mean``).

    >>> toy = get_think_length_penalty(16, 5)  # the CPU toy's size: one call, registered by the toy
    >>> one_item = "<think>先听身份。通话中出现了典型的诈骗话术。</think>"  # t = 5 + 14
    >>> toy.name, toy.floor, round(toy()([one_item])[0], 2)
    ('think_length_penalty_16', -5.0, -1.86)
    """
    return type(f"ThinkLengthPenalty{start}", (ThinkLengthPenalty,), {
        "name": f"think_length_penalty_{start}", "start": start, "cap": float(cap), "floor": -float(cap),
        "__module__": __name__,
        "__doc__": f"``think_length_penalty_{start}``: :func:`think_length_penalty` with S = {start}, M = {cap:g}.",
    })  # fmt: skip


#: The one registry of reward names (the names the recipe passes to ``--reward_funcs``).
REWARDS: dict[str, type[SafeQaqReward]] = {}


def register(cls: type[SafeQaqReward]) -> type[SafeQaqReward]:
    """Add a reward class under its ``name``. The same factory call again (a plugin file imported twice) replaces
    it; another reward under a taken name is an error."""
    if REWARDS.get(cls.name, cls).__name__ != cls.__name__:
        raise ValueError(f"reward name {cls.name!r} is already registered to {REWARDS[cls.name].__qualname__}")
    REWARDS[cls.name] = cls
    return cls


for _cls in (
    PromptFormat,
    AdaptiveClassification,
    StageClassification,
    get_think_length_reward(200),
    get_think_length_reward(300),
    get_think_length_penalty(200, 5),
    get_think_length_penalty(300, 5),
    get_think_length_penalty(500, 7),
):
    register(_cls)


def log_key(name: str) -> str:
    """The key ms-swift's ``logging.jsonl`` uses for the mean of reward ``name``.

    >>> log_key("adaptive_classification")
    'rewards/AdaptiveClassification/mean'
    """
    return f"rewards/{REWARDS[name].__name__}/mean"
