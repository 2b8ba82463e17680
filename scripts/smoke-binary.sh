#!/usr/bin/env bash
# Smoke-test the built binary as an operator would run it: a copy in an empty temp folder, started with
# `env -i PATH=/usr/bin:/bin HOME=$tmp` (no virtualenv, no source tree, no Python of ours on the path).
#   bash scripts/smoke-binary.sh [BINARY] [--starts N]   # BINARY defaults to dist/edgebox; N timed starts (1)
# Checks: --version; check-config on packaging/engine.example.json (valid) and on a broken file (exit 2); start
# to SERVING (prints the wall time from exec to the READY line and to a passing HealthCheck); a real
# InferSingleFrame on tests/data/astronaut.png with `edgebox ctl infer` finding a person; the console page over
# HTTP; SIGTERM and exit 0. Also that the backend probe's child process (edgebox/engine/library_probe.py) ran in
# the binary, the engine's RSS before any model loads, and a second engine with engine.camera_decoding "process"
# streaming a video file through the binary's own camera decoding process, which ends with the engine. Prints
# the size and the start times (docs/benchmarks.md "## Binary").
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
binary=dist/edgebox
starts=1
while [ $# -gt 0 ]; do
  case "$1" in
    --starts) starts=$2; shift 2 ;;
    *) binary=$1; shift ;;
  esac
done
[ -x "$binary" ] || { echo "smoke: no binary at $binary (bash scripts/build-binary.sh)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/edgebox-smoke.XXXXXX)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "smoke: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
cp "$binary" "$tmp/edgebox"
cp packaging/engine.example.json tests/data/astronaut.png "$tmp/"
echo '{"engine": {"max_batch_size": 0}}' > "$tmp/broken.json"

# Run the binary from the temp folder in a clean environment.
clean() { (cd "$tmp" && exec env -i PATH=/usr/bin:/bin HOME="$tmp" ./edgebox "$@"); }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
fail() { echo "smoke: FAIL: $*" >&2; [ -f "$tmp/server.err" ] && tail -n 30 "$tmp/server.err" >&2; exit 1; }
step() { echo "smoke: $*"; }

bytes=$(du -b "$binary" | cut -f1)
step "binary $binary: $bytes bytes ($(( bytes / 1048576 )) MiB)"

t0=$(now_ms)
version=$(clean --version 2>"$tmp/first.err") || { cat "$tmp/first.err" >&2; fail "--version"; }
first_ms=$(( $(now_ms) - t0 ))
[[ "$version" == "edgebox "* ]] || fail "--version printed '$version'"
step "--version: $version (first run, includes any one-time unpacking: ${first_ms} ms)"
t0=$(now_ms); clean --version >/dev/null; step "--version again: $(( $(now_ms) - t0 )) ms"

clean check-config engine.example.json || fail "check-config on the example config"
set +e; clean check-config broken.json 2>"$tmp/broken.err"; rc=$?; set -e
[ "$rc" = 2 ] || fail "check-config on a broken file exited $rc, expected 2"
step "check-config broken.json: exit 2 ($(cat "$tmp/broken.err"))"

# start_server [CONFIG DATA_DIR]: starts the engine, waits for READY; sets server_pid, grpc, console, ready_ms.
start_server() {
  local config=${1:-engine.example.json} data=${2:-data}
  rm -f "$tmp/server.out"; mkfifo "$tmp/server.out"
  local t0; t0=$(now_ms)
  (cd "$tmp" && exec env -i PATH=/usr/bin:/bin HOME="$tmp" ./edgebox --config "$config" \
    --grpc_port 0 --console_port 0 --data_dir "$data" >"$tmp/server.out" 2>"$tmp/server.err") &
  server_pid=$!
  local line=
  exec 3<"$tmp/server.out"
  while IFS= read -r -t 120 line <&3; do
    case "$line" in "EDGEBOX READY "*) break ;; esac
  done
  [[ "$line" == "EDGEBOX READY "* ]] || fail "no READY line within 120 s"
  ready_ms=$(( $(now_ms) - t0 ))
  # Keep draining stdout so that the engine never blocks on a full pipe.
  cat <&3 >/dev/null & exec 3<&-
  grpc=$(sed -n 's/.* grpc=\([^ ]*\).*/\1/p' <<<"$line")
  console=$(sed -n 's/.* console=\([^ ]*\).*/\1/p' <<<"$line")
  local i
  for i in $(seq 1 100); do
    clean ctl --target "$grpc" health > "$tmp/health.json" 2>/dev/null && break
    sleep 0.1
  done
  grep -q '"status": "SERVING"' "$tmp/health.json" || fail "HealthCheck did not report SERVING"
  health_ms=$(( $(now_ms) - t0 ))
}

stop_server() {
  kill -TERM "$server_pid"
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=
  [ "$rc" = 0 ] || fail "SIGTERM: the engine exited $rc, expected 0"
}

ready_all=()
for n in $(seq 1 "$starts"); do
  start_server
  ready_all+=("$ready_ms")
  step "start $n: exec -> READY ${ready_ms} ms; exec -> HealthCheck SERVING ${health_ms} ms (includes one ctl start)"
  if grep -q "FALLBACK: probing" "$tmp/server.err"; then fail "the library probe's child process failed in the binary"; fi
  [ "$n" = "$starts" ] || stop_server
done
# The launcher execs the unpacked engine, so server_pid is the engine; no model is loaded yet (the example
# config provisions none).
step "engine RSS after start, no camera, no model: $(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$server_pid/status") MB" \
  "($(readlink "/proc/$server_pid/exe"))"

clean ctl --target "$grpc" infer astronaut.png --plugin person > "$tmp/infer.json" || fail "ctl infer"
grep -q '\\"label\\":\\"person\\"' "$tmp/infer.json" || { cat "$tmp/infer.json" >&2; fail "no person found"; }
step "InferSingleFrame (ctl infer astronaut.png --plugin person): person found"

[ "$console" != "-" ] || fail "the console is disabled in the example config"
url="http://$console/"
if command -v curl >/dev/null; then
  code=$(curl -sS -o "$tmp/console.html" -w '%{http_code}' "$url") || fail "console $url unreachable"
else
  code=$(/usr/bin/python3 -c "import sys, urllib.request as u; r = u.urlopen(sys.argv[1], timeout=10); \
open(sys.argv[2], 'wb').write(r.read()); print(r.status)" "$url" "$tmp/console.html") || fail "console $url"
fi
[ "$code" = 200 ] || fail "console $url answered HTTP $code"
grep -qi "<html" "$tmp/console.html" || fail "console $url did not answer an HTML page"
step "console $url: HTTP 200"

t0=$(now_ms)
stop_server
step "SIGTERM: exit 0 after $(( $(now_ms) - t0 )) ms"

# engine.camera_decoding "process": the binary starts itself again as the camera decoding process
# (edgebox/cameras/decoder_child.py), which must find its command and decode a real video file there.
"${PYTHON:-.venv/bin/python}" -c "
import cv2, numpy as np, sys
w = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (160, 120))
for i in range(100):
    image = np.zeros((120, 160, 3), np.uint8); cv2.putText(image, str(i), (40, 80), 0, 2, (255, 255, 255), 3); w.write(image)
w.release()" "$tmp/clip.avi" || fail "writing a test clip with ${PYTHON:-.venv/bin/python}"
cat > "$tmp/decoding.json" <<JSON
{"engine": {"camera_decoding": "process"},
 "provision": {"workflows": [{"workflow_id": "motion", "plugins": ["motion"]}],
               "cameras": [{"camera_id": "clip", "url": "$tmp/clip.avi", "workflow_id": "motion"}]}}
JSON
start_server decoding.json data-decoding
for i in $(seq 1 100); do
  clean ctl --target "$grpc" cameras > "$tmp/cameras.json" 2>/dev/null || true
  grep -q '"STREAMING"' "$tmp/cameras.json" && break
  sleep 0.1
done
grep -q '"STREAMING"' "$tmp/cameras.json" || { cat "$tmp/cameras.json" >&2; fail "the file camera never streamed"; }
decoder=$(pgrep -f -- "edgebox _decode-cameras" | head -n 1) || fail "no camera decoding process running"
step "engine.camera_decoding process: the file camera STREAMING, decoded in pid $decoder ($(tr '\0' ' ' < "/proc/$decoder/cmdline" | cut -c1-60))"
stop_server
for i in $(seq 1 50); do kill -0 "$decoder" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$decoder" 2>/dev/null || fail "the camera decoding process outlived the engine"
step "SIGTERM: exit 0, and the camera decoding process ended with it"

median=$(printf '%s\n' "${ready_all[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "smoke: PASS size=${bytes} bytes first_run_ms=${first_ms} start_to_ready_ms=${median} (median of ${starts})" \
  "load=$(cut -d' ' -f1-3 /proc/loadavg)"
