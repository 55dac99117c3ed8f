"""The warm start's loss weighting: ``--loss_scale last_round+safe_qaq_reason`` weights the answer's conclusion.

Why: in an answer of 30-70 tokens only the conclusion (the reason sentence that names the label,
closing the think, 2-6 tokens) depends on the audio; the rest is format, learned in a few dozen
steps.  With every token weighted alike, the label's share of the gradient is small and the tiny
warm base learns the format long before it learns to listen.  Weighting the reason sentence by
:data:`REASON_WEIGHT` gives the label its share back.  Only the toy warm start uses it; the
recipe's RSFT keeps ms-swift's ``last_round`` weighting.

The reason is found with the project's one answer parser.  It is cut out of the think only at
boundaries that tokenize the same whole or in parts (after ``<think>`` or a ``。``, before
``</think>``), so training sees the tokens inference produces.

This module is plain Python (the warm start reads its settings without importing ms-swift);
:mod:`safe_qaq.toy.loss_scale_plugin`, passed to ``--external_plugins``, registers it in ms-swift's
own registry (``swift.loss_scale.mapping.loss_scale_map``).
"""

from __future__ import annotations

import json
from pathlib import Path

from safe_qaq.answer import parse_answer

NAME = "safe_qaq_reason"
PLUGIN = Path(__file__).with_name("loss_scale_plugin.py")
REASON_WEIGHT = 3.0
#: A direct answer's label (one token of ~30 in the tiny tokenizer; the rest is format, the same for every call).
LABEL_WEIGHT = 10.0
THINK_CLOSE = "</think>"


def reason_segments(response: str, weight: float = REASON_WEIGHT) -> tuple[list[str], list[float]]:
    """``response`` split into (segments, weights): the think's closing reason sentence gets ``weight``.

    >>> segments, weights = reason_segments(
    ...     '<think>先听身份。通话内容符合订餐服务的特征。</think><answer>{"scene": "订餐服务", '
    ...     '"reason": "通话内容符合订餐服务的特征。", "confidence": 1.0}</answer>')
    >>> segments[:2], weights
    (['<think>先听身份。', '通话内容符合订餐服务的特征。'], [1.0, 3.0, 1.0])

    A direct answer (no think) has its label weighted by :data:`LABEL_WEIGHT` instead (cut where the tiny
    tokenizer cuts: the label is one token):

    >>> reason_segments('<answer>{"is_fraud": true, "reason": "通话内容存在诈骗特征。", "confidence": 1.0}</answer>')[0]
    ['<answer>{"is_fraud":', ' true', ', "reason": "通话内容存在诈骗特征。", "confidence": 1.0}</answer>']

    Anything else (no reason, or a reason not closing the think) is one segment of weight 1.
    """
    parsed = parse_answer(response)
    if parsed.obj and THINK_CLOSE not in response:
        return label_segments(response, parsed.obj)
    reason = parsed.obj.get("reason") if parsed.obj else None
    end = response.find(THINK_CLOSE)
    if not isinstance(reason, str) or not reason or end < 0 or not response[:end].endswith(reason):
        return [response], [1.0]
    start = end - len(reason)
    if not (response[:start].endswith("。") or response[:start].endswith("<think>")):
        return [response], [1.0]
    return [response[:start], reason, response[end:]], [1.0, weight, 1.0]


def label_segments(response: str, obj: dict, weight: float = LABEL_WEIGHT) -> tuple[list[str], list[float]]:
    """A direct answer split around its label (the value of the task's label field): that value gets ``weight``."""
    import prompt

    key = next((k for k in obj if k in prompt.LABEL_FIELD.values()), None)
    if key is None:
        return [response], [1.0]
    value = obj[key]
    if value is None or isinstance(value, bool):
        head, label = f'"{key}":', " " + json.dumps(value)
    elif isinstance(value, str):
        head, label = f'"{key}": "', value
    else:
        return [response], [1.0]
    start = response.find(head + label)
    if start < 0:
        return [response], [1.0]
    cut = start + len(head)
    return [response[:cut], label, response[cut + len(label) :]], [1.0, weight, 1.0]
