"""The check kinds (tcp, http, udp, dns, exec) against real local servers, and the
[vip.health] rules that tie a check to its VIP's protocol."""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import sys

import pytest

from xdplb.config import ConfigError, HealthCheck, parse_config
from xdplb.health import (
    HealthMonitor,
    Target,
    dns_query,
    make_probe,
    probe_dns,
    probe_exec,
    probe_http,
    probe_udp,
)

pytestmark = pytest.mark.unit

LOCAL = ipaddress.ip_address("127.0.0.1")


def health(proto: str, table: str, port: int = 53) -> HealthCheck:
    text = (f"[lb]\ninterface = 'veth6'\n[[vip]]\naddress = '10.0.0.10'\nport = {port}\n"
            f"protocol = '{proto}'\n[[vip.backend]]\naddress = '10.0.0.2'\n[vip.health]\n"
            + table)
    return parse_config(text, "lb.toml").vips[0].health


def health_error(proto: str, table: str, port: int = 53) -> str:
    with pytest.raises(ConfigError) as e:
        health(proto, table, port)
    return str(e.value)


class TestRules:
    def test_defaults_drain_and_follow_the_protocol(self):
        h = health("tcp", "")
        assert (h.kind, h.on_down, h.initial, h.max_drain_time) == ("tcp", "drain", "down", 0)
        assert health("udp", "send = 'ping'\n").kind == "udp"

    @pytest.mark.parametrize("proto, kind, want", [
        ("udp", "tcp", "'tcp' checks a TCP port but the VIP is UDP"),
        ("udp", "http", "'http' checks a TCP port but the VIP is UDP"),
        ("tcp", "udp", "'udp' checks a UDP port but the VIP is TCP"),
        ("tcp", "dns", "'dns' checks a UDP port but the VIP is TCP"),
    ])
    def test_a_check_of_the_other_protocol_needs_its_own_port(self, proto, kind, want):
        extra = "query = 'a.lab'\n" if kind == "dns" else ""
        msg = health_error(proto, f"kind = '{kind}'\n" + extra)
        assert "vip[0].health.kind: " + want in msg
        assert health(proto, f"kind = '{kind}'\nport = 9\n" + extra).port == 9

    def test_exec_suits_both_protocols(self):
        h = health("udp", "kind = 'exec'\ncommand = ['/bin/true', 'x']\n")
        assert h.command == ("/bin/true", "x")

    @pytest.mark.parametrize("table, key, why", [
        ("interval = 1e-300\n", "interval", "out of range 0.1..3600"),
        ("interval = 1e300\n", "interval", "out of range 0.1..3600"),
        ("interval = 0.5\ntimeout = 0.001\n", "timeout", "below 0.01 s"),
        ("on_down = 'kill'\n", "on_down", "not one of 'drain', 'reset'"),
        ("initial = 'maybe'\n", "initial", "not one of 'up', 'down'"),
        ("max_drain_time = -1\n", "max_drain_time", "0..604800"),
        ("kind = 'http'\nport = 80\nexpect_status = []\n", "expect_status", "empty"),
        ("kind = 'http'\nport = 80\nexpect_status = [99]\n", "expect_status", "not an HTTP"),
        ("kind = 'http'\nport = 80\nexpect_status = 200\n", "expect_status", "expected an arr"),
        ("kind = 'http'\nport = 80\nhost = \"a\\nb\"\n", "host", "not a header value"),
        ("send = 'x'\npath = '/'\n", "path", "only for kind = 'http'"),
        ("kind = 'dns'\n", "query", "required"),
        ("kind = 'dns'\nquery = 'a..b'\n", "query", "not a domain name"),
        ("kind = 'dns'\nquery = 'a.lab'\nqtype = 'ANY'\n", "qtype", "not one of"),
        ("kind = 'exec'\n", "command", "required"),
        ("kind = 'exec'\ncommand = []\n", "command", "empty"),
        ("kind = 'exec'\ncommand = ['true']\n", "command", "absolute path"),
        ("kind = 'exec'\ncommand = 'true'\n", "command", "expected an array of strings"),
        ("send = 'x'\ncommand = ['/bin/true']\n", "command", "only for kind = 'exec'"),
        ("send = '" + "x" * 1401 + "'\n", "send", "at most 1400"),
    ])
    def test_bad_keys_are_one_line_each(self, table, key, why):
        msg = health_error("udp", table)
        assert msg.startswith(f"lb.toml: vip[0].health.{key}: ") and why in msg, msg
        assert "\n" not in msg


# --- probes against real servers on 127.0.0.1 ---------------------------------------------


async def udp_server(reply):
    """A UDP server answering each datagram with reply(data) (None: stay silent)."""
    loop = asyncio.get_running_loop()

    class P(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.t = transport

        def datagram_received(self, data, addr):
            out = reply(data)
            if out is not None:
                self.t.sendto(out, addr)

    t, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
    return t, t.get_extra_info("sockname")[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dns_answer(query: bytes, rcode: int = 0, answers: int = 1) -> bytes:
    """A reply to `query`: same id and question, QR set, `answers` A records."""
    ident = query[:2]
    question = query[12:]
    head = ident + struct.pack("!HHHHH", 0x8180 | rcode, 1, answers, 0, 0)
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 2])
    return head + question + rr * answers


class TestUdpAndDns:
    def run(self, coro_fn):
        return asyncio.run(coro_fn())

    def test_udp_any_reply_is_up(self):
        async def go():
            t, port = await udp_server(lambda d: b"pong")
            try:
                return await probe_udp(LOCAL, port, 0.5, b"ping")
            finally:
                t.close()
        assert self.run(go) == (True, "")

    def test_udp_expect_must_be_in_the_reply(self):
        async def go():
            t, port = await udp_server(lambda d: b"status: ok")
            try:
                return (await probe_udp(LOCAL, port, 0.5, b"?", b"ok"),
                        await probe_udp(LOCAL, port, 0.5, b"?", b"fine"))
            finally:
                t.close()
        good, bad = self.run(go)
        assert good == (True, "") and not bad[0] and "without b'fine'" in bad[1]

    def test_udp_silence_and_port_unreachable(self):
        async def go():
            t, port = await udp_server(lambda d: None)
            try:
                silent = await probe_udp(LOCAL, port, 0.2, b"x")
            finally:
                t.close()
            closed = await probe_udp(LOCAL, free_udp_port(), 0.5, b"x")
            return silent, closed
        silent, closed = self.run(go)
        assert silent == (False, "no reply")
        assert closed == (False, "connection refused")

    def test_dns_query_is_well_formed(self):
        q = dns_query("www.lab", "AAAA", 0x1234)
        assert q[:2] == b"\x12\x34" and q[12:] == b"\x03www\x03lab\x00\x00\x1c\x00\x01"

    @pytest.mark.parametrize("rcode, answers, ok, detail", [
        (0, 1, True, ""),
        (3, 0, False, "NXDOMAIN"),
        (2, 0, False, "SERVFAIL"),
        (0, 0, False, "no answer"),
    ])
    def test_dns_answer_decides(self, rcode, answers, ok, detail):
        async def go():
            t, port = await udp_server(lambda q: dns_answer(q, rcode, answers))
            try:
                return await probe_dns(LOCAL, port, 0.5, "a.lab", "A")
            finally:
                t.close()
        got, why = self.run(go)
        assert got == ok and detail in why

    def test_dns_ignores_a_reply_with_another_id(self):
        async def go():
            def reply(q):
                return dns_answer(bytes([q[0] ^ 0xFF, q[1]]) + q[2:])
            t, port = await udp_server(reply)
            try:
                return await probe_dns(LOCAL, port, 0.3, "a.lab", "A")
            finally:
                t.close()
        assert self.run(go) == (False, "no reply")


class TestHttpAndExec:
    @staticmethod
    async def server(status: bytes, body: bytes, seen: list):
        async def handle(reader, writer):
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = await reader.readline()
                if not line:
                    break
                head += line
            seen.append(head)
            writer.write(status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            writer.close()
        s = await asyncio.start_server(handle, "127.0.0.1", 0)
        return s, s.sockets[0].getsockname()[1]

    @pytest.mark.parametrize("status, expect, body, want, ok", [
        (b"HTTP/1.0 404 Not Found", (404,), None, b"", True),
        (b"HTTP/1.0 200 OK", (204,), None, b"", False),
        (b"HTTP/1.0 200 OK", (), "ready", b"<p>ready</p>", True),
        (b"HTTP/1.0 200 OK", (), "ready", b"<p>starting</p>", False),
    ])
    def test_status_list_and_body(self, status, expect, body, want, ok):
        seen: list = []

        async def go():
            s, port = await self.server(status, want, seen)
            async with s:
                return await probe_http(LOCAL, port, "/h", 1.0, expect, "svc.lab", body)
        got, _ = asyncio.run(go())
        assert got == ok
        assert b"Host: svc.lab\r\n" in seen[0] and seen[0].startswith(b"GET /h HTTP/1.0")

    def test_exec_sees_the_backend_and_its_status_decides(self, tmp_path):
        script = tmp_path / "check.py"
        script.write_text("import os, sys\n"
                          "a, p = os.environ['XDPLB_BACKEND_ADDRESS'], "
                          "os.environ['XDPLB_BACKEND_PORT']\n"
                          "sys.exit(0 if (a, p) == ('127.0.0.1', '8000') else "
                          "print(f'wrong {a}:{p}', file=sys.stderr) or 3)\n")
        argv = (sys.executable, str(script))
        ok = asyncio.run(probe_exec(LOCAL, 8000, 5.0, argv))
        bad = asyncio.run(probe_exec(LOCAL, 8001, 5.0, argv))
        assert ok == (True, "")
        assert bad == (False, "exit status 3: wrong 127.0.0.1:8001")

    def test_exec_timeout_kills_it(self):
        got = asyncio.run(probe_exec(LOCAL, 1, 0.2, ("/bin/sleep", "10")))
        assert got == (False, "timed out")

    def test_exec_missing_program(self):
        ok, why = asyncio.run(probe_exec(LOCAL, 1, 1.0, ("/nonexistent/check",)))
        assert not ok and "no such file" in why


def test_make_probe_covers_every_kind():
    for kind in ("tcp", "http", "udp", "dns", "exec"):
        assert make_probe(HealthCheck(kind=kind, command=("/bin/true",))) is not None
    assert make_probe(HealthCheck(kind="none")) is None


def test_new_targets_start_in_their_initial_state_before_any_probe():
    mon: HealthMonitor[str] = HealthMonitor(lambda k, st: None)
    mon.update({"new": Target(LOCAL, 1, HealthCheck(kind="tcp")),
                "trusted": Target(LOCAL, 2, HealthCheck(kind="tcp", initial="up"))})
    assert not mon.is_up("new") and mon.is_up("trusted")
    mon.update({"trusted": Target(LOCAL, 2, HealthCheck(kind="none"))})
    assert mon.is_up("new") and "new" not in mon.states, "a target no longer checked is up"
    assert mon.is_up("trusted") and "trusted" not in mon.states
