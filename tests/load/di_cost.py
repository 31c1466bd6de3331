"""What Litestar's dependency injection costs per request, measured in-process.

``python -m tests.load.di_cost [REQUESTS]`` drives three apps with the same order
handler straight through ASGI (no sockets, no server) and prints CPU microseconds per
request: the handler reading ``state`` (the style before), a zero-argument provider as
``shared.infra.di.Slot`` builds it (the style now), and a provider that takes ``state``
(the style a previous commit removed from the query API for speed). Rounds alternate so
that a busy machine slows all three alike; compare the ratios.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath, SkipValidation

from shared.infra.di import Slot
from tests.load.ceiling import order


class Reads:
    async def order(self, order_id: str) -> Any:
        return await order.fn(order_id)


READS = Reads()


@get("/state/{order_id:str}")
async def by_state(order_id: FromPath[str], state: State) -> Any:
    reads: Reads = state.reads
    return await reads.order(order_id)


@get("/slot/{order_id:str}")
async def by_slot(order_id: FromPath[str], reads: SkipValidation[Reads]) -> Any:
    return await reads.order(order_id)


def _from_state(state: State) -> Reads:
    reads: Reads = state.reads
    return reads


@get("/provide-state/{order_id:str}")
async def by_provide_state(order_id: FromPath[str], reads: SkipValidation[Reads]) -> Any:
    return await reads.order(order_id)


def apps() -> dict[str, Litestar]:
    slot: Slot[Reads] = Slot("reads")
    slot.fill(READS)
    state = State({"reads": READS})
    return {
        "state": Litestar([by_state], state=state, logging_config=None),
        "slot": Litestar([by_slot], dependencies={"reads": slot.provide()}, logging_config=None),
        "provide(state)": Litestar(
            [by_provide_state],
            dependencies={"reads": Provide(_from_state, sync_to_thread=False)},
            state=state,
            logging_config=None,
        ),
    }


PATHS = {"state": "/state/x", "slot": "/slot/x", "provide(state)": "/provide-state/x"}


async def drive(app: Litestar, path: str, n: int) -> float:
    """CPU seconds for ``n`` GETs of ``path``."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"x")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    start = time.process_time()
    for _ in range(n):
        await app(dict(scope), receive, send)  # type: ignore[arg-type]
    return time.process_time() - start


async def main(n: int) -> None:
    built = apps()
    totals = dict.fromkeys(built, 0.0)
    for name, app in built.items():
        await drive(app, PATHS[name], 500)  # warm up
    for _ in range(5):
        for name, app in built.items():
            totals[name] += await drive(app, PATHS[name], n)
    base = totals["state"]
    for name, total in totals.items():
        print(f"{name:16} {total / (5 * n) * 1e6:7.1f} µs/request  x{total / base:.3f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
