#!/usr/bin/env bash
# Build dist/edgebox, the one file operators copy: packaging/launcher.sh followed by a tar.gz of the PyInstaller
# one-dir build (edgebox.spec), unpacked once per build into a cache folder (packaging/README.md says why).
#   bash scripts/build-binary.sh                      # dist/edgebox (the product)
#   bash scripts/build-binary.sh --variant onefile    # dist/edgebox-onefile: PyInstaller one-file, compression off
#   bash scripts/build-binary.sh --variant onefile-compressed   # the same with PyInstaller's default zlib
# Idempotent: PyInstaller reuses build/pyinstaller*/ for unchanged inputs and the payload is re-packed only when the
# one-dir tree changed. Needs the .venv with the dev extras (./dev setup).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
variant=launcher
if [ "${1:-}" = "--variant" ]; then variant=${2:?--variant needs launcher, onefile or onefile-compressed}; fi

if ! "$VENV/bin/python" -c "import PyInstaller" 2>/dev/null; then
  echo "build-binary: PyInstaller is not in $VENV: run ./dev setup (it installs the dev extras)" >&2
  exit 1
fi
pyinstaller() {
  mkdir -p build
  # PYTHONHASHSEED: marshalled sets/frozensets keep one order, so an unchanged tree gives the same bytes.
  if ! PYTHONHASHSEED=0 "$VENV/bin/python" -m PyInstaller --noconfirm --log-level WARN "$@" edgebox.spec \
    > build/pyinstaller.log 2>&1
  then
    cat build/pyinstaller.log >&2; echo "build-binary: PyInstaller failed (log: build/pyinstaller.log)" >&2; exit 1
  fi
  # CUDA/TensorRT libraries are the GPU host's to provide (docs/operations.md "## NVIDIA hosts"): expected.
  grep -v -e "WARNING: Library not found: could not resolve 'lib\(cu\|nv\)" -e " INFO: " build/pyinstaller.log || true
}
size_of() { du -b "$1" | cut -f1; }
started=$(date +%s)

case "$variant" in
  onefile|onefile-compressed)
    compress=0; [ "$variant" = onefile-compressed ] && compress=1
    EDGEBOX_BUNDLE=onefile EDGEBOX_COMPRESS=$compress pyinstaller \
      --distpath "build/dist-$variant" --workpath build/pyinstaller-onefile
    mkdir -p dist
    mv -f "build/dist-$variant/edgebox-onefile" "dist/edgebox-$variant"
    out=dist/edgebox-$variant ;;
  launcher)
    EDGEBOX_BUNDLE=onedir pyinstaller --distpath build/dist --workpath build/pyinstaller
    onedir=build/dist/edgebox-onedir
    [ -x "$onedir/edgebox" ] || { echo "build-binary: PyInstaller produced no $onedir/edgebox" >&2; exit 1; }
    # Re-pack only when the tree's content changed (gzip of ~700 MB is most of a warm rebuild; hashing ~3 s).
    stamp=$(cd "$onedir" && { find . -type l -printf '%p -> %l\n'; find . -type f -print0 | xargs -0 sha256sum; } \
      | sort | sha256sum | cut -c1-32)
    payload=build/payload.tar.gz
    if [ ! -f "$payload" ] || [ "$(cat build/payload.stamp 2>/dev/null)" != "$stamp" ]; then
      # Reproducible archive: same tree, same bytes, same content hash (and so the same cache folder).
      tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$onedir" -cf - . \
        | gzip -n -6 > "$payload.tmp"
      mv "$payload.tmp" "$payload"
      echo "$stamp" > build/payload.stamp
    fi
    version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' edgebox/__init__.py)
    id="$version-$(sha256sum "$payload" | cut -c1-16)"
    unpacked_mb=$(( $(du -sb "$onedir" | cut -f1) / 1000000 + 1 ))
    mkdir -p dist
    bash packaging/make-launcher.sh "$payload" "$id" "$unpacked_mb" dist/edgebox
    out=dist/edgebox
    echo "build-binary: $out is build $id (unpacks to $unpacked_mb MB)" ;;
  *)
    echo "build-binary: unknown variant $variant (launcher, onefile, onefile-compressed)" >&2; exit 2 ;;
esac
bytes=$(size_of "$out")
echo "build-binary: $out $bytes bytes ($(( bytes / 1048576 )) MiB), built in $(( $(date +%s) - started )) s"
