"""Scale-out benchmark: xdplb nodes behind a BIRD router with ECMP (the `ecmp` lab), node
changes while ~1,000 long-lived connections run; writes bench/results/scaleout.json and
docs/SCALING.md.

Each run builds a fresh lab (3 nodes, 3 backends, BIRD on the router and in every node), starts
`xdplb serve` on the nodes, opens the long-lived connections (one byte echoed on each every
0.5 s) and a stream of new connections (connect, one byte, close), then:

- optionally a backend change first (a third backend added on every node),
- the node change: `add` (a third node starts serving), `drain` (`xdplb node drain` on n1),
  `crash` (n1's switch port goes down: it silently stops answering; BFD or the hold timer
  must notice),

and counts the connections that survived, the new connections that succeeded, the router's
detection time (from the failure to the route without n1), the longest echo stall, and each
node's share of new flows.  Sync runs add the `[sync]` table (flows older than `min_age` copied
between nodes) and measure what it sends and the CPU time of each serve.

Every run is bounded (connections, seconds) and removes its lab; nothing touches the root
network namespace.  Usage: `sudo .venv/bin/python bench/scaleout.py [--conns 1000] [--quick]`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
XDPLB = str(Path(sys.executable).with_name("xdplb"))

sys.path.insert(0, str(ROOT / "src"))
from xdplb.lab.ecmp import VIP4, EcmpLab

LONG_INTERVAL = 0.5
CHANGE_AT = 6.0  # seconds after the long-lived connections start
BACKEND_CHANGE_AT = 3.0
PROBE_RATE = 40  # new connections per second during the run


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Run:
    def __init__(self, name: str, mode: str, change: str, backend_change: bool, sync: bool,
                 bfd: bool, conns: int, seconds: float, min_age: float) -> None:
        self.name, self.mode, self.change = name, mode, change
        self.backend_change, self.sync, self.bfd = backend_change, sync, bfd
        self.conns, self.seconds, self.min_age = conns, seconds, min_age
        self.lab = EcmpLab(f"xs{os.getpid()}", nodes=3, backends=3, ipv6=False, bfd=bfd)
        self.serves: dict[str, subprocess.Popen] = {}

    def serve(self, role: str) -> None:
        lab = self.lab
        lab.write_node_config(role, mode=self.mode, backends=["b1", "b2"], bfd=self.bfd,
                              sync=self.sync, min_age=self.min_age)
        log = open(lab.run_dir / f"{role}.log", "ab")  # noqa: SIM115 - closed with the lab
        p = lab.popen(role, lab.serve_argv(role, XDPLB), stdin=subprocess.DEVNULL, stdout=log,
                      stderr=subprocess.STDOUT)
        p.xdplb_log = log  # type: ignore[attr-defined]
        self.serves[role] = p

    def ctl(self, role: str, *cmd: str) -> subprocess.CompletedProcess:
        return self.lab.run(role, self.lab.ctl_argv(role, XDPLB, *cmd), timeout=30)

    def status(self, role: str) -> dict:
        p = self.ctl(role, "status", "--json")
        return json.loads(p.stdout) if p.returncode == 0 else {}

    def go(self) -> dict:
        lab = self.lab
        out: dict = {"name": self.name, "mode": self.mode, "change": self.change,
                     "backend_change": self.backend_change, "sync": self.sync, "bfd": self.bfd}
        with lab:
            lab.start_echo_servers()
            first = ["n1", "n2"] if self.change == "add" else ["n1", "n2", "n3"]
            for r in first:
                self.serve(r)
            lab.wait_nexthops(len(first), timeout=30)
            time.sleep(1.5 if self.bfd else 0.5)  # BFD sessions up
            cpu0 = {r: cpu_seconds(p.pid) for r, p in self.serves.items()}
            t0 = time.monotonic()
            long = lab.popen("client", lab.flows_argv(VIP4, 80, self.conns, self.seconds,
                                                      LONG_INTERVAL),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            probe = lab.popen("client", [sys.executable, str(lab_flows()), "probe", VIP4, "80",
                                         str(self.seconds - 1), str(PROBE_RATE)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if self.backend_change:  # on every node at once (a CLI start takes a while)
                _sleep_until(t0 + BACKEND_CHANGE_AT)
                adds = [lab.popen(r, lab.ctl_argv(r, XDPLB, "backend", "add", "10.2.0.103",
                                                  "--vip", "web4"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        for r in first]
                out["backend_add"] = [p.wait(60) for p in adds]
                out["backend_changed_at"] = round(time.monotonic() - t0, 2)
            _sleep_until(t0 + CHANGE_AT)
            tc = time.monotonic()
            out["changed_at"] = round(tc - t0, 2)
            if self.change == "add":
                self.serve("n3")
                lab.wait_nexthops(3, timeout=30)
            elif self.change == "drain":
                self.ctl("n1", "node", "drain")
                lab.wait_nexthops(2, timeout=30)
            elif self.change == "crash":
                lab.fail_node("n1")
                lab.wait_nexthops(2, timeout=30)
            out["router_converged_s"] = round(time.monotonic() - tc, 3)
            lres = json.loads(long.communicate(timeout=self.seconds + 60)[0])
            pres = json.loads(probe.communicate(timeout=self.seconds + 30)[0])
            elapsed = time.monotonic() - t0
            out["long"] = lres
            out["probe"] = pres
            out["survival"] = lres["survived"] / max(1, lres["opened"])
            out["new_ok"] = pres["ok"] / max(1, pres["ok"] + pres["failed"])
            live = [r for r in self.serves if not (self.change == "crash" and r == "n1")]
            sts = {r: self.status(r) for r in live}
            out["fwd_new"] = {r: st.get("stats", {}).get("fwd_new", {}).get("packets", 0)
                              for r, st in sts.items()}
            out["cpu_s_per_s"] = {r: round((cpu_seconds(self.serves[r].pid) - cpu0.get(r, 0))
                                           / elapsed, 4) for r in live}
            if self.sync:
                out["sync_stats"] = {r: st.get("sync") for r, st in sts.items()}
                out["elapsed_s"] = round(elapsed, 2)
        return out


def lab_flows() -> Path:
    import xdplb.lab.ecmp as e

    return Path(e.__file__).with_name("_flows.py")


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def plan(quick: bool) -> list[dict]:
    runs = []
    for mode in ("dsr", "nat"):
        for change in ("add", "drain", "crash"):
            for bc in (False, True):
                for sync in (False, True):
                    runs.append({"mode": mode, "change": change, "backend_change": bc,
                                 "sync": sync, "bfd": True})
    runs.append({"mode": "dsr", "change": "crash", "backend_change": False, "sync": True, "bfd": False})
    runs.append({"mode": "dsr", "change": "none", "backend_change": False, "sync": False, "bfd": True})
    runs.append({"mode": "dsr", "change": "none", "backend_change": False, "sync": True, "bfd": True})
    if quick:
        runs = [r for r in runs if r["mode"] == "dsr" and r["change"] in ("drain", "none")]
    return runs


def label(r: dict) -> str:
    return (f"{r['mode']}/{r['change']}{'/backend-change' if r['backend_change'] else ''}"
            f"{'/sync' if r['sync'] else ''}{'' if r['bfd'] else '/hold-timer'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=1000, help="long-lived connections (<= 5000)")
    ap.add_argument("--seconds", type=float, default=16.0)
    ap.add_argument("--min-age", type=float, default=1.0, help="sync: minimum flow age")
    ap.add_argument("--quick", action="store_true", help="DSR drain and steady runs only")
    ap.add_argument("--out", type=Path, default=RESULTS / "scaleout.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "SCALING.md")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only rewrite --doc from the results of an earlier run")
    args = ap.parse_args()
    if args.render:
        args.doc.write_text(keep_l2(args.doc, render(json.loads(args.render.read_text()))))
        return 0
    if os.geteuid() != 0:
        print("scaleout: needs root (network namespaces)", file=sys.stderr)
        return 1
    conns = max(1, min(args.conns, 5000))
    results = []
    t_all = time.monotonic()
    for spec in plan(args.quick):
        name = label(spec)
        t = time.monotonic()
        r = Run(name, conns=conns, seconds=args.seconds, min_age=args.min_age, **spec).go()
        results.append(r)
        print(f"scaleout: {name:<32} survived {r['long']['survived']}/{r['long']['opened']}"
              f"  new {r['probe']['ok']}/{r['probe']['ok'] + r['probe']['failed']}"
              f"  router {r.get('router_converged_s', '-')} s"
              f"  stall {r['long']['stall_max']} s  ({time.monotonic() - t:.0f} s)",
              file=sys.stderr)
    doc = {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
           "command": "sudo .venv/bin/python bench/scaleout.py "
                      f"--conns {conns} --seconds {args.seconds:g} --min-age {args.min_age:g}"
                      + (" --quick" if args.quick else ""),
           "conns": conns, "seconds": args.seconds, "interval": LONG_INTERVAL,
           "probe_rate": PROBE_RATE, "runs": results,
           "elapsed_s": round(time.monotonic() - t_all, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    args.doc.write_text(keep_l2(args.doc, render(doc)))
    print(f"scaleout: wrote {args.out} and {args.doc}", file=sys.stderr)
    return 0


def keep_l2(doc: Path, text: str) -> str:
    """The new text with the L2 section that bench/l2failover.py generated in the old one."""
    try:
        old = doc.read_text()
    except OSError:
        return text
    begin, end = "<!-- l2failover:", "<!-- /l2failover -->"
    if begin not in old or end not in old:
        return text
    block = old[old.index(begin):old.index(end) + len(end)]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def render(doc: dict) -> str:
    runs = doc["runs"]
    lines = [
        "# Scaling out: N nodes behind ECMP",
        "",
        (f"Generated by `{doc['command']}` ({doc['generated']}, kernel "
        f"{doc['machine']['kernel']}, {doc['machine']['cpus']} CPUs; {doc['elapsed_s']:.0f} s). "
        "Do not edit: run the command again."),
        "",
        ("Topology: the `ecmp` lab (`xdplb lab up --topology ecmp`): a client -> a router "
        "namespace running BIRD 2 with a multipath route per VIP (`merge paths`, L4 hash, the "
        "veth socket hash cleared by a tc program) -> 3 namespaces each running `xdplb serve` "
        "with BIRD as its child announcing VIP 10.9.0.1 -> 3 backends on the same segment. "
        f"Each run: {doc['conns']} long-lived TCP connections (one byte echoed every "
        f"{doc['interval']:g} s for {doc['seconds']:g} s; a connection counts as broken on a "
        "reset, a close or no echo within 2 s) and new connections at "
        f"{doc['probe_rate']}/s throughout; the node change {CHANGE_AT:g} s after the start, "
        f"the backend change (a third backend added on every node) at {BACKEND_CHANGE_AT:g} s. "
        "BFD 100 ms x 3, hold timer 3 s."),
        "",
        "## Established flows and new connections through each change",
        "",
        "| run | survived | new connections | router converged | longest stall | change at |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lo = r["long"]
        p = r["probe"]
        at = f"{r['changed_at']:g} s" if r["change"] != "none" else "-"
        lines.append(f"| {r['name']} | {lo['survived']}/{lo['opened']} ({_pct(r['survival'])}) "
                     f"| {p['ok']}/{p['ok'] + p['failed']} ({_pct(r['new_ok'])}) "
                     f"| {r.get('router_converged_s', '-')} s | {lo['stall_max']} s | {at} |")
    lines += ["", "## Against the targets", "",
              "| target | measured | met |", "|---|---|---|"]

    def find(**kw) -> dict | None:
        return next((r for r in runs if all(r.get(k) == v for k, v in kw.items())), None)

    for mode in ("dsr", "nat"):
        for change in ("add", "drain"):
            for bc in (False, True):
                r = find(mode=mode, change=change, backend_change=bc, sync=True, bfd=True)
                if r is None:
                    continue
                what = f"{mode}: {'backend change, then ' if bc else ''}node {change}"
                met = "yes" if r["survival"] >= 0.999 else "no"
                lines.append(f"| ≥ 99.9 % of established flows survive ({what}; sync) "
                             f"| {_pct(r['survival'])} | {met} |")
    for r in runs:
        if r["change"] == "crash" and r["bfd"]:
            conv, stall = r["router_converged_s"], r["long"]["stall_max"]
            lines.append(f"| BFD: router drops a failed node ≤ 0.5 s ({r['name']}) "
                         f"| {conv} s | {'yes' if conv <= 0.5 else 'no'} |")
            lines.append(f"| its flows run again ≤ 1 s after it fails ({r['name']}; longest "
                         f"echo stall) | {stall} s | {'yes' if stall <= 1.0 else 'no'} |")
    worst = min(runs, key=lambda r: r["new_ok"])
    lines.append(f"| new connections ≥ 99 % successful through every change (worst run: "
                 f"{worst['name']}) | {_pct(worst['new_ok'])} "
                 f"| {'yes' if worst['new_ok'] >= 0.99 else 'no'} |")
    lines += [
        "",
        ("`router converged`: from the change (serve started, `node drain`, port down) to the "
        "router's kernel route having the new set of next hops. For `crash` this is the "
        "failure detection: BFD against the hold timer (the `/hold-timer` run)."),
        "",
        "## Spread of new flows across nodes",
        "",
        "| run | new flows per node (fwd_new) |",
        "|---|---|",
    ]
    for r in runs:
        if r["change"] in ("none", "add", "drain"):
            spread = ", ".join(f"{k} {v}" for k, v in sorted(r["fwd_new"].items()))
            lines.append(f"| {r['name']} | {spread} |")
    sync_runs = [r for r in runs if r["sync"] and r.get("sync_stats")]
    steady = next((r for r in runs if r["change"] == "none" and r["sync"]), None)
    plain = next((r for r in runs if r["change"] == "none" and not r["sync"]), None)
    if steady:
        per = {k: v for k, v in steady["sync_stats"].items() if v}
        el = steady["elapsed_s"]
        sent = [v["sent_bytes"] / el for v in per.values()]
        [v["received_bytes"] / el for v in per.values()]
        avg_sent = sum(sent) / len(sent)
        flows_per_node = doc["conns"] / 3
        lines += [
            "",
            "## What flow-state sync costs",
            "",
            (f"Steady run, {doc['conns']} connections over 3 nodes (~{flows_per_node:.0f} "
            "per node), `resend = 2` s, `min_age` as given:"),
            "",
            ("| node | sent bytes/s (per peer) | received bytes/s | entries sent | serve CPU "
            "with sync | without |"),
            "|---|---|---|---|---|---|",
        ]
        for k, v in sorted(per.items()):
            cpu_on = steady["cpu_s_per_s"].get(k, 0)
            cpu_off = plain["cpu_s_per_s"].get(k, 0) if plain else float("nan")
            lines.append(f"| {k} | {v['sent_bytes'] / el:.0f} | {v['received_bytes'] / el:.0f} "
                         f"| {v['sent_entries']} | {100 * cpu_on:.1f} % | {100 * cpu_off:.1f} % |")
        per_flow = avg_sent / max(1.0, flows_per_node)  # bytes/s per synced flow
        lines += [
            "",
            (f"Per synced flow a node sends {per_flow:.1f} bytes/s to each peer (64-byte entries, "
            "datagram headers and backend records, each live flow again every `resend`). "
            "Every node sends its flows to every other node, so with N nodes each with F "
            "long-lived flows, a node sends and receives (N - 1) x F x "
            f"{per_flow:.1f} bytes/s:"),
            "",
            "| nodes | flows per node | received per node |",
            "|---|---|---|",
        ]
        for n in (3, 10, 50):
            for f in (flows_per_node, 100_000, 1_000_000):
                bps = (n - 1) * f * per_flow * 8
                lines.append(f"| {n} | {f:,.0f} | {_rate(bps)} |")
        lines += [
            "",
            ("The limit: the traffic grows with (N - 1) x F, and receiving costs one table "
             "write per entry in Python (measured here only at the rates above: the CPU "
             "column). `max_bytes_per_s` bounds what each node sends (entries beyond it wait "
             "for the next round, oldest unsent first). With many busy nodes, syncing every "
             "flow to every peer stops scaling (by the table, 1,000,000 flows per node need "
             "2 Gbit/s at 10 nodes): sync only to the nodes ECMP would move a flow to (not "
             "built), raise `min_age` (short flows then rely on Maglev alone) or `resend`."),
        ]
    if sync_runs:
        lines += ["", ("Sync counters of the runs with sync (per node: entries sent, written "
                  "into the table, already known, no room):"), ""]
        for r in sync_runs:
            parts = []
            for k, v in sorted(r["sync_stats"].items()):
                if v:
                    parts.append(f"{k} {v['sent_entries']}/{v['written']}/{v['known']}/"
                                 f"{v['no_room']}")
            lines.append(f"- {r['name']}: " + ", ".join(parts))
    lines += [
        "",
        "## Reading the figures",
        "",
        ("- DSR without a backend change should need no sync: every node has the same Maglev "
         "table, so a moved flow's packets reach the same backend on any node."
         + "".join(f" Here `{r['name']}` still broke {r['long']['broken']} of "
                   f"{r['long']['opened']} (errors: {r['long']['errors']}; not explained "
                   "yet; resets mean another backend answered: the suspect is the lab's fast "
                   "health checks (0.5 s, timeout 0.4 s) timing out on a loaded machine on "
                   "one node and not another, so that for a while the nodes' Maglev tables "
                   "differ; synced entries cover it)." for r in runs
                   if r["mode"] == "dsr" and not r["sync"] and not r["backend_change"]
                   and r["change"] in ("add", "drain") and r["long"]["broken"])),
        ("- After a backend change, a moved flow whose Maglev slot changed reaches another "
        "backend on its new node unless that node has its entry: the sync runs."),
        ("- NAT: each node has its own SNAT address. Without sync a NAT flow that ECMP moves "
         "to another node breaks (that node has no entry: a new translation the backend does "
         "not know). A synced NAT entry leaves its new node with the SNAT address and port of "
         "the node that had it, whose replies still arrive there: that works while that node "
         "is up (add, drain), not after a crash (its address is gone with it)."),
        ("- A crashed node's own flows: in DSR they continue on the other nodes (Maglev, or "
         "synced entries after a backend change); traffic stalls for the detection time."),
        ("- With `[sync]`, a starting node announces its VIPs only after one `resend` period, "
         "once its peers' flows are in its table."),
    ]
    return "\n".join(lines) + "\n"


def _rate(bps: float) -> str:
    for unit, div in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= div:
            return f"{bps / div:.1f} {unit}"
    return f"{bps:.0f} bit/s"


if __name__ == "__main__":
    sys.exit(main())
