// Shared by every console page: API calls, DOM building (text only, never innerHTML), theme, header, toasts,
// and the live alarm feed (recent alarms from /api/alarms, then new ones from the /api/events stream).

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code;
    this.name_ = body.name || "";
  }
  describe() {
    return this.name_ ? `${this.name_} (${this.code ?? this.status}): ${this.message}` : this.message;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(401, { message: "sign-in required" });
  }
  const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// -- formatting ------------------------------------------------------------------------------------------
export function fmtNumber(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
export function fmtMs(ms) {
  if (ms === null || ms === undefined || ms < 0) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}
export function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined || bytes < 0) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(bytes < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}
export function fmtDuration(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}
export function fmtTime(ms) {
  const d = new Date(ms);
  const sameDay = d.toDateString() === new Date().toDateString();
  const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? time : `${d.toLocaleDateString()} ${time}`;
}
export function fmtAgo(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}
export function labelSummary(labels) {
  const parts = Object.entries(labels || {}).map(([label, n]) => (n > 1 ? `${label} ×${n}` : label));
  return parts.length ? parts.join(", ") : "alarm";
}

// -- chrome: theme, navigation, node status, sign-out -------------------------------------------------------
const THEME_KEY = "edgebox-theme";

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  const button = $("#theme-toggle");
  if (button) button.title = theme === "dark" ? "Switch to the light theme" : "Switch to the dark theme";
}

export function initChrome(active) {
  const saved = localStorage.getItem(THEME_KEY);
  applyTheme(saved || (matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark"));
  $("#theme-toggle")?.addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem(THEME_KEY, next);
    applyTheme(next);
  });
  for (const link of document.querySelectorAll(".nav a")) {
    if (link.dataset.nav === active) link.setAttribute("aria-current", "page");
  }
  api("/api/console").then((info) => {
    if (info.auth) $("#logout-form")?.removeAttribute("hidden");
  }).catch(() => {});
  const refresh = async () => {
    const pill = $("#node-status");
    if (!pill) return;
    try {
      const health = await api("/api/health");
      pill.textContent = health.status === "SERVING" ? "Serving" : health.status.toLowerCase();
      pill.className = `pill ${health.status === "SERVING" ? "ok" : "warn"}`;
      pill.title = `edgebox ${health.version} · up ${fmtDuration(health.uptime_s)} · backends: ${health.backends.join(", ") || "none"}`;
    } catch (err) {
      pill.textContent = "Unreachable";
      pill.className = "pill bad";
      pill.title = err.message;
    }
  };
  refresh();
  every(10000, refresh);
}

// Runs fn now and then every `ms` while the page is visible (hidden tabs do not poll).
export function every(ms, fn) {
  let timer = null;
  let running = false;
  const tick = async () => {
    if (running || document.hidden) return;
    running = true;
    try { await fn(); } finally { running = false; }
  };
  timer = setInterval(tick, ms);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
  return () => clearInterval(timer);
}

// -- toasts and dialogs ----------------------------------------------------------------------------------
export function toast(message, kind = "ok") {
  let holder = $(".toasts");
  if (!holder) {
    holder = el("div", { class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(holder);
  }
  const item = el("div", { class: `toast ${kind}`, text: message });
  holder.append(item);
  setTimeout(() => item.remove(), kind === "bad" ? 7000 : 3500);
}

export function showSnapshot(url, caption) {
  let dialog = $("#lightbox");
  if (!dialog) {
    dialog = el("dialog", { id: "lightbox", class: "lightbox" },
      el("div", { class: "dialog-head" }, el("h3", { id: "lightbox-caption" }),
        el("button", { class: "icon-btn", "aria-label": "Close", onclick: () => dialog.close() }, "✕")),
      el("div", { class: "dialog-body" }, el("img", { id: "lightbox-img", alt: "" })));
    dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
    document.body.append(dialog);
  }
  $("#lightbox-caption").textContent = caption;
  $("#lightbox-img").src = url;
  $("#lightbox-img").alt = caption;
  dialog.showModal();
}

// -- the live alarm feed ---------------------------------------------------------------------------------
export class AlarmFeed {
  constructor(list, { cameras = [], limit = 40, layout = "list", status = null, onAlarm = null } = {}) {
    this.list = list;
    this.cameras = cameras;
    this.limit = limit;
    this.layout = layout;
    this.status = status;
    this.onAlarm = onAlarm;
    this.seen = new Set();
    this.lastSeq = 0;
    this.source = null;
  }

  async start() {
    const query = this.cameras.map((c) => `camera=${encodeURIComponent(c)}`);
    try {
      const { alarms } = await api(`/api/alarms?${[...query, `limit=${this.limit}`].join("&")}`);
      for (const alarm of alarms.slice().reverse()) this.add(alarm, false);
    } catch (err) {
      this.setStatus("off", "Cannot load alarms");
    }
    this.renderEmpty();
    this.connect(query);
  }

  connect(query) {
    const url = `/api/events?${[...query, `after=${this.lastSeq}`].join("&")}`;
    const source = new EventSource(url);
    this.source = source;
    source.addEventListener("open", () => this.setStatus("on", "Live"));
    source.addEventListener("ready", () => this.setStatus("on", "Live"));
    source.addEventListener("alarm", (event) => {
      const alarm = JSON.parse(event.data);
      if (this.add(alarm, true) && this.onAlarm) this.onAlarm(alarm);
      this.renderEmpty();
    });
    source.addEventListener("closing", () => {
      this.setStatus("off", "Engine stopped");
      source.close();
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) this.setStatus("off", "Reconnecting…");
    });
  }

  setStatus(kind, text) {
    if (!this.status) return;
    this.status.className = `live-dot ${kind}`;
    this.status.textContent = text;
  }

  renderEmpty() {
    const empty = this.list.querySelector(".empty");
    const hasItems = this.list.querySelector(".alarm-item") !== null;
    if (hasItems && empty) empty.remove();
    if (!hasItems && !empty) {
      this.list.append(el("li", { class: "empty" }, "No alarms yet. They appear here the moment a workflow raises one."));
    }
  }

  add(alarm, fresh) {
    if (this.seen.has(alarm.seq)) return false;
    this.seen.add(alarm.seq);
    this.lastSeq = Math.max(this.lastSeq, alarm.seq);
    const item = renderAlarm(alarm, fresh);
    this.list.prepend(item);
    while (this.list.querySelectorAll(".alarm-item").length > this.limit) {
      this.list.querySelector(".alarm-item:last-of-type")?.remove();
    }
    return true;
  }
}

export function renderAlarm(alarm, fresh) {
  const caption = `${alarm.camera_id} · ${labelSummary(alarm.labels)} · ${fmtTime(alarm.timestamp_ms)}`;
  const picture = alarm.thumbnail_url
    ? el("button", { class: "alarm-thumb-btn", type: "button", title: "Show the snapshot",
      onclick: () => showSnapshot(alarm.snapshot_url, caption) },
    el("img", { class: "alarm-thumb", src: alarm.thumbnail_url, alt: `Snapshot: ${caption}`, loading: "lazy", decoding: "async" }))
    : el("div", { class: "alarm-thumb-none" }, "no snapshot");
  const score = alarm.top_score ? ` · ${Math.round(alarm.top_score * 100)}%` : "";
  return el("li", { class: `alarm-item${fresh ? " fresh" : ""}`, dataset: { seq: alarm.seq, camera: alarm.camera_id } },
    picture,
    el("div", { class: "alarm-text" },
      el("strong", {}, el("a", { href: `/cameras/${encodeURIComponent(alarm.camera_id)}` }, alarm.camera_id)),
      el("span", { class: "alarm-what" }, `${labelSummary(alarm.labels)}${score}`),
      el("span", { class: "alarm-when", title: new Date(alarm.timestamp_ms).toISOString() },
        `${fmtTime(alarm.timestamp_ms)} · ${alarm.workflow_id} v${alarm.workflow_version}`),
      alarm.missed_before ? el("span", { class: "muted" }, `${alarm.missed_before} earlier alarm(s) skipped (slow connection)`) : null));
}

// -- live frames -----------------------------------------------------------------------------------------
// Swaps an <img> to a camera's newest frame only when the camera reports a newer one, without flicker.
export class FrameView {
  constructor(img, cameraId, width = 0) {
    this.img = img;
    this.cameraId = cameraId;
    this.width = width;
    this.shownTs = null;
    this.loading = false;
    this.url = null;
  }

  async update(latestTs) {
    if (latestTs === null || latestTs === this.shownTs || this.loading) return;
    this.loading = true;
    try {
      const query = this.width ? `?width=${this.width}` : "";
      const response = await fetch(`/api/cameras/${encodeURIComponent(this.cameraId)}/frame.jpg${query}`,
        { cache: "no-store", credentials: "same-origin" });
      if (response.status !== 200) return;
      const url = URL.createObjectURL(await response.blob());
      const old = this.url;
      this.url = url;
      this.img.src = url;
      this.img.hidden = false;
      this.shownTs = latestTs;
      if (old) setTimeout(() => URL.revokeObjectURL(old), 1000);
    } catch (err) {
      /* the next poll tries again */
    } finally {
      this.loading = false;
    }
  }
}
