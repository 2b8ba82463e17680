// Dashboard: node summary tiles, one card per camera with its live frame, the live alarm feed, "add camera".
import {
  $, AlarmFeed, FrameView, api, el, every, fmtAgo, fmtBytes, fmtMs, fmtNumber, initChrome, toast,
} from "/static/common.js";

const CAMERA_POLL_MS = 1500;
const METRICS_POLL_MS = 3000;
const CARD_FRAME_WIDTH = 640;

const cards = new Map(); // camera_id -> { root, parts, frame }
const alarmUntil = new Map(); // camera_id -> time until which the card shows ALARM

function buildCard(camera) {
  const href = `/cameras/${encodeURIComponent(camera.camera_id)}`;
  const img = el("img", { alt: `Live view of ${camera.camera_id}`, hidden: true });
  const parts = {
    state: el("span", { class: "state-badge" }),
    alarm: el("span", { class: "alarm-badge", hidden: true }, "ALARM"),
    age: el("span", { class: "live-age", hidden: true }),
    placeholder: el("div", { class: "placeholder" }, "Waiting for the first frame…"),
    stateText: el("span", { class: "state-text" }),
    workflow: el("span", { class: "muted" }),
    fpsIn: el("dd"), fpsOut: el("dd"), age2: el("dd"), dropped: el("dd"),
    meta: el("div", { class: "camera-meta" }),
    error: el("p", { class: "camera-error", hidden: true }),
  };
  const stat = (label, dd) => el("div", {}, el("dt", {}, label), dd);
  const root = el("article", { class: "camera-card", dataset: { camera: camera.camera_id } },
    el("a", { class: "camera-view", href, "aria-label": `Open ${camera.camera_id}` },
      parts.placeholder, img, parts.state, parts.alarm, parts.age),
    el("div", { class: "camera-body" },
      el("div", { class: "camera-title" }, el("a", { href }, camera.camera_id), parts.workflow, parts.stateText),
      el("dl", { class: "stats" }, stat("FPS in", parts.fpsIn), stat("FPS out", parts.fpsOut),
        stat("Age", parts.age2), stat("Dropped", parts.dropped)),
      parts.meta, parts.error));
  return { root, parts, frame: new FrameView(img, camera.camera_id, CARD_FRAME_WIDTH), img };
}

function updateCard(card, camera) {
  const { root, parts } = card;
  const alarm = (alarmUntil.get(camera.camera_id) || 0) > Date.now();
  root.className = `camera-card state-${camera.state}${alarm ? " alarm" : ""}`;
  parts.state.textContent = camera.state;
  parts.stateText.textContent = camera.state === "streaming" ? "" : camera.error !== "none" ? camera.error.replace("_", " ") : "";
  parts.alarm.hidden = !alarm;
  parts.workflow.textContent = camera.workflow_id;
  parts.fpsIn.textContent = fmtNumber(camera.fps_in);
  parts.fpsOut.textContent = fmtNumber(camera.fps_out);
  parts.age2.textContent = camera.results ? fmtMs(camera.frame_age_ms) : "–";
  parts.dropped.textContent = camera.frames_dropped.toLocaleString();
  const chips = [camera.backend && camera.backend !== "none" ? `${camera.backend}${camera.device ? ` · ${camera.device}` : ""}` : "no backend yet",
    camera.resolution, camera.reconnects ? `${camera.reconnects} reconnect${camera.reconnects > 1 ? "s" : ""}` : null, camera.url]
    .filter(Boolean);
  parts.meta.replaceChildren(...chips.map((c) => el("span", { class: "chip", title: c }, c)));
  parts.error.hidden = !camera.last_error;
  parts.error.textContent = camera.last_error;
  if (camera.latest_frame_ms !== null) {
    parts.placeholder.hidden = true;
    parts.age.hidden = false;
    parts.age.textContent = fmtAgo(camera.latest_frame_ms);
  } else {
    parts.placeholder.textContent = camera.state === "streaming" ? "Waiting for the first result…"
      : camera.state === "failed" || camera.state === "reconnecting" ? "No video" : "Connecting…";
  }
  card.frame.update(camera.latest_frame_ms);
}

async function refreshCameras() {
  let cameras;
  try {
    ({ cameras } = await api("/api/cameras"));
  } catch (err) {
    return;
  }
  const grid = $("#camera-grid");
  const ids = new Set(cameras.map((c) => c.camera_id));
  for (const [id, card] of cards) {
    if (!ids.has(id)) { card.root.remove(); cards.delete(id); }
  }
  cameras.forEach((camera, index) => {
    let card = cards.get(camera.camera_id);
    if (!card) {
      card = buildCard(camera);
      cards.set(camera.camera_id, card);
    }
    if (grid.children[index] !== card.root) grid.insertBefore(card.root, grid.children[index] || null);
    updateCard(card, camera);
  });
  const live = cameras.filter((c) => c.state === "streaming").length;
  $("#t-cameras").replaceChildren(`${live}`, el("small", {}, `/ ${cameras.length}`));
  $("#camera-count").textContent = cameras.length ? `${cameras.length} registered` : "";
  $("#cameras-empty").hidden = cameras.length > 0;
}

let previous = null;
async function refreshMetrics() {
  let m;
  try { m = await api("/api/metrics"); } catch (err) { return; }
  const now = performance.now();
  if (previous) {
    const dt = (now - previous.at) / 1000;
    const requests = m.total_infer_requests - previous.m.total_infer_requests;
    const failed = m.failed_infer_requests - previous.m.failed_infer_requests;
    $("#t-qps").textContent = fmtNumber(Math.max(0, requests) / dt);
    $("#t-success").textContent = requests > 0 ? `${fmtNumber(100 * (1 - failed / requests))}%` : "–";
  } else {
    const ok = m.total_infer_requests ? 100 * (1 - m.failed_infer_requests / m.total_infer_requests) : null;
    $("#t-success").textContent = ok === null ? "–" : `${fmtNumber(ok)}%`;
  }
  previous = { m, at: now };
  $("#t-latency").replaceChildren(fmtMs(m.avg_infer_latency_ms),
    el("small", {}, `queue ${fmtMs(m.avg_queue_ms)}`));
  $("#t-queue").replaceChildren(`${m.queue_depth}`, el("small", {}, `· ${fmtNumber(m.avg_batch_size)}`));
  $("#t-memory").replaceChildren(fmtBytes(m.memory_usage_bytes),
    el("small", {}, m.gpu_utilization >= 0 ? `GPU ${Math.round(m.gpu_utilization)}%` : "no GPU"));
}

async function openAddCamera() {
  const dialog = $("#add-camera-dialog");
  const form = $("#add-camera-form");
  const select = form.elements.workflow_id;
  $("#add-camera-error").hidden = true;
  try {
    const { workflows } = await api("/api/workflows");
    select.replaceChildren(...workflows.map((w) => el("option", { value: w.workflow_id },
      `${w.workflow_id} (${w.spec.plugins.join(", ")})`)));
    if (!workflows.length) select.append(el("option", { value: "" }, "Deploy a workflow first"));
  } catch (err) {
    toast(`Cannot list workflows: ${err.message}`, "bad");
  }
  dialog.showModal();
  form.elements.camera_id.focus();
}

async function submitAddCamera(event) {
  event.preventDefault();
  const form = event.target;
  const button = form.querySelector("button[type=submit]");
  const error = $("#add-camera-error");
  const fps = form.elements.fps.value.trim();
  const body = {
    camera_id: form.elements.camera_id.value.trim(),
    url: form.elements.url.value.trim(),
    workflow_id: form.elements.workflow_id.value,
    config: fps ? { fps } : {},
  };
  button.disabled = true;
  try {
    const camera = await api("/api/cameras", { method: "POST", body });
    $("#add-camera-dialog").close();
    form.reset();
    toast(`Camera ${camera.camera_id} added; it connects in the background.`);
    refreshCameras();
  } catch (err) {
    error.textContent = err.describe ? err.describe() : err.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

initChrome("dashboard");
$("#add-camera-btn").addEventListener("click", openAddCamera);
$("#add-camera-form").addEventListener("submit", submitAddCamera);
for (const button of document.querySelectorAll("#add-camera-dialog [data-close]")) {
  button.addEventListener("click", () => $("#add-camera-dialog").close());
}
refreshCameras();
refreshMetrics();
every(CAMERA_POLL_MS, refreshCameras);
every(METRICS_POLL_MS, refreshMetrics);
new AlarmFeed($("#alarm-feed"), {
  status: $("#feed-status"),
  onAlarm: (alarm) => {
    alarmUntil.set(alarm.camera_id, Date.now() + 6000);
    refreshCameras();
  },
}).start();
