"""A small asyncio HTTP/1.1 server for the live benchmark when nginx is not installed.

``python tiny_http.py PORT BODY_FILE``: answers every GET with the file's bytes, keeps the
connection open unless the request says ``Connection: close``. Much faster than
``python -m http.server`` (no per-request logging, no directory lookups), slower than nginx.
"""
from __future__ import annotations

import asyncio
import socket
import sys


async def serve(port: int, body: bytes) -> None:
    head_ka = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
               "Content-Type: text/plain\r\n\r\n").encode()
    head_close = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                  "Content-Type: text/plain\r\nConnection: close\r\n\r\n").encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readuntil(b"\r\n\r\n")
                close = b"connection: close" in req.lower()
                writer.write((head_close if close else head_ka) + body)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    server = await asyncio.start_server(handle, sock=sock, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with open(sys.argv[2], "rb") as f:
        data = f.read()
    try:
        asyncio.run(serve(int(sys.argv[1]), data))
    except KeyboardInterrupt:
        pass
