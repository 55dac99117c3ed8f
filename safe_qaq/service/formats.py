"""Incoming audio formats of the live stream: 16-bit PCM at 8/16 kHz (mono or two channels) and G.711 μ-law at 8 kHz.

Each is turned into the 16 kHz mono float32 the model hears, frame by frame.  Two channels are
averaged, as :func:`safe_qaq.audio.decode` averages a stereo file; 8 kHz is resampled with
soxr's streaming resampler (the library ``decode`` uses), so a stream's audio does not depend
on how it was split into frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from safe_qaq.audio import SAMPLE_RATE

ENCODINGS = {"pcm16": (8000, 16000), "mulaw": (8000,)}


class FormatError(ValueError):
    """A declared format or a frame that cannot be used; ``code`` names the event's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _mulaw_table() -> np.ndarray:
    """G.711 μ-law byte -> linear 16-bit sample (ITU-T G.711, the decoder telephony uses)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


MULAW = _mulaw_table()


@dataclass(frozen=True)
class StreamFormat:
    encoding: str = "pcm16"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample instant (all channels)."""
        return (2 if self.encoding == "pcm16" else 1) * self.channels

    @classmethod
    def from_start(cls, msg: dict[str, Any]) -> StreamFormat:
        """The format a ``start`` message declares; :class:`FormatError` saying what is wrong."""
        encoding = msg.get("encoding", "pcm16")
        if encoding not in ENCODINGS:
            raise FormatError("bad_format", f"encoding {encoding!r} is not one of {sorted(ENCODINGS)}")
        rate = msg.get("sample_rate")
        if isinstance(rate, bool) or not isinstance(rate, int) or rate not in ENCODINGS[encoding]:
            allowed = " or ".join(str(r) for r in ENCODINGS[encoding])
            raise FormatError("bad_format", f"sample_rate {rate!r} is not supported for {encoding}: use {allowed} Hz")
        channels = msg.get("channels", 1)
        if isinstance(channels, bool) or channels not in (1, 2):
            raise FormatError("bad_format", f"channels {channels!r} must be 1 or 2")
        return cls(encoding, rate, channels)


class Decoder:
    """Bytes of one declared format -> 16 kHz mono float32, one frame at a time."""

    def __init__(self, fmt: StreamFormat):
        import soxr

        self.fmt = fmt
        self._resampler = (
            soxr.ResampleStream(fmt.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if fmt.sample_rate != SAMPLE_RATE
            else None
        )

    def decode(self, data: bytes) -> np.ndarray:
        if len(data) % self.fmt.bytes_per_frame:
            raise FormatError(
                "bad_frame",
                f"a frame of {len(data)} bytes is not whole samples of {self.fmt.encoding} x {self.fmt.channels} "
                f"channel(s) ({self.fmt.bytes_per_frame} bytes each)",
            )
        if self.fmt.encoding == "pcm16":
            pcm = np.frombuffer(data, dtype="<i2")
        else:
            pcm = MULAW[np.frombuffer(data, dtype=np.uint8)]
        x = pcm.astype(np.float32) / 32768.0
        if self.fmt.channels == 2:
            x = x.reshape(-1, 2).mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def flush(self) -> np.ndarray:
        """What the resampler still holds at the end of the call."""
        if self._resampler is None:
            return np.empty(0, dtype=np.float32)
        return np.ascontiguousarray(self._resampler.resample_chunk(np.empty(0, np.float32), last=True), np.float32)
