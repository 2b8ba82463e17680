// Workflows page: deployed workflows with their cameras, and a form to deploy, update or delete one.
import { $, api, el, fmtTime, initChrome, toast } from "/static/common.js";

const form = $("#wf-form");
let editing = null; // workflow_id being updated, or null when deploying a new one
let jsonMode = false;
let plugins = [];

function specFromFields() {
  const f = form.elements;
  const labels = f.labels.value.split(",").map((s) => s.trim()).filter(Boolean);
  const spec = {
    workflow_id: f.workflow_id.value.trim(),
    plugins: [...document.querySelectorAll("#wf-plugins input:checked")].map((i) => i.value),
    min_score: Number(f.min_score.value || 0.5),
    alarm: {
      labels,
      min_consecutive_frames: Number(f.min_consecutive_frames.value || 1),
      cooldown_ms: Number(f.cooldown_ms.value || 0),
    },
    attach_snapshot: f.attach_snapshot.checked,
  };
  if (f.backend.value) spec.backend = f.backend.value;
  return spec;
}

function fillFields(spec) {
  const f = form.elements;
  f.workflow_id.value = spec.workflow_id || "";
  for (const input of document.querySelectorAll("#wf-plugins input")) input.checked = (spec.plugins || []).includes(input.value);
  f.min_score.value = spec.min_score ?? 0.5;
  f.labels.value = (spec.alarm?.labels || []).join(", ");
  f.min_consecutive_frames.value = spec.alarm?.min_consecutive_frames ?? 1;
  f.cooldown_ms.value = spec.alarm?.cooldown_ms ?? 0;
  f.attach_snapshot.checked = spec.attach_snapshot ?? true;
  f.backend.value = spec.backend || "";
}

function setJsonMode(on, spec) {
  jsonMode = on;
  $("#wf-fields").hidden = on;
  $("#wf-json-label").hidden = !on;
  $("#wf-json-toggle").textContent = on ? "Use the form" : "Edit as JSON";
  form.elements.workflow_id.required = !on;
  if (on) form.elements.json.value = JSON.stringify(spec || specFromFields(), null, 2);
  else if (spec) fillFields(spec);
}

function setEditing(entry) {
  editing = entry ? entry.workflow_id : null;
  $("#wf-form-title").textContent = entry ? `Update ${entry.workflow_id}` : "Deploy a workflow";
  $("#wf-submit").textContent = entry ? `Update to v${entry.version + 1}` : "Deploy";
  form.elements.workflow_id.readOnly = Boolean(entry);
  $("#wf-error").hidden = true;
  const spec = entry ? entry.spec : { plugins: plugins.includes("person") ? ["person"] : plugins.slice(0, 1), min_score: 0.5, attach_snapshot: true,
    alarm: { labels: [], min_consecutive_frames: 2, cooldown_ms: 5000 } };
  fillFields(spec);
  if (jsonMode) form.elements.json.value = JSON.stringify(spec, null, 2);
}

function card(w) {
  const cams = w.cameras.length
    ? w.cameras.map((c) => el("a", { class: "chip", href: `/cameras/${encodeURIComponent(c)}` }, c))
    : [el("span", { class: "chip" }, "no cameras")];
  const rule = w.spec.alarm;
  return el("article", { class: "panel wf-card", dataset: { workflow: w.workflow_id } },
    el("header", {},
      el("h3", {}, w.workflow_id), el("span", { class: "wf-version" }, `v${w.version}`),
      el("span", { class: "spacer" }),
      el("button", { class: "btn btn-sm", type: "button", onclick: () => { setEditing(w); form.scrollIntoView({ behavior: "smooth" }); } }, "Edit"),
      el("button", { class: "btn btn-sm btn-danger", type: "button", onclick: () => remove(w) }, "Delete")),
    w.load_error ? el("p", { class: "wf-error" }, w.load_error) : null,
    el("div", { class: "wf-facts" },
      el("span", { class: "chip" }, `plugins: ${w.spec.plugins.join(", ")}`),
      el("span", { class: "chip" }, `min score ${w.spec.min_score}`),
      el("span", { class: "chip" }, `alarm: ${rule.labels.length ? rule.labels.join(", ") : "any detection"} · ${rule.min_consecutive_frames} frame(s) · cooldown ${rule.cooldown_ms} ms`),
      w.spec.zones.length ? el("span", { class: "chip" }, `${w.spec.zones.length} zone(s)`) : null,
      el("span", { class: "chip" }, `backend: ${w.backends.join(", ") || w.spec.backend || "default"}`),
      el("span", { class: "chip" }, `updated ${fmtTime(w.updated_at_ms)}`)),
    el("div", { class: "wf-facts" }, el("span", {}, "Cameras:"), ...cams));
}

async function refresh() {
  const { workflows } = await api("/api/workflows");
  $("#wf-list").replaceChildren(...workflows.map(card));
  $("#wf-empty").hidden = workflows.length > 0;
}

async function remove(w) {
  if (!confirm(`Delete workflow ${w.workflow_id}?`)) return;
  try {
    await api(`/api/workflows/${encodeURIComponent(w.workflow_id)}`, { method: "DELETE" });
    toast(`Workflow ${w.workflow_id} deleted.`);
    if (editing === w.workflow_id) setEditing(null);
    refresh();
  } catch (err) {
    toast(err.describe ? err.describe() : err.message, "bad");
  }
}

async function submit(event) {
  event.preventDefault();
  const error = $("#wf-error");
  error.hidden = true;
  let spec;
  try {
    spec = jsonMode ? JSON.parse(form.elements.json.value) : specFromFields();
  } catch (err) {
    error.textContent = `The JSON is not valid: ${err.message}`;
    error.hidden = false;
    return;
  }
  $("#wf-submit").disabled = true;
  try {
    const saved = editing
      ? await api(`/api/workflows/${encodeURIComponent(editing)}`, { method: "PUT", body: spec })
      : await api("/api/workflows", { method: "POST", body: spec });
    toast(`Workflow ${saved.workflow_id} v${saved.version} is live.`);
    setEditing(null);
    refresh();
  } catch (err) {
    error.textContent = err.describe ? err.describe() : err.message;
    error.hidden = false;
  } finally {
    $("#wf-submit").disabled = false;
  }
}

async function init() {
  initChrome("workflows");
  try {
    const health = await api("/api/health");
    plugins = health.plugins;
    $("#wf-plugins").replaceChildren(...plugins.map((p) =>
      el("label", { class: "check" }, el("input", { type: "checkbox", value: p }), p)));
    const backend = form.elements.backend;
    for (const b of ["auto", ...health.backends]) backend.append(el("option", { value: b }, b));
  } catch (err) {
    toast(`Cannot read the node's plugins: ${err.message}`, "bad");
  }
  setEditing(null);
  $("#wf-json-toggle").addEventListener("click", () => {
    if (jsonMode) {
      try { setJsonMode(false, JSON.parse(form.elements.json.value)); } catch (err) { setJsonMode(false); }
    } else setJsonMode(true);
  });
  $("#wf-reset").addEventListener("click", () => setEditing(null));
  form.addEventListener("submit", submit);
  refresh().catch((err) => toast(err.message, "bad"));
}

init();
