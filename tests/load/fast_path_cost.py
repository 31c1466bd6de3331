"""``python -m tests.load.fast_path_cost``: the command API's request cycle per ride flow,
through Litestar and through the fast path (ADR 0012).

In one process, no sockets: the three requests of a ride flow (offer, start, finish with
a 10 KB track), each with a bearer token the verifier has cached, go through the app's
ASGI callable as uvicorn calls it. The commands themselves (``_offer``, ``_start``,
``_finish`` in ``command_api.app``) are replaced by canned answers of the real size:
they cost the same on both paths, so what is measured is everything around them: sign-in,
request id, metrics, routing, body decoding (the 10 KB track into its Structs) and the
answer. The app's dependencies are stand-ins (no lifespan runs). CPU time of the process
per flow, alternating rounds, best of each. The numbers are in docs/benchmarks.md
("i13cmd").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

import command_api.app as command_app
from shared.infra import di
from shared.infra.auth import JwksCache, Principal, TokenVerifier
from shared.settings import Settings
from stubs.identity import IdentityProvider
from tests.load.scenarios import track_for

ORDER_ID = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"


def _verifier(settings: Settings) -> tuple[TokenVerifier, str]:
    provider = IdentityProvider(
        issuer=settings.identity.issuer, audience=settings.identity.audience, ttl_seconds=3_600
    )
    jwks = provider.jwks()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=jwks))
    cache = JwksCache(
        "http://identity/.well-known/jwks.json",
        httpx.AsyncClient(transport=transport),
        min_refresh_seconds=10,
        max_age_seconds=300,
    )
    verifier = TokenVerifier(
        cache,
        issuer=settings.identity.issuer,
        audience=settings.identity.audience,
        leeway_seconds=5,
        cache_size=1_000,
    )
    return verifier, provider.issue("user-1", ["rider"]).access_token


def _canned_commands() -> None:
    """Replace the three commands by answers of the real shape and size."""
    now = datetime.now(UTC)
    offer = command_app.OfferAnswer(
        id=ORDER_ID,
        user_id="user-1",
        scooter_id="scooter-1",
        zone_id="zone-1",
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        created_at=now,
        expires_at=now,
        token="v2.k1." + "A" * 400,
    )
    order = b'{"id":"%s","status":"active",' % ORDER_ID.encode() + b'"x":"' + b"a" * 800 + b'"}'

    async def offer_command(*_: Any) -> command_app.OfferAnswer:
        return offer

    async def start_command(*_: Any) -> tuple[int, bytes]:
        return 201, order

    async def finish_command(*_: Any) -> tuple[int, bytes]:
        return 200, order + b" " * 400

    command_app._offer = offer_command  # type: ignore[assignment]
    command_app._start = start_command  # type: ignore[assignment]
    command_app._finish = finish_command  # type: ignore[assignment]


def _app(settings: Settings, verifier: TokenVerifier) -> Any:
    """The command API app with stand-in dependencies and ``verifier`` for sign-in (every
    ``Slot`` of this process answers them from now on: this process only measures)."""
    stand_ins: dict[str, Any] = {"verifier": verifier, "deps": object()}
    stand_ins["offer_rate_limit"] = object()
    di.Slot.get = lambda self: stand_ins[self.name]  # type: ignore[method-assign]
    return command_app.create_app(settings)


async def _request(app: Any, path: str, body: bytes, token: bytes) -> int:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", b"Bearer " + token),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ],
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _flows(app: Any, token: bytes, finish_body: bytes, flows: int) -> float:
    """CPU seconds per flow for ``flows`` flows."""
    offer = msgspec.json.encode({"scooter_id": "scooter-1"})
    start = msgspec.json.encode({"offer_token": "v2.k1." + "A" * 400})
    finish = f"/orders/{ORDER_ID}/finish"
    began = time.process_time()
    for _ in range(flows):
        statuses = (
            await _request(app, "/offers", offer, token),
            await _request(app, "/orders", start, token),
            await _request(app, finish, finish_body, token),
        )
        assert statuses == (201, 201, 200), statuses
    return (time.process_time() - began) / flows


async def measure(flows: int, rounds: int, z_bytes: int) -> dict[str, float]:
    settings = Settings()
    verifier, token = _verifier(settings)
    principal = await verifier.verify(token)
    assert isinstance(principal, Principal)
    _canned_commands()
    apps = {
        "litestar": _app(settings.replace(serving={"command_fast_path": False}), verifier),
        "fast path": _app(settings, verifier),
    }
    finish_body = msgspec.json.encode({"track": track_for(z_bytes)})
    best = {name: float("inf") for name in apps}
    for app in apps.values():  # warm-up: caches, first-use paths
        await _flows(app, token.encode(), finish_body, 50)
    for _ in range(rounds):
        for name, app in apps.items():
            best[name] = min(best[name], await _flows(app, token.encode(), finish_body, flows))
    return {name: round(seconds * 1e3, 3) for name, seconds in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flows", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--z", type=int, default=10_000, help="bytes per stored order (track)")
    args = parser.parse_args()
    result = asyncio.run(measure(args.flows, args.rounds, args.z))
    for name, ms in result.items():
        print(f"{name}: {ms} CPU-ms per flow (offer + start + finish, commands canned)")
    print(f"saved: {round(result['litestar'] - result['fast path'], 3)} CPU-ms per flow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
