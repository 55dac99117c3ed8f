"""The settings of one ``prepare`` run (every ``python -m safe_qaq.prepare`` flag but the paths)."""

from __future__ import annotations

from dataclasses import dataclass

from safe_qaq import audio as audio_utils
from safe_qaq.calls import LONG_CALL_POLICIES


@dataclass(frozen=True)
class Options:
    test_fraction: float = 0.25
    seed: int = 0
    long_call: str = "chunk"  # "chunk" | "truncate"
    chunk_seconds: float = audio_utils.MAX_AUDIO_SECONDS
    max_audios: int = audio_utils.MAX_AUDIOS_PER_ROW
    prefix_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    early_max_fraction: float = 0.35
    complete_min_fraction: float = 1.0
    min_prefix_seconds: float = 2.0
    early_sft_answer: str = "null"  # "null" | "gold"
    max_reject_fraction: float = 0.05
    min_duration: float = 1.0
    max_duration: float = 600.0
    duration_tolerance: float = 1.0
    silence_dbfs: float = audio_utils.DEFAULT_SILENCE_DBFS
    workers: int = 1
    progress: bool = True

    def check(self) -> None:
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"--test-fraction must be in [0, 1], got {self.test_fraction}")
        if self.long_call not in LONG_CALL_POLICIES:
            raise ValueError(f"--long-call must be chunk or truncate, got {self.long_call!r}")
        if not 1 <= self.max_audios <= audio_utils.MAX_AUDIOS_PER_ROW:
            raise ValueError(
                f"--max-audios must be in [1, {audio_utils.MAX_AUDIOS_PER_ROW}], got {self.max_audios}: the stage "
                "scripts and engines take at most safe_qaq.audio.MAX_AUDIOS_PER_ROW audios per row"
            )
        if not 0.0 < self.chunk_seconds <= audio_utils.MAX_AUDIO_SECONDS:
            raise ValueError(
                f"--chunk-seconds must be in (0, {audio_utils.MAX_AUDIO_SECONDS:g}]: "
                "Qwen2-Audio's feature extractor drops audio past 30 s"
            )
        if not all(0.0 < f < 1.0 for f in self.prefix_fractions):
            raise ValueError(f"--prefix-fractions must lie in (0, 1), got {self.prefix_fractions}")
        if not 0.0 <= self.early_max_fraction < self.complete_min_fraction <= 1.0:
            raise ValueError("need 0 <= --early-max-fraction < --complete-min-fraction <= 1")
        if self.early_sft_answer not in ("null", "gold"):
            raise ValueError(f"--early-sft-answer must be null or gold, got {self.early_sft_answer!r}")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(f"--max-reject-fraction must be in [0, 1], got {self.max_reject_fraction}")
        if not 0.0 < self.min_duration < self.max_duration:
            raise ValueError("need 0 < --min-duration < --max-duration")
