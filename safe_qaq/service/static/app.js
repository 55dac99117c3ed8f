// The call page: stream a bundled call, a file or the microphone to /ws/call and draw the timeline it returns.
// Plain JS, no build step. window.safeqaq.events holds every event the server sent (the browser test reads it).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { events: [], steps: [], ws: null, samples: null, duration: 0, alarmAt: null, ends: [], heard: 0,
  done: false, config: null, sending: null, mic: null };
window.safeqaq = state;

function key() { return $("api-key").value || sessionStorage.getItem("safeqaq-key") || ""; }
function headers() { const k = key(); return k ? { Authorization: "Bearer " + k } : {}; }

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...headers(), ...(opts.headers || {}) } });
  if (!r.ok) {
    let detail = r.statusText;
    try { const j = await r.json(); detail = j.detail || j.error || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${r.status} ${detail}`);
  }
  return r;
}

function log(text) { $("log").textContent = text; }
function fmt(x, d = 2) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }

// ---------------------------------------------------------------- waveform

function drawWave() {
  const c = $("wave"), g = c.getContext("2d"), w = c.width, h = c.height;
  g.clearRect(0, 0, w, h);
  g.fillStyle = "#f8f9fc"; g.fillRect(0, 0, w, h);
  const total = state.duration || 1;
  const x = (s) => (s / total) * w;
  if (state.samples) {
    const s = state.samples, per = Math.max(1, Math.floor(s.length / w));
    g.fillStyle = "#9fb4e8";
    for (let i = 0; i < w; i++) {
      let peak = 0;
      for (let j = i * per; j < Math.min(s.length, (i + 1) * per); j += 4) peak = Math.max(peak, Math.abs(s[j]));
      const bar = Math.max(1, (peak / 32768) * (h - 20));
      g.fillRect(i, (h - bar) / 2, 1, bar);
    }
  }
  g.fillStyle = "rgba(36, 88, 214, 0.12)"; g.fillRect(0, 0, x(state.heard), h);
  g.strokeStyle = "#6b7585"; g.lineWidth = 1;
  for (const e of state.ends) { g.beginPath(); g.moveTo(x(e), h - 10); g.lineTo(x(e), h); g.stroke(); }
  if (state.alarmAt !== null) {
    g.strokeStyle = state.alarmLabel === "alarm" ? "#c62828" : "#2e7d32"; g.lineWidth = 3;
    g.beginPath(); g.moveTo(x(state.alarmAt), 0); g.lineTo(x(state.alarmAt), h); g.stroke();
    g.fillStyle = g.strokeStyle; g.font = "bold 13px system-ui";
    const text = (state.alarmLabel === "alarm" ? "ALARM " : "decision ") + state.alarmAt.toFixed(1) + " s";
    g.fillText(text, Math.min(x(state.alarmAt) + 5, w - 120), 16);
  }
}

// ---------------------------------------------------------------- timeline

function labelCell(step) {
  if (step.label !== null && step.label !== undefined) return [step.label, step.label === "fraud" ? "label-fraud" : ""];
  return step.null ? ["waiting", "label-waiting"] : ["unreadable", "label-waiting"];
}

function addRow(step) {
  const tr = document.createElement("tr");
  const [label, cls] = labelCell(step);
  tr.dataset.round = step.round; tr.dataset.end = step.end_s; tr.dataset.label = step.label ?? "";
  tr.dataset.confidence = step.confidence ?? "";
  if (step.decided) tr.classList.add("decided");
  const cells = [step.round, fmt(step.end_s, 2), step.stage || "–", label, fmt(step.confidence),
    fmt(step.latency_s), step.behind_s === undefined ? "–" : fmt(step.behind_s, 1)];
  cells.forEach((v, i) => {
    const td = document.createElement("td"); td.textContent = v;
    if (i === 3 && cls) td.className = cls;
    tr.appendChild(td);
  });
  const td = document.createElement("td");
  const det = document.createElement("details");
  const sum = document.createElement("summary");
  const think = step.think || "";
  sum.textContent = think ? think.slice(0, 40) + (think.length > 40 ? "…" : "") : "(no think)";
  const pre = document.createElement("pre"); pre.textContent = step.text || "";
  det.append(sum, pre); td.appendChild(det); tr.appendChild(td);
  $("timeline").querySelector("tbody").appendChild(tr);
}

function resetCall(duration) {
  state.events = []; state.steps = []; state.ends = []; state.heard = 0; state.alarmAt = null; state.done = false;
  state.duration = duration || 0;
  $("timeline").querySelector("tbody").innerHTML = "";
  setBanner("idle", "Listening… waiting for the first answer");
  drawWave();
}

function setBanner(kind, text) { const b = $("banner"); b.className = "banner " + kind; b.textContent = text; }

function showDecision(label, time, conf, alarm) {
  state.alarmAt = time; state.alarmLabel = alarm ? "alarm" : "ok";
  setBanner(alarm ? "alarm" : "normal",
    (alarm ? "ALARM: fraud suspected" : `Decision: ${label}`) + ` after ${time.toFixed(1)} s (confidence ${fmt(conf)})`);
  drawWave();
}

function showResult(result) {
  // a finished timeline (whole-file endpoint or an inspected result)
  state.steps = result.steps || []; state.ends = result.prefix_ends || state.steps.map((s) => s.end_s);
  state.heard = result.duration_s; state.duration = result.duration_s || state.duration;
  $("timeline").querySelector("tbody").innerHTML = "";
  state.steps.forEach(addRow);
  if (result.decided) showDecision(result.decision_label, result.decision_time_s, result.decision_confidence, result.alarm);
  else setBanner("idle", `No decision after the whole call (${result.rounds_used} rounds)`);
  drawWave();
}

function onEvent(ev) {
  state.events.push(ev);
  if (ev.type === "heard") {
    state.heard = ev.heard_s;
    $("status").textContent = `heard ${ev.heard_s.toFixed(1)} s · answered to ${ev.answered_s.toFixed(1)} s` +
      (ev.behind_s > 0 ? ` · ${ev.behind_s.toFixed(1)} s behind (${ev.waiting} waiting, queue ${ev.queue})` : "");
    drawWave();
  } else if (ev.type === "answer") {
    state.steps.push(ev); state.ends.push(ev.end_s); addRow(ev); drawWave();
    $("status").textContent = `heard ${state.heard.toFixed(1)} s · answered to ${ev.end_s.toFixed(1)} s` +
      (ev.waiting > 0 ? ` · ${ev.behind_s.toFixed(1)} s behind (${ev.waiting} waiting)` : " · up to date");
    if (!state.alarmAt) setBanner("idle", `Listening… round ${ev.round}: ${labelCell(ev)[0]}`);
  } else if (ev.type === "decision") {
    showDecision(ev.label, ev.time_s, ev.confidence, ev.alarm);
  } else if (ev.type === "capped") {
    log(ev.message);
  } else if (ev.type === "error") {
    setBanner("error", `Error (${ev.code}): ${ev.message}`);
  } else if (ev.type === "summary") {
    state.done = true; state.duration = ev.duration_s || state.duration; state.heard = ev.duration_s;
    if (!ev.decided) setBanner("idle", `No decision after the whole call (${ev.rounds_used} rounds)`);
    $("status").textContent = `call over: ${ev.duration_s.toFixed(1)} s heard, ${ev.rounds_used} prefixes answered`;
    log(`call ${ev.call_id}: ${ev.rounds_used} rounds, lag p50 ${fmt(ev.lag_s.p50)} s, p95 ${fmt(ev.lag_s.p95)} s`);
    drawWave(); finishUi();
  }
}

function finishUi() { $("start").disabled = false; $("mic").disabled = false; $("stop").disabled = true; }

// ---------------------------------------------------------------- streaming

function openSocket(callId, format) {
  return new Promise((resolve, reject) => {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws/call`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "start", call_id: callId, api_key: key() || undefined, ...format }));
      resolve(ws);
    };
    ws.onmessage = (m) => onEvent(JSON.parse(m.data));
    ws.onerror = () => reject(new Error("WebSocket failed"));
    ws.onclose = (e) => {
      if (state.sending) { clearTimeout(state.sending); state.sending = null; }
      if (!state.done && e.code !== 1000) setBanner("error", `Connection closed (${e.code}) ${e.reason}`);
      finishUi();
    };
    state.ws = ws;
  });
}

async function streamPcm(callId, pcm, audioUrl) {
  const speed = Number($("speed").value);
  state.samples = new Int16Array(pcm);
  resetCall(state.samples.length / 16000);
  const player = $("player");
  player.src = audioUrl || "";
  const ws = await openSocket(callId, { encoding: "pcm16", sample_rate: 16000, channels: 1 });
  $("start").disabled = true; $("mic").disabled = true; $("stop").disabled = false;
  if (audioUrl && speed <= 16) {  // Chrome plays at most ×16
    player.playbackRate = speed;
    player.play().catch(() => log("press play to hear the call (the browser blocked autoplay)"));
  }
  const frameBytes = 3200;  // 100 ms of 16 kHz 16-bit audio
  const bytesPerMs = 32 * speed;
  const t0 = performance.now();
  let sent = 0;
  const tick = () => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const due = Math.min(pcm.byteLength, Math.floor(((performance.now() - t0) * bytesPerMs) / 2) * 2);
    while (sent + frameBytes <= due || (due === pcm.byteLength && sent < due)) {
      const end = Math.min(sent + frameBytes, pcm.byteLength);
      ws.send(pcm.slice(sent, end)); sent = end;
    }
    if (sent >= pcm.byteLength) { ws.send(JSON.stringify({ type: "end" })); state.sending = null; return; }
    state.sending = setTimeout(tick, 20);
  };
  tick();
}

async function startSelected() {
  try {
    const file = $("file-input").files[0];
    if (file) {
      const up = await (await api(`/api/uploads?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file })).json();
      $("source-info").textContent = `upload ${up.name}: ${up.duration_s.toFixed(1)} s`;
      const pcm = await (await api(`/api/uploads/${up.id}/pcm`)).arrayBuffer();
      const audio = URL.createObjectURL(await (await api(`/api/uploads/${up.id}/audio`)).blob());
      return streamPcm(up.name, pcm, audio);
    }
    const id = $("call-select").value;
    if (!id) return setBanner("error", "No bundled calls: start the service with --calls");
    const pcm = await (await api(`/api/calls/${encodeURIComponent(id)}/pcm`)).arrayBuffer();
    const audio = URL.createObjectURL(await (await api(`/api/calls/${encodeURIComponent(id)}/audio`)).blob());
    return streamPcm(id, pcm, audio);
  } catch (err) { setBanner("error", String(err.message || err)); finishUi(); }
}

async function startMic() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    const ctx = new AudioContext({ sampleRate: 16000 });
    const src = ctx.createMediaStreamSource(stream);
    const node = ctx.createScriptProcessor(4096, 1, 1);
    state.samples = null; resetCall(60);
    const ws = await openSocket("microphone", { encoding: "pcm16", sample_rate: 16000, channels: 1 });
    $("start").disabled = true; $("mic").disabled = true; $("stop").disabled = false;
    node.onaudioprocess = (e) => {
      const x = e.inputBuffer.getChannelData(0), out = new Int16Array(x.length);
      for (let i = 0; i < x.length; i++) out[i] = Math.max(-32768, Math.min(32767, Math.round(x[i] * 32768)));
      if (ws.readyState === WebSocket.OPEN) ws.send(out.buffer);
      state.duration = Math.max(state.duration, state.heard + 5);
    };
    src.connect(node); node.connect(ctx.destination);
    state.mic = { stream, ctx, node };
  } catch (err) { setBanner("error", "Microphone: " + (err.message || err)); finishUi(); }
}

function stopCall() {
  if (state.mic) { state.mic.node.disconnect(); state.mic.stream.getTracks().forEach((t) => t.stop()); state.mic.ctx.close(); state.mic = null; }
  if (state.sending) { clearTimeout(state.sending); state.sending = null; }
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "end" }));
  $("player").pause();
}

// ---------------------------------------------------------------- inspect view

const inspect = { rows: [], index: 0, key: null, dir: 1, selected: null };

async function loadResultsList() {
  const list = await (await api("/api/results")).json();
  const sel = $("results-select"); sel.innerHTML = "";
  if (!list.length) { $("results-info").textContent = "none: start the service with --results DIR (a live eval --out folder)"; return; }
  for (const r of list) { const o = document.createElement("option"); o.value = r.index; o.textContent = `${r.name} (${r.n} calls)`; sel.appendChild(o); }
  await loadResults(list[0].index);
}

async function loadResults(index) {
  const data = await (await api(`/api/results/${index}`)).json();
  inspect.rows = data.calls; inspect.index = index;
  const wrong = data.calls.filter((c) => c.correct === false).length;
  $("results-info").textContent = `${data.calls.length} calls, ${wrong} wrong, ${data.calls.filter((c) => c.alarm && c.gold !== "fraud").length} false alarm(s) (shaded)`;
  renderResults();
}

function renderResults() {
  const body = $("results-table").querySelector("tbody"); body.innerHTML = "";
  const rows = [...inspect.rows];
  if (inspect.key) rows.sort((a, b) => {
    const x = a[inspect.key], y = b[inspect.key];
    if (x === y) return 0; if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * inspect.dir;
  });
  for (const r of rows) {
    const tr = document.createElement("tr");
    if (r.alarm && r.gold !== "fraud") tr.classList.add("false-alarm");
    [r.call_id, r.gold ?? "–", r.decided ? r.decision_label : "undecided", fmt(r.decision_time_s, 1), fmt(r.duration_s, 1),
      r.correct === null ? "–" : r.correct ? "yes" : "no"].forEach((v) => { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
    tr.dataset.row = r.row;
    if (r.row === inspect.selected) tr.classList.add("selected");
    tr.onclick = () => { inspect.selected = r.row; renderResults(); openResult(r.row); };
    body.appendChild(tr);
  }
  document.querySelectorAll("#results-table th").forEach((th) => {
    th.classList.toggle("asc", th.dataset.key === inspect.key && inspect.dir === 1);
    th.classList.toggle("desc", th.dataset.key === inspect.key && inspect.dir === -1);
  });
}

async function openResult(row) {
  try {
    const rec = await (await api(`/api/results/${inspect.index}/calls/${row}`)).json();
    state.samples = null; state.duration = rec.duration_s; state.alarmAt = null;
    $("status").textContent = `${rec.call_id}: gold ${rec.gold ?? "unknown"}, ${rec.rounds_used} prefixes answered`;
    try {
      const blob = await (await api(`/api/results/${inspect.index}/calls/${row}/audio`)).blob();
      $("player").src = URL.createObjectURL(blob);
      const ctx = new OfflineAudioContext(1, 16000, 16000);
      const buf = await ctx.decodeAudioData(await blob.arrayBuffer());
      const x = buf.getChannelData(0); state.samples = Int16Array.from(x, (v) => v * 32767);
      state.duration = buf.duration;
    } catch (err) { log(`audio of ${rec.call_id} not available: ${err.message || err}`); }
    showResult(rec);
  } catch (err) { setBanner("error", String(err.message || err)); }
}

// ---------------------------------------------------------------- setup

async function init() {
  document.querySelectorAll(".tab").forEach((b) => b.onclick = () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === b));
    $("view-live").hidden = b.dataset.view !== "live"; $("view-inspect").hidden = b.dataset.view !== "inspect";
    if (b.dataset.view === "inspect") loadResultsList().catch((e) => setBanner("error", e.message));
  });
  document.querySelectorAll("#results-table th").forEach((th) => th.onclick = () => {
    inspect.dir = inspect.key === th.dataset.key ? -inspect.dir : 1; inspect.key = th.dataset.key; renderResults();
  });
  $("results-select").onchange = (e) => loadResults(e.target.value);
  $("start").onclick = startSelected; $("mic").onclick = startMic; $("stop").onclick = stopCall;
  $("api-key").onchange = () => { sessionStorage.setItem("safeqaq-key", $("api-key").value); init(); };
  const hashKey = new URLSearchParams(location.hash.slice(1)).get("key");
  if (hashKey) { $("api-key").value = hashKey; sessionStorage.setItem("safeqaq-key", hashKey); }
  try {
    state.config = await (await fetch("/api/config", { headers: headers() })).json();
  } catch (_) { state.config = null; }
  $("key-box").hidden = !(state.config === null || state.config.auth || state.config.error);
  try {
    const calls = await (await api("/api/calls")).json();
    const sel = $("call-select"); sel.innerHTML = "";
    for (const c of calls) {
      const o = document.createElement("option"); o.value = c.id;
      o.textContent = `${c.id} · ${c.label ?? "?"} · ${c.duration_s ? c.duration_s.toFixed(1) + " s" : ""}`; sel.appendChild(o);
    }
    const cfg = state.config || {};
    $("source-info").textContent = `task ${cfg.task}, decide at confidence ≥ ${cfg.threshold}; prefixes end at ` +
      (cfg.rule === "vad" ? `pauses ≥ ${cfg.pause_s} s (else every ${cfg.hop_s} s)` : `every ${cfg.hop_s} s`);
    if (new URLSearchParams(location.search).get("view") === "inspect") $("tab-inspect").click();
  } catch (err) { setBanner("error", String(err.message || err)); }
  drawWave();
}

init();
