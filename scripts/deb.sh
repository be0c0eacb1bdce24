#!/bin/sh
# Build the Debian package with cargo-deb (installed if missing):
#   scripts/deb.sh          → target/debian/affectgate_<version>-1_amd64.deb
#   scripts/deb.sh arm64    → target/debian/affectgate_<version>-1_arm64.deb
#                             (cross-built by scripts/aarch64.sh)
set -eu
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
case "${1:-amd64}" in
amd64) cargo deb --strip ;;
arm64)
    scripts/aarch64.sh build
    cargo deb --target aarch64-unknown-linux-gnu --no-build --strip
    ;;
*) echo "usage: $0 [amd64|arm64]" >&2; exit 2 ;;
esac
