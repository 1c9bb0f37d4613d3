"""`xdplb demo --mode ipip|gue`: tunnel mode end to end in the lab's routed topology.

lab up (backends in 10.0.1.0/24 behind a router namespace, the VIP 10.0.0.100 / fd00::64
on their loopback) -> `xdplb decap` and http.server on each backend -> `xdplb serve` with
the VIP in that mode -> curl the VIP from the client (IPv4 and IPv6) -> which backend
answered, and the proof that replies went straight back: the LB forwarded only the
clients' packets, the router carried the backends' replies -> lab down.
"""
from __future__ import annotations

import collections
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .demo import xdplb_argv
from .errors import XdplbError
from .lab import Lab


def _config(lab: Lab, mode: str) -> str:
    text = f'[lb]\ninterface = "{lab.lb.ifname}"\nname = "{lab.name}"\n'
    for name, vip, fam in (("web", lab.vip, 4), ("web6", lab.vip6, 6)):
        if vip is None:
            continue
        text += (f'\n[[vip]]\nname = "{name}"\naddress = "{vip}"\nport = 8000\n'
                 f'mode = "{mode}"\n')
        for h in lab.backend_hosts:
            text += f'[[vip.backend]]\naddress = "{h.ipv4 if fam == 4 else h.ipv6}"\n'
        text += '[vip.health]\nkind = "tcp"\ninterval = 0.5\nrise = 1\n'
    return text


def _link_packets(lab: Lab, host: str, dev: str, what: str = "rx_packets") -> int:
    r = lab.run(host, ["cat", f"/sys/class/net/{dev}/statistics/{what}"])
    return int(r.stdout.strip() or 0)


def run_tunnel_demo(mode: str, requests: int = 20, backends: int = 2) -> int:
    prog = xdplb_argv()
    print(f"== lab: routed topology ({backends} backends in 10.0.1.0/24 behind router rt)")
    with Lab(backends=backends, topology="routed") as lab, \
            tempfile.TemporaryDirectory() as tmp:
        for role, h in lab.hosts.items():
            print(f"   {role:<7} {lab.ns(role):<18} {h.ifname:<6} {h.ipv4:<10} {h.ipv6 or ''}")
        print(f"   VIP {lab.vip} and {lab.vip6} on the LB's veth6 and on every backend's lo")
        for h in lab.backend_hosts:
            d = Path(tmp) / h.role
            d.mkdir()
            (d / "whoami").write_text(f"{h.role} {h.ipv4}\n")
            lab.start_http_servers(d, 8000, hosts=[h.role])
            r = lab.run(h.role, [*prog, "decap", h.ifname], timeout=30)
            if r.returncode:
                raise XdplbError(f"xdplb decap on {h.role}: {r.stderr.strip()}")
            print(f"== {h.role}: xdplb decap {h.ifname}\n   | {r.stdout.strip()}")
        cfg = Path(tmp) / "lb.toml"
        cfg.write_text(_config(lab, mode))
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        print(f"== LB: ip netns exec {lab.ns('lb')} xdplb serve -c lb.toml   ({mode} VIPs)")
        for line in cfg.read_text().splitlines():
            print(f"   : {line}")
        lb = lab.popen("lb", [*prog, "serve", "-c", str(cfg), "--run-dir", str(run_dir)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ctl = [*prog, "status", "--json", "-c", str(cfg), "--run-dir", str(run_dir)]
        deadline, up = time.monotonic() + 20, False
        while time.monotonic() < deadline and lb.poll() is None and not up:
            r = lab.run("lb", ctl, timeout=10)
            if r.returncode == 0:
                st = json.loads(r.stdout)
                up = all(b["state"] == "up" for v in st["vips"] for b in v["backends"])
            time.sleep(0.2)
        if not up:
            lb.kill()
            raise XdplbError("xdplb serve did not come up: "
                             + (lb.stderr.read() if lb.stderr and lb.poll() is not None
                                else "health checks not up after 20 s"))
        rt_rx0 = _link_packets(lab, "rt", "eth1")
        rt_tx0 = _link_packets(lab, "rt", "eth0", "tx_packets")
        served: collections.Counter[str] = collections.Counter()
        failed = 0
        urls = [f"http://{lab.vip}:8000/whoami"] + (
            [f"http://[{lab.vip6}]:8000/whoami"] if lab.vip6 else [])
        print(f"== client: {requests} x curl each of {', '.join(urls)}")
        for i in range(requests):
            answers: list[str] = []
            for url in urls:
                r = lab.run("client", ["curl", "-s", "-m", "3", url], timeout=10)
                who = r.stdout.strip() if r.returncode == 0 else f"FAILED(curl {r.returncode})"
                failed += r.returncode != 0
                served[who.split()[0]] += 1
                answers.append(who)
            print(f"   request {i + 1:>2}: " + "  |  ".join(answers))
        print("== summary")
        for who, n in sorted(served.items()):
            print(f"   {who:<12} {n:>3} requests")
        stats = lab.run("lb", [*prog, "stats", lab.lb.ifname, "--json"], timeout=30)
        s = {k: v[0] for k, v in json.loads(stats.stdout)["stats"].items()}
        forwarded = s.get("fwd_new", 0) + s.get("fwd_est", 0)
        replies = _link_packets(lab, "rt", "eth1") - rt_rx0
        to_clients = _link_packets(lab, "rt", "eth0", "tx_packets") - rt_tx0
        print(f"== replies straight back: the LB encapsulated {forwarded} client packets "
              f"({mode}, xdplb stats); the router took {replies} packets in from the backends' "
              f"subnet and sent {to_clients} out to the clients' (the replies, health checks "
              "included): the backends answer the clients directly, not through the LB")
        for h in lab.backend_hosts:
            r = lab.run(h.role, [*prog, "decap", h.ifname, "--status"], timeout=30)
            rows = [ln.split() for ln in r.stdout.splitlines()[1:]]
            got = {x[0]: x[1] for x in rows if len(x) > 1}
            print(f"== {h.role} decapsulator: ipip {got.get('ipip')}, gue {got.get('gue')} "
                  "packets stripped")
        errors = {role: lab.tcp_csum_errors(role) for role in lab.hosts}
        print("== checksum errors (TcpInCsumErrors+UdpInCsumErrors) per host: "
              + ", ".join(f"{r}={n}" for r, n in errors.items()))
        lb.send_signal(signal.SIGINT)
        try:
            lb.wait(10)
        except subprocess.TimeoutExpired:
            lb.kill()
        print(f"== LB exit status {lb.returncode}; lab down")
        ok = failed == 0 and lb.returncode == 0 and not any(errors.values()) and forwarded > 0
    total = requests * len(urls)
    print(f"== {'OK' if ok else 'FAILED'}: {total - failed}/{total} requests answered, "
          f"{len([k for k in served if not k.startswith('FAILED')])} backends used")
    return 0 if ok else 1
