"""Long-lived test connections for the scale-out lab (run inside namespaces).

``python3 _flows.py server PORT``  echo server (TCP), every connection kept until the peer
closes it; ``python3 _flows.py client ADDR PORT N SECONDS [INTERVAL]`` opens N connections
(bounded: at most 5,000, 20 s to open them), sends one byte on each every INTERVAL seconds
(default 0.1) and expects it back, for SECONDS; then prints one JSON line: how many opened,
how many broke (reset, closed or no echo within 2 s) and when, how many survived, and the
longest wait for an echo (a stall while a node fails).
``python3 _flows.py probe ADDR PORT SECONDS RATE`` opens RATE new connections per second
(each: connect, one byte echoed, close; at most 200 at once) and prints how many succeeded.
Every loop is bounded in count and time.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

MAX_CONNS = 5000
OPEN_TIMEOUT = 20.0
ECHO_TIMEOUT = 2.0


async def serve(port: int) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    # host None: one socket per family (asyncio makes a "::" socket IPv6-only)
    server = await asyncio.start_server(echo, host=None, port=port, backlog=4096)
    async with server:
        await server.serve_forever()


async def one(addr: str, port: int, seconds: float, interval: float, t0: float,
              out: dict, sem: asyncio.Semaphore) -> None:
    try:
        async with sem:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(addr, port),
                                                    OPEN_TIMEOUT)
    except (OSError, TimeoutError) as e:
        out["open_failed"] += 1
        out["open_errors"][type(e).__name__] = out["open_errors"].get(type(e).__name__, 0) + 1
        return
    out["opened"] += 1
    deadline = t0 + seconds
    try:
        while time.monotonic() < deadline:
            sent = time.monotonic()
            writer.write(b"x")
            await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(1), ECHO_TIMEOUT)
            if got != b"x":
                raise ConnectionError("wrong echo")
            wait = time.monotonic() - sent
            if wait > out["stall_max"]:
                out["stall_max"] = round(wait, 3)
                out["stall_max_at"] = round(sent - t0, 2)
            await asyncio.sleep(interval)
        out["survived"] += 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
        out["broken"] += 1
        out["broken_at"].append(round(time.monotonic() - t0, 2))
        out["errors"][type(e).__name__] = out["errors"].get(type(e).__name__, 0) + 1
    finally:
        writer.close()


async def clients(addr: str, port: int, n: int, seconds: float, interval: float) -> dict:
    n = min(n, MAX_CONNS)
    out: dict = {"wanted": n, "opened": 0, "open_failed": 0, "broken": 0, "survived": 0,
                 "broken_at": [], "errors": {}, "open_errors": {}, "stall_max": 0.0,
                 "stall_max_at": None}
    t0 = time.monotonic()
    sem = asyncio.Semaphore(200)  # connections being opened at once
    await asyncio.wait_for(asyncio.gather(*(one(addr, port, seconds, interval, t0, out, sem)
                                            for _ in range(n))), seconds + OPEN_TIMEOUT + 10)
    return out


async def probe_one(addr: str, port: int, out: dict) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), 3.0)
        try:
            writer.write(b"p")
            await writer.drain()
            if await asyncio.wait_for(reader.readexactly(1), 3.0) != b"p":
                raise ConnectionError("wrong echo")
        finally:
            writer.close()
        out["ok"] += 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        out["failed"] += 1


async def probe(addr: str, port: int, seconds: float, rate: float) -> dict:
    out = {"ok": 0, "failed": 0}
    tasks: set[asyncio.Task] = set()
    t0 = time.monotonic()
    n = 0
    while (now := time.monotonic()) < t0 + seconds:
        if len(tasks) < 200 and n < (now - t0) * rate:
            t = asyncio.ensure_future(probe_one(addr, port, out))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            n += 1
        else:
            await asyncio.sleep(0.005)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    return out


def _more_files() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def main(argv: list[str]) -> int:
    _more_files()
    if argv[:1] == ["server"]:
        asyncio.run(serve(int(argv[1])))
        return 0
    if argv[:1] == ["client"]:
        addr, port, n, seconds = argv[1], int(argv[2]), int(argv[3]), float(argv[4])
        interval = float(argv[5]) if len(argv) > 5 else 0.1
        print(json.dumps(asyncio.run(clients(addr, port, n, seconds, interval))), flush=True)
        return 0
    if argv[:1] == ["probe"]:
        addr, port, seconds, rate = argv[1], int(argv[2]), float(argv[3]), float(argv[4])
        print(json.dumps(asyncio.run(probe(addr, port, seconds, min(rate, 500.0)))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
