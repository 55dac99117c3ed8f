"""``python -m safe_qaq.service``: load the model, then serve the stream, the timeline endpoint and the page.

    python -m safe_qaq.service --model outputs/demo/stage3_realtime/merged [--port 8765]
    python -m safe_qaq.service --backend openai --base-url http://127.0.0.1:8000/v1 --model NAME
    python -m safe_qaq.service --model M --host 0.0.0.0 --api-key "$KEY"   # off loopback a key is required

The model, generation and live-loop options are ``python -m safe_qaq.live``'s (same names, same meaning).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from pathlib import Path

from safe_qaq.engine import sampling_from_args
from safe_qaq.jsonl import print_error

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CALLS = ROOT / "data" / "calls" / "metadata.jsonl"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: treat as reachable from outside
        return False


def parser() -> argparse.ArgumentParser:
    from safe_qaq import live

    p = argparse.ArgumentParser(prog="python -m safe_qaq.service", description=__doc__.split("\n\n")[0])
    live._common(p)
    p.set_defaults(batch_size=32)  # the most prefixes (of different calls) one engine call takes
    net = p.add_argument_group("serving")
    net.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    net.add_argument("--port", type=int, default=8765)
    net.add_argument(
        "--api-key",
        default=os.environ.get("SAFE_QAQ_API_KEY"),
        help="bearer token required on HTTP and WebSocket (env SAFE_QAQ_API_KEY); required off loopback",
    )
    net.add_argument("--calls", default=str(DEFAULT_CALLS) if DEFAULT_CALLS.is_file() else None,
                     help="metadata jsonl of the calls the page offers (default: the bundled calls)")  # fmt: skip
    net.add_argument("--results", nargs="*", default=[], help="`live eval --out` directories the page can inspect")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-calls", type=int, default=64, help="calls open at once")
    lim.add_argument("--max-frame-bytes", type=int, default=64 * 1024, help="largest binary frame")
    lim.add_argument("--max-call-s", type=float, default=240.0, help="longest call heard (8 chunks of 30 s)")
    lim.add_argument("--max-upload-mb", type=float, default=20.0, help="largest uploaded file")
    lim.add_argument("--idle-timeout", type=float, default=15.0, help="seconds a call may send nothing")
    p.add_argument("--work-dir", help="where call chunks and uploads go (default: a temporary folder)")
    return p


def settings_from_args(args):
    from safe_qaq.service.app import Settings

    return Settings(
        task=args.task,
        threshold=args.threshold,
        hop_s=args.hop,
        use_vad=not args.no_vad,
        pause_s=args.pause,
        history=not args.no_history,
        max_rounds=args.max_rounds,
        chunk_s=args.chunk_s,
        batch_size=args.batch_size,
        sampling=sampling_from_args(args),
        api_key=args.api_key or None,
        max_calls=args.max_calls,
        max_frame_bytes=args.max_frame_bytes,
        max_call_s=args.max_call_s,
        max_upload_bytes=round(args.max_upload_mb * 1024 * 1024),
        idle_timeout_s=args.idle_timeout,
        calls_file=args.calls,
        results_dirs=list(args.results),
        work_dir=args.work_dir,
    )


def check_args(p: argparse.ArgumentParser, args) -> None:
    if not is_loopback(args.host) and not args.api_key:
        p.error(f"--host {args.host} is not loopback: pass --api-key (or set SAFE_QAQ_API_KEY)")
    for name in ("batch_size", "max_calls", "max_frame_bytes", "port"):
        if getattr(args, name) < (0 if name == "port" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("hop", "pause", "chunk_s", "max_call_s", "max_upload_mb", "idle_timeout"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.backend != "openai" and not Path(args.model).exists():
        hint = " (run `make demo` first)" if "outputs/demo" in args.model else ""
        p.error(f"model {args.model}: no such directory{hint}; nothing is downloaded")
    if args.calls and not Path(args.calls).is_file():
        p.error(f"--calls {args.calls}: no such file")
    for folder in args.results:
        if not (Path(folder) / "live_results.jsonl").is_file():
            p.error(f"--results {folder}: no live_results.jsonl there (a `live eval --out` directory)")
    try:
        sampling_from_args(args)
    except ValueError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
    import uvicorn

    from safe_qaq.engine import engine_from_args
    from safe_qaq.service.app import create_app

    try:
        settings = settings_from_args(args)
        print(f"loading {args.backend} model {args.model} ...", file=sys.stderr, flush=True)
        engine = engine_from_args(args, max_batch_size=args.batch_size)
        app = create_app(engine, settings)
    except Exception as exc:  # a broken model or calls file: one line, not a traceback
        print_error(f"cannot start: {type(exc).__name__}: {exc}")
        return 1

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            # SIGTERM: answer the prefixes already in the engine and close every call with its summary
            # before uvicorn closes the connections.
            hub = getattr(app.state, "hub", None)
            if hub is not None:
                await hub.drain()
                await asyncio.sleep(0.3)
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio")
    server = Server(config)
    shown = "localhost" if is_loopback(args.host) else args.host
    print(f"SAFE-QAQ live service: open http://{shown}:{args.port}/  (Ctrl-C to stop)", file=sys.stderr, flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
