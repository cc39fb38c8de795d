// live — control panel and camera page.
//
// One websocket (/ws?token=...) carries everything: settings, clicks, the
// WebRTC offer/answer, and the stats the server pushes. Every request has an
// id and gets exactly one reply: {type: "ok", id, ...} or {type: "error", id, error}.
// The protocol is documented in docs/protocol.md.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token") || "";

// State the tests (and a curious developer in the console) can look at.
const state = {
  ws: null,
  nextId: 1,
  pending: new Map(),   // id -> resolve
  pc: null,
  camera: null,         // MediaStream from getUserMedia
  ownSession: null,     // id of this page's WebRTC session
  selected: "",         // session the panel steers ("" = this page's own)
  settings: null,       // settings of the steered session, as last confirmed
  ready: false,         // socket open and settings received
  sessionKinds: new Map(),  // session id -> "webrtc" | "run" | ...
  limits: null,         // from hello
  media: null,          // hello.webrtc: the camera and sender caps ([webrtc] settings)
};
window.liveClient = state;

// ------------------------------------------------------------------ websocket

const STALE_LINK = "this link is out of date or its token is wrong (a new token is made at " +
  "every server start): open the URL printed by `live serve` (or `make run`)";
const NO_TOKEN = "this link has no token: open the URL printed by `live serve` (or `make run`); " +
  "it ends with ?token=…";
const NOT_RUNNING = "the server is not running: start `live serve` (or `make run`) and open " +
  "the URL it prints";

// The browser reports a refused websocket upgrade only as code 1006, so ask the
// server first whether the token is good: 200 yes, 401 no, no answer = not there.
async function probeToken() {
  try {
    const resp = await fetch(`/ws-check?token=${encodeURIComponent(token)}`, { cache: "no-store" });
    if (resp.status === 401) return "bad-token";
    return resp.ok ? "ok" : "error";
  } catch (err) {
    return "unreachable";
  }
}

async function connect() {
  if (!token) {
    setStatus("error", NO_TOKEN);
    return;
  }
  const check = await probeToken();
  if (check === "bad-token") setStatus("error", STALE_LINK);
  else if (check === "unreachable") setStatus("error", NOT_RUNNING);
  else connectSocket();
}

function connectSocket() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws?token=${encodeURIComponent(token)}`);
  state.ws = ws;
  ws.onopen = async () => {
    setStatus("connected", "connected");
    const hello = await request("hello");
    if (hello.type === "ok") {
      state.limits = hello.limits || {};
      state.media = hello.webrtc;
      setRateLimit(state.limits.messages_per_second);
      applySchema(hello.schema);
      fillSessions(hello.sessions);
      showSettings(hello.settings, { remember: false });
      setReady(true);
      await restoreSettings(hello.settings);
    }
  };
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = async (event) => {
    setReady(false);
    for (const resolve of state.pending.values()) resolve({ type: "error", error: "disconnected" });
    state.pending.clear();
    if (state.pc) stopCamera();   // the server ends a session with its socket
    const check = await probeToken();
    if (check === "bad-token") setStatus("error", STALE_LINK);
    else if (check === "unreachable") {
      setStatus("error", "the server stopped: start `live serve` again and open the new URL " +
        "it prints (the token changes at every start)");
    } else {
      setStatus("error", `disconnected (${event.code}${event.reason ? ": " + event.reason : ""}); ` +
        "reload to retry");
    }
  };
}

// The panel works only with a live socket and the settings it sent: until then
// its controls are disabled (and show nothing rather than made-up values).
function setReady(ready) {
  state.ready = ready;
  for (const fs of document.querySelectorAll("#panel fieldset[data-needs-server]")) {
    fs.disabled = !ready;
  }
  $("connect").disabled = !ready || !!state.pc;
  showPlaceholder();
}

function showPlaceholder() {
  $("placeholder").textContent = state.ready ? "Choose a camera and press Start."
    : $("status").dataset.state === "error" ? "Not connected to the server: see the message at the top."
    : "Connecting to the server…";
}

function onMessage(msg) {
  if (msg.type === "stats") {
    showStats(msg.sessions);
    return;
  }
  if (msg.type === "session.ended") {   // its worker died: start again on another
    if (msg.session === state.ownSession) restartCamera(msg.reason);
    return;
  }
  if (msg.type === "settings") {   // another page (or script) changed a session's settings
    if (msg.session === (state.selected || state.ownSession)) {
      showSettings(msg.settings);
      showMessage("settings changed from another control panel");
    }
    return;
  }
  const resolve = state.pending.get(msg.id);
  if (resolve) {
    state.pending.delete(msg.id);
    resolve(msg);
  } else if (msg.type === "error") {
    showMessage(msg.error, true);   // e.g. "too many messages"
  }
}

// The server drops messages over its rate limit (hello says how many a second),
// so the page keeps well under it whatever the user does: every request waits
// for a slot of a token bucket at half the server's rate.
const gate = { rate: 20, burst: 20, tokens: 20, last: performance.now(), queue: Promise.resolve() };

function setRateLimit(perSecond) {
  if (!(perSecond > 0)) return;
  gate.rate = Math.min(20, perSecond / 2);
  gate.burst = Math.max(1, Math.min(20, Math.floor(perSecond / 2)));
  gate.tokens = Math.min(gate.tokens, gate.burst);
}

function sendSlot() {
  const slot = gate.queue.then(async () => {
    for (;;) {
      const now = performance.now();
      gate.tokens = Math.min(gate.burst, gate.tokens + ((now - gate.last) / 1000) * gate.rate);
      gate.last = now;
      if (gate.tokens >= 1) {
        gate.tokens -= 1;
        return;
      }
      await new Promise((r) => setTimeout(r, ((1 - gate.tokens) / gate.rate) * 1000));
    }
  });
  gate.queue = slot;
  return slot;
}

// Send one request; resolves with its reply (ok or error), never rejects.
async function request(type, fields = {}) {
  await sendSlot();
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    return { type: "error", error: "not connected to the server" };
  }
  const id = state.nextId++;
  const msg = { type, id, ...fields };
  if (state.selected && !("session" in msg) && type !== "offer" && type !== "hello") {
    msg.session = state.selected;
  }
  return new Promise((resolve) => {
    state.pending.set(id, resolve);
    ws.send(JSON.stringify(msg));
  });
}
state.request = request;

// ------------------------------------------------------------------ camera + WebRTC

async function listCameras() {
  const select = $("camera-select");
  const current = select.value;
  const devices = await navigator.mediaDevices.enumerateDevices();
  select.replaceChildren(new Option("default camera", ""));
  devices.filter((d) => d.kind === "videoinput").forEach((d, i) => {
    select.add(new Option(d.label || `camera ${i + 1}`, d.deviceId));
  });
  select.value = current;
}

async function startCamera() {
  if (!state.ready) {   // never turn the camera on for nothing
    showMessage("not connected to the server; see the status at the top", true);
    return;
  }
  $("connect").disabled = true;
  try {
    const deviceId = $("camera-select").value;
    state.camera = await navigator.mediaDevices.getUserMedia({
      video: cameraConstraints(deviceId),
      audio: $("with-audio").checked,
    });
    $("preview").srcObject = state.camera;
    $("preview").hidden = false;
    listCameras().catch(() => {});  // labels appear once permission is granted

    const pc = new RTCPeerConnection({ iceServers: [] });
    state.pc = pc;
    addCameraTracks(pc, state.camera);
    pc.ontrack = (event) => {
      if (event.track.kind === "video") {
        $("processed").srcObject = new MediaStream([event.track]);
        $("placeholder").hidden = true;
      }
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") showMessage("video connection failed", true);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    const reply = await request("offer", { sdp: pc.localDescription.sdp });
    if (reply.type !== "ok") throw new Error(reply.error);
    state.ownSession = reply.session;
    await pc.setRemoteDescription(reply.answer);
    await keepResolution(pc);
    $("disconnect").disabled = false;
    showMessage("camera connected");
    refreshSessions();
  } catch (err) {
    stopCamera();
    const why = `${err.message || err}`;
    showMessage(`could not start: ${why}`, true, helpFor(why, "press Start again"));
  }
}

// ---- media: what the camera sends (issue 9). Left to itself Chrome starts near
// 300 kbps and scales a 1280x720 camera down to 320x180 within seconds. The
// server's answer sets a bitrate floor and ceiling (live/rtc_media.py); here the
// camera is asked for the operator's size (hello.webrtc, the [webrtc] settings),
// the sender gets the same ceiling and is told never to scale down, and to drop
// frames rather than resolution when it must.

function cameraConstraints(deviceId) {
  return {
    deviceId: deviceId ? { exact: deviceId } : undefined,
    width: { ideal: state.media.max_width },
    height: { ideal: state.media.max_height },
    frameRate: { ideal: 30 },
  };
}

function addCameraTracks(pc, camera) {
  for (const track of camera.getTracks()) {
    if (track.kind !== "video") {
      pc.addTrack(track, camera);
      continue;
    }
    track.contentHint = "detail";   // Chrome: keep the resolution under pressure
    const { width = 0, height = 0 } = track.getSettings();
    const scale = Math.max(1, width / state.media.max_width, height / state.media.max_height);
    pc.addTransceiver(track, {
      direction: "sendrecv",
      streams: [camera],
      sendEncodings: [{
        maxBitrate: state.media.max_bitrate_kbps * 1000,
        scaleResolutionDownBy: scale,
      }],
    });
  }
}

async function keepResolution(pc) {
  for (const sender of pc.getSenders()) {
    if (!sender.track || sender.track.kind !== "video") continue;
    const params = sender.getParameters();
    params.degradationPreference = "maintain-resolution";
    try {
      await sender.setParameters(params);
    } catch (err) {   // older browsers: the track's contentHint still says so
      console.warn(`degradationPreference not set: ${err.message || err}`);
    }
  }
}

// ---- end of media

// No trickle ICE: the offer goes out with its candidates (host ones are instant).
function iceGatheringDone(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    const finish = () => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(finish, timeoutMs);
  });
}

async function restartCamera(reason) {
  stopCamera();
  showMessage(`video session ended (${reason}); reconnecting…`);
  await startCamera();
}

function stopCamera() {
  if (state.pc) state.pc.close();
  if (state.camera) state.camera.getTracks().forEach((t) => t.stop());
  state.pc = null;
  state.camera = null;
  state.ownSession = null;
  $("processed").srcObject = null;
  $("preview").srcObject = null;
  $("preview").hidden = true;
  // Nothing of the old session stays up: its figures, clicks and errors.
  $("stats").textContent = "";
  $("prompt-status").textContent = "";
  showMessage("");
  $("placeholder").hidden = false;
  $("connect").disabled = !state.ready;
  $("disconnect").disabled = true;
  setTimeout(refreshSessions, 500);
}

// ------------------------------------------------------------------ settings

// Controls with data-setting="section.name" send {section: {name: value}}.
function settingControls() {
  return document.querySelectorAll("[data-setting]");
}

function controlValue(el) {
  if (el.type === "range") return Number(el.value);
  return el.value;
}

// WebRTC video has no alpha channel: "transparent" arrives black in a browser,
// so it is offered only for `live run` sessions (recording to .webm/.mov).
function steeredKind() {
  return state.selected ? state.sessionKinds.get(state.selected) || "webrtc" : "webrtc";
}

function updateModeChoices() {
  const webrtc = steeredKind() === "webrtc";
  const option = $("bg-mode").querySelector("option[value='transparent']");
  if (!option) return;   // no schema yet: no choices to mark
  option.disabled = webrtc;
  option.textContent = webrtc ? "transparent (live run only)" : "transparent";
  $("transparent-note").hidden = !webrtc;
}

// How a choice reads in the panel; a choice not named here shows as the schema writes it.
const LABELS = {
  "background.mode": { color: "colour" },
  "engine.name": { selfie: "selfie (embedded)", sam2: "SAM 2" },
  "engine.sam2_model": { base_plus: "base+" },
  "engine.subjects": { all: "everyone", main: "main subject only" },
  "matte.smoothing": { ema: "moving average" },
};

// Slider bounds and the choices of each list come from the server's settings
// schema (live/config.py), the one place they are written; the HTML only says
// which setting a control drives.
function applySchema(schema) {
  if (!schema) return;
  for (const el of settingControls()) {
    const [section, name] = el.dataset.setting.split(".");
    const field = schema[section] && schema[section][name];
    if (!field) continue;
    el.title = field.help;
    if (el.type === "range") {
      if (field.min !== undefined) el.min = field.min;
      if (field.max !== undefined) el.max = field.max;
    } else if (el.tagName === "SELECT" && field.choices) {
      const labels = LABELS[el.dataset.setting] || {};
      el.replaceChildren(...field.choices.map((c) => new Option(labels[c] || c, c)));
    }
  }
}

function showSettings(settings, { remember = true } = {}) {
  if (!settings) return;
  state.settings = settings;
  if (remember && !state.selected) saveSettings(settings);
  $("panel").dataset.settings = "known";
  for (const el of settingControls()) {
    const [section, name] = el.dataset.setting.split(".");
    const value = settings[section] && settings[section][name];
    if (value !== undefined && value !== null && document.activeElement !== el) el.value = value;
  }
  updateModeChoices();
  for (const id of ["bg-blur", "matte-feather", "matte-ema", "matte-steady"]) $(`${id}-value`).textContent = $(id).value;
  if (settings.background.video) $("bg-video").value = settings.background.video;
  if (settings.background.mode !== "image") $("bg-image").value = "";
  showRelevantControls(settings);
  const clicks = takesClicks();
  $("processed").classList.toggle("takes-clicks", clicks);
  $("processed").title = clicks ? "Click the subject to follow; shift-click to mark background" : "";
}

// data-when="section.name=a,b" shows a control only while that setting is a or b
// (e.g. the moving average's weight only in that smoothing mode).
function showRelevantControls(settings) {
  for (const el of document.querySelectorAll("#panel [data-when]")) {
    const [path, values] = el.dataset.when.split("=");
    const [section, name] = path.split(".");
    el.hidden = !values.split(",").includes(String(settings[section][name]));
  }
}

// ------------------------------------------------------------------ settings across reloads

// This page's own settings are kept in the browser and sent again on the next
// connect, so a reload (or a server restart) keeps the look the user chose.
// An uploaded image is referenced by the server's copy, so it comes back for as
// long as that server keeps the file; otherwise the rest is restored without it.
const SAVED = "live.settings";

function saveSettings(settings) {
  try {
    localStorage.setItem(SAVED, JSON.stringify(settings));
  } catch (err) { /* storage off (private mode): nothing to keep */ }
}

function savedSettings() {
  try {
    return JSON.parse(localStorage.getItem(SAVED) || "null");
  } catch (err) {
    return null;
  }
}

// The saved values that differ from `current`, as a settings.set patch.
function changedFrom(current, saved) {
  const patch = {};
  for (const [section, values] of Object.entries(saved || {})) {
    if (!current[section] || typeof values !== "object" || values === null) continue;
    for (const [name, value] of Object.entries(values)) {
      if (name in current[section] && current[section][name] !== value) {
        (patch[section] = patch[section] || {})[name] = value;
      }
    }
  }
  return patch;
}

async function restoreSettings(current) {
  const patch = changedFrom(current, savedSettings());
  if (!Object.keys(patch).length) return;
  const refusals = [];
  const apply = async (settings) => {
    const reply = await request("settings.set", { settings });
    if (reply.type === "ok") showSettings(reply.settings);
    else refusals.push(reply.error);
    return reply.type === "ok";
  };
  if (!(await apply(patch))) {   // one section at a time, so one refusal costs only its own
    for (const [section, values] of Object.entries(patch)) {
      if ((await apply({ [section]: values })) || section !== "background") continue;
      const { image, video, ...rest } = values;   // the file is gone (the server restarted)
      if (rest.mode === "image" || rest.mode === "video") delete rest.mode;
      if ((image || video) && Object.keys(rest).length) await apply({ background: rest });
    }
  }
  showMessage(refusals.length ? `not every saved setting could be restored: ${refusals[0]}`
    : "settings restored from your last visit", refusals.length > 0);
}

async function setSetting(section, name, value) {
  const reply = await request("settings.set", { settings: { [section]: { [name]: value } } });
  if (reply.type === "ok") {
    showSettings(reply.settings);
    showMessage(`${section}.${name} = ${value}`);
  } else {
    showMessage(reply.error, true,
      helpFor(reply.error, section === "engine" ? "pick SAM 2 again" : "try again"));
    showSettings(state.settings);   // put the control back to what actually runs
  }
  return reply;
}

async function setBackground(background, confirmation) {
  const reply = await request("settings.set", { settings: { background } });
  if (reply.type === "ok") {
    showSettings(reply.settings);
    showMessage(confirmation);
  } else {
    showMessage(reply.error, true);
    showSettings(state.settings);
  }
  return reply;
}

// Sliders and the colour picker send while dragging: one request at a time, at
// most one every 100 ms, and the last value always goes out.
function throttled(fn, ms = 100) {
  let busy = false;
  let pending = null;
  const run = async (args) => {
    busy = true;
    const t0 = performance.now();
    try {
      await fn(...args);
    } finally {
      setTimeout(() => {
        busy = false;
        if (pending) {
          const next = pending;
          pending = null;
          run(next);
        }
      }, Math.max(0, ms - (performance.now() - t0)));
    }
  };
  return (...args) => {
    if (busy) pending = args;
    else run(args);
  };
}

const VIDEO_PATH_NEEDED = "enter the name of a video in the server's media folder " +
  "(live serve --media-dir), then press Use";

function wireSettings() {
  for (const el of settingControls()) {
    const [section, name] = el.dataset.setting.split(".");
    if (el.type === "range") {
      const send = throttled((v) => setSetting(section, name, v));
      el.addEventListener("input", () => {
        $(`${el.id}-value`).textContent = el.value;
        send(controlValue(el));
      });
    } else if (el.type === "color") {
      const send = throttled((color) => setBackground({ mode: "color", color }, `background colour ${color}`));
      el.addEventListener("input", () => send(el.value));
    } else {
      el.addEventListener("change", () => {
        // Picking "image" or "video" mode is done by choosing the file below.
        if (el.id === "bg-mode" && el.value === "image" && !state.settings.background.image) {
          showSettings(state.settings);
          showMessage("choose an image file below");
          return;
        }
        if (el.id === "bg-mode" && el.value === "video" && !state.settings.background.video) {
          showSettings(state.settings);
          showMessage(VIDEO_PATH_NEEDED);
          $("bg-video").focus();
          return;
        }
        setSetting(section, name, controlValue(el));
      });
    }
  }
  $("bg-video-apply").addEventListener("click", async () => {
    const path = $("bg-video").value.trim();
    if (!path) {
      showMessage(VIDEO_PATH_NEEDED, true);
      return;
    }
    await setBackground({ mode: "video", video: path }, `background video: ${path}`);
  });
  $("bg-image").addEventListener("change", uploadImage);
}

async function uploadImage() {
  const file = $("bg-image").files[0];
  if (!file) return;
  const limit = state.limits && state.limits.upload_bytes;
  if (limit && file.size > limit) {   // the server would close the socket on it
    $("bg-image").value = "";
    showMessage(`${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; the limit is ` +
      `${(limit / 1048576).toFixed(0)} MiB`, true);
    return;
  }
  showMessage(`uploading ${file.name}…`);
  const data = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  const reply = await request("background.upload", { data, name: file.name });
  if (reply.type === "ok") {
    showSettings(reply.settings);
    showMessage(`background image: ${file.name}`);
  } else {
    $("bg-image").value = "";   // the old background stays in use: do not show the refused name
    showMessage(`${file.name}: ${reply.error}`, true);
  }
}

// ------------------------------------------------------------------ subject clicks

// The video is letterboxed (object-fit: contain): map the click to frame pixels.
function framePoint(video, event) {
  const rect = video.getBoundingClientRect();
  const vw = video.videoWidth;
  const vh = video.videoHeight;
  if (!vw || !vh) return null;
  const scale = Math.min(rect.width / vw, rect.height / vh);
  const x = (event.clientX - rect.left - (rect.width - vw * scale) / 2) / scale;
  const y = (event.clientY - rect.top - (rect.height - vh * scale) / 2) / scale;
  if (x < 0 || y < 0 || x >= vw || y >= vh) return null;
  return [Math.round(x), Math.round(y)];
}

// Clicks pick the subject for SAM 2 (sam2, auto); the selfie engine takes none, so the
// page sends none (Reset still forgets the main subject and the smoothing history).
function takesClicks() {
  return Boolean(state.settings) && state.settings.engine.name !== "selfie";
}

async function onVideoClick(event) {
  if (!takesClicks()) return;
  const point = framePoint($("processed"), event);
  if (!point) return;
  const label = event.shiftKey ? 0 : 1;
  const reply = await request("prompt", { obj_id: 1, points: [[point[0], point[1], label]] });
  const what = label ? "subject" : "background";
  $("prompt-status").textContent = reply.type === "ok"
    ? `${what} point at (${point[0]}, ${point[1]}) sent`
    : reply.error;
  showMessage(reply.type === "ok" ? `clicked ${what}` : reply.error, reply.type !== "ok");
}

async function onReset() {
  const reply = await request("reset");
  $("prompt-status").textContent = reply.type === "ok" ? "" : reply.error;
  showMessage(reply.type === "ok" ? "tracking reset" : reply.error, reply.type !== "ok");
}

// ------------------------------------------------------------------ sessions + stats

// "other browser 1", "other browser 2"... numbered in the order this page saw them.
const browserNumbers = new Map();

function sessionLabel(s) {
  if (s.kind === "run") return "virtual camera (live run)";
  if (s.kind === "webrtc") {
    if (!browserNumbers.has(s.session)) browserNumbers.set(s.session, browserNumbers.size + 1);
    return `other browser ${browserNumbers.get(s.session)}`;
  }
  return `${s.kind} ${s.session}`;
}

function fillSessions(sessions) {
  const select = $("session-select");
  const current = state.selected;
  select.replaceChildren(new Option("this browser", ""));
  for (const s of sessions || []) {
    state.sessionKinds.set(s.session, s.kind);
    if (s.session === state.ownSession) continue;
    select.add(new Option(sessionLabel(s), s.session));
  }
  select.value = [...select.options].some((o) => o.value === current) ? current : "";
  state.selected = select.value;
  updateModeChoices();
}

async function refreshSessions() {
  const reply = await request("sessions.list");
  if (reply.type === "ok") fillSessions(reply.sessions);
}

async function onSessionChange() {
  state.selected = $("session-select").value;
  updateModeChoices();
  const reply = await request("settings.get");
  if (reply.type === "ok") showSettings(reply.settings);
}

function showStats(sessions) {
  // Keep the session picker current as other pages and `live run` come and go.
  const others = sessions.map((x) => x.session).filter((id) => id !== state.ownSession);
  const listed = [...$("session-select").options].map((o) => o.value).filter(Boolean);
  if (others.join() !== listed.join()) refreshSessions();
  const wanted = state.selected || state.ownSession;
  const s = sessions.find((x) => x.session === wanted);
  if (!s) {
    $("stats").textContent = "";
    return;
  }
  const own = wanted === state.ownSession;
  // A session that has not reported yet (a worker just took it) has no figures: "–".
  const num = (v) => (typeof v === "number" ? v.toFixed(1) : "–");
  const ms = (stage) => num(s.stage_ms && s.stage_ms[stage] && s.stage_ms[stage].p50);
  const video = $("processed");
  const parts = [
    own && shown.fps != null
      ? [`${shown.fps.toFixed(1)} fps`, `frames this page showed in the last second ` +
        `(the server processed ${num(s.fps)} a second)`]
      : [`${num(s.fps)} fps`, "frames the server processed a second"],
    own && video.videoWidth ? [`${video.videoWidth}×${video.videoHeight}`,
      "size of the processed video as this page receives it"] : null,
    [`segment ${ms("segment")} · matte ${ms("matte")} · composite ${ms("composite")} ms`,
      "time per frame of each processing stage on the server (median)"],
    s.mask_age_ms != null ? [`latency ${s.mask_age_ms} ms`,
      "from a frame's arrival at the server to its processed copy leaving it " +
      "(the network and the browser add to this)"] : null,
    [`dropped ${s.dropped ?? "–"}`, "camera frames the server skipped because a newer one arrived " +
      "before it was ready: it never queues frames, so the picture stays current instead " +
      "of falling behind. A few a second is normal on a busy machine"],
  ];
  const bank = s.engine && s.engine.memory_bank_bytes;
  if (bank != null) {
    parts.push([`memory bank ${(bank / 1048576).toFixed(1)} MiB`,
      "what SAM 2 remembers of past frames; bounded, so it stays flat"]);
  }
  if (s.overloaded) {
    parts.push(["server overloaded: late frames skipped", "frames that reached the server " +
      "too late were dropped so the picture stays current: the machine has more work than " +
      "it can do"]);
  }
  const spans = [];
  for (const [text, help] of parts.filter(Boolean)) {
    const span = document.createElement("span");
    span.textContent = text;
    span.title = help;
    if (spans.length) spans.push(" · ");
    spans.push(span);
  }
  $("stats").replaceChildren(...spans);
}

// Frames the page actually painted, counted per video frame the browser presents
// (requestVideoFrameCallback), so the fps shown is what the user sees.
const shown = { fps: null, times: [], generation: 0 };
state.shown = shown;

function countShownFrames() {
  const video = $("processed");
  const generation = ++shown.generation;
  shown.times = [];
  shown.fps = null;
  if (!video.requestVideoFrameCallback) return;
  const tick = (now) => {
    if (generation !== shown.generation) return;   // a newer stream restarted the count
    shown.times.push(now);
    while (shown.times.length && now - shown.times[0] > 1000) shown.times.shift();
    const span = now - shown.times[0];
    if (now - shown.since >= 1000 && span > 0) shown.fps = ((shown.times.length - 1) * 1000) / span;
    video.requestVideoFrameCallback(tick);
  };
  shown.since = performance.now();
  video.requestVideoFrameCallback(tick);
}

// ------------------------------------------------------------------ helpers

function setStatus(stateName, text) {
  const el = $("status");
  el.dataset.state = stateName;
  el.textContent = text;
  showPlaceholder();
}

function showMessage(text, isError = false, help = "") {
  const el = $("message");
  el.textContent = text;
  el.classList.toggle("error", isError);
  $("message-help").textContent = help;
  $("message-help").hidden = !help;
}

// What a browser user can do about an error meant for the command line.
function helpFor(error, then) {
  if (/SAM 2 checkpoint .*(not found|bytes, expected)/.test(error)) {
    const named = /--model (\w+)/.exec(error);
    const model = named ? named[1] : $("engine-model").value;
    return `To get it: on the machine running live, run \`live fetch sam2 --model ${model}\`, ` +
      `then ${then}.`;
  }
  return "";
}

// ------------------------------------------------------------------ start

wireSettings();
$("connect").addEventListener("click", startCamera);
$("disconnect").addEventListener("click", () => {
  stopCamera();
  showMessage("camera stopped");
});
$("processed").addEventListener("click", onVideoClick);
$("processed").addEventListener("loadeddata", countShownFrames);
$("reset").addEventListener("click", onReset);
$("session-select").addEventListener("change", onSessionChange);
navigator.mediaDevices?.addEventListener?.("devicechange", () => listCameras().catch(() => {}));
if (navigator.mediaDevices) listCameras().catch(() => {});
else showMessage("this browser has no camera access (the page must be on localhost or https)", true);
setReady(false);
connect();
