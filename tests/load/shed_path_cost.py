"""``python -m tests.load.shed_path_cost``: the Python CPU of one shed answer on the
parser-free path (shared/infra/admission.py), in process, without sockets.

A :class:`GuardedHttpToolsProtocol` at its admission limit is handed the same read
``--count`` times (``data_received``, as uvloop calls it); its transport only counts
the bytes written. What is left out is the same for every version: the kernel's share
(the read and write system calls, ≈ 19 µs per request on the 2-core box) and uvloop's
polling. Reads: a signed-in ``GET /orders/{id}`` (an 850-byte bearer token, as the
overload tool sends), the same with an ``X-Request-ID``, and a bare ``GET``.

Runs against any checkout's ``shared`` (only ``data_received`` is called), so two
versions are compared in the same minutes:

    uv run --frozen python -m tests.load.shed_path_cost --rounds 5
    (cd ../ref && .venv/bin/python -m tests.load.shed_path_cost)  # if it has the file, else:
    PYTHONPATH=../ref .venv/bin/python tests/load/shed_path_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import time
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from shared.infra.admission import Admission, GuardedHttpToolsProtocol

# a token's shape: three base64url parts (random bytes of a fixed seed, as a real
# token's are random-looking; a run of one letter would make substring searches slower)
_RANDOM = random.Random(8)
TOKEN = b".".join(
    base64.urlsafe_b64encode(_RANDOM.randbytes(n)).rstrip(b"=") for n in (36, 540, 64)
)
SIGNED_IN = (
    b"GET /orders/0190a3b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b HTTP/1.1\r\nHost: 127.0.0.1:18081\r\n"
    b"Authorization: Bearer " + TOKEN + b"\r\n\r\n"
)
READS = {
    "signed_in_get": SIGNED_IN,
    "signed_in_get_with_request_id": SIGNED_IN[:-2] + b"X-Request-ID: load-12345678\r\n\r\n",
    "bare_get": b"GET /orders/o-1 HTTP/1.1\r\nHost: t\r\n\r\n",
}


class _Transport(asyncio.Transport):
    """Counts what is written; never closes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("sockname", "peername") else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("a shed request reached the app")


def measure(data: bytes, count: int) -> dict[str, float]:
    """CPU µs per ``data_received`` of ``data`` at the limit; bytes written per answer."""
    loop = asyncio.new_event_loop()
    config = uvicorn.Config(_noop_app, lifespan="off", log_config=None, access_log=False)
    config.load()
    admission = Admission("shed_path_cost", 1, 2)
    admission.in_flight = 1  # at the limit: every request is shed
    protocol = GuardedHttpToolsProtocol(config, ServerState(), {}, loop, admission=admission)
    transport = _Transport()
    protocol.connection_made(transport)
    for _ in range(1000):  # warm up
        protocol.data_received(data)
    transport.written = 0
    started = time.thread_time()
    for _ in range(count):
        protocol.data_received(data)
    cpu = time.thread_time() - started
    protocol.connection_lost(None)
    loop.close()
    return {"cpu_us": round(cpu / count * 1e6, 3), "bytes_written": transport.written / count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    result: dict[str, list[dict[str, float]]] = {name: [] for name in READS}
    for _ in range(args.rounds):
        for name, data in READS.items():
            result[name].append(measure(data, args.count))
    best = {name: min(r["cpu_us"] for r in runs) for name, runs in result.items()}
    print(json.dumps({"best_cpu_us_per_shed_answer": best, "rounds": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
