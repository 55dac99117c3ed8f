"""Audio helpers for data preparation: decode + validate once, cut, write FLAC atomically.

Everything here works on 16 kHz mono float32, the rate Qwen2-Audio's feature extractor uses.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
#: Qwen2-Audio's WhisperFeatureExtractor keeps at most this many seconds per audio.
MAX_AUDIO_SECONDS = 30.0
#: Most <audio> entries one row may carry: the one bound data preparation, the stage scripts (vLLM's
#: limit_mm_per_prompt) and the inference engines share. Longer calls are rejected by prepare.
MAX_AUDIOS_PER_ROW = 8
DEFAULT_SILENCE_DBFS = -60.0


class AudioError(ValueError):
    """An audio file that cannot be used: ``code`` is a short category, the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def decode(path: str | os.PathLike, *, silence_dbfs: float = DEFAULT_SILENCE_DBFS) -> np.ndarray:
    """Decode ``path`` to 16 kHz mono float32, or raise :class:`AudioError` naming the reason.

    soundfile first (WAV/FLAC/OGG/MP3 via libsndfile); librosa's audioread fallback covers
    what ffmpeg can read -- the same two backends ms-swift's ``load_audio`` uses, so a file
    accepted here is one training can read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError("missing", "missing audio file")
    if not os.path.isfile(path):
        raise AudioError("missing", "audio path is not a regular file")
    if os.path.getsize(path) == 0:
        raise AudioError("empty", "empty audio file (0 bytes)")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        samples = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    except Exception as sf_error:  # libsndfile raises several types for unreadable input
        try:
            import librosa

            with warnings.catch_warnings():  # librosa warns about the fallback it is taking
                warnings.simplefilter("ignore")
                samples, rate = librosa.load(path, sr=None, mono=True)
        except Exception:
            raise AudioError("unreadable", f"not a readable audio file ({_short(sf_error)})") from None
    if samples.size == 0:
        raise AudioError("empty", "audio has no samples")
    if not np.isfinite(samples).all():
        raise AudioError("corrupt", "audio contains NaN or infinite samples")
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    level = rms_dbfs(samples)
    if level < silence_dbfs:
        raise AudioError("silent", f"silent audio (RMS {level:.1f} dBFS < {silence_dbfs:g} dBFS)")
    return samples


def rms_dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def ms_to_samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


def chunk_bounds(
    end_ms: int, split_points_ms: Sequence[int] = (), chunk_ms: int = int(MAX_AUDIO_SECONDS * 1000)
) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` ms pieces of ``[0, end_ms]``, each at most ``chunk_ms`` long.

    A piece ends at the last preferred split point (e.g. a pause between turns) in its second
    half, else exactly ``chunk_ms`` after its start.  The pieces depend only on the split points
    before them, so every prefix of a call shares its leading chunks with the whole call and
    the cut files are written once.
    """
    if end_ms <= 0:
        raise ValueError(f"end_ms must be positive, got {end_ms}")
    points = sorted(set(split_points_ms))
    bounds: list[tuple[int, int]] = []
    start = 0
    while end_ms - start > chunk_ms:
        limit = start + chunk_ms
        candidates = [p for p in points if start + chunk_ms // 2 < p <= limit]
        stop = candidates[-1] if candidates else limit
        bounds.append((start, stop))
        start = stop
    bounds.append((start, end_ms))
    return bounds


def write_flac(path: Path, samples: np.ndarray) -> None:
    """Write 16 kHz 16-bit FLAC atomically: a crashed run never leaves a truncated file to reuse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".flac")
    os.close(fd)
    try:
        sf.write(tmp, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_ok(path: Path, n_samples: int) -> bool:
    """A segment written by an earlier run can be reused when it has the expected length."""
    try:
        info = sf.info(str(path))
    except Exception:
        return False
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames == n_samples
