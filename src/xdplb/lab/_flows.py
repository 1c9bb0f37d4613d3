"""Long-lived test connections for the scale-out lab (run inside namespaces).

``python3 _flows.py server PORT``  echo server (TCP), every connection kept until the peer
closes it; ``python3 _flows.py client ADDR PORT N SECONDS [INTERVAL]`` opens N connections
(bounded: at most 5,000, 20 s to open them), sends one byte on each every INTERVAL seconds
(default 0.1) and expects it back, for SECONDS; then prints one JSON line: how many opened,
how many broke (reset, closed or no echo within 2 s) and when, and how many survived.
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
            writer.write(b"x")
            await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(1), ECHO_TIMEOUT)
            if got != b"x":
                raise ConnectionError("wrong echo")
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
                 "broken_at": [], "errors": {}, "open_errors": {}}
    t0 = time.monotonic()
    sem = asyncio.Semaphore(200)  # connections being opened at once
    await asyncio.wait_for(asyncio.gather(*(one(addr, port, seconds, interval, t0, out, sem)
                                            for _ in range(n))), seconds + OPEN_TIMEOUT + 10)
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
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
