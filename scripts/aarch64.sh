#!/bin/sh
# Cross-build affectgate for a Raspberry Pi (aarch64-unknown-linux-gnu, glibc) on x86_64 with
# Debian's cross toolchain, and run its tests under qemu-user (no binfmt needed: cargo runs
# every test binary through `qemu-aarch64`).
#
#   scripts/aarch64.sh build            # release binary: <target>/aarch64-unknown-linux-gnu/release/affectgate
#   scripts/aarch64.sh test [FILTER…]   # unit tests + integration tests under emulation
#   scripts/aarch64.sh demo [SECONDS]   # `affectgate demo` under emulation
#
# Installs what it lacks: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user (apt) and
# the aarch64 standard library (rustup).
set -eu
cd "$(dirname "$0")/.."
T=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi
rustup target list --installed | grep -qx "$T" || rustup target add "$T"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"
# Test binaries and the gateway find the emulated system's libraries here.
export QEMU_LD_PREFIX=$SYSROOT

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
build) cargo build --release --target "$T" --bins ;;
test) cargo test --release --target "$T" --no-fail-fast "$@" ;;
demo)
    cargo build --release --target "$T" --bins
    exe=${CARGO_TARGET_DIR:-target}/$T/release/affectgate
    qemu-aarch64 -L "$SYSROOT" "$exe" demo --seconds "${1:-60}"
    ;;
*) echo "usage: $0 build|test [FILTER…]|demo [SECONDS]" >&2; exit 2 ;;
esac
