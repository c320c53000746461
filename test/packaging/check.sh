#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Packaging checks, run by .ci/run from the repository's root:
# 1. `meson install` gives a header and a pkg-config file with which the
#    README's echo server (demos/tiny) builds and runs;
# 2. a parent meson project uses uvs as a subproject with dependency('uvs').
set -euo pipefail

repo=$(pwd)
work=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a built uvs-tiny on port 0 and checks its listening line.
run_tiny() {
  "$@" tcp://127.0.0.1:0 >"$work/out" &
  pid=$!
  for _ in $(seq 1 50); do
    if grep -q . "$work/out"; then break; fi
    sleep 0.1
  done
  grep -Eq '^listening on tcp://127\.0\.0\.1:[1-9][0-9]*$' "$work/out"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
}

echo "== install and pkg-config"
meson setup "$work/build" --prefix="$work/prefix" -Dtests=false -Ddemos=false \
  >/dev/null
meson install -C "$work/build" >/dev/null
pcdir=$(dirname "$(find "$work/prefix" -name uvs.pc)")
libdir=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=libdir uvs)
# shellcheck disable=SC2046
cc -o "$work/tiny" demos/tiny/main.c \
  $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs uvs)
run_tiny env LD_LIBRARY_PATH="$libdir" "$work/tiny"
echo "ok: installed header and uvs.pc build the README's server"

echo "== subproject"
mkdir -p "$work/parent/subprojects"
ln -s "$repo" "$work/parent/subprojects/uvs"
cp demos/tiny/main.c "$work/parent/main.c"
cat >"$work/parent/meson.build" <<'MESON'
project('parent', 'c', default_options: ['c_std=gnu11'])
subproject('uvs', default_options: ['tests=false', 'demos=false'])
executable('tiny', 'main.c', dependencies: dependency('uvs'))
MESON
meson setup "$work/parent/build" "$work/parent" >/dev/null
ninja -C "$work/parent/build" >/dev/null
run_tiny "$work/parent/build/tiny"
echo "ok: a parent project builds against dependency('uvs')"
