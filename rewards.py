"""The SAFE-QAQ reward plugin for ms-swift: ``swift rlhf --external_plugins rewards.py --reward_funcs NAME ...``.

The rewards themselves (formulas, doctests, the one registry) are plain Python in :mod:`safe_qaq.rewards`, so
scoring runs without the trainer installed; this file only hands that registry to ms-swift's ``orms``, each class
with ms-swift's ``ORM`` base added. A reward registered later (``safe_qaq.rewards.register``, e.g. by a test or
the CPU toy's own plugin) is exposed with :func:`expose`. Names and what each scores: docs/method.md#rewards.
"""

from __future__ import annotations

from swift.rewards import ORM, orms

from safe_qaq.rewards import *  # noqa: F403 - the plugin's namespace is the rewards' (tests and doctests use it)
from safe_qaq.rewards import REWARDS, SafeQaqReward


def as_orm(cls: type[SafeQaqReward]) -> type:
    """``cls`` with ms-swift's ORM base; same name, so the training logs' ``rewards/<class>/mean`` keys hold."""
    return type(cls.__name__, (cls, ORM), {"__module__": cls.__module__, "__doc__": cls.__doc__})


def expose(names: list[str] | None = None) -> None:
    """Put the named rewards (default: all registered) into ``swift.rewards.orms``."""
    for name in names or list(REWARDS):
        orms[name] = as_orm(REWARDS[name])


expose()
