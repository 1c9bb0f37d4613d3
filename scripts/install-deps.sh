#!/bin/sh
# Installs the system packages xdplb needs, only those missing (idempotent).
# `install-deps.sh bench` adds what the live benchmarks use (nginx), without starting it.
# `install-deps.sh image` adds what `make image` and the lab's containers use: podman with the
# runc runtime (crun refuses this kind of machine's cgroups) and mmdebstrap for the base. No
# recommends: podman's install then creates no network, firewall rule or running service, and
# xdplb never uses podman's bridge networks (src/xdplb/lab/containers.conf).
set -eu
pkgs="clang-19 libbpf-dev bpftool iproute2 ethtool curl iperf3 wrk nftables make gcc bird2 dnsmasq-base hping3 keepalived tmux"
case "${1:-}" in
  bench) pkgs="$pkgs nginx" ;;
  image) pkgs="$pkgs podman runc mmdebstrap" ;;
  "") ;;
  *) echo "install-deps.sh: unknown mode '$1' (bench, image)" >&2; exit 2 ;;
esac
need=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
for p in $pkgs; do
  have_pkg "$p" || need="$need $p"
done
[ -z "$need" ] && exit 0
echo "installing:$need"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
# never start a packaged service in the machine's own namespace (policy-rc.d: deny starts)
guard=/usr/sbin/policy-rc.d
placed=""
if [ ! -e "$guard" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$guard" >/dev/null && $SUDO chmod +x "$guard" && placed=1
fi
trap '[ -n "$placed" ] && $SUDO rm -f "$guard"' EXIT
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
