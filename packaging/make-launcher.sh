#!/usr/bin/env bash
# Write OUT = packaging/launcher.sh (placeholders filled, padded to HEADER_SIZE bytes) + PAYLOAD (a tar.gz whose
# top level holds the `edgebox` executable). Used by scripts/build-binary.sh and tests/packaging.
#   bash packaging/make-launcher.sh PAYLOAD ID UNPACKED_MB OUT
set -euo pipefail
export LC_ALL=C  # ${#header} counts bytes
payload=$1 id=$2 unpacked_mb=$3 out=$4
header_size=8192
[[ "$id" =~ ^[A-Za-z0-9._+-]+-[0-9a-f]+$ ]] || { echo "make-launcher: bad build id '$id'" >&2; exit 2; }
header=$(sed -e "s/@ID@/$id/" -e "s/@OFFSET@/$header_size/" -e "s/@UNPACKED_MB@/$unpacked_mb/" \
  "$(dirname "$0")/launcher.sh")
pad=$(( header_size - ${#header} - 1 ))
[ "$pad" -ge 2 ] || { echo "make-launcher: packaging/launcher.sh is over $header_size bytes" >&2; exit 1; }
{ printf '%s\n' "$header"; printf '#%*s\n' $(( pad - 2 )) ''; cat "$payload"; } > "$out.tmp"
[ $(( $(stat -c %s "$out.tmp") - $(stat -c %s "$payload") )) -eq "$header_size" ]
chmod 755 "$out.tmp"
mv -f "$out.tmp" "$out"
