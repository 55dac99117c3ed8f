"""Audio helpers: decode + validate once (size-checked first), cut chunk files, write FLAC atomically.

Everything here works on 16 kHz mono float32, the rate Qwen2-Audio's feature extractor uses.
Which pieces of a call are cut is planned in :mod:`safe_qaq.calls`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

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
#: Longest audio decoded unless the caller sets its own limit (prepare's --max-duration default).
DEFAULT_MAX_SECONDS = 600.0
#: Samples (frames x channels) a source may hold per second of the duration limit: 48 kHz stereo.
#: With the duration limit it bounds the memory one decode takes, whatever a file's header says.
MAX_SOURCE_SAMPLES_PER_SECOND = 96_000
_BYTES_PER_SOURCE_SAMPLE = 4  # a file larger than 32-bit PCM at that budget cannot be within the limit


class AudioError(ValueError):
    """An audio file that cannot be used: ``code`` is a short category, the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def decode(
    path: str | os.PathLike,
    *,
    silence_dbfs: float = DEFAULT_SILENCE_DBFS,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> np.ndarray:
    """Decode ``path`` to 16 kHz mono float32, or raise :class:`AudioError` naming the reason.

    soundfile first (WAV/FLAC/OGG/MP3 via libsndfile); librosa's audioread fallback covers
    what ffmpeg can read -- the same two backends ms-swift's ``load_audio`` uses, so a file
    accepted here is one training can read.  Nothing is decoded before :func:`check_size`
    has bounded what the decode will allocate.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError("missing", "missing audio file")
    if not os.path.isfile(path):
        raise AudioError("missing", "audio path is not a regular file")
    if os.path.getsize(path) == 0:
        raise AudioError("empty", "empty audio file (0 bytes)")
    check_size(path, max_seconds)
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


def check_size(path: str, max_seconds: float) -> None:
    """Refuse, before decoding, a file whose decode could exceed ``max_seconds`` of audio.

    The file size must fit ``max_seconds`` at the sample budget, and the header's frames / rate
    (and frames x channels) must fit the limit: a 160 KB WAV whose header claims 2 Hz is 11 hours
    long and would take gigabytes once resampled, so it is refused here, unread.
    """
    size = os.path.getsize(path)
    max_samples = max_seconds * MAX_SOURCE_SAMPLES_PER_SECOND
    if size > max_samples * _BYTES_PER_SOURCE_SAMPLE + (1 << 20):
        raise AudioError(
            "too_large", f"audio file is {size / 1e6:.0f} MB, too large to hold at most {max_seconds:g} s; not decoded"
        )
    try:
        info = sf.info(path)
        frames, rate, channels = info.frames, info.samplerate, info.channels
    except Exception:  # not for libsndfile: ask audioread (ffmpeg) for the length its header gives
        frames, rate, channels = _audioread_header(path)
        if frames is None:
            return  # decode() reports it as unreadable
    if rate <= 0 or channels <= 0 or frames < 0:
        raise AudioError("corrupt", f"audio header is invalid ({frames} frames, {rate} Hz, {channels} channels)")
    seconds = frames / rate
    # a little slack: compressed formats' headers may be off by a frame or two from the decoded length
    if seconds > max_seconds * 1.01 + 1.0:
        raise AudioError(
            "duration",
            f"audio header says {seconds:.1f} s ({frames} frames at {rate} Hz), longer than the {max_seconds:g} s "
            "limit; not decoded",
        )
    if frames * channels > max_samples:
        raise AudioError(
            "too_large",
            f"audio header says {frames} frames x {channels} channels at {rate} Hz: more samples than "
            f"{max_seconds:g} s of 48 kHz stereo; not decoded",
        )


def _audioread_header(path: str) -> tuple[int | None, int, int]:
    try:
        import audioread

        with audioread.audio_open(path) as handle:
            rate, channels = int(handle.samplerate), int(handle.channels)
            return math.ceil(float(handle.duration) * rate), rate, channels
    except Exception:
        return None, 0, 0


def rms_dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def ms_to_samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


def samples_to_ms(n_samples: int) -> int:
    """Whole milliseconds in ``n_samples`` at 16 kHz (rounded down): the unit of every cut."""
    return n_samples * 1000 // SAMPLE_RATE


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


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def chunk_dir(root: str | os.PathLike, name: str, source: str | os.PathLike) -> Path:
    """The folder under ``root`` for the cut chunks of one call: named by the call and the source file's
    version (path, size, mtime), so a changed source never reuses stale cuts."""
    try:
        st = os.stat(source)
        version = f"{os.path.realpath(source)}|{st.st_size}|{st.st_mtime_ns}"
    except (OSError, ValueError):
        version = os.fspath(source)
    key = hashlib.sha1(version.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    safe = _UNSAFE.sub("_", name).strip("_.")[:60] or "call"
    return Path(root) / f"{safe}-{key}"


def cut_chunks(
    samples: np.ndarray,
    bounds: Sequence[tuple[int, int]],
    directory: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    made: dict[str, Literal["written", "reused"]] | None = None,
) -> list[str]:
    """The chunk files of ``samples`` (16 kHz) for ``bounds`` (``[start, end)`` ms), one path per piece.

    The one place chunk files are cut, by data preparation and live inference alike.  A piece
    is ``directory/{start:07d}-{end:07d}.flac``, written once: a file of the right length left
    by an earlier run is reused.  When the bounds are the whole audio in one piece and
    ``source`` is given, the source file itself is used (no re-encoding).  ``made`` records, per
    path, whether this run wrote or reused it, and skips the pieces it already holds.
    """
    total_ms = samples_to_ms(len(samples))
    bounds = [(int(a), int(b)) for a, b in bounds]
    if source is not None and bounds == [(0, total_ms)]:
        return [os.fspath(source)]
    paths = []
    for start, end in bounds:
        if not 0 <= start < end <= total_ms:
            raise ValueError(f"chunk [{start}, {end}) ms is not inside the audio's {total_ms} ms")
        path = Path(directory) / f"{start:07d}-{end:07d}.flac"
        key = str(path)
        if made is None or key not in made:
            piece = samples[ms_to_samples(start) : ms_to_samples(end)]
            status: Literal["written", "reused"] = "reused" if cached_ok(path, len(piece)) else "written"
            if status == "written":
                write_flac(path, piece)
            if made is not None:
                made[key] = status
        paths.append(key)
    return paths
