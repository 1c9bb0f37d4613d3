"""The bad-input table: what a careless operator types, and what xdplb must answer.

Each case is run through the real command line as a subprocess (inside a lab's LB
namespace, so an `xdplb run` that wrongly starts would attach only there). Handled
cleanly means: the expected exit status, exactly one line on stderr that starts with
`xdplb: ` and holds the expected text, no traceback, and nothing left attached or pinned.

Used twice: tests/e2e/test_bad_input.py asserts every case, scripts/badinput_tally.py
counts them for docs/RELIABILITY.md.
"""
from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Self

__all__ = ["CASES", "Case", "Outcome", "Served", "judge", "run_case"]

B = ["10.0.0.2", "de:ad:be:ef:00:02"]  # one good backend (the lab's h2)
LB = '[lb]\ninterface = "veth6"\nname = "{instance}"\n'
VIP = '[[vip]]\naddress = "10.0.0.10"\nport = 8000\n'
VIP_UDP = '[[vip]]\naddress = "10.0.0.10"\nport = 5353\nprotocol = "udp"\n'
BACKEND = '[[vip.backend]]\naddress = "10.0.0.2"\nmac = "de:ad:be:ef:00:02"\n'


@dataclass(frozen=True)
class Case:
    """argv after `xdplb`; `{dir}` is a scratch directory holding `files`, `{instance}` a
    name unique to the run (used in files too). `needle` must appear in the one line."""

    name: str
    argv: tuple[str, ...]
    code: int
    needle: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    group: str = "run"


def _c(name: str, argv: list[str], code: int, needle: str, group: str = "run",
       **files: str | bytes) -> Case:
    return Case(name, tuple(argv), code, needle, {k.replace("_", "."): v for k, v in
                                                  files.items()}, group)


def _serve(name: str, text: str | bytes, needle: str, code: int = 2) -> Case:
    return _c(name, ["check", "-c", "{dir}/lb.toml"], code, needle, "config", lb_toml=text)


CASES: list[Case] = [
    # -- xdplb run: the tutorial's arguments, judged by the config file's rules ----------
    _c("odd number of backend words", ["run", "veth6", "10.0.0.2"], 2, "pairs"),
    _c("MAC not hex", ["run", "veth6", "10.0.0.2", "zz:zz"], 2, "not a MAC address"),
    _c("multicast MAC", ["run", "veth6", "10.0.0.2", "01:00:5e:00:00:01"], 2,
       "'01:00:5e:00:00:01' is a multicast"),
    _c("broadcast MAC", ["run", "veth6", "10.0.0.2", "ff:ff:ff:ff:ff:ff"], 2,
       "is a multicast or broadcast MAC"),
    _c("all-zero MAC", ["run", "veth6", "10.0.0.2", "00:00:00:00:00:00"], 2, "all-zero MAC"),
    _c("IP out of range", ["run", "veth6", "300.0.0.2", B[1]], 2, "'300.0.0.2' is not an"),
    _c("backend 0.0.0.0", ["run", "veth6", "0.0.0.0", B[1]], 2,
       "0.0.0.0 is not a unicast"),
    _c("backend broadcast", ["run", "veth6", "255.255.255.255", B[1]], 2,
       "255.255.255.255 is not a unicast"),
    _c("backend multicast", ["run", "veth6", "224.0.0.1", B[1]], 2, "224.0.0.1 is not a unicast"),
    _c("duplicate backends", ["run", "veth6", *B, *B], 2, "backend 2: duplicate of"),
    _c("IPv6 backend behind an IPv4 VIP", ["run", "veth6", "fd00::2", B[1]], 2, "IPv6"),
    _c("VIP 0.0.0.0", ["run", "veth6", *B, "--vip", "0.0.0.0"], 2, "--vip: 0.0.0.0 is not"),
    _c("VIP broadcast", ["run", "veth6", *B, "--vip", "255.255.255.255"], 2, "--vip: 255.255."),
    _c("VIP multicast", ["run", "veth6", *B, "--vip", "239.1.1.1"], 2, "--vip: 239.1.1.1 is not"),
    _c("VIP not an address", ["run", "veth6", *B, "--vip", "web"], 2, "--vip: 'web' is not"),
    _c("--snat of the other family", ["run", "veth6", *B, "--snat", "fd00::1"], 2,
       "--snat: fd00::1 is IPv6 but the VIP is IPv4"),
    _c("--snat not an address", ["run", "veth6", *B, "--snat", "abc"], 2,
       "--snat: 'abc' is not an IPv4 or IPv6 address"),
    _c("--conntrack 0", ["run", "veth6", *B, "--conntrack", "0"], 2, "--conntrack: 0 is out of"),
    _c("--conntrack -1", ["run", "veth6", *B, "--conntrack", "-1"], 2, "--conntrack: -1 is out"),
    _c("--conntrack 2^32", ["run", "veth6", *B, "--conntrack", "4294967296"], 2,
       "--conntrack: 4294967296 is out of range"),
    _c("--conntrack 2^40", ["run", "veth6", *B, "--conntrack", str(1 << 40)], 2,
       "is out of range"),
    _c("--conntrack not a number", ["run", "veth6", *B, "--conntrack", "lots"], 2, "--conntrack"),
    _c("--port 70000", ["run", "veth6", *B, "--port", "70000"], 2, "70000"),
    _c("--port not a number", ["run", "veth6", *B, "--port", "http"], 2, "'http'"),
    _c("--nat-ports reversed", ["run", "veth6", *B, "--nat-ports", "5000-3000"], 2,
       "--nat-ports"),
    _c("--nat-ports garbage", ["run", "veth6", *B, "--nat-ports", "lots"], 2, "--nat-ports"),
    _c("--udp-stateless without dsr+udp", ["run", "veth6", *B, "--udp-stateless"], 2, "dsr"),
    _c("--trace -1", ["run", "veth6", *B, "--trace", "-1"], 2, "--trace"),
    _c("--stats-interval -1", ["run", "veth6", *B, "--stats-interval", "-1"], 2,
       "--stats-interval"),
    _c("unknown interface", ["run", "nosuch0", *B], 1, "unknown interface 'nosuch0'"),
    _c("interface name with a slash", ["run", "a/b", *B], 1, "'a/b'"),
    _c("unknown --egress", ["run", "veth6", *B, "--egress", "nosuch1"], 1, "unknown interface"),
    # -- trace, stats, demo -------------------------------------------------------------------
    _c("trace --duration -5", ["trace", "veth6", "--duration", "-5"], 2, "--duration", "trace"),
    _c("trace --count -1", ["trace", "veth6", "--count", "-1"], 2, "--count", "trace"),
    _c("trace --rate 0", ["trace", "veth6", "--rate", "0"], 2, "--rate", "trace"),
    _c("trace --duration nan", ["trace", "veth6", "--duration", "nan"], 2, "--duration",
       "trace"),
    _c("trace where nothing runs", ["trace", "veth6"], 1, "veth6", "trace"),
    _c("stats where nothing runs", ["stats", "veth6"], 1, "veth6", "trace"),
    _c("demo --backends 0", ["demo", "--backends", "0"], 2, "--backends", "demo"),
    _c("demo --backends 1000", ["demo", "--backends", "1000"], 2, "--backends", "demo"),
    _c("demo --requests -1", ["demo", "--requests", "-1"], 2, "--requests", "demo"),
    # -- the config file (checked by `xdplb check -c`, the same loader as serve) -------------
    _c("missing file", ["check", "-c", "{dir}/missing.toml"], 2, "cannot read", "config"),
    _serve("not UTF-8", b"[lb]\ninterface = \"\xff\"\n", "not UTF-8"),
    _serve("TOML syntax error", "[lb\n", "line 1"),
    _serve("NUL byte in a string", LB + VIP + 'name = "a\\u0000b"\n', "vip[0].name: contains a "
           "NUL byte"),
    _serve("NUL byte in the interface", '[lb]\ninterface = "veth\\u00006"\n',
           "lb.interface: contains a NUL byte"),
    _serve("5,000-deep nested array", LB + "x = " + "[" * 5000 + "]" * 5000 + "\n",
           "nested more than"),
    _serve("5,000-deep nested inline table", LB + "x = " + "{a = " * 5000 + "1" + "}" * 5000
           + "\n", "nested more than"),
    _serve("unknown key", LB + VIP + BACKEND + "wieght = 2\n", "unknown key"),
    _serve("multicast backend MAC", LB + VIP + '[[vip.backend]]\naddress = "10.0.0.2"\n'
           'mac = "01:00:5e:00:00:01"\n', "is a multicast"),
    _serve("VIP 0.0.0.0", LB + '[[vip]]\naddress = "0.0.0.0"\nport = 80\n', "not a unicast"),
    _serve("SNAT of the other family", LB + VIP + 'snat = "fd00::1"\n', "IPv6 but the VIP"),
    _serve("conntrack_size 2^32", LB + "conntrack_size = 4294967296\n", "out of range"),
    _serve("health interval 1e-300", LB + VIP + BACKEND + "[vip.health]\ninterval = 1e-300\n",
           "interval: 1e-300 s is out of range"),
    _serve("health interval 1e300", LB + VIP + BACKEND + "[vip.health]\ninterval = 1e300\n",
           "is out of range"),
    _serve("TCP check on a UDP VIP", LB + VIP_UDP + BACKEND + '[vip.health]\nkind = "tcp"\n',
           "checks a TCP port but the VIP is UDP"),
    _serve("metrics on every address by accident", LB + 'metrics = "*:9100"\n',
           "lb.metrics"),
    _serve("exec check with a relative path", LB + VIP + BACKEND +
           '[vip.health]\nkind = "exec"\ncommand = ["check.sh"]\n', "absolute path"),
    _c("serve --metrics garbage", ["serve", "-c", "{dir}/lb.toml", "--metrics", "nope"], 2,
       "--metrics", "config", lb_toml=LB),
    # -- talking to a daemon that is not there -------------------------------------------------
    _c("status, no daemon", ["status", "--instance", "{instance}", "--run-dir", "{dir}"], 1,
       "no xdplb serve is running", "daemon"),
    _c("reload, no daemon, stale pid file", ["reload", "--instance", "{instance}",
                                             "--run-dir", "{dir}"], 1,
       "no xdplb serve is running", "daemon", **{"{instance}_pid": "{victim}\n"}),
    _c("stop, nothing to stop", ["stop", "--instance", "{instance}", "--run-dir", "{dir}"], 2,
       "give -c FILE or --iface IFACE", "daemon"),
    _c("stop, interface with nothing attached", ["stop", "--iface", "veth6", "--instance",
                                                 "{instance}", "--run-dir", "{dir}"], 1,
       "nothing to stop", "daemon"),
]

# -- with a serve running for {instance} (run directory {run}, metrics on {metrics}) -------
SERVED = LB + 'metrics = "{metrics}"\n' + VIP + BACKEND
_T = ["--instance", "{instance}", "--run-dir", "{run}"]


def _s(name: str, argv: list[str], code: int, needle: str, **files: str | bytes) -> Case:
    return _c(name, argv, code, needle, "served", **files)


CASES += [
    _s("backend weight 70000", ["backend", "weight", "10.0.0.2", "70000", *_T], 2,
       "out of range 0..65535"),
    _s("backend add with a broadcast MAC", ["backend", "add", "10.0.0.9", "--mac",
                                            "ff:ff:ff:ff:ff:ff", *_T], 2,
       "is a multicast or broadcast MAC"),
    _s("backend add 0.0.0.0", ["backend", "add", "0.0.0.0", *_T], 2, "not a unicast"),
    _s("drain an unknown backend", ["backend", "drain", "10.0.0.99", *_T], 2,
       "no backend '10.0.0.99'"),
    _s("vip add 0.0.0.0:80", ["vip", "add", "0.0.0.0:80", *_T], 2, "not a unicast"),
    _s("reload -c another file", ["reload", "-c", "{dir}/other.toml", "--run-dir", "{run}"], 2,
       "a reload re-reads the file it serves", other_toml=LB + VIP + BACKEND),
    _s("check -c a bad file against the running instance",
       ["check", "-c", "{dir}/bad.toml", "--run-dir", "{run}"], 2, "vip[0].port: expected an "
       "integer", bad_toml=LB + '[[vip]]\naddress = "10.0.0.10"\nport = "80"\n'),
    _s("serve the same instance twice", ["serve", "-c", "{dir}/same.toml", "--run-dir", "{run}"],
       1, "is already served", same_toml=LB + VIP + BACKEND),
    _s("serve with the metrics address taken",
       ["serve", "-c", "{dir}/m.toml", "--run-dir", "{run}"], 1,
       "cannot serve metrics on {metrics}: Address already in use",
       m_toml=LB.replace("{instance}", "{instance}m") + 'metrics = "{metrics}"\n'),
    _s("control socket: 100,000-deep JSON", ["@socket", "[" * 100_000 + "]" * 100_000], 2,
       "nested more than 16 levels deep"),
    _s("control socket: a NUL byte", ["@socket", '{"cmd": "status\\u0000"}'], 2,
       "contains a NUL byte"),
    _s("control socket: not JSON", ["@socket", "{status"], 2, "not JSON"),
    _s("control socket: not an object", ["@socket", "[1, 2]"], 2, "a request is a JSON object"),
    _s("control socket: unknown command", ["@socket", '{"cmd": "rm -rf"}'], 2,
       "unknown command 'rm -rf'"),
    _s("control socket: 2 MiB request", ["@socket", '{"cmd": "' + "x" * (2 << 20) + '"}'], 2,
       "bad request"),
]


@dataclass
class Outcome:
    case: Case
    code: int
    stderr: str
    leftovers: list[str] = field(default_factory=list)  # what was found attached or pinned

    @property
    def lines(self) -> list[str]:
        return [x for x in self.stderr.splitlines() if x.strip()]

    def problems(self) -> list[str]:
        """Why this outcome is not clean ([] when it is)."""
        out = []
        if self.code != self.case.code:
            out.append(f"exit status {self.code}, expected {self.case.code}")
        if "Traceback" in self.stderr:
            out.append("a traceback")
        if len(self.lines) != 1:
            out.append(f"{len(self.lines)} lines on stderr")
        elif not self.lines[0].startswith("xdplb: "):
            out.append("the line does not start with 'xdplb: '")
        if self.case.needle not in self.stderr:
            out.append(f"no {self.case.needle!r} in the message")
        out += [f"left behind: {x}" for x in self.leftovers]
        return out


def judge(case: Case, code: int, stderr: str, leftovers: list[str] | None = None) -> Outcome:
    return Outcome(case, code, stderr, leftovers or [])


def xdp_program(lab) -> str:
    """The XDP program attached to the LB's veth6 ('' when none)."""
    link = lab.run("lb", ["ip", "-d", "link", "show", "dev", "veth6"]).stdout
    m = re.search(r"prog/xdp id (\d+)", link)
    return m[1] if m else ""


def run_case(case: Case, lab, argv0: list[str], scratch: Path, instance: str,
             timeout: float = 20, served: Served | None = None) -> Outcome:
    """Run one case in `lab`'s LB namespace; judge what it printed and what it left
    (a "served" case needs `served`, the serve it talks to)."""
    scratch.mkdir(parents=True, exist_ok=True)
    victim = None
    before = xdp_program(lab)
    try:
        subst = {"{dir}": str(scratch), "{instance}": instance}
        if served is not None:
            subst.update({"{run}": str(served.run_dir), "{metrics}": served.metrics})
        if any(isinstance(v, str) and "{victim}" in v for v in case.files.values()):
            # an unrelated process whose pid a stale pid file names: must survive
            victim = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL,
                                      start_new_session=True)
            subst["{victim}"] = str(victim.pid)
        for name, content in case.files.items():
            for k, v in subst.items():
                name = name.replace(k, v)
                if isinstance(content, str):
                    content = content.replace(k, v)
            path = scratch / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        argv = [_subst(a, subst) for a in case.argv]
        needle = _subst(case.needle, subst)
        if argv[0] == "@socket":
            assert served is not None
            code, err = served.raw(argv[1])
        else:
            try:
                r = lab.run("lb", [*argv0, *argv], timeout=timeout)
                code, err = r.returncode, r.stderr
            except subprocess.TimeoutExpired:
                code, err = -1, f"(no exit within {timeout:g} s)"
        leftovers = []
        after = xdp_program(lab)
        if after != before:
            leftovers.append(f"XDP program on veth6: {before or 'none'} -> {after or 'none'}")
            if not before:
                lab.run("lb", ["ip", "link", "set", "dev", "veth6", "xdp", "off"])
        if served is not None and not served.alive():
            leftovers.append("the running serve stopped answering")
        if victim is not None and victim.poll() is not None:
            leftovers.append(f"the unrelated process {victim.pid} was signalled "
                             f"({victim.returncode})")
        return judge(replace(case, needle=needle), code, err, leftovers)
    finally:
        if victim is not None and victim.poll() is None:
            victim.kill()
            victim.wait()


def _subst(text: str, subst: dict[str, str]) -> str:
    for k, v in subst.items():
        text = text.replace(k, v)
    return text


class Served:
    """`xdplb serve` of the SERVED config in the lab's LB namespace (instance, run
    directory, metrics address) for the "served" cases; a context manager."""

    def __init__(self, lab, argv0: list[str], scratch: Path, instance: str,
                 metrics_port: int = 19100):
        self.lab, self.argv0, self.instance = lab, argv0, instance
        self.run_dir = scratch / "run"
        self.metrics = f"127.0.0.1:{metrics_port}"
        self.config = scratch / "served.toml"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(SERVED.replace("{instance}", self.instance)
                               .replace("{metrics}", self.metrics))
        self.proc = self.lab.popen("lb", [*self.argv0, "serve", "-c", str(self.config),
                                          "--run-dir", str(self.run_dir)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.alive():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the serve for the bad-input cases did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def sock(self) -> Path:
        return self.run_dir / f"{self.instance}.sock"

    def alive(self) -> bool:
        try:
            return self.raw('{"cmd": "status"}')[0] == 0
        except OSError:
            return False

    def raw(self, line: str) -> tuple[int, str]:
        """Send one raw line to the control socket: (exit status a client would give,
        the error as the CLI prints it)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.sock))
            with contextlib.suppress(OSError):  # the daemon may answer before reading all
                s.sendall(line.encode() + b"\n")
                s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        reply = json.loads(data)
        if reply.get("ok"):
            return 0, ""
        return int(reply.get("code", 1)), f"xdplb: {reply.get('error')}\n"
