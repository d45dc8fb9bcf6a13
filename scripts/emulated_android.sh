#!/usr/bin/env bash
# An Android-like arm64 device on this x86 machine, for the `android` pytest marker (make test-android):
# the simulated adbd (tests/adbd_sim.py, DeviceConfig.emulation) runs its shell under proot + qemu-user
# over a root holding only what `dflare deploy adb` pushed, and the real adb-shell client drives it.
#
# setup: installs qemu-user-static, mmdebstrap and proot (apt) when missing, extracts Debian's aarch64
#        static busybox (the device's toybox) and builds the self-contained runtime (dflare bundle build),
#        all cached under $DFLARE_ANDROID_DIR (default .board/android, kept out of git).
# Why proot: qemu-user cannot start another aarch64 program by itself (the agent starts its model
# worker) without binfmt_misc, which is machine-wide and needs privileges; proot catches each execve
# and runs it through qemu, and gives the device a root without /lib, /usr, /tmp or /dev/shm.
#
# Usage: scripts/emulated_android.sh setup
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${DFLARE_ANDROID_DIR:-$REPO/.board/android}
PY=${PYTHON:-$REPO/.venv/bin/python}

log() { echo "[android] $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

setup() {
  local t0 t
  t0=$(now)
  if ! command -v qemu-aarch64-static >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1 \
     || ! command -v proot >/dev/null 2>&1; then
    t=$(now)
    log "installing qemu-user-static, mmdebstrap and proot (apt)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq qemu-user-static mmdebstrap proot >/dev/null
    log "apt: $(elapsed "$t") s"
  fi
  mkdir -p "$DIR"
  if [ ! -x "$DIR/busybox/bin/busybox" ]; then
    t=$(now)
    rm -rf "$DIR/busybox.tmp"
    mmdebstrap --quiet --arch=arm64 --variant=extract --include=busybox-static bookworm "$DIR/busybox.tmp"
    mv "$DIR/busybox.tmp" "$DIR/busybox"
    log "busybox: $(elapsed "$t") s"
  fi
  t=$(now)
  PYTHONPATH="$REPO" "$PY" -m host.cli bundle build --platform android-arm64 --cache-dir "$DIR"
  log "runtime: $(elapsed "$t") s"
  log "setup: $(elapsed "$t0") s"
}

case "${1:-setup}" in
  setup) setup ;;
  *) echo "usage: $0 setup" >&2; exit 2 ;;
esac
