#!/usr/bin/env bash
# An emulated arm64 Linux board on this x86 machine, running the real dflare-agent with the aarch64
# builds of ai-edge-litert, grpcio, protobuf and numpy, executed by qemu-user; then a small host
# campaign and comparison against it, printing the x86-vs-arm64 disagreement counts.
#
# Recipe (also in docs/raspberry-pi.md, section 5): Debian's
# qemu-user-static + mmdebstrap (bookworm arm64, extract variant: no chroot, no binfmt, no KVM), the
# aarch64 wheels installed natively by pip with several manylinux tags, a fake Raspberry Pi 5
# /proc/cpuinfo in the root (ai-edge-litert segfaults reading the host's x86 one), and
# $R/usr/bin/python3.11 called with PYTHONPATH (a venv's python would resolve to the host's x86 one).
#
# One addition the basic recipe does not need: the agent runs each model in a child interpreter
# (device_agent/worker.py starts sys.executable), and an emulated process cannot exec an aarch64
# binary without binfmt_misc. So the agent is started through $BOARD/bin/python3.11, a host shell
# script that execs qemu; qemu's -0 makes it the guest's argv[0] (so sys.executable), hence the
# worker is started through qemu as well. The script's path does not exist inside $R, so qemu's
# -L prefix leaves it alone, and Python still finds its stdlib under the compiled-in /usr prefix.
#
# Usage: scripts/emulated_board.sh [setup|run|all]      (default all; `make test-board`)
#   setup  installs qemu-user-static + mmdebstrap (apt) when missing, builds $BOARD/root, the wheels
#   run    starts the agent under emulation on a free loopback port and runs scripts/board_campaign.py
# Environment: DFLARE_BOARD_DIR (default .board, kept out of git), PYTHON (the host interpreter,
# default .venv/bin/python), BOARD_SEEDS / BOARD_MAX_QUERIES (campaign size).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BOARD=${DFLARE_BOARD_DIR:-$REPO/.board}
R=$BOARD/root
SITE=$R/opt/site
PY=${PYTHON:-$REPO/.venv/bin/python}
# Cortex-A76: the Raspberry Pi 5's core; QEMU 7.2 emulates its ISA (asimddp, lrcpc...), so the
# runtime picks the same kernels it would on a Pi 5.
QEMU_CPU=cortex-a76
SUITE=bookworm
# The aarch64 wheels: pip finds ai-edge-litert (manylinux_2_27) and numpy/grpcio (2014/2_17/2_28)
# only with several tags listed (pip cannot find the runtimes otherwise).
PLATFORM_TAGS=(manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_27_aarch64 manylinux_2_28_aarch64
               manylinux_2_34_aarch64)

log() { echo "[board] $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

# The host's versions of the native packages: the board gets the same releases built for aarch64,
# so a disagreement comes from the ARM kernels, not from another runtime version.
host_version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

setup() {
  local t0 t
  t0=$(now)
  if ! command -v qemu-aarch64-static >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    t=$(now)
    log "installing qemu-user-static and mmdebstrap (apt)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq qemu-user-static mmdebstrap >/dev/null
    log "apt: $(elapsed "$t") s"
  fi
  if [ ! -x "$R/usr/bin/python3.11" ]; then
    t=$(now)
    log "building the arm64 $SUITE user space in $R (mmdebstrap --variant=extract)"
    rm -rf "$R"
    mkdir -p "$BOARD"
    # No mirror argument: mmdebstrap uses this machine's configured Debian mirror.
    mmdebstrap --quiet --arch=arm64 --variant=extract \
      --include=python3.11-minimal,libpython3.11-stdlib,libc6,libstdc++6,libgcc-s1,zlib1g "$SUITE" "$R"
    log "rootfs: $(elapsed "$t") s"
  fi
  fake_cpuinfo
  local wanted
  wanted="ai-edge-litert==$(host_version ai-edge-litert) grpcio==$(host_version grpcio)"
  wanted+=" grpcio-health-checking==$(host_version grpcio-health-checking)"
  wanted+=" grpcio-reflection==$(host_version grpcio-reflection) protobuf==$(host_version protobuf)"
  wanted+=" numpy==$(host_version numpy)"
  if [ "$(cat "$SITE/.dflare-wheels" 2>/dev/null)" != "$wanted" ]; then
    t=$(now)
    log "installing aarch64 wheels into $SITE: $wanted"
    rm -rf "$SITE"
    local plat=()
    for tag in "${PLATFORM_TAGS[@]}"; do plat+=(--platform "$tag"); done
    # pip runs natively; --only-binary with --platform/--python-version picks the cp311 aarch64 wheels.
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
      --implementation cp "${plat[@]}" --target "$SITE" $wanted
    echo "$wanted" >"$SITE/.dflare-wheels"
    log "wheels: $(elapsed "$t") s"
  fi
  write_wrapper
  log "setup: $(elapsed "$t0") s"
}

# Pitfall 2: qemu's -L maps /proc/cpuinfo to $R/proc/cpuinfo only when that file exists; without
# it ai-edge-litert reads the host's x86 one and segfaults inside Interpreter(). A Raspberry Pi 5.
fake_cpuinfo() {
  mkdir -p "$R/proc"
  {
    for cpu in 0 1; do
      cat <<EOF
processor	: $cpu
BogoMIPS	: 108.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

EOF
    done
    echo "Model		: Raspberry Pi 5 Model B Rev 1.0"
  } >"$R/proc/cpuinfo"
}

# The emulated interpreter as a host executable (see the header: the agent's worker execs it).
write_wrapper() {
  mkdir -p "$BOARD/bin"
  cat >"$BOARD/bin/python3.11" <<EOF
#!/bin/sh
# generated by scripts/emulated_board.sh: the board's aarch64 python3.11, run by qemu-user
exec qemu-aarch64-static -L "$R" -cpu $QEMU_CPU -0 "$BOARD/bin/python3.11" "$R/usr/bin/python3.11" "\$@"
EOF
  chmod +x "$BOARD/bin/python3.11"
}

run() {
  local t0
  t0=$(now)
  [ -x "$BOARD/bin/python3.11" ] || { log "no board in $BOARD: run '$0 setup' first"; return 2; }
  log "agent: $BOARD/bin/python3.11 -m device_agent serve (aarch64 under qemu-user, $QEMU_CPU)"
  PYTHONPATH="$REPO" "$PY" "$REPO/scripts/board_campaign.py" \
    --board-python "$BOARD/bin/python3.11" --board-pythonpath "$SITE:$REPO" --work "$BOARD/work" \
    --seeds "${BOARD_SEEDS:-8}" --max-queries "${BOARD_MAX_QUERIES:-200}" --json "$BOARD/work/figures.json"
  log "run: $(elapsed "$t0") s"
}

case "${1:-all}" in
  setup) setup ;;
  run) run ;;
  all) setup; run ;;
  *) echo "usage: $0 [setup|run|all]" >&2; exit 2 ;;
esac
