"""The live service: its stream formats and loop without a model, then one real server (uvicorn + the tiny model).

The server tests share one server process (module fixture, ~20-40 s to load the tiny model on a busy
2-core machine) and talk to it with real clients (websockets, httpx); the browser test drives Debian's
headless Chromium against it; the SIGTERM test runs last and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from safe_qaq.audio import SAMPLE_RATE, decode
from safe_qaq.calls import load_calls
from safe_qaq.stream import PrefixPlanner, StreamChunks, plan_file, to_pcm16
from tests.helpers.cli import BUNDLED_CALLS, ROOT

KEY = "test-key-7f3a"
# Fast settings: 8 new tokens, the fraud task alone, prefixes every 3 s when no pause is found.
LOOP_ARGS = ["--no-history", "--max-tokens", "6", "--hop", "3"]
SERVER_ARGS = [*LOOP_ARGS, "--idle-timeout", "3", "--max-calls", "9", "--max-frame-bytes", "32000"]
SERVER_ARGS += ["--max-call-s", "20", "--max-upload-mb", "1"]
CALLS = {c.call_id: c for c in load_calls(BUNDLED_CALLS)}


def pcm_of(call_id: str, seconds: float | None = None) -> bytes:
    samples = decode(CALLS[call_id].audio)
    if seconds is not None:
        samples = samples[: round(seconds * SAMPLE_RATE)]
    return to_pcm16(samples).tobytes()


# ---------------------------------------------------------------------------
# Without a model: formats, the planner on a stream, the stream's chunks
# ---------------------------------------------------------------------------


def test_formats_decode_pcm_stereo_and_mulaw():
    from safe_qaq.service.formats import MULAW, Decoder, FormatError, StreamFormat

    # G.711 μ-law: 0xFF and 0x7F are the two zeros, 0x00 the most negative sample
    assert MULAW[0xFF] == 0 and MULAW[0x7F] == 0 and MULAW[0x00] == -32124 and MULAW[0x80] == 32124
    stereo = np.array([[1000, 3000], [-2000, 0]], dtype="<i2").tobytes()
    got = Decoder(StreamFormat("pcm16", 16000, 2)).decode(stereo)
    assert np.allclose(got, np.array([2000, -1000]) / 32768)
    with pytest.raises(FormatError, match="not whole samples"):
        Decoder(StreamFormat("pcm16", 16000, 2)).decode(stereo[:3])
    for bad, why in [
        ({"sample_rate": 44100}, "44100 is not supported for pcm16"),
        ({"encoding": "mulaw", "sample_rate": 16000}, "16000 is not supported for mulaw"),
        ({"encoding": "opus", "sample_rate": 8000}, "'opus' is not one of"),
        ({"sample_rate": 16000, "channels": 3}, "channels 3 must be 1 or 2"),
    ]:
        with pytest.raises(FormatError, match=why):
            StreamFormat.from_start(bad)
    # 8 kHz is resampled to 16 kHz by a streaming resampler: the frame sizes do not change the audio
    x = (3000 * np.sin(np.arange(8000) / 7)).astype("<i2").tobytes()
    whole = Decoder(StreamFormat("pcm16", 8000, 1))
    a = np.concatenate([whole.decode(x), whole.flush()])
    pieces = Decoder(StreamFormat("pcm16", 8000, 1))
    b = np.concatenate([pieces.decode(x[i : i + 322]) for i in range(0, len(x), 322)] + [pieces.flush()])
    assert len(a) == 16000 and np.allclose(a, b, atol=1e-6)


def test_planner_same_prefixes_however_the_stream_is_split(tmp_path):
    """A file fed whole and the same audio fed in random frames give the same prefixes, splits and chunk audio."""
    samples = decode(CALLS["call_014"].audio)
    kwargs = {"rule": "vad", "hop_s": 3.0}
    whole, _ = plan_file(samples, **kwargs)
    planner, chunks = PrefixPlanner(**kwargs), StreamChunks(tmp_path / "s")
    rng = np.random.default_rng(0)
    got, pos, files = [], 0, []
    while pos < len(samples):
        n = int(rng.integers(1, 9000))
        piece = samples[pos : pos + n]
        pos += n
        chunks.add(piece)
        for prefix in planner.feed(piece):
            got.append(prefix)
            files.append(chunks.paths(prefix))
        assert chunks.held_samples <= 31 * SAMPLE_RATE  # only audio a later prefix can still need
    for prefix in planner.finish():
        got.append(prefix)
        files.append(chunks.paths(prefix, whole=True))
    assert got == whole and len(whole) >= 6
    ends = [p.end_s for p in whole]
    assert ends == sorted(set(ends)) and ends[-1] == pytest.approx(len(samples) // 16 / 1000)
    assert max(np.diff([0, *ends])) <= 3.0 + 1e-9  # a pause or the hop, never longer
    # the stream's last prefix (the whole call) is every sample, as the source file sent whole is
    assert np.array_equal(sf.read(files[-1][-1], dtype="float32")[0], samples)
    # an earlier prefix is exactly the first end_ms of the call
    mid = whole[2]
    heard = np.concatenate([sf.read(f, dtype="float32")[0] for f in files[2]])
    assert np.array_equal(heard, samples[: mid.end_ms * 16])


def test_vad_finds_the_turn_ends_of_a_bundled_call():
    call = CALLS["call_001"]
    samples = decode(call.audio)
    prefixes, _ = plan_file(samples, rule="vad", hop_s=100.0)
    from safe_qaq.calls import turn_boundaries_ms

    turns = turn_boundaries_ms(call.turns, len(samples) // 16)
    found = [t for t in turns if any(abs(p.end_ms - t) < 400 for p in prefixes)]
    assert len(found) >= len(turns) - 2, (turns, [p.end_ms for p in prefixes])


def test_cli_refuses_public_bind_without_key_and_missing_model(capsys):
    from safe_qaq.service.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--model", str(ROOT), "--host", "0.0.0.0"])
    assert exc.value.code == 2 and "is not loopback: pass --api-key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "outputs/demo/stage3_realtime/merged-nope"])
    err = capsys.readouterr().err
    assert "no such directory (run `make demo` first); nothing is downloaded" in err


# ---------------------------------------------------------------------------
# One real server
# ---------------------------------------------------------------------------


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, work: Path, model: Path):
        self.proc, self.port, self.log, self.work, self.model = proc, port, log, work, model
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws/call"

    def get(self, path: str, key: str | None = KEY, **kw):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.http + path, headers=headers, timeout=60, **kw)

    def post(self, path: str, key: str | None = KEY, **kw):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.http + path, headers=headers, timeout=300, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _results_dir(folder: Path) -> Path:
    """A `live eval --out` folder for the inspect view: a caught fraud and a false alarm on bundled calls."""
    from safe_qaq.stream import CallLog, call_result

    folder.mkdir()
    records = []
    for cid, gold in (("call_014", "fraud"), ("call_001", "normal")):
        step = {"round": 1, "end_s": 5.0, "stage": "late_stage", "label": "fraud", "null": False, "confidence": 0.9}
        step |= {"decided": True, "format_error": None, "think": "t", "latency_s": 0.1, "text": "x"}
        log = CallLog(cid, CALLS[cid].audio, gold, CALLS[cid].duration, [5.0, CALLS[cid].duration], [step])
        records.append(call_result(log, "fraud", 0.8))
    (folder / "live_results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    pytest.importorskip("fastapi")
    folder = tmp_path_factory.mktemp("service")
    port, log, work = _free_port(), folder / "server.log", folder / "work"
    results = _results_dir(folder / "live")
    argv = [sys.executable, "-m", "safe_qaq.service", "--model", str(tiny_model), "--port", str(port)]
    argv += ["--api-key", KEY, "--work-dir", str(work), "--results", str(results), *SERVER_ARGS]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(proc, port, log, work, tiny_model)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the service exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            if srv.get("/api/health").status_code == 200:
                break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the service did not start in 300 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield srv
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def _session(url, start, frames=(), *, speed=20.0, end=True, headers=None, abort_after=None, wait=120.0):
    """Open a call, send ``frames`` (100 ms each at ``speed``), then ``end``; return (events, close code, reason)."""
    import websockets

    events = []
    async with websockets.connect(url, additional_headers=headers or {}, max_size=None) as ws:
        if start is not None:
            await ws.send(start if isinstance(start, str) else json.dumps(start))

        async def send():
            for i, frame in enumerate(frames):
                if abort_after is not None and i == abort_after:
                    await ws.close()
                    return
                await ws.send(frame)
                await asyncio.sleep(0.1 / speed)
            if end:
                await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(wait):
                async for message in ws:
                    events.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass
        with contextlib.suppress(Exception):
            await sender
        return events, ws.close_code, ws.close_reason


def frames_of(pcm: bytes, size: int = 3200) -> list[bytes]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def start_msg(call_id="t", **kw):
    return {"type": "start", "encoding": "pcm16", "sample_rate": 16000, "channels": 1, "call_id": call_id} | kw


AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.slow
def test_streamed_call_matches_live_call(server, tmp_path):
    """The first 12 s of call_004 streamed at x20 get the answers `live call` gives on the same audio as a file."""
    from safe_qaq import live

    wav = tmp_path / "call_004_12s.wav"
    sf.write(wav, decode(CALLS["call_004"].audio)[: 12 * SAMPLE_RATE], SAMPLE_RATE, subtype="PCM_16")
    pcm = to_pcm16(sf.read(wav, dtype="float32")[0]).tobytes()
    events, code, _ = asyncio.run(_session(server.ws, start_msg("call_004"), frames_of(pcm), headers=AUTH))
    assert code == 1000, events[-3:]
    [summary] = [e for e in events if e["type"] == "summary"]
    answers = [e for e in events if e["type"] == "answer"]
    out = tmp_path / "live.json"
    argv = ["call", "--model", str(server.model), "--audio", str(wav), *LOOP_ARGS]
    assert live.main([*argv, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    expected = json.loads(out.read_text())
    keys = ("round", "end_s", "stage", "label", "confidence", "decided", "text")
    assert [{k: s[k] for k in keys} for s in answers] == [{k: s[k] for k in keys} for s in expected["steps"]]
    assert summary["prefix_ends"] == expected["prefix_ends"] and len(answers) >= 3
    assert summary["decided"] == expected["decided"] and summary["call_id"] == "call_004"
    assert events[0]["type"] == "ready" and any(e["type"] == "heard" for e in events)
    # the whole-file endpoint gives the same timeline
    timeline = server.post("/api/timeline?name=c.wav", content=wav.read_bytes()).json()
    assert [{k: s[k] for k in keys} for s in timeline["steps"]] == [{k: s[k] for k in keys} for s in answers]


@pytest.mark.slow
def test_eight_calls_at_once_keep_their_own_answers(server):
    ids = sorted(CALLS)[:8]
    lengths = [4.0 + 0.5 * i for i in range(8)]  # different lengths: different prefixes per call

    async def run_all():
        return await asyncio.gather(
            *[
                _session(server.ws, start_msg(cid), frames_of(pcm_of(cid, sec)), headers=AUTH)
                for cid, sec in zip(ids, lengths, strict=True)
            ]
        )

    results = asyncio.run(run_all())
    for cid, sec, (events, code, _) in zip(ids, lengths, results, strict=True):
        assert code == 1000, (cid, events[-2:])
        [summary] = [e for e in events if e["type"] == "summary"]
        planned, _ = plan_file(decode(CALLS[cid].audio)[: round(sec * SAMPLE_RATE)], rule="vad", hop_s=3.0)
        assert summary["call_id"] == cid and summary["prefix_ends"] == [p.end_s for p in planned]
        answers = [e for e in events if e["type"] == "answer"]
        assert [a["end_s"] for a in answers] == summary["prefix_ends"]  # its own prefixes, in order
        assert summary["duration_s"] == pytest.approx(sec, abs=1e-3)
    health = server.get("/api/health").json()
    assert health["calls"] == 0 and health["queued"] == 0


@pytest.mark.slow
def test_disconnect_mid_call_frees_it(server):
    frames = frames_of(pcm_of("call_002", 8.0))
    asyncio.run(_session(server.ws, start_msg("gone"), frames, headers=AUTH, abort_after=40, end=False))
    deadline = time.monotonic() + 30
    while server.get("/api/health").json()["calls"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.get("/api/health").json()["calls"] == 0
    while list(server.work.glob("call-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(server.work.glob("call-*")) == []  # its chunk files are gone too


BAD_STREAMS = [
    ("wrong declared rate", start_msg(sample_rate=44100), [], "bad_format", 1003),
    ("mu-law at 16 kHz", start_msg(encoding="mulaw"), [], "bad_format", 1003),
    ("not a start message", "hello", [], "bad_start", 1003),
    ("odd byte count", start_msg(), [b"\x00" * 3201], "bad_frame", 1003),
    ("frame over the limit", start_msg(), [b"\x00" * 32002], "frame_too_big", 1009),
    ("sends nothing until the timeout", start_msg(), [], "timeout", 4408),
    ("no API key", start_msg(), [], "auth", 1008),
    ("wrong API key", start_msg(api_key="nope"), [], "auth", 1008),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "start", "frames", "code", "close"), BAD_STREAMS, ids=[c[0] for c in BAD_STREAMS])
def test_bad_streams_get_their_event_and_close_code(server, case, start, frames, code, close):
    headers = {} if "API key" in case else AUTH
    events, got, _ = asyncio.run(_session(server.ws, start, frames, headers=headers, end=False, wait=20))
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == [code] and errors[0]["message"], events
    assert got == close


@pytest.mark.slow
def test_too_many_calls_and_bad_http_requests(server):
    import websockets

    async def busy():
        opened = []
        for i in range(9):
            ws = await websockets.connect(server.ws, additional_headers=AUTH)
            await ws.send(json.dumps(start_msg(f"idle{i}")))
            assert json.loads(await ws.recv())["type"] == "ready"
            opened.append(ws)
        got = await _session(server.ws, start_msg("tenth"), headers=AUTH, end=False, wait=10)
        for ws in opened:
            await ws.close()
        return got

    events, code, _ = asyncio.run(busy())
    assert code == 1013 and events[0]["code"] == "busy" and "9 calls are open" in events[0]["message"]
    assert server.get("/api/calls", key=None).status_code == 401
    assert server.get("/api/calls", key="wrong").status_code == 401
    assert server.get("/").status_code == 200 and "SAFE-QAQ" in server.get("/").text  # the page needs no key
    assert server.get("/api/calls/..%2F..%2Fetc%2Fpasswd/audio").status_code == 404
    assert server.get("/api/calls/nope/pcm").status_code == 404
    assert server.get("/api/results/1").status_code == 404 and server.get("/api/results/0/calls/2").status_code == 404
    [listed] = server.get("/api/results").json()
    assert listed["n"] == 2 and listed["name"] == "live"
    rows = server.get("/api/results/0").json()["calls"]
    assert [(r["call_id"], r["correct"], r["alarm"]) for r in rows] == [
        ("call_014", True, True),
        ("call_001", False, True),
    ]
    audio = server.get("/api/results/0/calls/1/audio")
    assert audio.status_code == 200 and audio.content == Path(CALLS["call_001"].audio).read_bytes()
    too_big = server.post("/api/uploads", content=b"\x00" * (1024 * 1024 + 1))
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    bad = server.post("/api/uploads?name=x.wav", content=b"RIFF not audio")
    assert bad.status_code == 422 and "x.wav: not a readable audio file" in bad.json()["detail"]
    # and the next call is served
    events, code, _ = asyncio.run(
        _session(server.ws, start_msg("after"), frames_of(pcm_of("call_003", 4.0)), headers=AUTH)
    )
    assert code == 1000 and events[-1]["type"] == "summary" and events[-1]["rounds_used"] == 2


@pytest.mark.slow
def test_a_call_over_the_length_limit_is_capped(server):
    events, code, _ = asyncio.run(_session(server.ws, start_msg("long"), frames_of(pcm_of("call_014")), headers=AUTH))
    [capped] = [e for e in events if e["type"] == "capped"]
    assert capped["limit_s"] == 20.0 and "20 s limit" in capped["message"]
    summary = events[-1]
    assert code == 1000 and summary["type"] == "summary" and summary["capped"] is True
    assert summary["duration_s"] == 20.0 and summary["prefix_ends"][-1] == 20.0


def _chromium() -> tuple[str, str] | None:
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.slow
@pytest.mark.skipif(
    _chromium() is None, reason="no chromium + chromedriver (Debian: apt-get install chromium chromium-driver)"
)
def test_page_in_headless_chromium(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # a fake microphone (Chromium's test tone) that the page may use without a permission prompt
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"{server.http}/#key={KEY}")
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements("css selector", "#call-select option")) > 0)
        Select(driver.find_element("id", "call-select")).select_by_value("call_004")
        Select(driver.find_element("id", "speed")).select_by_value("20")
        driver.find_element("id", "start").click()
        WebDriverWait(driver, 180).until(lambda d: d.execute_script("return window.safeqaq.done"))
        events = driver.execute_script("return window.safeqaq.events")
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#timeline tbody tr')].map(tr => ({round: +tr.dataset.round,"
            " end_s: +tr.dataset.end, label: tr.dataset.label, confidence: tr.dataset.confidence,"
            " cells: [...tr.cells].map(c => c.textContent)}))"
        )
        answers = [e for e in events if e["type"] == "answer"]
        assert len(rows) == len(answers) >= 5
        for row, ev in zip(rows, answers, strict=True):
            assert (row["round"], row["end_s"]) == (ev["round"], ev["end_s"])
            assert row["label"] == (ev["label"] or "")
            assert (float(row["confidence"]) if row["confidence"] else None) == ev["confidence"]
            shown = ev["label"] or ("waiting" if ev["null"] else "unreadable")
            assert row["cells"][3] == shown and float(row["cells"][1]) == pytest.approx(ev["end_s"], abs=0.0051)
        summary = events[-1]
        assert summary["type"] == "summary" and summary["call_id"] == "call_004"
        banner = driver.find_element("id", "banner").text
        assert ("ALARM" in banner or "Decision" in banner) if summary["decided"] else "No decision" in banner
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # the microphone: 4 s of the fake device's tone, then "End call"
        driver.find_element("id", "mic").click()
        mic_heard = (
            "const s = window.safeqaq; return s.events.some(e => e.type === 'ready' && e.call_id === 'microphone')"
            " && s.heard >= 4"
        )
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(mic_heard))
        driver.find_element("id", "stop").click()
        WebDriverWait(driver, 120).until(lambda d: d.execute_script("return window.safeqaq.done"))
        events = driver.execute_script("return window.safeqaq.events")
        summary = events[-1]
        assert summary["type"] == "summary" and summary["call_id"] == "microphone" and summary["duration_s"] >= 4
        rows = driver.find_elements("css selector", "#timeline tbody tr")
        assert len(rows) == len([e for e in events if e["type"] == "answer"]) == summary["rounds_used"] >= 1
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
    finally:
        driver.quit()


@pytest.mark.slow
def test_sigterm_finishes_the_call_in_flight(server):
    """Last: SIGTERM mid-call; the call gets its summary and close 1001, and the server exits 0."""

    async def run():
        task = asyncio.create_task(
            _session(server.ws, start_msg("late"), frames_of(pcm_of("call_005")), speed=2, headers=AUTH, wait=60)
        )
        await asyncio.sleep(4.0)  # 8 s of audio heard: prefixes asked, one in the engine or queued
        server.proc.send_signal(signal.SIGTERM)
        return await task

    events, code, _ = asyncio.run(run())
    assert code == 1001, events[-3:]
    summary = events[-1]
    assert summary["type"] == "summary" and summary["closed_by"] == "server shutting down"
    assert summary["duration_s"] < 28  # the call was cut short
    # uvicorn re-raises the SIGTERM it caught once it has shut down, so the exit is "killed by SIGTERM"
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def test_a_model_error_fails_only_its_own_call(tmp_path):
    """A batch that raises is asked again one prefix at a time: the call the model fails on gets an `error` event
    and close code 1011; the call batched beside it gets its answers, and the server serves the next call. The
    engine is the tests' stand-in (tests/helpers/engines.py) told to raise on a silent prefix."""
    import threading

    import uvicorn

    from safe_qaq.service.app import CLOSE_MODEL_ERROR, Settings, create_app
    from tests.helpers.engines import FakeEngine, listener

    answer = listener(decide_after_s=0.0)

    def policy(row, **kw):
        if all(not np.any(sf.read(path)[0]) for path in row["audios"]):
            raise RuntimeError("engine blew up on this prefix")
        return answer(row, **kw)

    engine = FakeEngine(policy, delay_s=0.5)
    settings = Settings(use_vad=False, hop_s=2.0, history=False, work_dir=str(tmp_path / "work"))
    app = create_app(engine, settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{port}/ws/call"
        silent = bytes(2 * 6 * SAMPLE_RATE)
        speech = pcm_of("call_002", 6.0)

        async def later(call):  # after the lead call's first prefix has taken the engine (0.5 s a batch)
            await asyncio.sleep(0.05)
            return await call

        async def three():
            return await asyncio.gather(
                _session(url, start_msg("lead"), frames_of(speech), wait=60),
                later(_session(url, start_msg("silent"), frames_of(silent), wait=60)),
                later(_session(url, start_msg("speech"), frames_of(speech), wait=60)),
            )

        _, (bad, bad_code, _), (good, good_code, _) = asyncio.run(three())
        assert bad_code == CLOSE_MODEL_ERROR
        (error,) = [e for e in bad if e["type"] == "error"]
        assert error["code"] == "model_error" and "engine blew up on this prefix" in error["message"]
        assert good_code == 1000 and good[-1]["type"] == "summary"
        assert [e for e in good if e["type"] == "answer"] and not [e for e in good if e["type"] == "error"]
        assert max(app.state.hub.batches) >= 2  # the two calls did share a batch, and only one failed
        again, again_code, _ = asyncio.run(_session(url, start_msg("next"), frames_of(speech), wait=60))
        assert again_code == 1000 and [e for e in again if e["type"] == "answer"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
