"""``python -m tests.load.transport_cost``: CPU per external call of the command API's
HTTP client, by httpx transport (issue 13).

Starts the stubs on a free port, then, in a fresh interpreter per transport and round
(alternating), makes ``--calls`` calls with ``--concurrency`` in flight through
``httpx.AsyncClient`` on uvloop, as the command API does: the ride flow's mix of
``GET /scooter-data``, ``GET /user-profile`` and two ``POST``s to payments. Prints the
client's CPU time (not wall time) per call, so a busy machine disturbs it less than a
throughput run; the stubs' CPU is not counted.

Transports: ``httpcore`` (httpx's default), ``aiohttp`` (httpx-aiohttp), ``http1``
(shared.infra.http_transport), and ``raw-aiohttp`` (aiohttp without httpx: a floor for
the aiohttp route, not a candidate).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from scripts.stack import wait_healthy
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TRANSPORTS = ("httpcore", "aiohttp", "http1", "raw-aiohttp")

_CHILD = """
import asyncio, sys, time, uuid
import httpx, uvloop
kind, base, calls, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
timeout = httpx.Timeout(1.0)

def client():
    if kind == "httpcore":
        return httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits)
    if kind == "aiohttp":
        from httpx_aiohttp import HttpxAiohttpClient
        return HttpxAiohttpClient(base_url=base, timeout=timeout, limits=limits)
    from shared.infra.http_transport import Http1Transport
    return httpx.AsyncClient(base_url=base, timeout=timeout, transport=Http1Transport(limits))

async def flow_httpx(c, n):
    order = str(uuid.uuid4())
    body = ('{"user_id":"user-%d","order_id":"%s","amount":100}' % (n, order)).encode()
    for path, params in (("/scooter-data", {"id": "scooter-%d" % n}),
                         ("/user-profile", {"id": "user-%d" % n})):
        r = await c.get(path, params=params)
        assert r.status_code == 200, (r.status_code, r.content)
        r.content
    for path in ("/hold-money-for-order", "/clear-money-for-order"):
        r = await c.post(path, content=body, headers={"content-type": "application/json"},
                         timeout=2.0)
        assert r.status_code == 200, (r.status_code, r.content)

async def flow_raw(s, n):
    order = str(uuid.uuid4())
    body = ('{"user_id":"user-%d","order_id":"%s","amount":100}' % (n, order)).encode()
    for path, params in (("/scooter-data", {"id": "scooter-%d" % n}),
                         ("/user-profile", {"id": "user-%d" % n})):
        async with s.get(base + path, params=params) as r:
            assert r.status == 200
            await r.read()
    for path in ("/hold-money-for-order", "/clear-money-for-order"):
        async with s.post(base + path, data=body,
                          headers={"content-type": "application/json"}) as r:
            assert r.status == 200
            await r.read()

async def main():
    if kind == "raw-aiohttp":
        import aiohttp
        c = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200),
                                  timeout=aiohttp.ClientTimeout(total=2.0))
        flow = flow_raw
    else:
        c = client()
        flow = flow_httpx
    todo = iter(range(calls // 4))
    async def worker():
        for n in todo:
            await flow(c, 1 + n % 5000)
    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm up the pool
    todo = iter(range(calls // 4))
    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    used = time.process_time() - started
    await (c.close() if kind == "raw-aiohttp" else c.aclose())
    print(used / (calls // 4 * 4) * 1e6)

uvloop.run(main())
"""


def measure(kind: str, base: str, calls: int, concurrency: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, base, str(calls), str(concurrency)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind}: {done.stderr[-2000:]}")
    return float(done.stdout.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.transport_cost")
    parser.add_argument("--calls", type=int, default=4_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    args = parser.parse_args(argv)
    kinds = [k for k in args.transports.split(",") if k]
    port = free_port()
    env = {
        **os.environ,
        "SCOOTERS_STUBS_PORT": str(port),
        "SCOOTERS_LOG_LEVEL": "WARNING",
    }
    stubs = subprocess.Popen([sys.executable, "-m", "stubs"], cwd=ROOT, env=env)
    results: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health/live", stubs, 60)
        base = f"http://127.0.0.1:{port}"
        for _ in range(args.rounds):
            for kind in kinds:
                results[kind].append(measure(kind, base, args.calls, args.concurrency))
                time.sleep(0.1)
    finally:
        stubs.terminate()
        stubs.wait(10)
    print(f"client CPU µs per call ({args.calls} calls, {args.concurrency} in flight), per round:")
    for kind, values in results.items():
        print(f"  {kind:<12}: {' '.join(f'{v:7.1f}' for v in values)}   best {min(values):.1f}")


if __name__ == "__main__":
    main()
