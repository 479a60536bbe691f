#!/usr/bin/env bash
# Fetch Semtech's sx1302_hal V2.1.0 (the libloragw that berrygw's `sx1302`
# feature builds), verify it, and print the SX1302_HAL_DIR to build with.
# Run it on a machine with internet; nothing of the HAL is ever committed.
#
#   packaging/fetch-sx1302-hal.sh /opt/sx1302_hal
#   SX1302_HAL_DIR=/opt/sx1302_hal cargo build --release -p berrygw --features sx1302
#
# GitHub generates the release archive, so its bytes are not guaranteed to be
# stable; what is pinned is the checksum of the unpacked file tree: sha256 of
# the sorted `sha256sum` lines of every file (tag V2.1.0, commit 4b42025d).
# Check a tree by hand with: packaging/fetch-sx1302-hal.sh --verify DIR
set -euo pipefail

VERSION=V2.1.0
TREE_SHA256=bd7057b2f9ef272703033d4d3fdea64761b309bc5325d7a6b517926782a29be6
URL="https://github.com/Lora-net/sx1302_hal/archive/refs/tags/${VERSION}.tar.gz"

tree_sha256() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

verify() {
  local got
  got=$(tree_sha256 "$1")
  if [ "$got" != "$TREE_SHA256" ]; then
    echo "fetch-sx1302-hal: $1 is not sx1302_hal $VERSION as pinned (tree sha256 $got, expected $TREE_SHA256)" >&2
    return 1
  fi
  echo "fetch-sx1302-hal: $1 matches sx1302_hal $VERSION"
}

if [ "${1:-}" = "--verify" ]; then
  [ $# -eq 2 ] || { echo "usage: $0 --verify DIR" >&2; exit 2; }
  verify "$2"
  exit
fi
[ $# -eq 1 ] || { echo "usage: $0 DEST   (or: $0 --verify DIR)" >&2; exit 2; }
dest=$1
if [ -e "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then
  verify "$dest"
  echo "export SX1302_HAL_DIR=$dest"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if command -v curl >/dev/null 2>&1; then
  curl -fsSL "$URL" -o "$tmp/hal.tar.gz"
elif command -v wget >/dev/null 2>&1; then
  wget -q "$URL" -O "$tmp/hal.tar.gz"
else
  echo "fetch-sx1302-hal: need curl or wget" >&2
  exit 1
fi
mkdir -p "$tmp/tree"
tar -xzf "$tmp/hal.tar.gz" -C "$tmp/tree" --strip-components=1
verify "$tmp/tree"
mkdir -p "$(dirname "$dest")"
mv "$tmp/tree" "$dest"
echo "export SX1302_HAL_DIR=$dest"
