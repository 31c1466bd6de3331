"""``python -m tests.load.boundary_cost``: CPU per request of issue 8's boundary work, in-process.

Measures, without HTTP or I/O:

- the request-id middleware (``shared.infra.logs.request_ids``) around a bare ASGI app;
- decoding a finish body with a 10 KB track: straight into its type (what the apps' request
  class does) against Litestar's way (plain objects, then ``msgspec.convert``);
- the JSON depth scan that typed bodies do without.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec

from command_api.app import FinishOrder
from shared.infra.boundary import decode_as, json_depth_exceeds
from shared.infra.logs import request_ids

N = 20_000


def per_call_us(fn: Callable[[], Any], n: int = N) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


async def asgi_us(app: Any, n: int = N) -> float:
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", b"x")]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    started = time.perf_counter()
    for _ in range(n):
        await app(scope, receive, send)
    return (time.perf_counter() - started) / n * 1e6


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def main() -> None:
    rng = random.Random(8)
    track = [
        {"t": 1.7e9 + i, "lat": 55.75 + rng.random() / 100, "lon": 37.61 + rng.random() / 100}
        for i in range(180)
    ]
    body = json.dumps({"track": track}).encode()
    typed = msgspec.json.Decoder(FinishOrder)
    untyped = msgspec.json.Decoder()

    plain = asyncio.run(asgi_us(bare))
    with_id = asyncio.run(asgi_us(request_ids(bare)))
    print(
        f"request id middleware: {with_id - plain:.2f} µs per request ({plain:.2f} → {with_id:.2f})"
    )
    ours = per_call_us(lambda: decode_as(body, typed), 2_000)
    litestar = per_call_us(lambda: msgspec.convert(untyped.decode(body), FinishOrder), 2_000)
    scan = per_call_us(lambda: json_depth_exceeds(body, 32), 200)
    print(f"finish body of {len(body)} bytes:")
    print(f"  typed decode (ours):                {ours:8.1f} µs")
    print(f"  plain objects + convert (Litestar): {litestar:8.1f} µs")
    print(f"  depth scan (not on this path):      {scan:8.1f} µs")


if __name__ == "__main__":
    main()
