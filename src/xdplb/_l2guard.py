"""The L2 guard: removes the VIP addresses a dead `serve` left on its interface.

``python3 -I -S _l2guard.py IFACE [TRACK_FILE]`` runs as a child of `serve` (standard library
only, so it
starts in milliseconds). `serve` writes one line to its stdin before it adds an address
(``+ 10.0.0.100/32``) and one after it removed one (``- 10.0.0.100/32``). When its stdin
reaches end of file, `serve` is gone, however it ended (the kernel closes a killed process's
pipes), and every address still listed is deleted with ``ip address del``: the VIP stops
answering ARP/NDP within milliseconds of serve's death, and TRACK_FILE (keepalived's
track_file) gets "1": the node gives its VIPs up at once. Interrupts and terminations are
ignored (a Ctrl-C or a service manager's TERM reaches serve, which withdraws first and then
closes the pipe); only end of file (or SIGKILL) ends the guard.
"""
from __future__ import annotations

import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: _l2guard.py IFACE [TRACK_FILE] (addresses on stdin: '+ A/P', '- A/P')",
              file=sys.stderr)
        return 2
    iface = argv[0]
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    held: dict[str, None] = {}
    for line in sys.stdin:  # bounded by serve's life: EOF when it exits
        op, _, addr = line.strip().partition(" ")
        if op == "+" and addr:
            held[addr] = None
        elif op == "-":
            held.pop(addr, None)
    if len(argv) == 2:  # first: the peer starts taking over while we delete
        try:
            with open(argv[1], "w") as f:
                f.write("1\n")
        except OSError as e:
            print(f"xdplb l2 guard: cannot write {argv[1]}: {e.strerror}", file=sys.stderr)
    for addr in held:
        subprocess.run(["ip", "address", "del", addr, "dev", iface], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       timeout=5)
    if held:
        print(f"xdplb l2 guard: serve is gone; removed {', '.join(held)} from {iface}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
