"""Good input rows for the prepare tests: one metadata record per TeleAntiFraud fixture audio."""

from __future__ import annotations

from pathlib import Path

import prompt

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "teleantifraud"

GOOD_AUDIO = sorted((FIXTURE / "audio").glob("*.wav"))


def fixture_rows() -> list[dict]:
    """Labelled, alternately fraud and normal; no duration or turns (the hostile tests add them)."""
    rows = []
    for i, path in enumerate(GOOD_AUDIO):
        fraud = i % 2 == 1
        rows.append(
            {
                "id": f"good_{i}",
                "audio": str(path),
                "scene": prompt.SCENES[i],
                "label": prompt.FRAUD if fraud else prompt.NORMAL,
                "fraud_type": prompt.FRAUD_TYPES[i] if fraud else None,
            }
        )
    return rows
