// chatspot studio: the live view, click/drag/polygon regions on a frozen frame, streamed answers.
// Plain JavaScript, no build step. Protocol: chatspot_ros/studio/protocol.py.
"use strict";

const S = {               // the page's state (also handy in the browser console)
  ws: null, hello: null, connected: false,
  live: null,             // newest frame: {header, bitmap}
  frozen: null,           // the frame questions are about: {header, bitmap}
  overlay: null, overlayDrawn: 0,
  region: null,           // {kind, points} in pixels of the frozen frame
  polygon: [], drag: null,
  active: null,           // the running question: {id, kind, question, region, frame, started}
  shown: null,            // the answer drawn on the frozen frame: {region, text, ok}
  framesShown: 0, framesDropped: 0, partials: 0, lastSentBytes: 0, errors: [], answers: [], nextId: 1,
};
window.studio = S;

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const COLORS = { overlay: "#00e5ff", region: "#ff00ff", draft: "#ff8800", answer: "rgba(20,20,20,0.8)" };

// ---------------------------------------------------------------------------------------- socket

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  const rawSend = ws.send.bind(ws);
  ws.send = (data) => { S.lastSentBytes = data.length; rawSend(data); };  // to explain a close
  S.ws = ws;
  ws.onopen = () => { S.connected = true; setPill($("connection"), "connected", true); };
  ws.onclose = (ev) => {
    S.connected = false;
    setPill($("connection"), "disconnected", false);
    const limit = S.hello ? S.hello.limits.max_message_bytes : Infinity;
    const why = ev.code === 1009 || S.lastSentBytes > limit
      ? `a message was too large (the last one sent had ${S.lastSentBytes} bytes; the limit is ${limit})`
      : ev.reason || "no reason given";
    S.lastSentBytes = 0;
    showError(`connection closed by the server (code ${ev.code}: ${why}); reconnecting`, "connection");
    if (S.active) finishActive({ ok: false, message: "connection lost", cancelled: false });
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    if (ev.data instanceof ArrayBuffer) onFrame(ev.data);
    else onJson(JSON.parse(ev.data));
  };
}

function send(msg) {
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) { showError("not connected to the server", "connection"); return false; }
  S.ws.send(JSON.stringify(msg));
  return true;
}

async function onFrame(buf) {
  const view = new DataView(buf);
  const len = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, len)));
  const bitmap = await createImageBitmap(new Blob([new Uint8Array(buf, 4 + len)], { type: "image/jpeg" }));
  if (S.live && S.live.header.frame > header.frame) { bitmap.close(); return; }
  if (S.live && S.live !== S.frozen) S.live.bitmap.close();
  S.live = { header, bitmap };
  S.framesShown += 1;
  S.framesDropped = header.dropped || 0;
  if (!S.frozen) render();
}

function onJson(msg) {
  switch (msg.type) {
    case "hello": onHello(msg); break;
    case "status": onStatus(msg); break;
    case "overlay": S.overlay = msg; if (!S.frozen) render(); break;
    case "partial":
      if (S.active && msg.id === S.active.id) {
        S.partials += 1;
        $("answer").textContent = msg.text;
        $("answer-state").textContent = `streaming: ${msg.tokens} tokens`;
      }
      break;
    case "answer": if (S.active && msg.id === S.active.id) finishActive(msg); break;
    case "error":
      showError(msg.message, msg.reason);
      if (S.active && msg.id === S.active.id) finishActive({ ok: false, message: msg.message, cancelled: false });
      break;
    default: showError(`unknown message from the server: ${msg.type}`, "protocol");
  }
}

function onHello(msg) {
  S.hello = msg;
  setPill($("mode"), msg.mode === "ros" ? "live agent (ROS)" : "in-process model", true);
  $("upload-box").hidden = !msg.upload;
  $("question").maxLength = msg.limits.max_question_chars;
  const box = $("presets");
  box.textContent = "";
  for (const p of msg.presets) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = p.label;
    b.dataset.preset = p.name;
    b.title = p.kind === "suggest" ? "suggest_actions: the text is the task" : (p.text || "the describe template");
    b.onclick = () => { $("question").value = p.text; $("suggest-mode").checked = p.kind === "suggest"; };
    box.appendChild(b);
  }
}

function onStatus(msg) {
  const a = msg.agent || {};
  const parts = [`state: ${a.state || "?"}`];
  for (const k of ["model", "device", "queue.requests", "worker.busy", "requests.served", "latency", "busy", "served", "last_ms"]) {
    if (a[k] !== undefined && a[k] !== "") parts.push(`${k}: ${a[k]}`);
  }
  if (a.last_error) parts.push(`error: ${a.last_error}`);
  const s = msg.server || {};
  parts.push(`frames sent ${s["frames.sent"] || 0}, dropped for this page ${S.framesDropped}`);
  $("agent").textContent = parts.join(" | ");
  $("agent").dataset.state = a.state || "";
}

// ------------------------------------------------------------------------------------- drawing

function render() {
  const frame = S.frozen || S.live;
  if (!frame) return;
  const { width, height } = frame.header;
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  ctx.drawImage(frame.bitmap, 0, 0, width, height);
  S.overlayDrawn = 0;
  const lw = Math.max(1, Math.round(width / 320));
  if (!S.frozen && S.overlay && $("overlay-toggle").checked) {
    for (const r of S.overlay.regions) {
      drawRegion(r, COLORS.overlay, 2 * lw);
      const words = [r.label, r.text].filter((t) => t).join(": ");
      if (words) label(words, r.points[0][0], r.points[0][1], COLORS.overlay);
      S.overlayDrawn += 1;
    }
  }
  if (S.frozen) {
    if (S.region) drawRegion(S.region, COLORS.region, 2 * lw);
    if (S.drag && S.drag.moved) drawRegion(dragBox(), COLORS.draft, lw);
    if (S.polygon.length) drawRegion({ kind: "polyline", points: S.polygon }, COLORS.draft, lw);
    if (S.shown && S.shown.text) {
      const p = S.shown.region ? S.shown.region.points[0] : [4, 14];
      label(S.shown.text, p[0], p[1], S.shown.ok ? "#fff" : "#fbb", true);
    }
  }
  const h = frame.header;
  $("frame-info").textContent = `${S.frozen ? "FROZEN" : "live"} frame ${h.frame} stamp ${h.stamp.sec}.${String(h.stamp.nanosec).padStart(9, "0")} ${width}x${height}`;
}

function drawRegion(r, color, lw) {
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = lw;
  const pts = r.points;
  if (r.kind === "point") {
    ctx.beginPath(); ctx.arc(pts[0][0], pts[0][1], 3 * lw, 0, 2 * Math.PI); ctx.fill(); return;
  }
  if (r.kind === "box") {
    ctx.strokeRect(pts[0][0], pts[0][1], pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]); return;
  }
  ctx.beginPath();
  ctx.moveTo(pts[0][0], pts[0][1]);
  for (const p of pts.slice(1)) ctx.lineTo(p[0], p[1]);
  if (r.kind === "polygon") ctx.closePath();
  ctx.stroke();
  for (const p of pts) ctx.fillRect(p[0] - lw, p[1] - lw, 2 * lw, 2 * lw);
}

function label(text, x, y, color, boxed) {
  const size = Math.max(10, Math.round(canvas.width / 32));
  ctx.font = `${size}px sans-serif`;
  const t = text.length > 60 ? text.slice(0, 57) + "..." : text;
  const w = ctx.measureText(t).width + 6;
  const lx = Math.min(Math.max(0, x), Math.max(0, canvas.width - w));
  const ly = Math.max(size + 2, y - 3);
  if (boxed) { ctx.fillStyle = COLORS.answer; ctx.fillRect(lx, ly - size - 1, w, size + 5); }
  ctx.fillStyle = color;
  ctx.fillText(t, lx + 3, ly);
}

// ------------------------------------------------------------------------------------- pointing

function toImage(ev) {
  const rect = canvas.getBoundingClientRect();
  const x = (ev.clientX - rect.left) * canvas.width / rect.width;
  const y = (ev.clientY - rect.top) * canvas.height / rect.height;
  return [Math.min(canvas.width, Math.max(0, x)), Math.min(canvas.height, Math.max(0, y))];
}

function freeze() {
  if (!S.live) { showError("no frame yet: wait for the camera", "no_frame"); return false; }
  if (S.frozen === S.live && S.frozen) return true;
  if (S.frozen && S.frozen !== S.live) S.frozen.bitmap.close();
  S.frozen = S.live;
  S.region = null; S.shown = null; S.polygon = [];
  send({ type: "freeze", frame: S.frozen.header.frame });
  $("live").disabled = false;
  return true;
}

function unfreeze() {
  if (S.frozen && S.frozen !== S.live) S.frozen.bitmap.close();
  S.frozen = null; S.region = null; S.shown = null; S.polygon = []; S.drag = null;
  $("live").disabled = true; $("close-polygon").disabled = true;
  regionInfo();
  render();
}

function tool() { return document.querySelector("input[name=tool]:checked").value; }

function dragBox() {
  const [x0, y0] = S.drag.start, [x1, y1] = S.drag.end;
  return { kind: "box", points: [[Math.min(x0, x1), Math.min(y0, y1)], [Math.max(x0, x1), Math.max(y0, y1)]] };
}

canvas.addEventListener("mousedown", (ev) => {
  if (ev.button !== 0) return;
  if (!S.frozen && !freeze()) return;
  const p = toImage(ev);
  if (tool() === "polygon") {
    S.region = null;
    S.polygon.push(p.map((v) => Math.round(v * 10) / 10));
    $("close-polygon").disabled = S.polygon.length < 3;
    render();
    return;
  }
  S.drag = { start: p, end: p, moved: false, x: ev.clientX, y: ev.clientY };
});

canvas.addEventListener("mousemove", (ev) => {
  if (!S.drag) return;
  S.drag.end = toImage(ev);
  S.drag.moved = S.drag.moved || Math.hypot(ev.clientX - S.drag.x, ev.clientY - S.drag.y) >= 4;
  render();
});

window.addEventListener("mouseup", (ev) => {
  if (!S.drag) return;
  S.drag.end = toImage(ev);
  const r = S.drag.moved ? dragBox() : { kind: "point", points: [S.drag.start] };
  S.drag = null;
  r.points = r.points.map((p) => p.map((v) => Math.round(v * 10) / 10));
  S.region = r; S.shown = null;
  regionInfo();
  render();
});

canvas.addEventListener("dblclick", () => { if (tool() === "polygon") closePolygon(); });
$("close-polygon").onclick = closePolygon;

function closePolygon() {
  const pts = S.polygon.filter((p, i) => i === 0 || p[0] !== S.polygon[i - 1][0] || p[1] !== S.polygon[i - 1][1]);
  if (pts.length < 3) { showError("a polygon needs at least 3 points", "region"); return; }
  S.region = { kind: "polygon", points: pts };
  S.polygon = []; S.shown = null;
  $("close-polygon").disabled = true;
  regionInfo();
  render();
}

function regionInfo() {
  const r = S.region;
  $("region-info").textContent = r ? `${r.kind}: ${r.points.map((p) => `(${p[0]}, ${p[1]})`).join(" ")}`
    : "no region: the whole frame";
}

$("live").onclick = unfreeze;
$("overlay-toggle").onchange = render;
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !S.active) unfreeze(); });

// ------------------------------------------------------------------------------------ questions

$("ask-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (S.active) { showError("a question is still being answered: wait or cancel it", "busy"); return; }
  if (!S.frozen && !freeze()) return;
  const text = $("question").value;
  const suggest = $("suggest-mode").checked;
  const id = `q${S.nextId++}`;
  const msg = suggest ? { type: "suggest", id, frame: S.frozen.header.frame, region: S.region, task: text }
    : { type: "ask", id, frame: S.frozen.header.frame, region: S.region, question: text };
  if (!send(msg)) return;
  S.active = { id, kind: msg.type, question: text, region: S.region, frame: S.frozen.header.frame };
  $("answer").textContent = "";
  $("answer-state").textContent = "asked; waiting for the first token";
  $("ask").disabled = true; $("cancel").disabled = false;
});

$("cancel").onclick = () => {
  if (!S.active) return;
  send({ type: "cancel", id: S.active.id });
  $("answer-state").textContent = "cancelling";
};

function finishActive(msg) {
  const a = S.active;
  S.active = null;
  $("ask").disabled = false; $("cancel").disabled = true;
  const status = msg.ok ? "answered" : msg.cancelled ? "cancelled" : "failed";
  let text = msg.text || "";
  if (msg.steps && msg.steps.length) text = msg.steps.map((s, i) => `${i + 1}. ${s}`).join("\n");
  $("answer").textContent = text || (msg.ok ? "(empty answer)" : "");
  const timing = msg.latency_ms !== undefined ? ` in ${Math.round(msg.latency_ms)} ms` : "";
  $("answer-state").textContent = `${status}${timing}${msg.ok ? "" : ": " + (msg.message || "")}`;
  if (msg.stamp_matches === false) {
    showError("the agent answered about another frame than the frozen one (its stamp differs)", "stamp");
  }
  if (S.frozen && a && a.frame === S.frozen.header.frame) {
    S.shown = { region: a.region, text: (text || msg.message || "").split("\n")[0], ok: !!msg.ok };
    render();
  }
  S.answers.push(Object.assign({ status }, msg));
  addHistory(a, msg, status, text);
}

function addHistory(a, msg, status, text) {
  const li = document.createElement("li");
  li.className = status;
  li.dataset.status = status;
  const q = a ? (a.question || "(describe)") : "?";
  const where = a && a.region ? a.region.kind : "whole frame";
  const meta = document.createElement("div");
  meta.className = "meta";
  const first = msg.first_token_ms ? `, first token ${Math.round(msg.first_token_ms)} ms` : "";
  meta.textContent = `${a ? a.kind : ""} "${q}" on ${where}, frame ${a ? a.frame : "?"}: ${status}` +
    (msg.latency_ms !== undefined ? `, ${Math.round(msg.latency_ms)} ms${first}` : "") +
    (msg.referred_by ? `, by ${msg.referred_by}` : "");
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text || msg.message || "";
  li.append(meta, body);
  const list = $("history");
  list.insertBefore(li, list.firstChild);
}

// ------------------------------------------------------------------------------------- upload

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const limit = S.hello ? S.hello.limits.max_upload_bytes : Infinity;
  if (file.size > limit) { showError(`${file.name} has ${file.size} bytes; the limit is ${limit}`, "upload"); return; }
  try {
    const res = await fetch("/api/upload", { method: "POST", body: file,
      headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": file.name.slice(0, 100) } });
    const body = await res.json();
    if (!body.ok) { showError(`upload refused: ${body.error}`, "upload"); return; }
    unfreeze();
  } catch (err) {
    showError(`upload failed: ${err}`, "upload");
  }
});

// ------------------------------------------------------------------------------------- helpers

function setPill(el, text, ok) { el.textContent = text; el.className = `pill ${ok ? "ok" : "bad"}`; }

function showError(text, reason) {
  S.errors.push({ text, reason });
  const div = document.createElement("div");
  div.className = "error";
  div.dataset.reason = reason || "";
  div.textContent = reason ? `${reason}: ${text}` : text;
  const box = $("errors");
  box.insertBefore(div, box.firstChild);
  while (box.children.length > 5) box.removeChild(box.lastChild);
}

connect();
