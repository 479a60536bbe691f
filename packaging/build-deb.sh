#!/usr/bin/env bash
# Build the berrygw Debian package (or berryctl's) for one target:
#
#   packaging/build-deb.sh x86_64-unknown-linux-gnu        # -> ..._amd64.deb
#   packaging/build-deb.sh aarch64-unknown-linux-gnu       # -> ..._arm64.deb
#   packaging/build-deb.sh armv7-unknown-linux-gnueabihf   # -> ..._armhf.deb
#   packaging/build-deb.sh x86_64-unknown-linux-gnu berryctl   # the central tool
#
# Builds the stripped release binary for TARGET (cross targets link with
# Debian's cross gcc, named in .cargo/config.toml), checks it, then packages
# it with cargo-deb (metadata in gateway/Cargo.toml, maintainer scripts in
# packaging/debian/; berryctl's in berryctl/Cargo.toml). The package lands in
# ${CARGO_TARGET_DIR:-target}/TARGET/debian/<package>_<version>-<revision>_<arch>.deb
# and its path is the last line printed.
#
# Installs what is missing (on Debian, as root or with sudo): the cross gcc and
# libc for TARGET, protoc, dpkg-dev, the rustup target, and cargo-deb pinned to
# CARGO_DEB_VERSION. FEATURES="a b" passes extra cargo features to the build.
# Runs on an amd64 host (CI's); packaging/README.md explains the choices.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0

die() {
  echo "build-deb: error: $*" >&2
  exit 1
}

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
}

target=${1:-}
package=${2:-berrygw}
case "$package" in
  berrygw) manifest=gateway/Cargo.toml ;;
  berryctl) manifest=berryctl/Cargo.toml ;;
  *)
    usage
    die "unknown package '${package}' (berrygw or berryctl)"
    ;;
esac
case "$target" in
  x86_64-unknown-linux-gnu)
    arch=amd64
    toolchain_pkgs=(gcc libc6-dev)
    ;;
  aarch64-unknown-linux-gnu)
    arch=arm64
    toolchain_pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
    ;;
  armv7-unknown-linux-gnueabihf)
    arch=armhf
    toolchain_pkgs=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    usage
    die "unknown or missing TARGET '${target}'"
    ;;
esac

host_arch=$(dpkg --print-architecture 2>/dev/null) || die "dpkg not found: this script runs on Debian"
[ "$host_arch" = amd64 ] || die "this script builds on an amd64 host (this one is ${host_arch})"
cross=no
[ "$arch" = "$host_arch" ] || cross=yes

# --- what the build needs, installed only when missing ----------------------
missing=()
for pkg in "${toolchain_pkgs[@]}" protobuf-compiler libprotobuf-dev dpkg-dev binutils; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-deb: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get could not install ${missing[*]}"
fi

if ! rustup target list --installed | grep -qx "$target"; then
  echo "build-deb: rustup target add $target"
  rustup target add "$target" || die "rustup could not add the $target standard library"
fi

if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked \
    || die "cargo install cargo-deb $CARGO_DEB_VERSION failed"
fi

# --- the binary -------------------------------------------------------------
target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --no-deps --format-version 1 \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
[ -n "$target_dir" ] || die "could not find cargo's target directory"

feature_args=()
[ -z "${FEATURES:-}" ] || feature_args=(--features "$FEATURES")

echo "build-deb: cargo build --release --target $target (stripped)"
start=$(date +%s)
# The release profile keeps symbols (strip = "debuginfo") for local builds and
# backtraces; the package ships a fully stripped binary.
CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --release --locked -p "$package" --target "$target" "${feature_args[@]}"
echo "build-deb: build took $(($(date +%s) - start)) s"

bin="$target_dir/$target/release/$package"
[ -x "$bin" ] || die "$bin was not built"
if readelf -S -W "$bin" | grep -q '\.symtab'; then
  die "$bin still has a symbol table: it should have been stripped"
fi

# Cross packages state their libc floor (variants.cross in gateway/Cargo.toml)
# because dpkg-shlibdeps cannot resolve a foreign libc on this host. Check the
# binary's newest GLIBC_ symbol version against it, so the Depends line cannot
# silently become a lie when the toolchain changes.
glibc_needed=$(readelf -W -V "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
echo "build-deb: $arch binary needs glibc >= ${glibc_needed:-?}, $(stat -c %s "$bin") bytes stripped"
variant_args=()
if [ "$cross" = yes ]; then
  glibc_floor=$(sed -n '/^\[package\.metadata\.deb\.variants\.cross\]/,/^\[/p' "$manifest" \
    | sed -n 's/.*libc6 (>= \([0-9][0-9.]*\)).*/\1/p' | head -n 1)
  [ -n "$glibc_floor" ] || die "no 'libc6 (>= X)' in [package.metadata.deb.variants.cross] of $manifest"
  if [ -n "$glibc_needed" ] \
    && [ "$(printf '%s\n%s\n' "$glibc_needed" "$glibc_floor" | sort -V | tail -n 1)" != "$glibc_floor" ]; then
    die "the $arch binary needs glibc $glibc_needed but the package says libc6 (>= $glibc_floor): raise it in $manifest"
  fi
  variant_args=(--variant cross)
fi

# --- the package --------------------------------------------------------------
out_dir="$target_dir/$target/debian"
mkdir -p "$out_dir"
# --no-build: the binary above is the one packaged. --no-strip: it is stripped
# already, and the host's strip cannot handle foreign binaries.
deb=$(cargo deb -p "$package" --target "$target" --no-build --no-strip --locked \
  "${variant_args[@]}" --output "$out_dir/" | tail -n 1)
[ -f "$deb" ] || die "cargo deb did not produce a package (got '$deb')"
echo "build-deb: $(basename "$deb"): $(stat -c %s "$deb") bytes"
echo "$deb"
