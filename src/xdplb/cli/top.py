"""`xdplb top`: a live view of a running serve, from its `status` (the same view as
`status --json`, asked over the control socket every interval): per VIP and backend
packets/s, bits/s, new flows/s, active flows and health; drops by reason; flow-table
fill. Keys: s sorts by the next column, r reverses, / filters (VIP or backend text,
Enter to apply, Esc to clear), b shows or hides backends, q quits."""
from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..daemon import request
from ..errors import UsageError

if TYPE_CHECKING:  # rich is imported when top runs (the other commands start faster)
    from rich.console import Console, Group

SORTS = ("name", "pps", "bps", "new/s", "active")


@dataclass
class Row:
    """One VIP or backend line: its rates since the last view."""

    name: str  # VIP name, or backend key
    what: str  # VIP: address:port/proto and mode; backend: its state
    pps: float
    bps: float
    new: float
    active: int
    health: str
    backends: list[Row] = field(default_factory=list)

    def key(self, sort: str) -> tuple[float, str]:
        """Sort key: the column's number (names sort by name alone)."""
        if sort == "name":
            return (0.0, self.name)
        return ({"pps": self.pps, "bps": self.bps, "new/s": self.new,
                 "active": float(self.active)}[sort], self.name)


def _rate(now: dict, before: dict | None, k: str, dt: float) -> float:
    if before is None or dt <= 0:
        return 0.0
    return max(0, now.get(k, 0) - before.get(k, 0)) / dt


class View:
    """Rates from two successive status views, and how to show them."""

    def __init__(self) -> None:
        self.last: dict | None = None
        self.last_t = 0.0
        self.sort, self.reverse = "pps", True
        self.filter = ""
        self.typing: str | None = None  # the filter being typed after '/'
        self.show_backends = True

    def rows(self, st: dict, now: float) -> tuple[list[Row], dict[str, float]]:
        dt = now - self.last_t
        before = self.last or {}
        old_vips = {v["name"]: v for v in before.get("vips", [])}
        rows = []
        for v in st["vips"]:
            ov = old_vips.get(v["name"])
            obs = {b["backend"]: b for b in (ov or {}).get("backends", [])}
            r = Row(v["name"], f"{v['vip']} {v['mode']}", _rate(v, ov, "packets", dt),
                    8 * _rate(v, ov, "bytes", dt), _rate(v, ov, "new_flows", dt),
                    sum(b.get("active_flows", 0) for b in v["backends"]),
                    f"{sum(b['state'] == 'up' for b in v['backends'])}/{len(v['backends'])} up")
            for b in v["backends"]:
                ob = obs.get(b["backend"])
                h = b["state"] + {"established": " (draining)", "none": " (flows moved)"}.get(
                    b.get("traffic", "new"), "")
                r.backends.append(Row(b["backend"], f"weight {b['weight']}",
                                      _rate(b, ob, "packets", dt), 8 * _rate(b, ob, "bytes", dt),
                                      _rate(b, ob, "new_flows", dt), b.get("active_flows", 0),
                                      h))
            rows.append(r)
        old_stats = before.get("stats", {})
        drops = {k: _rate(c, old_stats.get(k), "packets", dt)
                 for k, c in st.get("stats", {}).items() if k.startswith("drop")}
        self.last, self.last_t = st, now
        return rows, drops

    def select(self, rows: list[Row]) -> list[Row]:
        f = self.filter.lower()
        out = []
        for r in rows:
            bs = r.backends if not f or f in r.name.lower() or f in r.what.lower() else \
                [b for b in r.backends if f in b.name.lower()]
            if f and not bs and f not in r.name.lower() and f not in r.what.lower():
                continue
            out.append(Row(r.name, r.what, r.pps, r.bps, r.new, r.active, r.health,
                           sorted(bs, key=lambda b: b.key(self.sort), reverse=self.reverse)))
        return sorted(out, key=lambda r: r.key(self.sort), reverse=self.reverse)

    def render(self, st: dict, rows: list[Row], drops: dict[str, float]) -> Group:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        fl = st.get("flows") or {}
        fill = []
        for region in ("nat", "ct"):
            size = fl.get(f"{region}_size")
            if size:
                fill.append(f"{region} {fl.get(f'{region}_live', 0):,}/{size:,} "
                            f"({100 * fl.get(f'{region}_used', 0) / size:.1f} % used)")
        head = Text(f"xdplb {st.get('version', '?')} {st.get('instance', '?')} on "
                    f"{st.get('interface', '?')}  up {st.get('uptime', 0):.0f} s  flow table: "
                    + (", ".join(fill) or "-"))
        t = Table(expand=True, box=None, header_style="bold")
        for col, justify in (("VIP / backend", "left"), ("what", "left"), ("pkts/s", "right"),
                             ("bits/s", "right"), ("new/s", "right"), ("active", "right"),
                             ("health", "left")):
            mark = ""
            if {"VIP / backend": "name", "pkts/s": "pps", "bits/s": "bps", "new/s": "new/s",
                    "active": "active"}.get(col) == self.sort:
                mark = " v" if self.reverse else " ^"
            t.add_column(col + mark, justify=justify)  # type: ignore[arg-type]
        for r in self.select(rows):
            t.add_row(Text(r.name, style="bold"), r.what, _num(r.pps), _bits(r.bps),
                      _num(r.new), f"{r.active:,}", r.health)
            if self.show_backends:
                for b in r.backends:
                    style = "" if b.health.startswith("up") else "yellow"
                    t.add_row("  " + b.name, b.what, _num(b.pps), _bits(b.bps), _num(b.new),
                              f"{b.active:,}", Text(b.health, style=style))
        drop = "  ".join(f"{k} {_num(v)}/s" for k, v in sorted(drops.items()) if v) or "none"
        keys = (f"filter: {self.typing}_" if self.typing is not None else
                f"[s]ort {self.sort}  [r]everse  [/] filter {self.filter!r}  [b]ackends  [q]uit")
        return Group(head, Text("drops/s: " + drop), t, Text(keys, style="dim"))

    def key(self, ch: str) -> bool:
        """Handle one key; False: quit."""
        if self.typing is not None:
            if ch in ("\r", "\n"):
                self.filter, self.typing = self.typing, None
            elif ch == "\x1b":
                self.filter, self.typing = "", None
            elif ch in ("\x7f", "\b"):
                self.typing = self.typing[:-1]
            elif ch.isprintable():
                self.typing += ch
            return True
        if ch in ("q", "\x03"):
            return False
        if ch == "s":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        elif ch == "r":
            self.reverse = not self.reverse
        elif ch == "/":
            self.typing = ""
        elif ch == "b":
            self.show_backends = not self.show_backends
        return True


def _num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}" if x >= 10 or x == 0 else f"{x:.1f}"


def _bits(x: float) -> str:
    return _num(x) + "b"


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """Keys as they are typed (no Enter needed), when stdin is a terminal."""
    if not sys.stdin.isatty():
        def wait(timeout: float) -> str | None:
            time.sleep(timeout)
            return None
        yield wait
        return
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        def read(timeout: float) -> str | None:
            r, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 1).decode(errors="replace") if r else None
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def run_top(fetch: Callable[[], dict], interval: float = 1.0, iterations: int = 0,
            console: Console | None = None) -> int:
    """Show `fetch()` (a status view) every `interval` s until q (or `iterations`)."""
    from rich.console import Console
    from rich.live import Live

    view = View()
    console = console or Console()
    st = fetch()
    rows, drops = view.rows(st, time.monotonic())
    n = 0
    with _keys() as read, Live(view.render(st, rows, drops), console=console,
                                 screen=console.is_terminal, auto_refresh=False) as live:
        due = time.monotonic() + interval
        while True:
            ch = read(max(0.0, due - time.monotonic()))
            if ch is not None:
                if not view.key(ch):
                    return 0
                live.update(view.render(st, rows, drops), refresh=True)
                continue
            st = fetch()
            rows, drops = view.rows(st, time.monotonic())
            live.update(view.render(st, rows, drops), refresh=True)
            due = time.monotonic() + interval
            n += 1
            if iterations and n >= iterations:
                return 0


def cmd_top(args) -> int:
    from .serve import _target

    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval:g}: give a number of seconds > 0")
    paths, _ = _target(args)
    return run_top(lambda: request(paths, {"cmd": "status"})["status"], args.interval,
                   args.iterations)


def register(sub) -> None:
    from .serve import _add_target

    t = sub.add_parser("top", help="live view of a running serve: per VIP and backend "
                       "rates, active flows, health, drops, flow-table fill")
    t.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between views (default 1)")
    t.add_argument("--iterations", type=int, default=0, metavar="N",
                   help="stop after N views (default: until q)")
    _add_target(t)
    t.set_defaults(func=cmd_top)
