// metis-rt web client: microphone -> ws://HOST/v1/stream (protocol v1, f32le mono) -> speakers.
// No framework, no build step. The wire contract is metis_rt/server/protocol.py.
"use strict";

const PROTOCOL_VERSION = 1;
const STREAM_PATH = "/v1/stream";
const BLOCK_MS = 20; // capture block = one binary frame
const PREBUFFER_MS = 100; // jitter buffer: playback (re)starts once this much is queued
const MAX_BUFFER_MS = 2000; // jitter buffer bound; older audio is dropped beyond it
const MAX_SEND_BACKLOG_S = 1.0; // unsent audio in the socket beyond this: new blocks are dropped (counted)
const RECORD_LIMIT_S = 60; // window.metisTest.recorded keeps at most this much received audio
const MAX_SERVER_RATE = 48000; // protocol.MAX_RATE
const MAX_REFERENCE_BYTES = 6 * 1024 * 1024; // base64 of it stays under the server's 8 MiB message limit
const STOP_TIMEOUT_MS = 5000; // after session.end, close the socket ourselves if the server has not
const CPU_ENGINES = ["deepfilternet3", "rnnoise"]; // engines with a strength (attenuation limit) control
const ENGINE_NAMES = { metis: "Metis (GPU)", deepfilternet3: "DeepFilterNet3 (CPU)", rnnoise: "RNNoise (CPU)" };
let serverEngines = {}; // task -> engines the server offers (/healthz)
const UPDATE_INTERVAL_MS = 100; // at most this often a session.update while the mix slider moves
const RENDER_INTERVAL_MS = 250;
const WARNING_SHOW_MS = 5000; // a server warning stays this long after the last one
const UPLOAD = "__upload__"; // the voice list's "reference file" entry
const TASK_NEEDS_VOICE = { se: false, tse: true, vc: true };
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
// Moving a stream to another worker (docs/protocol.md, "Resume"): as metis_rt/clients/resume.py.
const RESUMABLE_CLOSE_CODES = [1006, 1012, 1013]; // connection lost (or refused upgrade), service restart, busy
const RECONNECT_BASE_MS = 50; // waits: min(cap, base * 2^attempt) * U(0.5, 1), at most the total in all
const RECONNECT_CAP_MS = 2000;
const RECONNECT_TOTAL_MS = 30000;
const HOLD_INPUT_S = 10; // un-acknowledged input kept for a resume; beyond it the oldest is dropped (counted)

// What a test (or a curious person in the console) can read back.
const test = {
  state: "idle", // idle | starting | running | resuming | stopping | stopped | error
  framesReceived: 0,
  samplesReceived: 0,
  recorded: [], // Float32Array chunks of received audio, the newest RECORD_LIMIT_S seconds
  lastStats: null,
  lastWarning: null,
  lastError: null, // {code, message}
  ready: null, // the session.ready message
  sampleRate: null,
  blocksSent: 0,
  blocksDropped: 0,
  bufferedMs: 0,
  underruns: 0,
  checkpoints: 0, // session.checkpoint events received
  moves: 0, // reconnections that continued the stream (session.resumed)
  restarts: 0, // reconnections that had to start a new stream (no checkpoint, or the resume was refused)
  resumeGapMs: null, // resume_gap_ms of the last session.resumed
  inputSamples: 0, // the stream's input so far (sent, or held to send after a move)
  outputSamples: 0, // the stream's output kept (without the repeats after a move)
  outputRepeated: 0, // output samples received again after a move, and discarded
  heldDropped: 0, // un-acknowledged input given up to stay within HOLD_INPUT_S
  overloadMs: 0, // input the server dropped (overload warnings)
};
window.metisTest = test;

const $ = (id) => document.getElementById(id);
const ui = {
  task: $("task"),
  engine: $("engine"),
  strength: $("strength"),
  strengthRow: $("strength-row"),
  strengthValue: $("strength-value"),
  voiceRow: $("voice-row"),
  voice: $("voice"),
  reference: $("reference"),
  token: $("token"),
  start: $("start"),
  stop: $("stop"),
  bypass: $("bypass"),
  mix: $("mix"),
  mixValue: $("mix-value"),
  state: $("state"),
  statusLine: $("status-line"),
  error: $("error"),
  warning: $("warning"),
  move: $("move-status"),
  inLevel: $("in-level"),
  outLevel: $("out-level"),
  engineShown: $("st-engine"),
  stats: {
    algorithmic: $("st-algorithmic"),
    latency: $("st-latency"),
    rtf: $("st-rtf"),
    dropped: $("st-dropped"),
    buffer: $("st-buffer"),
    total: $("st-total"),
    underruns: $("st-underruns"),
    received: $("st-received"),
    moves: $("st-moves"),
  },
};

let session = null; // {ws, ctx, stream, capture, playback, stopTimer, recordedSamples, and the stream's progress}
let levels = { input: 0, output: 0 };
let lastUpdateAt = 0;
let warningTimer = null;

// ----------------------------------------------------------------------------- helpers
function pcmBytes(samples) {
  if (LITTLE_ENDIAN) return samples.buffer;
  const view = new DataView(new ArrayBuffer(samples.length * 4));
  samples.forEach((x, i) => view.setFloat32(i * 4, x, true));
  return view.buffer;
}

function pcmSamples(buffer) {
  if (LITTLE_ENDIAN) return new Float32Array(buffer);
  const view = new DataView(buffer);
  return Float32Array.from({ length: buffer.byteLength / 4 }, (_, i) => view.getFloat32(i * 4, true));
}

function rms(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return Math.sqrt(sum / Math.max(1, samples.length));
}

function meterPercent(level) {
  const db = 20 * Math.log10(level + 1e-9); // -60 dBFS .. 0 dBFS -> 0 .. 100 %
  return Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
}

function ms(value, digits = 0) {
  return value == null || Number.isNaN(value) ? "–" : `${value.toFixed(digits)} ms`;
}

function streamUrl(token) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  return `${scheme}//${location.host}${STREAM_PATH}${query}`;
}

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] ?? "");
    reader.onerror = () => reject(new Error(`cannot read ${file.name}: ${reader.error}`));
    reader.readAsDataURL(file);
  });
}

function microphoneMessage(err) {
  switch (err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone permission was denied. Allow microphone access for this page (the icon in the address bar) and press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Connect one and press Start again.";
    case "NotReadableError":
    case "AbortError":
      return "The microphone could not be opened: another application may be using it.";
    default:
      return `Could not open the microphone: ${err.name}: ${err.message}`;
  }
}

// ----------------------------------------------------------------------------- state and display
function setState(state) {
  test.state = state;
  const active = ["starting", "running", "resuming", "stopping"].includes(state);
  ui.start.disabled = active;
  ui.stop.disabled = !["starting", "running", "resuming"].includes(state);
  ui.task.disabled = active;
  ui.engine.disabled = active;
  ui.token.disabled = active;
  ui.reference.disabled = active || ui.voice.value !== UPLOAD;
  render();
}

function showError(code, message) {
  test.lastError = { code, message };
  ui.error.textContent = message;
  ui.error.hidden = false;
}

function clearMessages() {
  test.lastError = null;
  ui.error.hidden = true;
  ui.warning.hidden = true;
  ui.move.hidden = true;
}

function showMove(message) {
  ui.move.textContent = message;
  ui.move.hidden = false;
}

function showWarning(message) {
  ui.warning.textContent = message;
  ui.warning.hidden = false;
  clearTimeout(warningTimer);
  warningTimer = setTimeout(() => (ui.warning.hidden = true), WARNING_SHOW_MS);
}

function render() {
  const stats = test.lastStats;
  const algorithmic = test.ready?.algorithmic_latency_ms;
  const serverLatency = stats?.latency_ms || null; // 0 until the first hop was measured
  const outputMs = session?.ctx ? ((session.ctx.baseLatency || 0) + (session.ctx.outputLatency || 0)) * 1000 : 0;
  const total = serverLatency == null ? null : serverLatency + test.bufferedMs + outputMs;
  const s = ui.stats;
  s.algorithmic.textContent = ms(algorithmic);
  s.latency.textContent = ms(serverLatency);
  s.rtf.textContent = stats ? stats.rtf.toFixed(2) : "–";
  s.rtf.classList.toggle("bad", Boolean(stats && stats.rtf > 1));
  s.dropped.textContent = stats ? ms(stats.dropped_ms) : "–";
  s.dropped.classList.toggle("bad", Boolean(stats && stats.dropped_ms > 0));
  s.buffer.textContent = session ? ms(test.bufferedMs) : "–";
  s.total.textContent = ms(total);
  s.underruns.textContent = String(test.underruns);
  s.received.textContent = test.sampleRate ? `${(test.samplesReceived / test.sampleRate).toFixed(1)} s` : "–";
  s.moves.textContent = String(test.moves + test.restarts);
  ui.state.textContent = test.state;
  ui.state.dataset.state = test.state;
  ui.inLevel.style.width = `${meterPercent(levels.input)}%`;
  ui.outLevel.style.width = `${meterPercent(levels.output)}%`;
  ui.statusLine.textContent = statusText(algorithmic, serverLatency, total);
}

function statusText(algorithmic, serverLatency, total) {
  const stats = test.lastStats;
  switch (test.state) {
    case "idle":
      return "Ready. Pick a task and press Start.";
    case "starting":
      return "Connecting…";
    case "resuming":
      return "Connection lost — resuming…";
    case "stopping":
      return "Stopping: receiving the last audio…";
    case "stopped":
      return `Stopped. Received ${(test.samplesReceived / (test.sampleRate || 1)).toFixed(1)} s of audio.`;
    case "error":
      return "Stopped with an error (see above).";
  }
  const parts = [`Live at ${test.sampleRate} Hz`, `algorithmic ${ms(algorithmic)}`];
  if (stats) parts.push(`server ${ms(serverLatency)}`, `RTF ${stats.rtf.toFixed(2)}`, `dropped ${ms(stats.dropped_ms)}`);
  parts.push(`buffer ${ms(test.bufferedMs)}`, `≈ ${ms(total)} total`, `${test.underruns} underruns`);
  if (test.moves + test.restarts) parts.push(`moved ${test.moves + test.restarts}×`);
  return parts.join(" · ");
}

// ----------------------------------------------------------------------------- server info
async function loadServerInfo() {
  try {
    const response = await fetch("/healthz", { cache: "no-store" });
    const health = await response.json();
    for (const option of ui.task.options) option.disabled = !health.tasks.includes(option.value);
    if (ui.task.selectedOptions[0]?.disabled) ui.task.value = health.tasks[0];
    serverEngines = health.engines || {};
    updateEngines();
    const upload = ui.voice.querySelector(`option[value="${UPLOAD}"]`);
    for (const name of health.voices) ui.voice.insertBefore(new Option(name, name), upload);
    if (health.voices.length) ui.voice.value = health.voices[0];
    updateVoiceRow();
    return health.tasks;
  } catch (err) {
    showError("server_unreachable", `Cannot reach the server's /healthz: ${err.message}`);
    return null;
  }
}

function updateEngines() {
  const offered = serverEngines[ui.task.value] || [];
  const keep = ui.engine.value;
  ui.engine.replaceChildren(new Option("Automatic", "auto"), ...offered.map((name) => new Option(ENGINE_NAMES[name] || name, name)));
  ui.engine.value = offered.includes(keep) ? keep : "auto";
  updateStrengthRow();
}

function updateStrengthRow() {
  const running = test.ready?.engine;
  const chosen = running || (ui.engine.value === "auto" ? (serverEngines[ui.task.value] || [])[0] : ui.engine.value);
  ui.strengthRow.hidden = !CPU_ENGINES.includes(chosen);
  ui.strengthValue.textContent = Number(ui.strength.value) >= 100 ? "unlimited" : `${ui.strength.value} dB`;
}

function strengthOption() {
  updateStrengthRow();
  return ui.strengthRow.hidden ? {} : { strength: Number(ui.strength.value) };
}

function updateVoiceRow() {
  ui.voiceRow.hidden = !TASK_NEEDS_VOICE[ui.task.value];
  ui.reference.disabled = ui.voice.value !== UPLOAD || test.state === "running";
}

async function voiceFields(task) {
  if (!TASK_NEEDS_VOICE[task]) return {};
  if (ui.voice.value !== UPLOAD) return { voice: ui.voice.value };
  const file = ui.reference.files[0];
  if (!file) throw new Error(`Task "${task}" needs a voice: pick one or choose a reference recording (wav, flac or ogg, 1–30 s).`);
  if (file.size > MAX_REFERENCE_BYTES) {
    throw new Error(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MiB; use a recording under 6 MiB (at most 30 s).`);
  }
  return { reference: { data: await readAsBase64(file) } };
}

// ----------------------------------------------------------------------------- session
async function start() {
  clearMessages();
  Object.assign(test, { framesReceived: 0, samplesReceived: 0, recorded: [], lastStats: null, ready: null });
  Object.assign(test, { lastWarning: null, blocksSent: 0, blocksDropped: 0, bufferedMs: 0, underruns: 0 });
  Object.assign(test, { checkpoints: 0, moves: 0, restarts: 0, resumeGapMs: null, inputSamples: 0, outputSamples: 0 });
  Object.assign(test, { outputRepeated: 0, heldDropped: 0, overloadMs: 0 });
  const task = ui.task.value;
  setState("starting");
  let voice;
  try {
    voice = await voiceFields(task);
  } catch (err) {
    return fail("reference", err.message);
  }
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia || !window.AudioWorkletNode) {
    return fail(
      "microphone",
      `The microphone is only available to secure pages: open this client via https:// or http://localhost (this page is ${location.origin}).`,
    );
  }
  session = { recordedSamples: 0, task, voice, url: streamUrl(ui.token.value.trim()), ...newStream() };
  try {
    session.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    return fail("microphone", microphoneMessage(err));
  }
  try {
    await openAudio(session);
  } catch (err) {
    return fail("audio", `Cannot start audio processing: ${err.message}`);
  }
  session.renderTimer = setInterval(render, RENDER_INTERVAL_MS);
  openSocket(session);
}

function newStream() {
  // Positions are absolute sample indices from the stream's start (input rate = output rate = the context's).
  return {
    checkpoint: null, // the latest session.checkpoint
    held: [], // Float32Array blocks of input from heldStart to inputEnd: not acknowledged, or not sent yet
    heldStart: 0,
    inputEnd: 0,
    sentEnd: 0, // input sent on the current socket up to here
    outputPos: 0, // position of the next output sample to arrive
    outputEnd: 0, // output kept (played) up to here
    awaiting: "start", // the handshake in flight: "start" | "resume" | null (streaming)
    backoff: { attempt: 0, waitedMs: 0 },
  };
}

async function openAudio(s) {
  s.ctx = new AudioContext({ latencyHint: "interactive" });
  if (s.ctx.sampleRate > MAX_SERVER_RATE) {
    await s.ctx.close(); // the protocol takes at most 48 kHz: let the browser resample
    s.ctx = new AudioContext({ latencyHint: "interactive", sampleRate: MAX_SERVER_RATE });
  }
  await s.ctx.audioWorklet.addModule("worklet.js");
  await s.ctx.resume();
  if (s.ctx.state !== "running") throw new Error("the browser keeps audio suspended: press Start (a click is needed)");
  test.sampleRate = s.ctx.sampleRate;
  s.capture = new AudioWorkletNode(s.ctx, "capture-processor", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    channelCount: 1,
    channelCountMode: "explicit", // down-mix whatever the microphone gives to mono
    processorOptions: { blockMs: BLOCK_MS },
  });
  s.capture.port.onmessage = (event) => sendBlock(s, event.data);
  s.source = s.ctx.createMediaStreamSource(s.stream);
  s.source.connect(s.capture);
  s.playback = new AudioWorkletNode(s.ctx, "playback-processor", {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { prebufferMs: PREBUFFER_MS, maxBufferMs: MAX_BUFFER_MS },
  });
  s.playback.port.onmessage = (event) => {
    test.bufferedMs = event.data.bufferedMs;
    test.underruns = event.data.underruns;
  };
  s.playback.connect(s.ctx.destination);
}

function openSocket(s) {
  const ws = new WebSocket(s.url);
  s.ws = ws;
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(s.checkpoint ? resumeMessage(s) : startMessage(s));
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onEvent(s, JSON.parse(event.data));
    else onAudio(s, event.data);
  };
  ws.onclose = (event) => ws === s.ws && onClose(s, event);
}

function startMessage(s) {
  s.awaiting = "start";
  const rate = s.ctx.sampleRate;
  return JSON.stringify({
    type: "session.start",
    protocol: PROTOCOL_VERSION,
    task: s.task,
    sample_rate: rate,
    format: "f32le",
    channels: 1,
    output_sample_rate: rate,
    ...s.voice,
    engine: ui.engine.value,
    options: { bypass: ui.bypass.checked, mix: Number(ui.mix.value), ...strengthOption() },
  });
}

function resumeMessage(s) {
  s.awaiting = "resume";
  return JSON.stringify({ type: "session.resume", protocol: PROTOCOL_VERSION, token: s.checkpoint.token });
}

function sendBlock(s, block) {
  levels.input = rms(block);
  if (test.state === "resuming" || (test.state === "running" && s.ws.readyState !== WebSocket.OPEN)) {
    holdInput(s, block); // sent once the stream has moved
    return;
  }
  if (test.state !== "running") return;
  if (s.ws.bufferedAmount > MAX_SEND_BACKLOG_S * s.ctx.sampleRate * 4) {
    test.blocksDropped += 1; // the network cannot keep up: drop instead of queueing without bound
    return;
  }
  s.ws.send(pcmBytes(block));
  holdInput(s, block);
  s.sentEnd = s.inputEnd;
  test.blocksSent += 1;
}

// ----------------------------------------------------------------------------- moving the stream
function holdInput(s, block) {
  s.held.push(block);
  s.inputEnd += block.length;
  test.inputSamples = s.inputEnd;
  while (s.inputEnd - s.heldStart > HOLD_INPUT_S * s.ctx.sampleRate) {
    const oldest = s.held.shift(); // overload policy: a resume after this reports a gap
    s.heldStart += oldest.length;
    test.heldDropped += oldest.length;
  }
}

function ackInput(s, acked) {
  // The server holds everything before `acked`: forget it.
  while (s.held.length && s.heldStart + s.held[0].length <= acked) s.heldStart += s.held.shift().length;
  if (s.held.length && acked > s.heldStart) {
    s.held[0] = s.held[0].slice(acked - s.heldStart); // a copy: pcmBytes sends the whole buffer
    s.heldStart = acked;
  }
}

function onStreamReady(s, message) {
  // session.ready or session.resumed: send the input the server does not have, expect output from its position.
  ackInput(s, message.input_samples_acked ?? 0);
  for (const block of s.held) s.ws.send(pcmBytes(block));
  s.sentEnd = s.inputEnd;
  s.outputPos = message.output_samples ?? 0;
  s.awaiting = null;
  if (message.type === "session.resumed") {
    test.moves += 1;
    test.resumeGapMs = message.resume_gap_ms;
    showMove(`Resumed (gap ${Math.round(message.resume_gap_ms)} ms): the stream moved ${test.moves}×.`);
    s.ws.send(JSON.stringify({ type: "session.update", ...mixOptions() })); // changed since the checkpoint?
  } else if (test.state === "resuming") {
    showMove("Reconnected: the stream could not be resumed, so a new one started.");
  }
}

function restartStream(s) {
  // No checkpoint to resume from: a new stream (session.start) that begins with the input the old one never got.
  // The output played so far stays played.
  ackInput(s, s.sentEnd);
  Object.assign(s, { inputEnd: s.inputEnd - s.heldStart, heldStart: 0, sentEnd: 0, outputPos: 0, outputEnd: 0 });
  s.checkpoint = null;
  Object.assign(test, { inputSamples: s.inputEnd, outputSamples: 0, restarts: test.restarts + 1 });
}

function reconnect(s, why, retryAfterS = 0) {
  const b = s.backoff;
  if (b.waitedMs >= RECONNECT_TOTAL_MS) {
    showError("resume_failed", `The connection was lost (${why}) and no server took the stream over within ${RECONNECT_TOTAL_MS / 1000} s.`);
    finish(s, "error");
    return;
  }
  let waitMs = Math.min(RECONNECT_CAP_MS, RECONNECT_BASE_MS * 2 ** b.attempt) * (0.5 + Math.random() / 2);
  waitMs = Math.min(Math.max(waitMs, Math.min(retryAfterS * 1000, RECONNECT_CAP_MS)), RECONNECT_TOTAL_MS - b.waitedMs);
  b.attempt += 1;
  b.waitedMs += waitMs;
  showMove(`Connection lost (${why}) — resuming…`);
  setState("resuming");
  s.reconnectTimer = setTimeout(() => openSocket(s), waitMs);
}

function onAudio(s, buffer) {
  let samples = pcmSamples(buffer);
  test.framesReceived += 1;
  const repeated = Math.min(samples.length, Math.max(0, s.outputEnd - s.outputPos));
  s.outputPos += samples.length;
  if (repeated) {
    test.outputRepeated += repeated; // played before the move: the new worker produces it again
    samples = samples.slice(repeated);
    if (!samples.length) return;
  }
  s.outputEnd = s.outputPos;
  test.outputSamples = s.outputEnd;
  test.samplesReceived += samples.length;
  test.recorded.push(samples);
  s.recordedSamples += samples.length;
  while (s.recordedSamples > RECORD_LIMIT_S * s.ctx.sampleRate) s.recordedSamples -= test.recorded.shift().length;
  levels.output = rms(samples);
  s.playback.port.postMessage(samples); // a copy; `recorded` keeps the original
}

function onEvent(s, message) {
  switch (message.type) {
    case "session.ready":
    case "session.resumed":
      onStreamReady(s, message);
      test.ready = message;
      ui.engineShown.textContent = message.engine || "metis";
      ui.strengthRow.hidden = !CPU_ENGINES.includes(message.engine);
      setState("running");
      break;
    case "stats":
      test.lastStats = message;
      break;
    case "session.checkpoint":
      s.checkpoint = message;
      ackInput(s, message.input_samples_acked);
      s.backoff = { attempt: 0, waitedMs: 0 }; // the stream makes progress here
      test.checkpoints += 1;
      break;
    case "warning":
      test.lastWarning = message;
      if (message.code === "overload") test.overloadMs += message.dropped_ms;
      showWarning(`Server warning (${message.code}): ${message.message}`);
      break;
    case "error":
      if (s.awaiting === "resume") {
        showWarning(`The server refused to resume the stream (${message.code}): starting a new one.`);
        restartStream(s);
        s.ws.send(startMessage(s)); // the connection stays open for a session.start
        break;
      }
      showError(message.code, `Server error (${message.code}): ${message.message}`);
      if (s.awaiting) s.ws.close(); // the handshake failed: nothing to keep open
      break;
    case "busy":
      if (test.state === "resuming") s.retryAfterS = message.retry_after_s; // the close (1013) that follows retries
      else showError("busy", `The server is busy (all sessions taken). Try again in ${message.retry_after_s} s.`);
      break;
    default: // session.updated, flushed: nothing to show
      break;
  }
  render();
}

function onClose(s, event) {
  if (s !== session) return;
  if (test.state === "stopping") {
    finish(s, "stopped");
    return;
  }
  const why = event.reason ? `${event.code} ${event.reason}` : `code ${event.code}`;
  if ((test.state === "running" || test.state === "resuming") && RESUMABLE_CLOSE_CODES.includes(event.code)) {
    if (!s.checkpoint && s.awaiting === null) restartStream(s); // the next connection sends session.start
    reconnect(s, why, s.retryAfterS);
    s.retryAfterS = 0;
    return;
  }
  if (!test.lastError) {
    const hint = test.ready ? "" : " Check that the server is running and, if it needs one, the token.";
    showError("closed", `The connection closed unexpectedly (${why}).${hint}`);
    if (!test.ready) explainRefusal();
  }
  finish(s, "error");
}

async function explainRefusal() {
  // A refused WebSocket upgrade only shows as code 1006; a plain GET of the endpoint tells a wrong token apart.
  try {
    const token = ui.token.value.trim();
    const response = await fetch(`${STREAM_PATH}${token ? `?token=${encodeURIComponent(token)}` : ""}`);
    if (response.status === 401 && test.lastError?.code === "closed") {
      showError("unauthorized", "The server refused the connection: its token is missing or wrong. Enter it under Token.");
    }
  } catch {
    // the server is unreachable: the message already says to check it
  }
}

function stop() {
  const s = session;
  if (!s) return;
  if (test.state !== "running" || s.ws?.readyState !== WebSocket.OPEN) {
    finish(s, "stopped");
    return;
  }
  setState("stopping");
  s.source.disconnect(); // no more input; the server flushes what it has, then closes the socket
  s.stream.getTracks().forEach((track) => track.stop());
  s.playback.port.postMessage("drain");
  s.ws.send(JSON.stringify({ type: "session.end" }));
  s.stopTimer = setTimeout(() => s.ws.close(), STOP_TIMEOUT_MS);
}

function fail(code, message) {
  showError(code, message);
  if (session) finish(session, "error");
  else setState("error");
}

function finish(s, state) {
  clearTimeout(s.stopTimer);
  clearTimeout(s.reconnectTimer);
  clearInterval(s.renderTimer);
  s.stream?.getTracks().forEach((track) => track.stop());
  if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close();
  const ctx = s.ctx;
  const playOutMs = state === "stopped" ? Math.min(test.bufferedMs, MAX_BUFFER_MS) : 0;
  if (ctx) setTimeout(() => ctx.close(), playOutMs + 50); // let the last received audio play out
  session = null;
  levels = { input: 0, output: 0 };
  setState(state);
}

function sendUpdate(fields, force = false) {
  const now = performance.now();
  if (test.state !== "running" || (!force && now - lastUpdateAt < UPDATE_INTERVAL_MS)) return;
  lastUpdateAt = now;
  session.ws.send(JSON.stringify({ type: "session.update", options: {}, ...fields }));
}

// ----------------------------------------------------------------------------- wiring
function mixOptions() {
  ui.mixValue.textContent = `${Math.round(Number(ui.mix.value) * 100)}%`;
  return { options: { bypass: ui.bypass.checked, mix: Number(ui.mix.value) } };
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
ui.task.addEventListener("change", () => {
  updateVoiceRow();
  updateEngines();
});
ui.engine.addEventListener("change", updateStrengthRow);
ui.strength.addEventListener("input", () => sendUpdate({ options: strengthOption() }));
ui.strength.addEventListener("change", () => sendUpdate({ options: strengthOption() }, true));
ui.voice.addEventListener("change", () => {
  updateVoiceRow();
  if (ui.voice.value !== UPLOAD && TASK_NEEDS_VOICE[ui.task.value]) sendUpdate({ voice: ui.voice.value }, true);
});
ui.bypass.addEventListener("change", () => sendUpdate(mixOptions(), true));
ui.mix.addEventListener("input", () => sendUpdate(mixOptions()));
ui.mix.addEventListener("change", () => sendUpdate(mixOptions(), true));

const params = new URLSearchParams(location.search);
if (params.has("token")) ui.token.value = params.get("token");
if (params.has("task")) ui.task.value = params.get("task");
if (params.has("strength")) ui.strength.value = params.get("strength");
mixOptions();
setState("idle");
loadServerInfo().then((tasks) => {
  const task = params.get("task");
  if (task && tasks && !tasks.includes(task)) {
    showError("task_unavailable", `This server runs ${tasks.join(", ")}; the link asks for "${task}".`);
    return;
  }
  if (params.has("voice")) ui.voice.value = params.get("voice");
  if (params.has("engine")) {
    ui.engine.value = params.get("engine");
    updateStrengthRow();
  }
  updateVoiceRow();
  if (params.get("autostart") === "1") start();
});
