// Camera page: the live MJPEG view with boxes, status and stream facts, this camera's alarms, and removal.
import {
  $, AlarmFeed, ApiError, api, el, every, fmtAgo, fmtDuration, fmtMs, fmtNumber, initChrome, toast,
} from "/static/common.js";

const POLL_MS = 1500;
const cameraId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
let alarmUntil = 0;
let streaming = false;

function facts(target, rows) {
  target.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function startStream() {
  if (streaming) return;
  streaming = true;
  const img = $("#camera-stream");
  img.addEventListener("load", () => { img.hidden = false; $("#camera-placeholder").hidden = true; }, { once: true });
  img.src = `/api/cameras/${encodeURIComponent(cameraId)}/stream.mjpg`;
}

async function refresh() {
  let c;
  try {
    c = await api(`/api/cameras/${encodeURIComponent(cameraId)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      $("#camera-page").hidden = true;
      $("#remove-camera").hidden = true;
      $("#camera-missing").hidden = false;
      $("#camera-stream").removeAttribute("src");
    }
    return;
  }
  document.title = `${c.camera_id} · edgebox`;
  const state = $("#camera-state");
  state.className = `state-title state-${c.state}`;
  state.textContent = `${c.state[0].toUpperCase()}${c.state.slice(1)} for ${fmtDuration(c.state_for_s)}`;
  $("#camera-alarm").hidden = alarmUntil < Date.now();
  $("#camera-error").hidden = !c.last_error;
  $("#camera-error").textContent = c.last_error;
  if (c.latest_frame_ms !== null) startStream();
  facts($("#camera-facts"), [
    ["Workflow", el("a", { href: "/workflows" }, c.workflow_id)],
    ["Backend", c.backend && c.backend !== "none" ? c.backend : "–"],
    ["Device", c.device || "–"],
    ["FPS in / out", `${fmtNumber(c.fps_in)} / ${fmtNumber(c.fps_out)}`],
    ["Frame age", c.results ? fmtMs(c.frame_age_ms) : "–"],
    ["Last result", c.latest_frame_ms !== null ? fmtAgo(c.latest_frame_ms) : "none yet"],
    ["Detections", `${c.latest_detections}`],
    ["Results", c.results.toLocaleString()],
    ["Frames dropped", c.frames_dropped.toLocaleString()],
  ]);
  facts($("#camera-stream-facts"), [
    ["URL", el("span", { class: "mono" }, c.url)],
    ["Resolution", c.resolution || "–"],
    ["Frames read", c.frames_in.toLocaleString()],
    ["Reconnects", `${c.reconnects}`],
    ["Stream error", c.error === "none" ? "none" : c.error.replace("_", " ")],
    ["Options", Object.keys(c.config).length
      ? el("span", { class: "mono" }, Object.entries(c.config).map(([k, v]) => `${k}=${v}`).join(", ")) : "defaults"],
  ]);
}

async function remove() {
  if (!confirm(`Remove camera ${cameraId}? Its stream stops and it is forgotten by this node.`)) return;
  try {
    await api(`/api/cameras/${encodeURIComponent(cameraId)}`, { method: "DELETE" });
    toast(`Camera ${cameraId} removed.`);
    setTimeout(() => location.assign("/"), 600);
  } catch (err) {
    toast(err.describe ? err.describe() : err.message, "bad");
  }
}

initChrome("dashboard");
$("#camera-title").textContent = cameraId;
$("#remove-camera").addEventListener("click", remove);
refresh();
every(POLL_MS, refresh);
new AlarmFeed($("#alarm-feed"), {
  cameras: [cameraId],
  status: $("#feed-status"),
  onAlarm: () => { alarmUntil = Date.now() + 6000; $("#camera-alarm").hidden = false; },
}).start();
