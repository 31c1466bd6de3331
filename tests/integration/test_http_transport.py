"""shared.infra.http_transport under httpx, against small servers on real sockets that
answer well, slowly, wrongly or not at all: the httpx errors callers map (timeouts,
refused, closed) and the keep-alive pool."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from shared.infra.http_transport import Http1Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server on a free port running ``handler`` per connection; yields its base URL
    and a list that counts the connections it accepted."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        srv.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(request head, body) of one request with a Content-Length body or none."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with its request line and body."""
    while True:
        head, body = await read_request(reader)
        writer.write(answer(head.split(b"\r\n", 1)[0] + b"|" + body))
        await writer.drain()


def client(
    base: str, max_connections: int | None = 10, keepalive_expiry: float | None = 5.0
) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, keepalive_expiry=keepalive_expiry)
    return httpx.AsyncClient(
        base_url=base, timeout=httpx.Timeout(1.0), transport=Http1Transport(limits)
    )


async def test_requests_and_bodies_go_over_one_kept_connection() -> None:
    async with server(echo) as (base, accepted), client(base) as http:
        first = await http.get("/scooter-data", params={"id": "scooter 1/ä"})
        second = await http.post("/hold", content=b'{"amount":5}')
        third = await http.post("/empty")
    assert first.status_code == 200
    assert first.content == b"GET /scooter-data?id=scooter+1%2F%C3%A4 HTTP/1.1|"
    assert second.content == b'POST /hold HTTP/1.1|{"amount":5}'
    assert third.content == b"POST /empty HTTP/1.1|"
    assert len(accepted) == 1  # kept alive


async def test_concurrent_requests_each_get_their_own_answer() -> None:
    async with server(echo) as (base, accepted), client(base, max_connections=4) as http:
        answers = await asyncio.gather(*(http.post("/n", content=b"%d" % n) for n in range(40)))
    assert [a.content for a in answers] == [b"POST /n HTTP/1.1|%d" % n for n in range(40)]
    assert len(accepted) <= 4


async def test_chunked_and_close_delimited_bodies_are_read_whole() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        await read_request(reader)  # still the same connection
        writer.write(b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with server(chunked) as (base, accepted), client(base) as http:
        first = await http.get("/a")
        second = await http.get("/b")
        third = await http.get("/c")  # the server closed: a new connection
    assert first.content == b"hello world"
    assert (second.status_code, second.content) == (201, b"until the end")
    assert third.status_code == 200
    assert len(accepted) == 2


async def test_a_followed_redirect_is_sent_like_any_request() -> None:
    async def redirect_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /there\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await echo(reader, writer)

    async with server(redirect_once) as (base, accepted), client(base) as http:
        moved = await http.get("/here", follow_redirects=True)
    assert moved.content == b"GET /there HTTP/1.1|"
    assert len(accepted) == 1


async def test_an_answer_longer_than_the_bound_is_refused_and_its_connection_closed() -> None:
    """A service that answers without end (a huge or endless body) costs at most
    ``max_answer_bytes`` of memory per call; an answer within the bound is read whole."""

    async def long_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(reader)
            writer.write(answer(b"x" * int(body)))
            await writer.drain()

    limits = httpx.Limits(max_connections=10, keepalive_expiry=5.0)
    async with (
        server(long_answers) as (base, accepted),
        httpx.AsyncClient(
            base_url=base,
            timeout=httpx.Timeout(5.0),
            transport=Http1Transport(limits, max_answer_bytes=100_000),
        ) as http,
    ):
        fits = await http.post("/", content=b"99000")
        with pytest.raises(httpx.RemoteProtocolError, match="longer than 100000 bytes"):
            await http.post("/", content=b"5000000")
        after = await http.post("/", content=b"10")
    assert len(fits.content) == 99_000
    assert after.content == b"x" * 10
    assert len(accepted) == 2  # the connection of the refused answer was not reused


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        async with client(f"http://127.0.0.1:{port}") as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/x")


def slow_first_connection(seconds: float) -> Handler:
    """The first connection answers its first request ``late`` after ``seconds``, then
    echoes; the others echo."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        if len(connections) == 1:
            await read_request(reader)
            await asyncio.sleep(seconds)
            writer.write(answer(b"late"))  # after the timeout: must be nobody's answer
            await writer.drain()
        await echo(reader, writer)

    return handle


async def test_a_slow_answer_is_a_read_timeout_and_its_connection_is_not_reused() -> None:
    async with server(slow_first_connection(0.5)) as (base, accepted), client(base) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/slow", timeout=0.1)
        later = await http.get("/next")
    assert later.content == b"GET /next HTTP/1.1|"
    assert len(accepted) == 2


async def test_a_server_that_closes_without_answering_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with server(hang_up) as (base, _), client(base) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/hold", content=b"{}")


async def test_a_connection_broken_mid_answer_is_a_read_error() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with server(half) as (base, _), client(base) as http:
        with pytest.raises(httpx.ReadError):
            await http.get("/x")


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with server(garbage) as (base, _), client(base) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/x")


async def test_no_free_connection_within_the_pool_timeout_is_a_pool_timeout() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()
        writer.write(answer(b"done"))
        await writer.drain()

    async with server(held) as (base, _), client(base, max_connections=1) as http:
        busy = asyncio.ensure_future(http.get("/busy", timeout=5.0))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await http.get("/waits", timeout=httpx.Timeout(5.0, pool=0.1))
        release.set()
        assert (await busy).content == b"done"


async def test_a_cancelled_request_frees_its_slot_and_closes_its_connection() -> None:
    slow = slow_first_connection(0.3)
    async with server(slow) as (base, accepted), client(base, max_connections=1) as http:
        task = asyncio.ensure_future(http.get("/slow"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        later = await http.get("/next", timeout=httpx.Timeout(1.0, pool=0.2))
    assert later.content == b"GET /next HTTP/1.1|"
    assert len(accepted) == 2


async def test_idle_connections_past_their_expiry_are_not_reused() -> None:
    async with server(echo) as (base, accepted), client(base, keepalive_expiry=0.05) as http:
        await http.get("/a")
        await asyncio.sleep(0.1)
        await http.get("/b")
    assert len(accepted) == 2


async def test_https_is_refused() -> None:
    async with client("https://127.0.0.1:1") as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("/x")


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head, _ = await read_request(reader)
        writer.write(answer(head.split(b" ")[1]))  # no "Connection: close", as a keep-alive
        await writer.drain()  # timeout of the server ends it

    async with server(one_per_connection) as (base, accepted), client(base) as http:
        first = await http.get("/a")
        await asyncio.sleep(0.05)  # the close reaches the client
        second = await http.post("/b", content=b"{}")
    assert (first.content, second.content) == (b"/a", b"/b")
    assert len(accepted) == 2
