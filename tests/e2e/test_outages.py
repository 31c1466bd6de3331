"""Postgres or Redis down, restarting or killed: 503 + Retry-After, never 500 (issue 8, item 4).

Each test runs its own throwaway Postgres/Redis (tests/private_stores.py) and really
stops it; the machine's shared servers are never touched.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from migrations.runner import migrate
from query_api.app import create_app as create_query_app
from shared.settings import Settings
from tests.auth import Tokens, acting_rider
from tests.e2e.conftest import Ids, command_client, new_offer, start
from tests.private_stores import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.usefixtures("reset_faults")


@pytest.fixture
async def own_settings(base_settings: Settings, private_pg: PrivatePostgres) -> Settings:
    settings = base_settings.replace(
        db={"url": private_pg.dsn("scooters"), "command_timeout_seconds": 2.0},
        serving={"retry_after_seconds": 3},
    )
    await migrate(settings)
    return settings


@pytest.fixture
async def command_api(
    own_settings: Settings, stubs: str, tokens: Tokens
) -> AsyncIterator[AsyncTestClient[Any]]:
    async with command_client(own_settings) as client:  # each request as its rider
        yield client


def assert_dependency_unavailable(response: httpx.Response, retry_after: int = 3) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"] == str(retry_after)
    body = response.json()
    assert body["code"] == "dependency_unavailable", body
    assert body["service"] == "postgres", body


async def test_postgres_down_answers_503_on_every_command_and_recovers(
    command_api: AsyncTestClient[Any], private_pg: PrivatePostgres, ids: Ids
) -> None:
    rider, scooter = ids.rider(), ids.scooter()
    ride = await start(command_api, rider, scooter)
    offer = await new_offer(command_api, ids.rider(), ids.scooter())

    private_pg.stop()
    assert_dependency_unavailable(
        await command_api.post("/offers", json={"user_id": ids.rider(), "scooter_id": "scooter-7"})
    )
    assert_dependency_unavailable(
        await command_api.post("/orders", json={"offer_token": offer["token"]})
    )
    assert_dependency_unavailable(
        await command_api.post(
            "/orders", json={"offer_token": offer["token"]}, headers={"Idempotency-Key": "k1"}
        )
    )
    assert_dependency_unavailable(await command_api.post(f"/orders/{ride['id']}/finish", json={}))
    assert (await command_api.get("/health/ready")).status_code == 503

    private_pg.start()
    started = await command_api.post(
        "/orders", json={"offer_token": offer["token"]}, headers={"Idempotency-Key": "k1"}
    )
    assert started.status_code == 201, started.text  # the failed try left no claim behind
    finished = await command_api.post(f"/orders/{ride['id']}/finish", json={})
    assert finished.status_code == 200, finished.text
    assert finished.json()["status"] in ("finished", "cancelled")


async def test_postgres_restarting_while_offers_and_orders_are_called_is_never_a_500(
    command_api: AsyncTestClient[Any], private_pg: PrivatePostgres, ids: Ids
) -> None:
    answers: list[httpx.Response] = []
    stop = asyncio.Event()

    async def rider_loop() -> None:
        while not stop.is_set():
            offer = await command_api.post(
                "/offers", json={"user_id": ids.rider(), "scooter_id": ids.scooter()}
            )
            answers.append(offer)
            if offer.status_code == 201:
                answers.append(
                    await command_api.post("/orders", json={"offer_token": offer.json()["token"]})
                )
            await asyncio.sleep(0.01)

    loops = [asyncio.create_task(rider_loop()) for _ in range(4)]
    try:
        for _ in range(2):
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_pg.stop)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_pg.start)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*loops)

    statuses = {r.status_code for r in answers}
    assert statuses <= {201, 503}, [r.text for r in answers if r.status_code not in (201, 503)]
    assert 503 in statuses
    assert 201 in statuses
    for response in answers:
        if response.status_code == 503:
            assert_dependency_unavailable(response)
    after = await command_api.post(
        "/offers", json={"user_id": ids.rider(), "scooter_id": ids.scooter()}
    )
    assert after.status_code == 201, after.text


async def test_query_api_with_redis_and_postgres_down_answers_503(
    own_settings: Settings,
    command_api: AsyncTestClient[Any],
    private_pg: PrivatePostgres,
    private_redis: PrivateRedis,
    ids: Ids,
    tokens: Tokens,
) -> None:
    rider = ids.rider()
    ride = await start(command_api, rider, ids.scooter())
    settings = own_settings.replace(redis={"url": private_redis.url})
    paths = (f"/orders/{ride['id']}", f"/users/{rider}/orders", f"/users/{rider}/summary")
    async with AsyncTestClient(create_query_app(settings)) as query_api:
        acting_rider(query_api, tokens)  # the order read by support, the user's pages by it
        for path in paths:
            assert (await query_api.get(path)).status_code == 200, path

        private_redis.stop()  # Redis down alone: answered from Postgres
        for path in paths:
            assert (await query_api.get(path)).status_code == 200, path

        private_pg.stop()  # both down: nothing can answer
        for path in paths:
            assert_dependency_unavailable(await query_api.get(path))
        assert (await query_api.get("/health/ready")).status_code == 503

        private_pg.start()
        await asyncio.sleep(settings.redis.retry_seconds)
        for path in paths:
            response = await query_api.get(path)
            assert response.status_code == 200, (path, response.text)


class HangingProxy:
    """A TCP proxy to Postgres, on an event loop of its own thread (the app under test
    starts in another thread's loop), that can *hang*: from then on it accepts
    connections and relays nothing, on new and open connections alike (a hung or
    partitioned Postgres, as its clients see it)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._hung = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> int:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def hang(self) -> None:
        self._hung = True

    def resume(self) -> None:
        """New connections are relayed again (the hung ones stay dead)."""
        self._hung = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._hung:
            return  # accepted, never answered
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.append(up_writer)

        async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if self._hung:
                    return  # swallowed: the peer never hears back
                dst.write(data)
                await dst.drain()

        for pair in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(relay(*pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        async def shut() -> None:
            for writer in self._writers:
                writer.close()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def test_a_postgres_that_stops_answering_is_down_within_the_timeouts(
    own_settings: Settings, private_pg: PrivatePostgres, stubs: str, ids: Ids
) -> None:
    """break8: a Postgres that accepts and never answers held each request that needed a
    new connection for asyncpg's default connect timeout (60 s) before its 503. Now a
    statement gives up after ``db.command_timeout_seconds`` and a connect after
    ``db.connect_timeout_seconds``, each answered 503 + Retry-After, and the API serves
    again once Postgres answers."""
    proxy = HangingProxy(private_pg.port)
    proxied = f"127.0.0.1:{proxy.start()}/"
    url = private_pg.dsn("scooters").replace(f"127.0.0.1:{private_pg.port}/", proxied)
    settings = own_settings.replace(
        db={"url": url, "command_timeout_seconds": 1.0, "connect_timeout_seconds": 1.0}
    )
    loop = asyncio.get_running_loop()
    try:
        async with command_client(settings) as api:
            assert (await new_offer(api, ids.rider(), ids.scooter()))["token"]
            proxy.hang()
            took = []
            for _ in range(4):  # statements on open connections, then new connections
                began = loop.time()
                offer = await api.post(
                    "/offers", json={"user_id": ids.rider(), "scooter_id": ids.scooter()}
                )
                took.append(loop.time() - began)
                assert_dependency_unavailable(offer)
            assert (await api.get("/health/ready")).status_code == 503
            # a bound on behaviour (1 s timeouts against asyncpg's 60 s), not on speed
            assert max(took) < 30, took

            proxy.resume()
            answers = []
            for _ in range(10):  # the pool replaces its dead connections
                answers.append(
                    await api.post(
                        "/offers", json={"user_id": ids.rider(), "scooter_id": ids.scooter()}
                    )
                )
                if answers[-1].status_code == 201:
                    break
            assert answers[-1].status_code == 201, [a.text for a in answers]
            for answer in answers[:-1]:
                assert_dependency_unavailable(answer)
    finally:
        proxy.close()
