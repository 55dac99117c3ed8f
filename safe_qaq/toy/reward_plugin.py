"""The CPU toy's length penalty, registered for the smoke and toy profiles only (their EXTRA_PLUGINS).

The toy's tiny model thinks 14-34 estimated tokens, far under any recipe threshold (S = 200), so LCRL on CPU uses
S = 16: the bare conclusion (13-14 tokens) goes free and each extra checklist item is charged (about -1.9 for one,
-2.4 for four). It is one more call of the recipe's own factory, never a recipe default. Loaded by ms-swift before
rewards.py (which then exposes it), or imported directly.
"""

from safe_qaq.rewards import get_think_length_penalty, register

TOY_LENGTH_PENALTY = register(get_think_length_penalty(16, 5))
