// Alarms page: the alarm log as a grid of snapshots, live, optionally for one camera.
import { $, AlarmFeed, api, el, initChrome } from "/static/common.js";

initChrome("alarms");
const params = new URLSearchParams(location.search);
const camera = params.get("camera") || "";
const select = $("#camera-filter");

api("/api/cameras").then(({ cameras }) => {
  for (const c of cameras) select.append(el("option", { value: c.camera_id }, c.camera_id));
  if (camera && !cameras.some((c) => c.camera_id === camera)) select.append(el("option", { value: camera }, camera));
  select.value = camera;
}).catch(() => {});
select.addEventListener("change", () => {
  location.search = select.value ? `?camera=${encodeURIComponent(select.value)}` : "";
});

new AlarmFeed($("#alarm-feed"), { cameras: camera ? [camera] : [], limit: 100, status: $("#feed-status") }).start();
