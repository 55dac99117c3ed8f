"""Benchmark (not a test): the live service under N simultaneous calls streamed at real time.

    .venv/bin/python benchmarks/bench_live_service.py [--model DIR] [--n 1 8 32] [--seconds 12]

Starts the service in this process (uvicorn on a free loopback port) on the tiny model (built under
outputs/bench_live_service/ when ``--model`` is not given), streams N bundled calls at once through the
WebSocket at real time (100 ms frames), and prints per N:

* decision lag -- from the moment the audio of a prefix's end was sent to its ``answer`` event -- p50, p95;
* audio seconds served per wall second (every call's audio / time from the first frame to the last summary);

then the same N calls streamed as fast as the socket takes them, with cross-call batching
(``--batch-size``) and with one prefix at a time (batch 1): the ratio of their throughputs (answered
audio seconds per wall second) is what batching buys when the engine is the bottleneck.

Figures depend on the machine and on what else runs on it; quote them with the load average printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safe_qaq.audio import SAMPLE_RATE, decode  # noqa: E402
from safe_qaq.calls import load_calls  # noqa: E402
from safe_qaq.stream import to_pcm16  # noqa: E402

FRAME = 3200  # 100 ms of 16 kHz 16-bit mono


async def stream_one(url: str, call_id: str, pcm: bytes, speed: float | None) -> dict:
    """One call; ``speed`` None = as fast as possible. Returns its answers' lags and timings."""
    import websockets

    sent_at: list[float] = []  # wall time each frame went out
    lags, t_end = [], None
    async with websockets.connect(url, max_size=None) as ws:
        start = {"type": "start", "encoding": "pcm16", "sample_rate": 16000, "channels": 1, "call_id": call_id}
        await ws.send(json.dumps(start))
        t0 = time.perf_counter()

        async def send():
            for k, i in enumerate(range(0, len(pcm), FRAME)):
                if speed is not None:
                    await asyncio.sleep(max(0.0, t0 + k * 0.1 / speed - time.perf_counter()))
                await ws.send(pcm[i : i + FRAME])
                sent_at.append(time.perf_counter())
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        summary = None
        async for message in ws:
            ev = json.loads(message)
            now = time.perf_counter()
            if ev["type"] == "answer":
                frame = min(len(sent_at) - 1, max(0, int(np.ceil(ev["end_s"] * 10)) - 1))
                lags.append(now - sent_at[frame])
            elif ev["type"] == "summary":
                summary, t_end = ev, now
            elif ev["type"] == "error":
                raise RuntimeError(f"call {call_id}: {ev}")
        await sender
    return {"lags": lags, "t0": t0, "t_end": t_end, "audio_s": len(pcm) / 2 / SAMPLE_RATE, "summary": summary}


async def run_round(url: str, pcms: list[tuple[str, bytes]], speed: float | None) -> dict:
    t0 = time.perf_counter()
    results = await asyncio.gather(*[stream_one(url, f"{cid}#{k}", pcm, speed) for k, (cid, pcm) in enumerate(pcms)])
    wall = max(r["t_end"] for r in results) - t0
    lags = np.array([x for r in results for x in r["lags"]])
    audio = sum(r["audio_s"] for r in results)
    answered = sum(r["summary"]["steps"][-1]["end_s"] for r in results if r["summary"]["steps"])
    return {
        "calls": len(pcms),
        "answers": int(lags.size),
        "lag_p50": float(np.percentile(lags, 50)),
        "lag_p95": float(np.percentile(lags, 95)),
        "lag_max": float(lags.max()),
        "wall_s": wall,
        "audio_per_wall_s": audio / wall,
        "answered_audio_per_wall_s": answered / wall,
    }


def serve_in_thread(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    return server, thread


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model dir (default: the tiny random model, built once)")
    p.add_argument("--n", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=12.0, help="first seconds of each bundled call streamed")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--history", action="store_true", help="ask scene before fraud (two rounds per prefix)")
    p.add_argument("--saturate-n", type=int, default=32, help="calls in the batching-vs-one-at-a-time run")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from safe_qaq.engine import Sampling, make_engine
    from safe_qaq.service.app import Settings, create_app

    model = args.model
    if model is None:
        from safe_qaq.toy.tiny_model import build_tiny_model

        model = str(build_tiny_model(ROOT / "outputs" / "bench_live_service" / "tiny-qwen2-audio"))
    calls = load_calls(ROOT / "data" / "calls" / "metadata.jsonl")
    clips = [(c.call_id, to_pcm16(decode(c.audio)[: round(args.seconds * SAMPLE_RATE)]).tobytes()) for c in calls]
    engine = make_engine(model, max_batch_size=args.batch_size)
    settings = Settings(
        history=args.history,
        batch_size=args.batch_size,
        sampling=Sampling(max_tokens=args.max_tokens),
        hop_s=5.0,
        max_calls=max([*args.n, args.saturate_n]) + 1,
        idle_timeout_s=600,
    )
    app = create_app(engine, settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, thread = serve_in_thread(app, port)
    url = f"ws://127.0.0.1:{port}/ws/call"
    pick = lambda n: [clips[k % len(clips)] for k in range(n)]  # noqa: E731
    print(f"model {model}; {args.seconds:g} s of each call; max_tokens {args.max_tokens}; history {args.history}")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    asyncio.run(run_round(url, pick(1), None))  # warm-up: first-call costs are not the service's
    print("\nreal time (x1):")
    print(f"{'calls':>5} {'answers':>7} {'lag p50 s':>9} {'lag p95 s':>9} {'lag max s':>9} {'audio s / wall s':>17}")
    for n in args.n:
        r = asyncio.run(run_round(url, pick(n), 1.0))
        print(
            f"{n:>5} {r['answers']:>7} {r['lag_p50']:>9.2f} {r['lag_p95']:>9.2f} {r['lag_max']:>9.2f} "
            f"{r['audio_per_wall_s']:>17.2f}"
        )
    hub = app.state.hub
    print(f"\nas fast as possible, {args.saturate_n} calls:")
    rows = {}
    for batch in (args.batch_size, 1):
        hub.settings.batch_size = batch
        start = len(hub.batches)
        r = asyncio.run(run_round(url, pick(args.saturate_n), None))
        sizes = hub.batches[start:]
        rows[batch] = r
        print(
            f"  batch {batch:>2}: {r['answered_audio_per_wall_s']:7.2f} answered audio s / wall s, "
            f"{r['answers'] / r['wall_s']:.2f} prefixes/s, mean batch {np.mean(sizes):.1f}, wall {r['wall_s']:.1f} s"
        )
    ratio = rows[args.batch_size]["answered_audio_per_wall_s"] / rows[1]["answered_audio_per_wall_s"]
    print(f"  cross-call batching / one prefix at a time: {ratio:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    server.should_exit = True
    thread.join(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
