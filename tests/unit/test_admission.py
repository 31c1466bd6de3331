"""The protocol's shedding path (issue 8, item 6): at the limit of requests in flight the
HTTP protocol answers ``503 overloaded`` itself, without calling the app, and the count
of requests in flight stays right through answers, disconnects, failures and pipelining.

A real uvicorn server on a free port, over real connections, in front of a small ASGI
app whose ``/slow`` requests are held until the test releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import pickle
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import uvicorn
from prometheus_client import REGISTRY

from shared.infra.admission import Admission, GuardedHttpToolsProtocol, overloaded_response
from tests.ports import free_port

RETRY_AFTER = 7


@dataclass
class App:
    """``/slow`` waits for ``release`` (or the client leaving); ``/fail`` raises; the
    rest answer 200 at once. ``calls`` lists every path the app was called with."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)
    disconnected: int = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls.append(scope["path"])
        if scope["path"] == "/fail":
            raise RuntimeError("the handler failed")
        if scope["path"] == "/slow":
            released = asyncio.ensure_future(self.release.wait())
            gone = asyncio.ensure_future(self._until_disconnect(receive))
            await asyncio.wait({released, gone}, return_when=asyncio.FIRST_COMPLETED)
            released.cancel()
            gone.cancel()
            if gone.done() and not gone.cancelled():
                self.disconnected += 1
                return
        body = b"ok " + scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _until_disconnect(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


@dataclass
class Served:
    app: App
    admission: Admission
    port: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A client connection, closed when the server stops if the test left it open."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(writer)
        return reader, writer

    async def close_clients(self) -> None:
        for writer in self.writers:
            writer.close()
        for writer in self.writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def until_in_flight(self, n: int) -> None:
        for _ in range(200):
            if self.admission.in_flight == n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"in flight: {self.admission.in_flight}, expected {n}")

    async def until_calls(self, n: int) -> None:
        for _ in range(200):
            if len(self.app.calls) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"app calls: {self.app.calls}, expected {n}")


async def _serve(
    limit: int, name: str, lag_target_seconds: float = 0.0, timeout_keep_alive: int = 5
) -> AsyncIterator[Served]:
    app = App()
    admission = Admission(name, limit, RETRY_AFTER, lag_target_seconds)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=functools.partial(GuardedHttpToolsProtocol, admission=admission),  # type: ignore[arg-type]
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,  # as shared.infra.serving.serve
        date_header=False,
        timeout_keep_alive=timeout_keep_alive,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    served = Served(app, admission, port)
    try:
        yield served
    finally:
        await served.close_clients()
        app.release.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """The app behind a limit of 2 requests in flight."""
    async for served in _serve(2, f"unit_{request.node.name}"[:60]):
        yield served


def _request(
    method: str, path: str, body: bytes = b"", extra: bytes = b"", version: bytes = b"1.1"
) -> bytes:
    head = b"%s %s HTTP/%s\r\nHost: t\r\n%s" % (method.encode(), path.encode(), version, extra)
    if body or method == "POST":
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


async def _answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> bytes:
    """One whole answer (a Content-Length one) from ``reader``; the protocol's own answers
    (503, 400) must carry an ``x-request-id``, taken out here (each has its own value;
    see test_every_answer_of_the_protocol_has_a_request_id)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    if head.startswith((b"HTTP/1.1 503", b"HTTP/1.1 400")):
        head, request_id = _without_request_id(head)
        assert request_id
    if head_only:
        return head
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


def _without_request_id(head: bytes) -> tuple[bytes, bytes | None]:
    """``head`` without its ``x-request-id`` line, and that line's value (None: none)."""
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        name, _, value = line.partition(b": ")
        if name == b"x-request-id":
            del lines[i]
            return b"\r\n".join(lines), value
    return head, None


async def _hold(served: Served, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``n`` connections, each with a ``/slow`` request in flight."""
    held = []
    for _ in range(n):
        reader, writer = await served.connect()
        writer.write(_request("GET", "/slow"))
        held.append((reader, writer))
    await served.until_calls(n)
    return held


async def test_at_the_limit_the_protocol_answers_503_itself_and_the_count_recovers(
    served: Served,
) -> None:
    held = await _hold(served, 2)
    assert served.admission.in_flight == 2

    reader, writer = await served.connect()
    writer.write(_request("POST", "/offers", b'{"scooter_id": "s-1"}'))
    shed = await _answer(reader)
    # the canned answer, byte for byte: the app was not called for it
    assert shed == overloaded_response(RETRY_AFTER)
    assert served.app.calls == ["/slow", "/slow"]
    assert REGISTRY.get_sample_value(
        "http_requests_in_flight", {"app": served.admission.app_name}
    ) == pytest.approx(2)
    # the connection stays open and usable; health checks are never shed
    writer.write(_request("GET", "/health/live"))
    assert (await _answer(reader)).endswith(b"ok /health/live")
    assert served.admission.in_flight == 2

    served.app.release.set()
    for held_reader, _ in held:
        assert (await _answer(held_reader)).endswith(b"ok /slow")
    await served.until_in_flight(0)
    served.app.release.clear()
    writer.write(_request("GET", "/slow"))  # admitted again on the same connection
    await served.until_calls(4)
    assert served.admission.in_flight == 1
    served.app.release.set()
    assert (await _answer(reader)).endswith(b"ok /slow")
    await served.until_in_flight(0)
    assert REGISTRY.get_sample_value(
        "http_requests_shed_total", {"app": served.admission.app_name}
    ) == pytest.approx(1)


async def test_shed_answer_waits_for_the_whole_body_then_keeps_the_connection(
    served: Served,
) -> None:
    await _hold(served, 2)
    reader, writer = await served.connect()
    writer.write(_request("POST", "/offers", b"0123456789")[:-5])  # 5 of 10 body bytes
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
    writer.write(b"56789")
    assert await _answer(reader) == overloaded_response(RETRY_AFTER)
    # the body was consumed, not taken for the next request
    writer.write(_request("GET", "/health/live"))
    assert (await _answer(reader)).endswith(b"ok /health/live")


@pytest.mark.parametrize(
    ("extra", "version"),
    [(b"Connection: close\r\n", b"1.1"), (b"", b"1.0")],
    ids=["connection-close", "http-1.0"],
)
async def test_shed_answer_closes_when_the_client_does_not_keep_alive(
    served: Served, extra: bytes, version: bytes
) -> None:
    await _hold(served, 2)
    reader, writer = await served.connect()
    writer.write(_request("GET", "/orders/o-1", extra=extra, version=version))
    assert await _answer(reader) == overloaded_response(RETRY_AFTER, close=True)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server


async def test_shed_answer_comes_before_the_body_of_an_expect_100_request(
    served: Served,
) -> None:
    await _hold(served, 2)
    reader, writer = await served.connect()
    writer.write(
        b"POST /offers HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await _answer(reader) == overloaded_response(RETRY_AFTER, close=True)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert served.app.calls == ["/slow", "/slow"]


async def test_shed_head_request_gets_the_head_only(served: Served) -> None:
    await _hold(served, 2)
    reader, writer = await served.connect()
    writer.write(_request("HEAD", "/orders/o-1"))
    head = await _answer(reader, head_only=True)
    assert head == overloaded_response(RETRY_AFTER).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    writer.write(_request("GET", "/health/live"))  # no body bytes were left in between
    assert (await _answer(reader)).endswith(b"ok /health/live")


async def test_a_client_gone_or_a_failed_handler_releases_its_place(served: Served) -> None:
    (_, first), (_, second) = await _hold(served, 2)
    first.close()  # the app sees the disconnect and returns
    second.close()
    await served.until_in_flight(0)
    assert served.app.disconnected == 2

    reader, writer = await served.connect()
    writer.write(_request("GET", "/fail"))
    assert (await _answer(reader)).startswith(b"HTTP/1.1 500")  # uvicorn's answer
    await served.until_in_flight(0)


async def test_a_pipelined_request_at_the_limit_is_answered_503_in_order(
    request: pytest.FixtureRequest,
) -> None:
    async for served in _serve(1, f"unit_{request.node.name}"[:60]):
        reader, writer = await served.connect()
        writer.write(_request("GET", "/slow") + _request("GET", "/orders/o-1"))
        await served.until_calls(1)
        assert served.admission.in_flight == 2  # the second is queued behind the first
        served.app.release.set()
        assert (await _answer(reader)).endswith(b"ok /slow")
        assert await _answer(reader) == overloaded_response(RETRY_AFTER)
        await served.until_in_flight(0)
        assert served.app.calls == ["/slow"]


async def test_a_pipelined_request_never_started_is_released_with_its_connection(
    served: Served,
) -> None:
    _, writer = await served.connect()
    writer.write(_request("GET", "/slow") + _request("GET", "/slow"))  # limit 2: both admitted
    await served.until_calls(1)
    assert served.admission.in_flight == 2
    writer.close()
    # the queued one is released at once; the first still runs (uvicorn tells only the
    # connection's latest request of the disconnect) and is released when it returns
    await served.until_in_flight(1)
    served.app.release.set()
    await served.until_in_flight(0)
    assert served.app.calls == ["/slow"]


async def test_no_limit_counts_and_sheds_nothing(request: pytest.FixtureRequest) -> None:
    async for served in _serve(0, f"unit_{request.node.name}"[:60]):
        await _hold(served, 5)
        assert served.admission.in_flight == 0


def test_each_worker_process_gets_its_own_empty_count() -> None:
    admission = Admission("unit_pickle", 16, RETRY_AFTER, 0.004)
    admission.in_flight = 5
    admission.allowed = 3
    copy = pickle.loads(pickle.dumps(admission))  # what a uvicorn worker receives
    assert (copy.app_name, copy.limit, copy.retry_after_seconds) == ("unit_pickle", 16, 7)
    assert copy.lag_target_seconds == 0.004
    assert (copy.in_flight, copy.allowed) == (0, 16)


def test_the_overloaded_answer_is_a_problem_with_retry_after() -> None:
    answer = overloaded_response(3)
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers == {
        b"content-type": b"application/problem+json",
        b"content-length": b"%d" % len(body),
        b"retry-after": b"3",
    }
    assert msgspec.json.decode(body) == {
        "type": "https://superscooters.dev/problems/overloaded",
        "title": "Overloaded",
        "status": 503,
        "detail": "too many requests in progress; retry in 3 s",
        "code": "overloaded",
    }
    assert overloaded_response(3, close=True) == answer.replace(
        b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1
    )


# --- shedding a whole read at once (no parser) -------------------------------------------


def _shed_count(served: Served) -> float:
    value = REGISTRY.get_sample_value(
        "http_requests_shed_total", {"app": served.admission.app_name}
    )
    return value or 0.0


async def test_a_read_of_whole_requests_is_answered_503_each_in_order_without_the_app(
    served: Served,
) -> None:
    held = await _hold(served, 2)  # kept: a connection collected would end its request
    reader, writer = await served.connect()
    writer.write(_request("GET", "/orders/o-1"))
    assert await _answer(reader) == overloaded_response(RETRY_AFTER)
    # three pipelined requests in one write: three answers, in order, HEAD without a body
    writer.write(
        _request("GET", "/orders/o-2")
        + _request("HEAD", "/orders/o-3")
        + _request("GET", "/users/u-1/orders?limit=5", extra=b"Accept: */*\r\n")
    )
    assert await _answer(reader) == overloaded_response(RETRY_AFTER)
    assert (
        await _answer(reader, head_only=True)
        == overloaded_response(RETRY_AFTER).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    )
    assert await _answer(reader) == overloaded_response(RETRY_AFTER)
    assert served.app.calls == ["/slow", "/slow"]
    assert _shed_count(served) == 4
    assert served.admission.in_flight == 2
    # the connection is still in step: a health check is served on it
    writer.write(_request("GET", "/health/live"))
    assert (await _answer(reader)).endswith(b"ok /health/live")
    assert len(held) == 2


async def test_a_health_check_in_a_read_with_requests_to_shed_is_still_served(
    served: Served,
) -> None:
    held = await _hold(served, 2)  # kept: a connection collected would end its request
    reader, writer = await served.connect()
    writer.write(_request("GET", "/orders/o-1") + _request("GET", "/health/ready"))
    assert await _answer(reader) == overloaded_response(RETRY_AFTER)
    assert (await _answer(reader)).endswith(b"ok /health/ready")
    assert served.app.calls == ["/slow", "/slow", "/health/ready"]
    assert len(held) == 2


async def test_a_request_in_pieces_at_the_limit_is_shed_once_it_is_whole(
    served: Served,
) -> None:
    held = await _hold(served, 2)  # kept: a connection collected would end its request
    reader, writer = await served.connect()
    whole = _request("GET", "/orders/o-1", extra=b"X-Long: " + b"x" * 200 + b"\r\n")
    writer.write(whole[:40])
    await asyncio.sleep(0.05)  # the server reads the first piece on its own
    writer.write(whole[40:])
    assert await _answer(reader) == overloaded_response(RETRY_AFTER)
    writer.write(_request("GET", "/health/live"))
    assert (await _answer(reader)).endswith(b"ok /health/live")
    assert len(held) == 2


# --- idle and slow connections: one sweep, no timer per request ---------------------------


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    """The server closed the connection (or reset it) within ``within`` seconds."""
    try:
        while await asyncio.wait_for(reader.read(4096), within):
            pass
    except ConnectionError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> float:
    """A read timeout of 1.5 s for the servers of this test (keep-alive: 1 s)."""
    refusal = overloaded_response(RETRY_AFTER, close=True)
    monkeypatch.setattr(GuardedHttpToolsProtocol, "_limits", (1.5, 4096, refusal))
    return 1.5


async def test_idle_and_slow_connections_are_closed_and_busy_ones_are_not(
    request: pytest.FixtureRequest, short_timeouts: float
) -> None:
    closed = "http_connections_closed_total"
    idle_before = REGISTRY.get_sample_value(closed, {"reason": "idle"}) or 0.0
    slow_before = REGISTRY.get_sample_value(closed, {"reason": "read_timeout"}) or 0.0
    async for served in _serve(0, f"unit_{request.node.name}"[:60], timeout_keep_alive=1):
        idle_reader, idle_writer = await served.connect()
        idle_writer.write(_request("GET", "/orders/o-1"))
        assert (await _answer(idle_reader)).endswith(b"ok /orders/o-1")

        slow_reader, slow_writer = await served.connect()
        slow_writer.write(b"GET /orders/o-2 HTTP/1.1\r\nHost: t\r\n")

        busy_reader, busy_writer = await served.connect()
        for i in range(40):  # a request every 50 ms for 2 s: longer than either timeout
            busy_writer.write(_request("GET", f"/orders/b-{i}"))
            assert (await _answer(busy_reader)).endswith(b"ok /orders/b-%d" % i)
            if i % 4 == 0:
                slow_writer.write(b"X-Drip-%d: 1\r\n" % i)  # bytes keep coming, never whole
            await asyncio.sleep(0.05)

        assert await _closed(idle_reader, 10)
        assert await _closed(slow_reader, 10)
        busy_writer.write(_request("GET", "/orders/b-last"))
        assert (await _answer(busy_reader)).endswith(b"ok /orders/b-last")
    assert (REGISTRY.get_sample_value(closed, {"reason": "idle"}) or 0.0) >= idle_before + 1
    assert (REGISTRY.get_sample_value(closed, {"reason": "read_timeout"}) or 0.0) == slow_before + 1


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusal = overloaded_response(RETRY_AFTER, close=True)
    monkeypatch.setattr(GuardedHttpToolsProtocol, "_limits", (60.0, 4096, refusal))
    async for served in _serve(0, f"unit_{request.node.name}"[:60], timeout_keep_alive=1):
        answered_reader, answered_writer = await served.connect()
        answered_writer.write(_request("GET", "/orders/o-1"))
        assert (await _answer(answered_reader)).endswith(b"ok /orders/o-1")
        silent_reader, _ = await served.connect()  # never sends a byte
        # both long before the 60 s read timeout
        assert await _closed(answered_reader, 10)
        assert await _closed(silent_reader, 10)


# --- the adaptive limit ------------------------------------------------------------------


def test_a_standing_queue_halves_the_admitted_limit_and_a_short_turn_grows_it_back() -> None:
    admission = Admission("unit_adapt", 128, RETRY_AFTER, 0.005)
    assert admission.allowed == 128
    steps = []
    for _ in range(9):
        admission.adapt(0.006)  # even the shortest turn of the window was too long
        steps.append(admission.allowed)
    assert steps == [64, 32, 16, 8, 4, 2, 1, 1, 1]
    steps = []
    while admission.allowed < 128:
        admission.adapt(0.001)
        steps.append(admission.allowed)
    # +2 while small, then a quarter more each window, never past the limit
    assert steps == [3, 5, 7, 9, 11, 13, 16, 20, 25, 31, 38, 47, 58, 72, 90, 112, 128]
    admission.adapt(0.005)  # at the target: not over it
    assert admission.allowed == 128


async def test_turns_longer_than_the_target_shed_below_the_limit(
    request: pytest.FixtureRequest,
) -> None:
    # a target no turn can meet: the loop "lags" on every window while requests arrive
    async for served in _serve(8, f"unit_{request.node.name}"[:60], lag_target_seconds=1e-9):
        held = await _hold(served, 1)
        reader, writer = await served.connect()
        statuses = []
        for _ in range(200):
            writer.write(_request("GET", "/health/live"))  # never shed, but timed
            await _answer(reader)
            if served.admission.allowed == 1:
                break
            await asyncio.sleep(0.005)
        assert served.admission.allowed == 1
        writer.write(_request("GET", "/orders/o-1"))
        statuses.append((await _answer(reader))[:12])
        assert statuses == [b"HTTP/1.1 503"]  # 1 in flight, limit 8: shed all the same
        assert served.admission.in_flight == 1
        assert len(held) == 1


async def test_turns_within_the_target_keep_the_limit(request: pytest.FixtureRequest) -> None:
    async for served in _serve(4, f"unit_{request.node.name}"[:60], lag_target_seconds=3600):
        reader, writer = await served.connect()
        for i in range(100):
            writer.write(_request("GET", f"/orders/o-{i}"))
            assert (await _answer(reader)).endswith(b"ok /orders/o-%d" % i)
        assert served.admission.allowed == 4


# --- every answer of the protocol has a request id; bytes that are no HTTP get 400 ----------

_OUR_ID = re.compile(rb"[0-9a-f]{16}")


async def _id_of(reader: asyncio.StreamReader, *, head_only: bool = False) -> tuple[bytes, bytes]:
    """The status line and the ``x-request-id`` of the next answer (its body read too)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    _, request_id = _without_request_id(head)
    assert request_id is not None, head
    length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    if not head_only:
        await asyncio.wait_for(reader.readexactly(length), 5)
    return head.split(b"\r\n", 1)[0], request_id


async def test_every_answer_of_the_protocol_has_a_request_id(
    request: pytest.FixtureRequest,
) -> None:
    """The caller's ``X-Request-ID`` when safe, else a new one, on every path that sheds
    (parser-free, parser, 100-continue and close, pipelined through ASGI) and on a 400."""
    async for served in _serve(1, f"unit_{request.node.name}"[:60]):
        held = await _hold(served, 1)
        reader, writer = await served.connect()
        # parser-free: one read of three requests, ids given, unsafe and absent
        writer.write(
            _request("GET", "/orders/o-1", extra=b"X-Request-ID: caller-1.a:b_c\r\n")
            + _request("HEAD", "/orders/o-2", extra=b"x-request-id:  caller-2\t\r\n")
            + _request("GET", "/orders/o-3", extra=b"X-Request-ID: bad id\r\n")
            + _request("GET", "/orders/o-4")
        )
        assert await _id_of(reader) == (b"HTTP/1.1 503 Service Unavailable", b"caller-1.a:b_c")
        assert await _id_of(reader, head_only=True) == (
            b"HTTP/1.1 503 Service Unavailable",
            b"caller-2",
        )
        _, third = await _id_of(reader)
        _, fourth = await _id_of(reader)
        assert _OUR_ID.fullmatch(third)
        assert _OUR_ID.fullmatch(fourth)
        assert third != fourth
        # through the parser (a body), echoed and ours
        writer.write(_request("POST", "/offers", b"{}", extra=b"X-Request-ID: caller-5\r\n"))
        assert (await _id_of(reader))[1] == b"caller-5"
        writer.write(_request("POST", "/offers", b"{}"))
        assert _OUR_ID.fullmatch((await _id_of(reader))[1])
        # closing (HTTP/1.0) and 100-continue
        other, other_writer = await served.connect()
        other_writer.write(_request("GET", "/o", extra=b"X-Request-ID: c-6\r\n", version=b"1.0"))
        assert (await _id_of(other))[1] == b"c-6"
        other, other_writer = await served.connect()
        other_writer.write(
            b"POST /offers HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n"
            b"Expect: 100-continue\r\nX-Request-ID: c-7\r\n\r\n"
        )
        assert (await _id_of(other))[1] == b"c-7"
        # pipelined behind an answer in progress: shed through ASGI
        served.app.release.set()
        for held_reader, _ in held:
            await _answer(held_reader)
        await served.until_in_flight(0)
        served.app.release.clear()
        writer.write(
            _request("GET", "/slow") + _request("GET", "/o", extra=b"X-Request-ID: c-8\r\n")
        )
        await served.until_calls(2)
        served.app.release.set()
        assert (await _answer(reader)).endswith(b"ok /slow")
        assert (await _id_of(reader))[1] == b"c-8"
        # bytes that are no HTTP request
        bad, bad_writer = await served.connect()
        bad_writer.write(b"GET /o HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        status, request_id = await _id_of(bad)
        assert status == b"HTTP/1.1 400 Bad Request"
        assert _OUR_ID.fullmatch(request_id)


@pytest.mark.parametrize(
    "data",
    [
        b"FOO /orders/o-1 HTTP/1.1\r\nHost: t\r\n\r\n",  # no such method
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\r\nBad Name: 1\r\n\r\n",
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n",
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",  # NUL in a value
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n",
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n",  # a bare LF
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n",  # a bare CR
        b"GET /orders/o-\x001 HTTP/1.1\r\nHost: t\r\n\r\n",  # NUL in the target
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\r\n\r\nFOO / HTTP/1.1\r\n\r\n",  # the 2nd
    ],
    ids=[
        "method",
        "no-colon",
        "space-in-name",
        "folded",
        "nul-value",
        "del-value",
        "bare-lf",
        "bare-cr",
        "nul-target",
        "pipelined",
    ],
)
async def test_bytes_that_are_no_http_request_get_400_at_the_limit_too(
    served: Served, data: bytes
) -> None:
    """At the limit as below it: a 503 would tell the client to send them again."""
    held = await _hold(served, 2)
    reader, writer = await served.connect()
    writer.write(data)
    answers = await asyncio.wait_for(reader.read(), 5)  # closed after the 400
    body = answers[answers.rindex(b"\r\n\r\n") + 4 :]
    statuses = re.findall(rb"HTTP/1.1 (\d+) ", answers)
    # the 1st of two pipelined requests is fine: shed, then the 400 for the 2nd
    assert statuses == ([b"503", b"400"] if data.count(b"HTTP/1.1") == 2 else [b"400"])
    assert b"content-type: application/problem+json" in answers
    assert msgspec.json.decode(body)["code"] == "invalid_request"
    assert served.app.calls == ["/slow", "/slow"]
    assert len(held) == 2


@pytest.mark.parametrize(
    "data",
    [
        b"GET /orders/o-1 HTTP/1.1\r\nHost: t\r\nX-A: caf\xc3\xa9\r\n\r\n",  # obs-text
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /orders/o-1 HTTP/1.1\r\nX-A:\tb \t\r\nX-B:\r\n\r\n",
    ],
    ids=["utf8-value", "asterisk", "tabs-and-empty"],
)
async def test_odd_but_valid_requests_at_the_limit_are_still_shed(
    served: Served, data: bytes
) -> None:
    """What the parser-free path does not take goes through the parser: still a 503."""
    held = await _hold(served, 2)
    reader, writer = await served.connect()
    writer.write(data)
    assert await _answer(reader) == overloaded_response(RETRY_AFTER)
    assert len(held) == 2
