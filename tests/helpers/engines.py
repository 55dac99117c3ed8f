"""The one stand-in for :class:`safe_qaq.engine.Engine` in the tests, and the answer policies it is given.

:class:`FakeEngine` records every request and sampling setting and answers each row with a policy
``answer(row, index=j, k=k, sampling=...)`` (``j``: the row's place in the batch, ``k``: the
completion number).  Used in-process (monkeypatched over ``safe_qaq.engine.make_engine``) and in a
child process that the tests kill with SIGKILL (:data:`CHILD`).  The answers hold Chinese text, so
every record the CLIs write has multibyte characters to tear.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable

import soundfile as sf

from prompt import FRAUD, LATE_STAGE, SCENES, TASKS, format_answer, get_prompt

Answer = Callable[..., str]


class FakeEngine:
    """``generate(rows, n=..., **sampling)``: ``n`` texts per row from ``answer``; a deterministic engine.

    ``delay_s`` slows each call (so a kill lands mid-run); after ``fail_after_calls`` calls it raises
    ``KeyboardInterrupt`` (a kill seen from inside the process).
    """

    def __init__(self, answer: Answer, *, delay_s: float = 0.0, fail_after_calls: int | None = None):
        self.answer, self.delay_s, self.fail_after_calls = answer, delay_s, fail_after_calls
        self.calls = 0
        self.requests: list[dict] = []
        self.sampling: list[dict] = []

    def generate(self, rows, *, n=1, **sampling):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("killed")
        time.sleep(self.delay_s)
        self.calls += 1
        self.requests += rows
        self.sampling.append(sampling)
        return [[self.answer(row, index=j, k=k, sampling=sampling) for k in range(n)] for j, row in enumerate(rows)]


def _digest(row: dict) -> str:
    return hashlib.sha1(json.dumps([row["messages"], row.get("audios")], ensure_ascii=False).encode()).hexdigest()[:8]


def echo_answer(row: dict, **_) -> str:
    """Offline questions: a well-formed fraud answer whose reasoning names the request."""
    think = "听到转账和验证码，对方冒充客服。" * 20
    return format_answer("fraud", FRAUD, think=f"{think}{_digest(row)}")


def heard_seconds(row: dict) -> float:
    return sum(sf.info(a).frames / sf.info(a).samplerate for a in row["audios"])


def realtime_task(row: dict) -> str:
    last = row["messages"][-1]["content"]
    return next(t for t in TASKS if last.endswith(get_prompt(t, "realtime")))


def listener(
    label: str = FRAUD,
    decide_after_s: float = math.inf,
    *,
    conf: float = 0.9,
    early_conf: float = 0.2,
    scene_conf: float = 1.0,
    garbage_before: bool = False,
    reasons: bool = True,
) -> Answer:
    """Real-time questions: the scene at once; the target task null until ``decide_after_s`` of audio, then ``label``.

    ``garbage_before``: text that is not an answer instead of null; ``reasons``: each answer says what it heard.
    """

    def answer(row: dict, **_) -> str:
        task, heard = realtime_task(row), heard_seconds(row)
        reason = f"已听到{heard:.2f}秒，双方在谈转账。" if reasons else ""
        if task == "scene":
            return format_answer(
                "scene", SCENES[0], mode="realtime", stage=LATE_STAGE, reason=reason, confidence=scene_conf
            )
        if heard >= decide_after_s:
            return format_answer(task, label, mode="realtime", stage=LATE_STAGE, reason=reason, confidence=conf)
        if garbage_before:
            return "<think>hmm</think> not sure"
        return format_answer(task, None, mode="realtime", stage="early_stage", reason=reason, confidence=early_conf)

    return answer


def echo_engine(delay_s: float = 0.0) -> FakeEngine:
    return FakeEngine(echo_answer, delay_s=delay_s)


def listener_engine(*args, delay_s: float = 0.0, **kwargs) -> FakeEngine:
    """A :class:`FakeEngine` answering with :func:`listener` (its arguments)."""
    return FakeEngine(listener(*args, **kwargs), delay_s=delay_s)


ENGINES = {"echo": echo_engine, "listener": listener_engine}

# A child process: swap the engine factory for a fake one, then run a CLI's main().
CHILD = """
import sys
from tests.helpers.engines import ENGINES
import safe_qaq.engine
engine = ENGINES[sys.argv[1]](delay_s=float(sys.argv[2]))
safe_qaq.engine.make_engine = lambda *args, **kwargs: engine
module = __import__("safe_qaq." + sys.argv[3], fromlist=["main"])
sys.exit(module.main(sys.argv[4:]))
"""
