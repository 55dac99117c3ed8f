"""ms-swift plugin (``--external_plugins``): registers :mod:`safe_qaq.toy.loss_scale`'s weighting as
``--loss_scale ...+safe_qaq_reason`` in ms-swift's loss-scale registry."""

from __future__ import annotations

from swift.loss_scale.base import LossScale
from swift.loss_scale.mapping import loss_scale_map

from safe_qaq.toy.loss_scale import NAME, reason_segments


class ReasonWeightedLossScale(LossScale):
    """ms-swift loss scale: the response's conclusion weighted by ``loss_scale.REASON_WEIGHT``, the rest 1."""

    is_binary = False

    def get_loss_scale(self, context, **kwargs):
        if not isinstance(context, str):
            return super().get_loss_scale(context, **kwargs)
        return reason_segments(context)


loss_scale_map[NAME] = ReasonWeightedLossScale
