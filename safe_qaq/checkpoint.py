"""A full fine-tuning checkpoint's model files, without the trainer state.

Why: with ``--tuner_type full`` (the CPU profiles, the warm start) the checkpoint itself is the next
stage's model, but it also holds the optimizer, scheduler and trainer state -- pickles among them,
which this project never reads.  ``merge_lora`` (``scripts/common.sh``) and the warm start copy the
model files through this one function.

    python -m safe_qaq.checkpoint CHECKPOINT DEST     # DEST must not exist yet
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
from pathlib import Path

TRAINING_STATE = (
    "training_args.bin", "trainer_state.json", "args.json", "optimizer.pt", "scheduler.pt", "rng_state*.pth"
)  # fmt: skip


def copy_model_files(checkpoint: Path, dest: Path) -> list[str]:
    """Copy every file of ``checkpoint`` except the trainer state into the new folder ``dest``; returns the names."""
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint}: no config.json, not a full fine-tuning checkpoint")
    dest.mkdir(parents=True)
    copied = []
    for item in sorted(checkpoint.iterdir()):
        if item.is_file() and not any(fnmatch.fnmatch(item.name, pattern) for pattern in TRAINING_STATE):
            shutil.copy2(item, dest / item.name)
            copied.append(item.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m safe_qaq.checkpoint CHECKPOINT DEST", file=sys.stderr)
        return 2
    try:
        copy_model_files(Path(args[0]), Path(args[1]))
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
