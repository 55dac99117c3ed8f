"""Test-only ms-swift reward plugin (``--external_plugins``): the accuracy reward with its sign flipped.

tests/test_learning.py's broken variant trains on ``adaptive_classification_negated`` and logs the real
``adaptive_classification`` beside it at weight 0, so both variants read the same measured quantity.
Registered through ms-swift's own ``orms`` registry; never part of the recipe.
"""

from swift.rewards import orms

import rewards

_Accuracy = rewards.REWARDS["adaptive_classification"]


class NegatedAccuracy(_Accuracy):
    """``adaptive_classification`` times -1: GRPO pushed away from the right label."""

    def __call__(self, *args, **kwargs):
        return [-score for score in super().__call__(*args, **kwargs)]


orms["adaptive_classification_negated"] = NegatedAccuracy
