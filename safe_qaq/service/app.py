"""The ASGI app: a WebSocket stream per call, a whole-file timeline endpoint, bundled calls, results, the page.

Event schema, close codes and limits: docs/service.md.  The live loop (prefix planner, chunk
cutter, round chain, decision rule) is :mod:`safe_qaq.stream`, the one ``safe_qaq.live`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import shutil
import tempfile
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from safe_qaq.audio import MAX_AUDIO_SECONDS, MAX_AUDIOS_PER_ROW, SAMPLE_RATE, AudioError, decode, write_flac
from safe_qaq.calls import load_calls
from safe_qaq.engine import GREEDY, Sampling
from safe_qaq.jsonl import iter_jsonl
from safe_qaq.service.formats import Decoder, FormatError, StreamFormat
from safe_qaq.stream import (
    DEFAULT_PAUSE_S,
    CallLog,
    Prefix,
    PrefixPlanner,
    StreamChunks,
    answer_prefixes,
    call_result,
    make_step,
    round_chain,
)

STATIC = Path(__file__).parent / "static"

# WebSocket close codes (docs/service.md#close-codes)
CLOSE_NORMAL = 1000
CLOSE_SHUTDOWN = 1001
CLOSE_BAD_DATA = 1003
CLOSE_AUTH = 1008
CLOSE_TOO_BIG = 1009
CLOSE_MODEL_ERROR = 1011
CLOSE_BUSY = 1013
CLOSE_TIMEOUT = 4408


@dataclass
class Settings:
    """Everything the service is run with; the loop settings mean what ``live``'s options mean."""

    task: str = "fraud"
    threshold: float = 0.8
    hop_s: float = 5.0
    use_vad: bool = True
    pause_s: float = DEFAULT_PAUSE_S
    history: bool = True
    max_rounds: int | None = None
    chunk_s: float = MAX_AUDIO_SECONDS
    batch_size: int = 32
    sampling: Sampling = GREEDY
    api_key: str | None = None
    max_calls: int = 64
    max_frame_bytes: int = 64 * 1024
    max_call_s: float = MAX_AUDIOS_PER_ROW * MAX_AUDIO_SECONDS
    max_upload_bytes: int = 20 * 1024 * 1024
    idle_timeout_s: float = 15.0
    heard_every_s: float = 1.0
    calls_file: str | None = None
    results_dirs: list[str] = field(default_factory=list)
    work_dir: str | None = None


# ---------------------------------------------------------------------------
# One call and the engine hub that batches every call's due prefixes
# ---------------------------------------------------------------------------


@dataclass
class _Due:
    session: Session
    prefix: Prefix
    paths: list[str]
    due_wall: float
    heard_s: float


class Session:
    """One live call: its decoder, planner, chunk files, log and outgoing events."""

    def __init__(self, hub: Hub, call_id: str, fmt: StreamFormat):
        s = hub.settings
        self.hub, self.call_id, self.fmt = hub, call_id, fmt
        self.folder = Path(tempfile.mkdtemp(prefix="call-", dir=hub.work_dir))
        self.decoder = Decoder(fmt)
        rule = "vad" if s.use_vad else "hop"
        self.planner = PrefixPlanner(rule=rule, hop_s=s.hop_s, pause_s=s.pause_s, chunk_ms=round(s.chunk_s * 1000))
        self.chunks = StreamChunks(self.folder, self.planner.chunk_ms)
        self.log = CallLog(call_id, None)
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.waiting = 0  # prefixes queued or in the engine
        self.asked = 0
        self.ended = False  # the client said the call is over (or it was capped)
        self.capped = False
        self.closed = False  # nothing more is sent or asked
        self.in_flight = False
        self.answered_s = 0.0
        self.lags: list[float] = []
        self._last_heard_event = 0.0
        self.max_samples = round(s.max_call_s * SAMPLE_RATE)

    @property
    def heard_s(self) -> float:
        return self.planner.heard_samples / SAMPLE_RATE

    def emit(self, event: dict) -> None:
        if not self.closed:
            self.outbox.put_nowait(event)

    def heard_event(self, force: bool = False) -> None:
        heard = self.heard_s
        if force or heard - self._last_heard_event >= self.hub.settings.heard_every_s:
            self._last_heard_event = heard
            self.emit(
                {
                    "type": "heard",
                    "heard_s": round(heard, 3),
                    "answered_s": round(self.answered_s, 3),
                    "behind_s": round(max(0.0, heard - self.answered_s), 3) if self.waiting else 0.0,
                    "waiting": self.waiting,
                    "queue": self.hub.queued,
                }
            )

    @property
    def decided(self) -> bool:
        return self.log.decision is not None

    def _wants_more(self) -> bool:
        s = self.hub.settings
        return not (self.closed or self.decided or (s.max_rounds is not None and self.asked >= s.max_rounds))

    def _due(self, prefixes: list[Prefix], *, whole_at: int | None = None) -> None:
        for prefix in prefixes:
            self.log.ends.append(prefix.end_s)
            if not self._wants_more() or self.hub.stopping:
                continue
            paths = self.chunks.paths(prefix, whole=prefix.end_ms == whole_at)
            self.asked += 1
            self.waiting += 1
            self.hub.submit(_Due(self, prefix, paths, time.perf_counter(), self.heard_s))
            self.heard_event(force=True)

    def feed(self, data: bytes) -> None:
        """One binary frame from the client (raises :class:`FormatError`)."""
        samples = self.decoder.decode(data)
        room = self.max_samples - self.planner.heard_samples
        over = len(samples) > room
        samples = samples[: max(room, 0)]
        if self._wants_more():  # audio after the decision is counted, not kept
            self.chunks.add(samples)
        self._due(self.planner.feed(samples))
        self.heard_event()
        if over:
            self.capped = True
            self.emit(
                {
                    "type": "capped",
                    "heard_s": round(self.heard_s, 3),
                    "limit_s": self.hub.settings.max_call_s,
                    "message": f"call reached the {self.hub.settings.max_call_s:g} s limit; audio after it is "
                    "not heard, the call ends here",
                }
            )
            self.end()

    def end(self) -> None:
        """No more audio: the last prefix (the whole call) is due; the summary follows its answer."""
        if self.ended:
            return
        self.ended = True
        if not self.capped:
            tail = self.decoder.flush()[: max(self.max_samples - self.planner.heard_samples, 0)]
            if self._wants_more():
                self.chunks.add(tail)
            self._due(self.planner.feed(tail))
        self._due(self.planner.finish(), whole_at=self.planner.heard_ms)
        if self.planner.capped_ms is not None and not self.capped:
            self.capped = True
            self.emit(
                {
                    "type": "capped",
                    "heard_s": round(self.planner.capped_ms / 1000, 3),
                    "limit_s": self.planner.capped_ms / 1000,
                    "message": f"the call needs more than {MAX_AUDIOS_PER_ROW} chunks; prefixes after "
                    f"{self.planner.capped_ms / 1000:.1f} s are not asked",
                }
            )
        self.log.duration = self.heard_s
        self.maybe_finish()

    def answered(self, due: _Due, answers: list[tuple[str, str]], latency: float) -> None:
        self.waiting -= 1
        if self.closed:
            return
        s = self.hub.settings
        step = make_step(len(self.log.steps) + 1, due.prefix.end_s, answers, latency, s.task, s.threshold)
        self.log.steps.append(step)
        self.answered_s = due.prefix.end_s
        lag = time.perf_counter() - due.due_wall
        self.lags.append(lag)
        event = {"type": "answer", "task": s.task, **step}
        event["lag_s"] = round(lag, 3)
        event["behind_s"] = round(max(0.0, self.heard_s - due.prefix.end_s), 3)
        event["waiting"] = self.waiting
        self.emit(event)
        if step["decided"]:
            self.hub.drop(self)  # the later prefixes of a decided call are not asked
            self.waiting = 0
            result = call_result(self.log, s.task, s.threshold)
            decision = {
                "type": "decision",
                "label": step["label"],
                "confidence": step["confidence"],
                "time_s": step["end_s"],
                "round": step["round"],
                "alarm": result["alarm"],
            }
            self.emit(decision)
            if result["alarm"]:
                self.emit({**decision, "type": "alarm", "message": "fraud suspected"})
            self.chunks = StreamChunks(self.folder, self.planner.chunk_ms)  # its audio is no longer needed
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.ended and self.waiting == 0 and not self.closed:
            self.summary(CLOSE_NORMAL)

    def summary(self, code: int, reason: str = "call ended") -> None:
        s = self.hub.settings
        result = call_result(self.log, s.task, s.threshold)
        result["duration_s"] = round(self.heard_s, 3)
        lags = sorted(self.lags)
        result |= {
            "type": "summary",
            "capped": self.capped,
            "closed_by": "client" if code == CLOSE_NORMAL else reason,
            "lag_s": {"p50": _quantile(lags, 0.5), "p95": _quantile(lags, 0.95), "max": lags[-1] if lags else None},
        }
        self.emit(result)
        self.close(code, reason)

    def fail(self, code: str, message: str, close: int) -> None:
        self.emit({"type": "error", "code": code, "message": message})
        self.close(close, code)

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.outbox.put_nowait(("close", code, reason))
        self.closed = True
        self.hub.drop(self)
        self.release()

    def release(self) -> None:
        """Free the call's audio and files (after the engine is done with them)."""
        self.chunks = StreamChunks(self.folder, self.planner.chunk_ms)
        if not self.in_flight:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.hub.sessions.discard(self)


def _quantile(values: list[float], q: float) -> float | None:
    return round(float(np.quantile(values, q)), 3) if values else None


class Hub:
    """Owns the engine; sends the prefixes due across all calls to it in batches, one engine call at a time."""

    def __init__(self, engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.chain = round_chain(settings.task, settings.history)
        self.work_dir = settings.work_dir or tempfile.mkdtemp(prefix="safe-qaq-service-")
        Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="engine")  # the model is not thread-safe
        self.sessions: set[Session] = set()
        self._queue: deque[_Due] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches: list[int] = []  # sizes, for the benchmark
        self.stopping = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, due: _Due) -> None:
        self._queue.append(due)
        self._wake.set()

    def drop(self, session: Session) -> None:
        kept = [d for d in self._queue if d.session is not session]
        session.waiting -= len(self._queue) - len(kept)
        self._queue = deque(kept)

    def _take(self) -> list[_Due]:
        """The oldest due prefix of each call, up to ``batch_size``; a call's prefixes are answered in order."""
        batch, seen, rest = [], set(), deque()
        while self._queue:
            due = self._queue.popleft()
            if len(batch) < self.settings.batch_size and due.session not in seen:
                batch.append(due)
                seen.add(due.session)
            else:
                rest.append(due)
        self._queue = rest
        return batch

    async def run_engine(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def _answer(self, batch: list[_Due]):
        s = self.settings
        return answer_prefixes(
            self.engine, [d.paths for d in batch], self.chain, sampling=s.sampling, batch_size=len(batch)
        )

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._take()
                self._idle.clear()
                for d in batch:
                    d.session.in_flight = True
                self.batches.append(len(batch))
                try:
                    answered = await self.run_engine(self._answer, batch)
                    outcome = list(zip(batch, answered, strict=True))
                except Exception as exc:  # one call's prefix must not fail the others: ask them one by one
                    outcome = await self._isolate(batch) if len(batch) > 1 else [(batch[0], exc)]
                for due, got in outcome:
                    due.session.in_flight = False
                    if got is None or isinstance(got, Exception):
                        due.session.waiting -= 1
                        message = f"the model failed on the prefix ending at {due.prefix.end_s:.2f} s"
                        if isinstance(got, Exception):
                            message += f": {type(got).__name__}: {got}"
                        due.session.fail("model_error", message, CLOSE_MODEL_ERROR)
                    else:
                        due.session.answered(due, *got)
                    if due.session.closed:
                        due.session.release()
                self._idle.set()

    async def _isolate(self, batch: list[_Due]) -> list[tuple[_Due, Any]]:
        """A failed batch, asked again one prefix at a time: only the calls that fail get an error."""
        out = []
        for due in batch:
            try:
                [got] = await self.run_engine(self._answer, [due])
                out.append((due, got))
            except Exception as exc:
                out.append((due, exc))
        return out

    async def drain(self) -> None:
        """Shutdown: finish the prefixes in the engine, then close every call with its summary."""
        self.stopping = True
        self._queue.clear()
        for session in list(self.sessions):
            session.waiting = 1 if session.in_flight else 0
        await self._idle.wait()
        for session in list(self.sessions):
            if not session.closed:
                session.summary(CLOSE_SHUTDOWN, "server shutting down")


# ---------------------------------------------------------------------------
# Files the page may open: bundled calls, uploads, results directories
# ---------------------------------------------------------------------------


class Library:
    """Bundled calls (``--calls``), uploads (kept in a bounded store) and ``live eval`` results (``--results``).

    Clients name things by id or index only; every path comes from the files the service was
    started with, never from a request.
    """

    MAX_UPLOADS = 16

    def __init__(self, settings: Settings, work_dir: str):
        self.calls = {c.call_id: c for c in load_calls(settings.calls_file)} if settings.calls_file else {}
        self.uploads: OrderedDict[str, dict] = OrderedDict()
        self.upload_dir = Path(work_dir) / "uploads"
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.results: list[dict] = []
        for folder in settings.results_dirs:
            path = Path(folder) / "live_results.jsonl"
            records = [rec for _, rec in iter_jsonl(path)]
            metrics_file = Path(folder) / "live_metrics.json"
            metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
            self.results.append({"name": Path(folder).name, "records": records, "metrics": metrics})
        self._pcm: OrderedDict[str, bytes] = OrderedDict()

    def pcm(self, key: str, path: str) -> bytes:
        """16 kHz mono 16-bit PCM of an audio file (what the page streams), a few kept."""
        if key not in self._pcm:
            from safe_qaq.stream import to_pcm16

            self._pcm[key] = to_pcm16(decode(path)).tobytes()
            while len(self._pcm) > 8:
                self._pcm.popitem(last=False)
        return self._pcm[key]

    def add_upload(self, data: bytes, name: str, max_seconds: float) -> dict:
        token = secrets.token_hex(8)
        suffix = Path(name).suffix.lower()
        # soundfile picks the format from the name: keep a known audio suffix, else let it sniff the header
        raw = self.upload_dir / f"{token}{suffix if suffix in {'.wav', '.flac', '.ogg', '.mp3'} else '.upload'}"
        raw.write_bytes(data)
        try:
            samples = decode(raw, max_seconds=max_seconds)
        except AudioError as exc:  # name the upload, not the server's temporary file
            raise AudioError(exc.code, str(exc).replace(str(raw), Path(name).name)) from None
        finally:
            raw.unlink(missing_ok=True)
        flac = self.upload_dir / f"{token}.flac"
        write_flac(flac, samples)
        entry = {"id": token, "name": Path(name).name[:80] or "upload", "path": str(flac)}
        entry["duration_s"] = round(len(samples) / SAMPLE_RATE, 3)
        self.uploads[token] = entry
        while len(self.uploads) > self.MAX_UPLOADS:
            _, old = self.uploads.popitem(last=False)
            Path(old["path"]).unlink(missing_ok=True)
            self._pcm.pop("upload:" + old["id"], None)
        return entry


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------


def _authorized(settings: Settings, header: str | None, token: str | None = None) -> bool:
    if not settings.api_key:
        return True
    given = token
    if header and header.lower().startswith("bearer "):
        given = header[7:].strip()
    return isinstance(given, str) and hmac.compare_digest(given.encode(), settings.api_key.encode())


def create_app(engine, settings: Settings):
    """The FastAPI app around one engine (any :class:`safe_qaq.engine.Engine`)."""
    hub_box: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        hub = Hub(engine, settings)
        app.state.hub = hub
        app.state.library = Library(settings, hub.work_dir)
        hub_box["hub"] = hub
        task = asyncio.create_task(hub.run())
        try:
            yield
        finally:
            await hub.drain()
            await asyncio.sleep(0.2)  # let the senders flush the summaries
            task.cancel()
            hub.executor.shutdown(wait=True)
            if not settings.work_dir:
                shutil.rmtree(hub.work_dir, ignore_errors=True)

    app = FastAPI(title="SAFE-QAQ live fraud alerts", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if request.url.path.startswith("/api/") and not _authorized(settings, request.headers.get("authorization")):
            return JSONResponse({"error": "missing or wrong API key (Authorization: Bearer KEY)"}, status_code=401)
        return await call_next(request)

    def library() -> Library:
        return app.state.library

    @app.get("/api/health")
    async def health():
        hub: Hub = app.state.hub
        return {"ok": True, "calls": len(hub.sessions), "queued": hub.queued, "batches": len(hub.batches)}

    @app.get("/api/config")
    async def config():
        return {
            "task": settings.task,
            "threshold": settings.threshold,
            "hop_s": settings.hop_s,
            "rule": "vad" if settings.use_vad else "hop",
            "pause_s": settings.pause_s,
            "history": settings.history,
            "max_call_s": settings.max_call_s,
            "max_frame_bytes": settings.max_frame_bytes,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_calls": settings.max_calls,
            "idle_timeout_s": settings.idle_timeout_s,
            "auth": bool(settings.api_key),
        }

    @app.get("/api/calls")
    async def calls():
        return [
            {"id": c.call_id, "duration_s": c.duration, "label": c.label, "scene": c.scene, "fraud_type": c.fraud_type}
            for c in library().calls.values()
        ]

    def bundled(call_id: str):
        call = library().calls.get(call_id)
        if call is None:
            raise HTTPException(404, f"no bundled call {call_id!r}")
        return call

    def upload_entry(upload_id: str) -> dict:
        entry = library().uploads.get(upload_id)
        if entry is None:
            raise HTTPException(404, f"no upload {upload_id!r} (uploads are kept for the last {Library.MAX_UPLOADS})")
        return entry

    def pcm_response(key: str, path: str):
        try:
            return Response(library().pcm(key, path), media_type="application/octet-stream")
        except AudioError as exc:
            raise HTTPException(422, f"audio cannot be read: {exc}") from None

    @app.get("/api/calls/{call_id}/audio")
    async def call_audio(call_id: str):
        return FileResponse(bundled(call_id).audio)

    @app.get("/api/calls/{call_id}/pcm")
    async def call_pcm(call_id: str):
        return pcm_response("call:" + call_id, bundled(call_id).audio)

    async def read_body(request: Request) -> bytes:
        limit = settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"upload of {int(declared)} bytes is over the {limit}-byte limit")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise HTTPException(413, f"upload is over the {limit}-byte limit")
        if not body:
            raise HTTPException(400, "empty upload: send the audio file as the request body")
        return bytes(body)

    async def store_upload(request: Request) -> dict:
        data = await read_body(request)
        name = request.query_params.get("name", "upload")
        try:
            return await asyncio.to_thread(library().add_upload, data, name, settings.max_call_s)
        except AudioError as exc:
            raise HTTPException(422, f"{Path(name).name}: {exc}") from None

    @app.post("/api/uploads")
    async def new_upload(request: Request):
        entry = await store_upload(request)
        return {k: entry[k] for k in ("id", "name", "duration_s")}

    @app.get("/api/uploads/{upload_id}/audio")
    async def upload_audio(upload_id: str):
        return FileResponse(upload_entry(upload_id)["path"], media_type="audio/flac")

    @app.get("/api/uploads/{upload_id}/pcm")
    async def upload_pcm(upload_id: str):
        entry = upload_entry(upload_id)
        return pcm_response("upload:" + upload_id, entry["path"])

    @app.post("/api/timeline")
    async def timeline(request: Request, call: str | None = None, upload: str | None = None):
        """The whole-file timeline as ``live call`` gives it: a bundled call (turn ends), an upload, or the body."""
        from safe_qaq.live import LiveCall, run_live

        if call is not None:
            c = bundled(call)
            live_call = LiveCall(c.call_id, c.audio, c.turns, c.gold(settings.task))
        else:
            entry = upload_entry(upload) if upload else await store_upload(request)
            live_call = LiveCall(Path(entry["name"]).stem or entry["id"], entry["path"])
        hub: Hub = app.state.hub
        results = await hub.run_engine(
            run_live,
            engine,
            [live_call],
            task=settings.task,
            threshold=settings.threshold,
            hop_s=settings.hop_s,
            vad=settings.use_vad,
            pause_s=settings.pause_s,
            history=settings.history,
            max_rounds=settings.max_rounds,
            chunk_s=settings.chunk_s,
            batch_size=settings.batch_size,
            sampling=settings.sampling,
            cache_dir=Path(hub.work_dir) / "timeline",
        )
        if not results:
            raise HTTPException(422, f"call {live_call.call_id}: its audio could not be read")
        return results[0]

    @app.get("/api/results")
    async def results():
        return [
            {"index": i, "name": r["name"], "n": len(r["records"]), "metrics": r["metrics"]}
            for i, r in enumerate(library().results)
        ]

    def result_set(index: int) -> dict:
        if not 0 <= index < len(library().results):
            raise HTTPException(404, f"no results directory #{index}")
        return library().results[index]

    def result_record(index: int, row: int) -> dict:
        records = result_set(index)["records"]
        if not 0 <= row < len(records):
            raise HTTPException(404, f"no call #{row} in results #{index}")
        return records[row]

    @app.get("/api/results/{index}")
    async def result_calls(index: int):
        keys = ("call_id", "gold", "decision_label", "decision_time_s", "duration_s", "correct", "alarm", "decided")
        rows = [{"row": j, **{k: rec.get(k) for k in keys}} for j, rec in enumerate(result_set(index)["records"])]
        return {"name": result_set(index)["name"], "calls": rows}

    @app.get("/api/results/{index}/calls/{row}")
    async def result_call(index: int, row: int):
        return result_record(index, row)

    @app.get("/api/results/{index}/calls/{row}/audio")
    async def result_audio(index: int, row: int):
        audio = result_record(index, row).get("audio")
        if not isinstance(audio, str) or not Path(audio).is_file():
            raise HTTPException(404, "this result's audio file is not on this machine")
        return FileResponse(audio)

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.websocket("/ws/call")
    async def ws_call(ws: WebSocket):
        await ws.accept()
        hub: Hub = app.state.hub
        timeout = settings.idle_timeout_s

        async def refuse(code: str, message: str, close: int) -> None:
            with contextlib.suppress(Exception):
                await ws.send_json({"type": "error", "code": code, "message": message})
                await ws.close(close, code)

        try:
            first = await asyncio.wait_for(ws.receive(), timeout)
        except TimeoutError:
            return await refuse("timeout", f"no start message within {timeout:g} s", CLOSE_TIMEOUT)
        if first.get("type") == "websocket.disconnect":
            return
        try:
            start = json.loads(first.get("text") or "")
            if not isinstance(start, dict) or start.get("type") != "start":
                raise ValueError
        except ValueError:
            return await refuse(
                "bad_start", 'the first message must be a JSON {"type": "start", ...} text frame', CLOSE_BAD_DATA
            )
        token = start.get("api_key") if isinstance(start.get("api_key"), str) else None
        if not _authorized(settings, ws.headers.get("authorization"), token):
            return await refuse("auth", "missing or wrong API key", CLOSE_AUTH)
        if hub.stopping:
            return await refuse("shutdown", "the server is shutting down", CLOSE_SHUTDOWN)
        try:
            fmt = StreamFormat.from_start(start)
        except FormatError as exc:
            return await refuse(exc.code, str(exc), CLOSE_BAD_DATA)
        if len(hub.sessions) >= settings.max_calls:
            return await refuse("busy", f"{settings.max_calls} calls are open, the limit; retry later", CLOSE_BUSY)
        call_id = start.get("call_id") if isinstance(start.get("call_id"), str) else None
        session = Session(hub, (call_id or secrets.token_hex(4))[:80], fmt)
        hub.sessions.add(session)
        session.emit(
            {
                "type": "ready",
                "call_id": session.call_id,
                "encoding": fmt.encoding,
                "sample_rate": fmt.sample_rate,
                "channels": fmt.channels,
                "task": settings.task,
                "threshold": settings.threshold,
                "rule": session.planner.rule,
                "hop_s": settings.hop_s,
                "pause_s": settings.pause_s,
                "max_call_s": settings.max_call_s,
            }
        )

        async def sender() -> None:
            while True:
                item = await session.outbox.get()
                if isinstance(item, tuple):
                    _, code, reason = item
                    with contextlib.suppress(Exception):
                        await ws.close(code, reason)
                    return
                await ws.send_text(json.dumps(item, ensure_ascii=False))

        send_task = asyncio.create_task(sender())
        try:
            while not session.closed:
                recv = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({recv, send_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if send_task in done:  # closed by the server side (summary, error, shutdown)
                    recv.cancel()
                    break
                if recv not in done:
                    recv.cancel()
                    if session.ended:
                        continue  # waiting for the last answers, not for the client
                    session.fail("timeout", f"no audio or message for {timeout:g} s", CLOSE_TIMEOUT)
                    break
                msg = recv.result()
                if msg["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(msg.get("code", 1000))
                if msg.get("bytes") is not None:
                    data = msg["bytes"]
                    if len(data) > settings.max_frame_bytes:
                        session.fail(
                            "frame_too_big",
                            f"a frame of {len(data)} bytes is over the {settings.max_frame_bytes}-byte limit",
                            CLOSE_TOO_BIG,
                        )
                        break
                    if session.ended:
                        continue  # audio after the end or the cap is not heard
                    try:
                        session.feed(data)
                    except FormatError as exc:
                        session.fail(exc.code, str(exc), CLOSE_BAD_DATA)
                        break
                else:
                    try:
                        obj = json.loads(msg.get("text") or "")
                    except ValueError:
                        obj = None
                    if isinstance(obj, dict) and obj.get("type") == "end":
                        session.end()
                    else:
                        session.fail("bad_message", 'text frames after start must be {"type": "end"}', CLOSE_BAD_DATA)
                        break
            await send_task
        except WebSocketDisconnect:
            send_task.cancel()
            session.close(CLOSE_NORMAL, "client went away")  # frees the call's audio, queue entries and files
        except Exception:
            send_task.cancel()
            session.close(CLOSE_NORMAL, "connection failed")
            raise
        finally:
            if not session.closed:
                session.close(CLOSE_NORMAL, "connection ended")

    return app
