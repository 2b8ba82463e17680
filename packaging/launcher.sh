#!/bin/sh
# edgebox: the one file operators copy. A POSIX sh header followed by a tar.gz of the PyInstaller one-dir build.
# The first start of a given build unpacks it into a per-user cache folder named by its content hash; every later
# start finds it there and execs it directly (no unpacking), so it starts as fast as the one-dir build.
# Cache folder, first that is set: $EDGEBOX_CACHE_DIR, $CACHE_DIRECTORY (systemd CacheDirectory=),
# $XDG_CACHE_HOME/edgebox, $HOME/.cache/edgebox, /tmp/edgebox-UID. It keeps this build and the previous one.
# Needs only sh, tail, tar, gzip, mkdir, mv, rm (coreutils or busybox). docs/operations.md "## Install".
set -eu
ID=@ID@
OFFSET=@OFFSET@

me=$0
case $me in */*) ;; *) me=$(command -v -- "$me") ;; esac

fail() { echo "edgebox launcher: $*" >&2; exit 70; }

if [ -n "${EDGEBOX_CACHE_DIR:-}" ]; then root=$EDGEBOX_CACHE_DIR
elif [ -n "${CACHE_DIRECTORY:-}" ]; then root=${CACHE_DIRECTORY%%:*}
elif [ -n "${XDG_CACHE_HOME:-}" ]; then root=$XDG_CACHE_HOME/edgebox
elif [ -n "${HOME:-}" ] && [ -d "$HOME" ] && [ -w "$HOME" ]; then root=$HOME/.cache/edgebox
else root=/tmp/edgebox-$(id -u)
fi
dir=$root/$ID

if [ ! -x "$dir/edgebox" ]; then
  umask 077
  mkdir -p "$root" || fail "cannot create the cache folder $root (set EDGEBOX_CACHE_DIR)"
  # A shared folder such as /tmp: only ever unpack into a folder that is ours and not a link planted there.
  { [ -O "$root" ] && [ ! -L "$root" ]; } || fail "$root is not owned by uid $(id -u) (set EDGEBOX_CACHE_DIR)"
  umask 022
  tmp=$root/.unpacking-$ID-$$
  trap 'rm -rf "$tmp"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  rm -rf "$tmp" && mkdir "$tmp"
  echo "edgebox launcher: first start of $ID: unpacking into $dir" >&2
  tail -c +$((OFFSET + 1)) "$me" | tar -xzf - -C "$tmp" \
    || fail "unpacking into $root failed (full disk? it needs about @UNPACKED_MB@ MB; or set EDGEBOX_CACHE_DIR)"
  [ -x "$tmp/edgebox" ] || fail "the payload of $me is damaged (no edgebox inside): copy the file again"
  : > "$tmp/.edgebox-build"  # marks the folders this launcher may prune (the cache folder may be shared)
  # Atomic publish: a concurrent first start that won the race leaves its copy; ours is dropped.
  if [ ! -e "$dir" ]; then mv "$tmp" "$dir" 2>/dev/null || true; fi
  rm -rf "$dir/${tmp##*/}"  # lost the race between the test and mv: ours landed inside the winner's
  [ -x "$dir/edgebox" ] || fail "cannot publish $dir"
  # Keep this build and the most recently unpacked other one (a rollback starts at once); drop older ones.
  keep=
  for old in "$root"/*; do
    [ -f "$old/.edgebox-build" ] && [ "$old" != "$dir" ] || continue
    if [ -z "$keep" ] || [ "$old/.edgebox-build" -nt "$keep/.edgebox-build" ]; then keep=$old; fi
  done
  for old in "$root"/*; do
    [ -f "$old/.edgebox-build" ] && [ "$old" != "$dir" ] && [ "$old" != "$keep" ] && rm -rf "$old"
  done
  trap - EXIT INT TERM
  rm -rf "$tmp"
fi
# exec: supervisors see the engine itself (same PID), and signals go straight to it.
exec "$dir/edgebox" "$@"
exit 127
