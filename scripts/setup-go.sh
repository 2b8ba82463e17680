#!/usr/bin/env bash
# Go client set-up: protoc plugins, grpcurl, h2spec, module downloads, and the generated Go stubs in
# clients/go/{inferpb,managerpb}.
#
#   bash scripts/setup-go.sh             # install protoc-gen-go/-go-grpc, grpcurl, h2spec into clients/go/.bin;
#                                        # go mod download
#   bash scripts/setup-go.sh --generate  # ... and regenerate the Go stubs from proto/*.proto
#   bash scripts/setup-go.sh --check     # ... and fail (exit 1) if the committed Go stubs are stale
#
# Idempotent and fast when done. The tool versions (protoc plugins; grpcurl, which tests/test_docs_api.py uses to
# run the docs/api.md examples; h2spec, the HTTP/2 conformance suite that tests/api/http2 runs) are the `tool`
# lines of clients/go/go.mod, pinned by its requires and go.sum; protoc is the one inside grpcio-tools in the
# project's .venv, so the Python and Go stubs come from the same compiler. Never edit the stubs by hand: change
# the .proto and run --generate.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO_DIR="$ROOT/clients/go"
BIN="$GO_DIR/.bin"
MODULE=github.com/edgebox/edgebox/clients/go
PY=${PYTHON:-$ROOT/.venv/bin/python}
PROTOS=(infer_service.proto manager.proto)
GEN_DIRS=(inferpb managerpb)

mode=${1:-}
case "$mode" in
  ""|--generate|--check) ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac

command -v go >/dev/null || { echo "setup-go: 'go' is not on PATH (Go >= 1.26 is needed)" >&2; exit 1; }

# 1. Tools (protoc plugins, grpcurl, h2spec), rebuilt only when go.mod/go.sum change or one is missing.
stamp="$BIN/.stamp-$(cat "$GO_DIR/go.mod" "$GO_DIR/go.sum" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ ! -x "$BIN/protoc-gen-go" ] || [ ! -x "$BIN/protoc-gen-go-grpc" ] \
   || [ ! -x "$BIN/grpcurl" ] || [ ! -x "$BIN/h2spec" ]; then
  mkdir -p "$BIN"
  (cd "$GO_DIR" && GOBIN="$BIN" go install tool)
  rm -f "$BIN"/.stamp-* && touch "$stamp"
fi

# 2. Modules (a no-op when the module cache has them).
(cd "$GO_DIR" && go mod download)

[ -z "$mode" ] && exit 0

# 3. Stubs.
[ -x "$PY" ] || { echo "setup-go: $PY not found; run ./dev setup first (protoc comes from grpcio-tools)" >&2; exit 1; }
generate() {  # $1 = output root (the module root or a temp copy of it)
  local wkt
  wkt=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
  "$PY" -m grpc_tools.protoc -I"$ROOT/proto" -I"$wkt" \
    --plugin=protoc-gen-go="$BIN/protoc-gen-go" --plugin=protoc-gen-go-grpc="$BIN/protoc-gen-go-grpc" \
    --go_out="$1" --go_opt=module=$MODULE \
    --go-grpc_out="$1" --go-grpc_opt=module=$MODULE \
    "${PROTOS[@]}"
}

if [ "$mode" = --generate ]; then
  for d in "${GEN_DIRS[@]}"; do rm -f "$GO_DIR/$d"/*.pb.go; done
  generate "$GO_DIR"
  echo "generated: ${GEN_DIRS[*]/#/clients/go/}"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
generate "$tmp"
stale=0
for d in "${GEN_DIRS[@]}"; do
  if ! diff -r "$tmp/$d" "$GO_DIR/$d" --exclude='*_test.go' --exclude='doc.go' >/dev/null 2>&1; then
    echo "clients/go/$d is stale:" >&2
    diff -r -q "$tmp/$d" "$GO_DIR/$d" --exclude='*_test.go' --exclude='doc.go' >&2 || true
    stale=1
  fi
done
if [ $stale -ne 0 ]; then
  echo "run: bash scripts/setup-go.sh --generate" >&2
  exit 1
fi
echo "clients/go stubs are up to date"
