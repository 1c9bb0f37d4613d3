#!/bin/sh
# Builds the OCI image xdplb:VERSION with podman, from a Debian base bootstrapped here with
# mmdebstrap (no registry is pulled from). Run by `make image`; idempotent and cached:
#   - the base image xdplb-base:SUITE-HASH stays in podman's storage; HASH covers the suite and
#     the package list, so a changed list bootstraps a new base;
#   - the wheels are built reproducibly (SOURCE_DATE_EPOCH), so an unchanged tree hits podman's
#     layer cache and the build takes seconds.
# Prints the image's id on the last line; writes it to build/image/image-id.
# Environment: PYTHON (a Python with pip, default .venv/bin/python), XDPLB_IMAGE (tag).
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
PY=${PYTHON:-$root/.venv/bin/python}
SUITE=bookworm
PYVER=3.11  # bookworm's python3: the dependency wheels are fetched for it
export CONTAINERS_CONF="$root/src/xdplb/lab/containers.conf"

die() { echo "build-image: $*" >&2; exit 1; }
command -v podman >/dev/null || die "podman not found (scripts/install-deps.sh image installs it)"
[ -x "$PY" ] || die "$PY not found (make build creates it)"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
tag=${XDPLB_IMAGE:-xdplb:$version}
packages=$(sed -n 's/^ARG PACKAGES="\(.*\)"/\1/p' Containerfile)
[ -n "$version" ] && [ -n "$packages" ] || die "cannot read the version or the package list"
mmopts="--variant=apt --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
 --dpkgopt=path-exclude=/usr/share/man/* --dpkgopt=path-exclude=/usr/share/doc/*
 --dpkgopt=path-include=/usr/share/doc/*/copyright --dpkgopt=path-exclude=/usr/share/locale/*
 --dpkgopt=path-exclude=/usr/share/info/*"
hash=$(printf '%s\n' "$SUITE" "$packages" "$mmopts" | sha256sum | cut -c1-12)
base=localhost/xdplb-base:$SUITE-$hash

ctx=$root/build/image
mkdir -p "$ctx"
log=$ctx/build.log
: >"$log"
step() {  # step WHAT CMD...: run CMD with its output in the log; on failure its tail and exit
  what=$1; shift
  "$@" >>"$log" 2>&1 || { tail -n 15 "$log" >&2; die "$what failed (log: $log)"; }
}
t0=$(date +%s)

# 1. the base: bootstrapped once per package list
if podman image exists "$base"; then
  echo "base: $base (cached)"
else
  command -v mmdebstrap >/dev/null || die "mmdebstrap not found (scripts/install-deps.sh image)"
  tmp=$(mktemp -d /tmp/xdplb-base.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT INT TERM
  echo "base: bootstrapping Debian $SUITE with: $packages"
  # shellcheck disable=SC2086 # mmopts is a word list on purpose
  step mmdebstrap mmdebstrap --quiet $mmopts --include="$(echo "$packages" | tr ' ' ,)" \
    "$SUITE" "$tmp/base.tar"
  step "podman import" podman import --quiet "$tmp/base.tar" "$base"
  rm -rf "$tmp"
  echo "base: $base ($(($(date +%s) - t0)) s)"
fi

# 2. the build context: xdplb's wheel (with its BPF objects) and its dependencies' wheels
rm -rf "$ctx/wheels"
mkdir -p "$ctx/wheels"
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800)
export SOURCE_DATE_EPOCH
step "building the wheel" "$PY" -m pip wheel --no-deps --wheel-dir "$ctx/wheels" .
wheel=$(ls "$ctx"/wheels/xdplb-*.whl)
step "fetching the dependencies' wheels" "$PY" -m pip download --disable-pip-version-check \
  --only-binary=:all: --python-version "$PYVER" --dest "$ctx/wheels" "$wheel[metrics]" pip

# 3. the image (no network for the build steps, never a pull)
deps=$(cd "$ctx/wheels" && ls | grep -v -e '^xdplb-' -e '^pip-' | tr '\n' ' ')
xdplb_wheel="$(basename "$wheel") $(sha256sum "$wheel" | cut -c1-64)"
step "podman build" podman build --network none --pull=never --layers \
  --build-arg BASE="$base" --build-arg DEPS="$deps" --build-arg XDPLB_WHEEL="$xdplb_wheel" \
  --iidfile "$ctx/image-id" -f Containerfile -t "$tag" "$ctx"
# earlier builds that no tag names any more, after an hour (a test still running on the image
# it built keeps it); the layers the current image shares stay
podman image prune --force --filter label=org.opencontainers.image.title=xdplb \
  --filter until=1h >/dev/null 2>&1 || true
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image: $tag $(cut -c1-19 "$ctx/image-id"), $((size / 1000000)) MB, built in $(($(date +%s) - t0)) s"
cat "$ctx/image-id"
echo
