#!/bin/sh
# Installs the system packages xdplb needs, only those missing (idempotent).
set -eu
need=""
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
for p in clang-19 libbpf-dev bpftool iproute2 ethtool curl iperf3 wrk nftables make gcc; do
  have_pkg "$p" || need="$need $p"
done
if [ -n "$need" ]; then
  echo "installing:$need"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
