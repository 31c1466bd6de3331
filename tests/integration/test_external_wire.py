"""command_api.external's calls straight through the transport (ADR 0018, ADR 0022) put
the same bytes on the wire as the same calls through httpx's ``AsyncClient``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from command_api.external import (
    ExternalServices,
    ServiceError,
    ServicesClient,
    make_http_client,
)
from shared.errors import DependencyUnavailable
from shared.infra.http_transport import Http1Transport
from shared.settings import Settings
from tests.integration.test_http_transport import read_request


@contextlib.asynccontextmanager
async def recorder() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that answers every request 503 and records each request's bytes."""
    seen: list[bytes] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await read_request(reader)
                seen.append(head + body)
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", seen
    finally:
        srv.close()


async def calls(services: ExternalServices) -> None:
    """A GET with a query (scooter), one without (configs) and a payments POST."""
    with contextlib.suppress(DependencyUnavailable):
        await services.scooter("scooter-1:ä")
    await services.configs()
    await services.user("user-1")
    with pytest.raises(ServiceError, match="503"):
        await services.hold("user-1", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", 300)


async def test_requests_through_the_transport_are_the_clients_bytes() -> None:
    async with recorder() as (base, seen):
        settings = Settings().replace(external={"base_url": base})
        direct = make_http_client(settings)
        assert isinstance(direct, ServicesClient)
        plain = httpx.AsyncClient(base_url=base, timeout=direct.timeout, transport=Http1Transport())
        async with direct, plain:
            await calls(ExternalServices(direct, settings))
            through_transport = list(seen)
            seen.clear()
            await calls(ExternalServices(plain, settings))
    assert len(through_transport) == 8  # each call tried twice (503)
    assert through_transport == seen
    assert through_transport[0].startswith(b"GET /scooter-data?id=scooter-1%3A%C3%A4 HTTP/1.1")
    assert through_transport[-1].startswith(b"POST /hold-money-for-order HTTP/1.1\r\nHost: ")
