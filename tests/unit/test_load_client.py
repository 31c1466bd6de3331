"""The load generator's client (tests/load/client.py ``Blaster``): every request due is
answered or recorded as failed, by status, against a real server on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shared.infra.admission import overloaded_response
from tests.load.client import Blaster

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 33\r\n\r\n" + (
    b'{"code":"dependency_unavailable"}'
)


class _Server(asyncio.Protocol):
    """Answers ``/ok`` 200, ``/shed`` 503 overloaded, ``/busy`` another 503, in two
    pieces when the path says ``/split``; ``/close`` closes without an answer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        assert isinstance(self.transport, asyncio.Transport)
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            path = head.split(b" ")[1]
            if path == b"/close":
                self.transport.close()
                return
            answer = {b"/ok": OK, b"/shed": overloaded_response(2), b"/busy": BUSY}.get(path, OK)
            if path == b"/split":
                self.transport.write(OK[:20])
                asyncio.get_running_loop().call_later(0.01, self.transport.write, OK[20:])
            else:
                self.transport.write(answer)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(_Server, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


def _get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode()


async def test_open_loop_records_every_request_by_status(port: int) -> None:
    blaster = Blaster("127.0.0.1", port, [_get("/ok"), _get("/shed"), _get("/busy")], 4)
    seconds = await blaster.open_loop(300, 1.0)
    blaster.close()
    counts = {kind: len(values) for kind, values in blaster.latencies.items()}
    assert counts == {200: 100, 503: 100, "503 other": 100}
    assert seconds >= 0.99
    assert all(v >= 0 for values in blaster.latencies.values() for v in values)
    assert {k: len(v) for k, v in blaster.server_latencies.items()} == counts


async def test_answers_in_pieces_and_connections_closed_under_a_request(port: int) -> None:
    blaster = Blaster("127.0.0.1", port, [_get("/split"), _get("/close")], 2)
    await blaster.open_loop(100, 0.5)
    blaster.close()
    counts = {kind: len(values) for kind, values in blaster.latencies.items()}
    assert counts == {200: 25, "ConnectionLost": 25}  # and every close was reopened


async def test_closed_loop_keeps_each_connection_busy_until_the_end(port: int) -> None:
    blaster = Blaster("127.0.0.1", port, [_get("/ok")], 8)
    assert await blaster.connect(3) == 3
    seconds = await blaster.closed_loop(3, 0.3)
    blaster.close()
    assert seconds >= 0.3
    assert set(blaster.latencies) == {200}
    assert len(blaster.latencies[200]) > 3
