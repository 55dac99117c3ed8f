"""The audio of each call: decoded once, checked, cut into its prefixes and chunks (in worker processes).

Calls are planned with :mod:`safe_qaq.calls` (the prefixes, their stage, the chunks) and cut
with :func:`safe_qaq.audio.cut_chunks`, as live inference cuts them.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from safe_qaq import audio as audio_utils
from safe_qaq.calls import plan_chunks, plan_prefixes, stage_of, turn_boundaries_ms
from safe_qaq.prepare.options import Options


@dataclass(frozen=True)
class Job:
    call_id: str
    audio: str
    segment_dir: str
    declared_duration: float | None
    turns: tuple[tuple[float, float], ...] | None  # (start, end) seconds
    options: Options


def _fail(code: str, reason: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "reason": reason}


def process_call(job: Job) -> dict[str, Any]:
    """Decode, check and cut one call; never raises for bad input (returns ``ok: False``)."""
    opts = job.options
    try:
        samples = audio_utils.decode(job.audio, silence_dbfs=opts.silence_dbfs, max_seconds=opts.max_duration)
    except audio_utils.AudioError as exc:
        return _fail(exc.code, f"{exc} (--max-duration)" if exc.code in ("duration", "too_large") else str(exc))
    duration = len(samples) / audio_utils.SAMPLE_RATE
    if duration < opts.min_duration:
        return _fail("duration", f"audio is {duration:.2f} s, shorter than --min-duration {opts.min_duration:g} s")
    if duration > opts.max_duration:
        return _fail("duration", f"audio is {duration:.1f} s, longer than --max-duration {opts.max_duration:g} s")
    if job.declared_duration is not None and abs(job.declared_duration - duration) > opts.duration_tolerance:
        return _fail("duration", f"metadata says {job.declared_duration:g} s but the audio is {duration:.2f} s long")
    turns = [{"start": s, "end": e} for s, e in job.turns] if job.turns else None
    last = max((t["end"] for t in turns), default=0.0) if turns else 0.0
    if last > duration + opts.duration_tolerance:
        return _fail("turns", f"turns end at {last:g} s, after the end of the audio ({duration:.2f} s)")

    duration_ms = audio_utils.samples_to_ms(len(samples))
    chunk_ms = round(opts.chunk_seconds * 1000)
    boundaries = turn_boundaries_ms(turns, duration_ms)

    def chunks(end_ms: int) -> list[tuple[int, int]]:
        return plan_chunks(end_ms, boundaries, chunk_ms=chunk_ms, long_call=opts.long_call)

    whole = chunks(duration_ms)
    if len(whole) > opts.max_audios:
        return _fail(
            "too_many_chunks",
            f"audio is {duration:.1f} s: {len(whole)} chunks of at most {opts.chunk_seconds:g} s, more than "
            f"--max-audios {opts.max_audios} (the <audio> entries one row may carry); "
            f"--long-call truncate keeps its first {opts.chunk_seconds:g} s instead",
        )
    made: dict[str, str] = {}  # prefixes share leading chunks with the whole call: cut each once

    def audios_for(end_ms: int) -> list[str]:
        return audio_utils.cut_chunks(samples, chunks(end_ms), job.segment_dir, source=job.audio, made=made)

    long_call = duration_ms > chunk_ms
    offline_audios = audios_for(duration_ms)

    prefixes = plan_prefixes(
        duration_ms,
        boundaries,
        opts.prefix_fractions,
        early_max=opts.early_max_fraction,
        complete_min=opts.complete_min_fraction,
        min_prefix_ms=round(opts.min_prefix_seconds * 1000),
    )
    if opts.long_call == "truncate" and long_call:
        # The model hears at most the first chunk; label that prefix by how much of the call it is.
        clipped = {}
        for end, _ in prefixes:
            end = min(end, chunk_ms)
            clipped[end] = stage_of(end / duration_ms, opts.early_max_fraction, opts.complete_min_fraction)
        prefixes = sorted(clipped.items())
    planned = [
        {"end_s": end / 1000, "stage": stage, "audios": offline_audios if end == duration_ms else audios_for(end)}
        for end, stage in prefixes
    ]
    statuses = Counter(made.values())
    return {
        "ok": True,
        "duration": duration_ms / 1000,  # whole ms, the unit of every cut (prefix_end_s <= this)
        "offline_audios": offline_audios,
        "prefixes": planned,
        "chunked": long_call and opts.long_call == "chunk",
        "truncated": long_call and opts.long_call == "truncate",
        "written": statuses["written"],
        "reused": statuses["reused"],
    }


def with_progress(iterable, *, total: int, enabled: bool, desc: str):
    """``iterable`` with a progress bar on stderr (``--no-progress``: as it is)."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="call", file=sys.stderr, dynamic_ncols=True)


def run_jobs(jobs: list[Job], workers: int) -> Iterator[dict[str, Any]]:
    """:func:`process_call` of each job, in order, on ``workers`` processes (in this one for a single worker)."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(process_call, jobs)
        return
    chunksize = max(1, min(16, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(process_call, jobs, chunksize=chunksize)
