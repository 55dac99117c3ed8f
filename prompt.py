"""Prompts, label sets and conversation builders for SAFE-QAQ.

This module is the single source of truth for every label string, every prompt
text and the shape of the multi-round conversations.  Edit the texts here to
change what the model is asked; nothing else in the project spells a label.

Three tasks are asked as three rounds of one conversation over the same audio:

    round 1  scene       -> answer field ``scene``
    round 2  fraud       -> answer field ``is_fraud`` (JSON bool)
    round 3  fraud_type  -> answer field ``fraud_type`` (fraud calls only)

Each task has three prompt variants (``MODES``):

    offline   slow thinking: ``<think>...</think><answer>{json}</answer>``
    realtime  as offline, plus ``conversation_stage`` and a ``null`` label when
              the audio heard so far is not enough
    direct    no thinking, only ``<answer>{json}</answer>``
"""

from __future__ import annotations

import json
from collections.abc import Sequence

# ---------------------------------------------------------------------------
# Labels (exact strings; docs/method.md#tasks-and-labels)
# ---------------------------------------------------------------------------

SCENES: tuple[str, ...] = ("订餐服务", "咨询客服", "预约服务", "交通咨询", "日常购物", "打车服务", "外卖服务")
FRAUD = "fraud"
NORMAL = "normal"
FRAUD_LABELS: tuple[str, ...] = (FRAUD, NORMAL)
FRAUD_TYPES: tuple[str, ...] = (
    "投资诈骗",
    "钓鱼诈骗",
    "身份盗窃",
    "彩票诈骗",
    "银行诈骗",
    "绑架诈骗",
    "客服诈骗",
    "邮件诈骗",
)

#: ASCII handles for the scenes and fraud types, for file names and code (the data generators); same order.
SCENE_HANDLES: dict[str, str] = dict(
    zip(("food_ordering", "customer_service", "appointment", "transport", "shopping", "taxi", "delivery"), SCENES,
        strict=True)
)  # fmt: skip
FRAUD_TYPE_HANDLES: dict[str, str] = dict(
    zip(("investment", "phishing", "identity_theft", "lottery", "bank", "kidnapping", "fake_service", "email"),
        FRAUD_TYPES, strict=True)
)  # fmt: skip

EARLY_STAGE = "early_stage"
LATE_STAGE = "late_stage"
COMPLETE = "complete"
STAGES: tuple[str, ...] = (EARLY_STAGE, LATE_STAGE, COMPLETE)

TASKS: tuple[str, ...] = ("scene", "fraud", "fraud_type")
MODES: tuple[str, ...] = ("offline", "realtime", "direct")

#: JSON key that carries each task's label in an answer.
LABEL_FIELD: dict[str, str] = {"scene": "scene", "fraud": "is_fraud", "fraud_type": "fraud_type"}
#: Gold label strings (the dataset's ``answers`` column) allowed per task.
TASK_LABELS: dict[str, tuple[str, ...]] = {"scene": SCENES, "fraud": FRAUD_LABELS, "fraud_type": FRAUD_TYPES}

# The three label sets are disjoint, so a gold label alone names its task.
_TASK_OF_LABEL: dict[str, str] = {label: task for task, labels in TASK_LABELS.items() for label in labels}
assert len(_TASK_OF_LABEL) == sum(len(v) for v in TASK_LABELS.values()), "label sets must be disjoint"


def task_of_label(label: object) -> str | None:
    """Task a gold label belongs to (``'外卖服务'`` -> ``'scene'``), or None if unknown."""
    return _TASK_OF_LABEL.get(label) if isinstance(label, str) else None


def answer_value(task: str, gold_label: str) -> str | bool:
    """The JSON value a correct answer carries for a gold label (``fraud`` -> ``True``)."""
    if gold_label not in TASK_LABELS[task]:
        raise ValueError(f"{gold_label!r} is not a {task} label; expected one of {TASK_LABELS[task]}")
    if task == "fraud":
        return gold_label == FRAUD
    return gold_label


def gold_label_of_value(task: str, value: object) -> str | None:
    """Inverse of :func:`answer_value`: the gold label string a predicted JSON value means.

    Returns None when the value is not an allowed label of the task (wrong type included:
    ``is_fraud: "true"`` is not ``True``).
    """
    if task == "fraud":
        if value is True:
            return FRAUD
        if value is False:
            return NORMAL
        return None
    if isinstance(value, str) and value in TASK_LABELS[task]:
        return value
    return None


# ---------------------------------------------------------------------------
# Prompt texts
# ---------------------------------------------------------------------------

SYSTEM_PROMPT = "你是一名电信反诈骗分析助手，能够直接听取电话录音，分析通话双方的身份、意图和话术，并给出结构化的判断。"

_CHOICES = {
    "scene": "可选场景：" + "、".join(SCENES) + "。",
    "fraud": "请判断这通电话是否为诈骗电话。",
    "fraud_type": "可选诈骗类型：" + "、".join(FRAUD_TYPES) + "。",
}
_QUESTION = {
    "scene": "请仔细聆听这段通话录音，判断这通电话所属的场景。",
    "fraud": "请仔细聆听这段通话录音中双方的话术细节。",
    "fraud_type": "这通电话已被判断为诈骗电话，请进一步判断它属于哪一种诈骗类型。",
}
_FIELD_HINT = {
    "scene": '"scene": "场景名称"',
    "fraud": '"is_fraud": true 或 false',
    "fraud_type": '"fraud_type": "诈骗类型名称"',
}
_REALTIME_FIELD_HINT = {
    "scene": '"scene": "场景名称或 null"',
    "fraud": '"is_fraud": true、false 或 null',
    "fraud_type": '"fraud_type": "诈骗类型名称或 null"',
}
_THINK_INSTRUCTION = (
    "请先在<think></think>中逐步分析：说话人的身份、来电目的、关键话术和可疑之处；"
    "然后在<answer></answer>中只输出一个JSON对象作为结论。"
)
_DIRECT_INSTRUCTION = "不需要输出分析过程，请直接在<answer></answer>中只输出一个JSON对象作为结论。"
_REALTIME_INSTRUCTION = (
    "注意：这是一通正在进行中的电话，你听到的可能只是通话的前一部分。"
    "请同时判断当前所处的通话阶段 conversation_stage："
    "early_stage（刚开始，来电意图尚未显露）、late_stage（意图已经显露，通话接近尾声）、complete（完整通话）。"
    "如果目前听到的内容还不足以下结论，请将结论字段填为 null，系统会继续提供后续录音。"
)


def _answer_template(task: str, mode: str) -> str:
    if mode == "realtime":
        fields = ['"conversation_stage": "early_stage、late_stage 或 complete"', _REALTIME_FIELD_HINT[task]]
    else:
        fields = [_FIELD_HINT[task]]
    fields += ['"reason": "简要理由"', '"confidence": 0 到 1 之间的数字']
    return "<answer>{" + ", ".join(fields) + "}</answer>"


def _build_prompt(task: str, mode: str) -> str:
    parts = [_QUESTION[task], _CHOICES[task]]
    if mode == "realtime":
        parts.append(_REALTIME_INSTRUCTION)
    parts.append(_DIRECT_INSTRUCTION if mode == "direct" else _THINK_INSTRUCTION)
    parts.append("输出格式：" + _answer_template(task, mode))
    return "\n".join(parts)


#: The nine prompt texts, keyed by (task, mode).  Edit ``_QUESTION`` & co. above, or
#: replace entries here, to change what the model is asked.
PROMPTS: dict[tuple[str, str], str] = {(task, mode): _build_prompt(task, mode) for task in TASKS for mode in MODES}


def get_prompt(task: str, mode: str = "offline") -> str:
    try:
        return PROMPTS[(task, mode)]
    except KeyError:
        raise ValueError(f"no prompt for task={task!r} mode={mode!r}; tasks {TASKS}, modes {MODES}") from None


# ---------------------------------------------------------------------------
# Conversation builders
# ---------------------------------------------------------------------------

AUDIO_TAG = "<audio>"


def format_answer(
    task: str,
    label: str | None,
    *,
    mode: str = "offline",
    stage: str = COMPLETE,
    reason: str = "",
    confidence: float = 1.0,
    think: str = "",
) -> str:
    """A compact, well-formed answer in the format the prompts ask for.

    ``label`` is a gold label string (``'fraud'``, a scene, a fraud type) or None for the
    real-time "not enough audio yet" answer.  Used for the carried assistant turns of
    rounds 2-3 and for SFT targets.

    >>> format_answer("fraud", "fraud", reason="冒充警察")
    '<think>冒充警察</think><answer>{"is_fraud": true, "reason": "冒充警察", "confidence": 1.0}</answer>'
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if label is None and mode != "realtime":
        raise ValueError("a null label is only part of the real-time schema")
    obj: dict[str, object] = {}
    if mode == "realtime":
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        obj["conversation_stage"] = stage
    obj[LABEL_FIELD[task]] = None if label is None else answer_value(task, label)
    reason = reason or _default_reason(task, label)
    obj["reason"] = reason
    obj["confidence"] = float(confidence)
    body = "<answer>" + json.dumps(obj, ensure_ascii=False) + "</answer>"
    if mode == "direct":
        return body
    return "<think>" + (think or reason) + "</think>" + body


def _default_reason(task: str, label: str | None) -> str:
    if label is None:
        return "目前听到的内容还不足以判断。"
    if task == "fraud":
        return "通话中出现了典型的诈骗话术。" if label == FRAUD else "通话内容是正常的业务往来。"
    return f"通话内容符合{label}的特征。"


def question_of(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """A conversation up to its last user turn: an SFT row without its target answer(s)."""
    question = list(messages)
    while question and question[-1].get("role") == "assistant":
        question.pop()
    return question


def build_messages(
    task: str,
    *,
    mode: str = "offline",
    n_audios: int = 1,
    history: Sequence[tuple[str, str]] = (),
    answer: str | None = None,
    system: str | None = SYSTEM_PROMPT,
) -> list[dict[str, str]]:
    """The ms-swift ``messages`` for one round.

    ``history`` holds the earlier rounds as ``(task, assistant_text)`` pairs; their user
    turns are rebuilt from the prompts so a carried round reads exactly as it was asked.
    The ``<audio>`` tags (one per audio chunk) go in the first user turn only: every round
    is about the same audio.  With ``answer`` the assistant turn is appended (SFT rows).

    Round 2 of a call gives 4 messages (system, user, assistant, user); round 3 gives 6.
    """
    if n_audios < 1:
        raise ValueError(f"n_audios must be >= 1, got {n_audios}")
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    rounds: list[tuple[str, str | None]] = [*history, (task, answer)]
    for i, (round_task, assistant_text) in enumerate(rounds):
        text = get_prompt(round_task, mode)
        if i == 0:
            text = AUDIO_TAG * n_audios + text
        messages.append({"role": "user", "content": text})
        if assistant_text is not None:
            messages.append({"role": "assistant", "content": assistant_text})
    return messages
