"""Client programs the e2e tests run inside the lab's namespaces (one home for each)."""
from __future__ import annotations

import sys
from pathlib import Path

# A download of /big.bin from the VIP, paced by the reader (a small receive buffer, so the
# sender really waits and the transfer spans what the test does meanwhile). argv: rate in
# bytes/s, then optionally a file: while it exists the client reads nothing (the connection
# stays open, its window closed). Prints the status line at once, then "<bytes> <sha256>",
# or "<bytes> error <reason>" and exit 1 when the connection breaks.
PACED_DOWNLOAD = r"""
import hashlib, os, socket, sys, time
rate = int(sys.argv[1])
hold = sys.argv[2] if len(sys.argv) > 2 else None
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
s.settimeout(10)
s.connect(("10.0.0.10", 8000))
s.sendall(b"GET /big.bin HTTP/1.0\r\nHost: vip\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
head, body = buf.split(b"\r\n\r\n", 1)
print(head.split(b"\r\n")[0].decode(), flush=True)
h, got, t0 = hashlib.sha256(body), len(body), time.monotonic()
got0 = 0
try:
    while True:
        while hold and os.path.exists(hold):
            time.sleep(0.05)
            t0, got0 = time.monotonic(), got
        data = s.recv(16384)
        if not data:
            break
        h.update(data)
        got += len(data)
        time.sleep(max(0.0, t0 + (got - got0) / rate - time.monotonic()))
except OSError as e:
    print(got, "error", e.strerror or e, flush=True)
    sys.exit(1)
print(got, h.hexdigest(), flush=True)
"""


def paced_download(rate: int = 500 * 1024, hold: Path | None = None) -> list[str]:
    """argv of PACED_DOWNLOAD (500 KiB/s by default: 4 MiB take about 8 s)."""
    return [sys.executable, "-c", PACED_DOWNLOAD, str(rate), *([str(hold)] if hold else [])]
