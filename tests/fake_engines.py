"""Deterministic stand-ins for :class:`safe_qaq.engine.Engine`, shared by the resume and bad-input tests.

Used in-process (monkeypatched over ``safe_qaq.engine.make_engine``) and in a child process that
the tests kill with SIGKILL (:func:`run_cli_with`).  The answers hold Chinese text, so every
record the CLIs write has multibyte characters to tear.
"""

from __future__ import annotations

import hashlib
import json
import time

import soundfile as sf

from prompt import FRAUD, LATE_STAGE, SCENES, TASKS, format_answer, get_prompt


def _digest(row: dict) -> str:
    return hashlib.sha1(json.dumps([row["messages"], row.get("audios")], ensure_ascii=False).encode()).hexdigest()[:8]


class EchoEngine:
    """Offline questions: a well-formed fraud answer whose reasoning names the request."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.sampling: list[dict] = []

    def generate(self, rows, *, n=1, **sampling):
        time.sleep(self.delay_s)
        self.requests += rows
        self.sampling.append(sampling)
        think = "听到转账和验证码，对方冒充客服。" * 20
        return [[format_answer("fraud", FRAUD, think=f"{think}{_digest(row)}")] * n for row in rows]


class ListenerEngine:
    """Real-time questions: the scene at once; the target task ``null`` until ``decide_after_s`` of audio."""

    def __init__(self, delay_s: float = 0.0, decide_after_s: float = 1e9):
        self.delay_s, self.decide_after_s = delay_s, decide_after_s
        self.requests: list[dict] = []
        self.sampling: list[dict] = []

    def generate(self, rows, *, n=1, **sampling):
        time.sleep(self.delay_s)
        self.requests += rows
        self.sampling.append(sampling)
        out = []
        for row in rows:
            last = row["messages"][-1]["content"]
            task = next(t for t in TASKS if last.endswith(get_prompt(t, "realtime")))
            heard = sum(sf.info(a).frames / sf.info(a).samplerate for a in row["audios"])
            reason = f"已听到{heard:.2f}秒，双方在谈转账。"
            if task == "scene":
                text = format_answer("scene", SCENES[0], mode="realtime", stage=LATE_STAGE, reason=reason)
            elif heard >= self.decide_after_s:
                text = format_answer(task, FRAUD, mode="realtime", stage=LATE_STAGE, reason=reason, confidence=0.9)
            else:
                text = format_answer(task, None, mode="realtime", stage="early_stage", reason=reason, confidence=0.2)
            out.append([text] * n)
        return out


ENGINES = {"echo": EchoEngine, "listener": ListenerEngine}

# A child process: swap the engine factory for a fake one, then run a CLI's main().
CHILD = """
import sys
import fake_engines
import safe_qaq.engine
engine = fake_engines.ENGINES[sys.argv[1]](delay_s=float(sys.argv[2]))
safe_qaq.engine.make_engine = lambda *args, **kwargs: engine
module = __import__("safe_qaq." + sys.argv[3], fromlist=["main"])
sys.exit(module.main(sys.argv[4:]))
"""
