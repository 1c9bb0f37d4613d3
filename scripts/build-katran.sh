#!/bin/sh
# Build Katran's XDP balancer object from a checkout of upstream Katran, for the benchmarks
# to measure beside xdplb (bench/katran.py drives it; nothing of Katran is in this
# repository). Usage: scripts/build-katran.sh KATRAN_CHECKOUT [OUT]  (default OUT:
# build/katran/balancer.bpf.o); then `XDPLB_BENCH_KATRAN_OBJ=OUT make bench`.
set -eu
src=${1:?usage: scripts/build-katran.sh KATRAN_CHECKOUT [OUT]}
out=${2:-build/katran/balancer.bpf.o}
[ -f "$src/katran/lib/bpf/balancer.bpf.c" ] || {
    echo "build-katran: $src has no katran/lib/bpf/balancer.bpf.c (a Katran checkout?)" >&2
    exit 2
}
clang=$(command -v clang-19 || command -v clang) || {
    echo "build-katran: clang not found (make deps installs clang-19)" >&2
    exit 1
}
stubs=$(mktemp -d)
trap 'rm -rf "$stubs"' EXIT
# glibc's gnu/stubs.h asks for stubs-32.h on a target without __x86_64__ (BPF): empty is right
mkdir -p "$stubs/gnu" "$(dirname "$out")"
: > "$stubs/gnu/stubs-32.h"
"$clang" -O2 -g --target=bpf -Wno-compare-distinct-pointer-types -I"$stubs" -I"/usr/include/$(gcc -print-multiarch)" -I"$src" \
    -I"$src/katran/lib/linux_includes" -c "$src/katran/lib/bpf/balancer.bpf.c" -o "$out"
rev=${KATRAN_REV:-$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)}
echo "build-katran: $out from Katran $rev (balancer.bpf.c, default features, $("$clang" --version | head -1))"
