"""``python -m tests.load.read_cost [CODE_DIR ...]``: CPU per order-screen read, in-process.

Starts the stack without the query API (stubs, command API, worker, projector) in
benchmark configuration, seeds rides through the command API, then measures the query
API's ``GET /orders/{id}`` driven through its ASGI interface (no HTTP server, so no
uvicorn/httptools: that part is the same for every version) against real Redis,
Postgres and the identity stub's tokens, next to the bare ceiling app driven the same
way. With several ``CODE_DIR`` (checkouts of the project, e.g. ``git archive main``
unpacked), each round measures each of them in turn in a fresh process against the same
stack and data, so versions are compared alternately under the same machine load::

    git archive main | tar -x -C /tmp/base
    python -m tests.load.read_cost /tmp/base . --rounds 3

Reads as the load test's mix of order screens: 60 % active rides, 30 % just finished,
10 % older, each by its own rider (tokens verified once before the window); then, apart,
history pages (``GET /users/{id}/orders``) of the riders of active rides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def _scope(path: str, auth: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", auth)],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _drive(
    app: Any, requests: list[tuple[str, bytes]], concurrency: int
) -> tuple[float, int]:
    """CPU seconds of this process per request over ``requests``; and the non-200 count."""
    bad = 0
    todo = iter(requests)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def worker() -> None:
        nonlocal bad
        for path, auth in todo:
            status = 0

            async def send(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]

            await app(_scope(path, auth), receive, send)
            if status != 200:
                bad += 1

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / len(requests), bad


async def _measure(seeded_path: Path, count: int, concurrency: int) -> dict[str, float]:
    from query_api.app import create_app
    from shared.settings import get_settings
    from tests.load import ceiling

    seeded = json.loads(seeded_path.read_text())
    rng = random.Random(5)
    orders = seeded["orders"]
    requests: list[tuple[str, bytes]] = []
    for _ in range(count):
        pick = rng.random()
        kind = "active" if pick < 0.6 else "finished" if pick < 0.9 else "older"
        oid = rng.choice(orders[kind])
        token = seeded["auth"][seeded["owner"][oid]].split(": ", 1)[1].strip()
        requests.append((f"/orders/{oid}", token.encode()))
    history = [
        (f"/users/{user}/orders", seeded["auth"][user].split(": ", 1)[1].strip().encode())
        for user in (rng.choice(orders["users"]) for _ in range(count // 4))
    ]
    warm = [
        (f"/orders/{oid}", seeded["auth"][r].split(": ", 1)[1].strip().encode())
        for oid, r in seeded["owner"].items()
    ]
    app = create_app(get_settings())
    bare = ceiling.create_app()
    result: dict[str, float] = {}
    async with app.lifespan(), bare.lifespan():
        await _drive(app, warm, concurrency)  # every token verified once, every view read
        await _drive(bare, requests[:2000], concurrency)
        per, bad = await _drive(app, requests, concurrency)
        bare_per, _ = await _drive(bare, requests, concurrency)
        history_per, history_bad = await _drive(app, history, concurrency)
        bad += history_bad
    result["order_us"] = round(per * 1e6, 1)
    result["bare_us"] = round(bare_per * 1e6, 1)
    result["history_us"] = round(history_per * 1e6, 1)
    result["non_200"] = bad
    return result


def _orchestrate(args: argparse.Namespace) -> None:
    from tests.load.bench import (
        bench_settings,
        measure_checkout,
        py_spy_prefix,
        running_stack,
        settings_env,
    )
    from tests.load.scenarios import seed_orders

    settings = bench_settings(1, 1)
    names = ("stubs", "command_api", "worker", "projector")
    with running_stack(settings, names) as bench, tempfile.TemporaryDirectory() as tmp:
        seeded = asyncio.run(seed_orders(settings, args.orders, args.z))
        time.sleep(1.0)  # the projector catches up
        path = Path(tmp) / "seeded.json"
        path.write_text(
            json.dumps({"orders": seeded.orders, "auth": seeded.auth, "owner": seeded.owner})
        )
        env = settings_env(settings)
        rows: dict[str, list[dict[str, float]]] = {d: [] for d in args.code_dirs}
        for _ in range(args.rounds):
            for code_dir in args.code_dirs:
                profile = args.profile and f"{args.profile}.{Path(code_dir).name or 'here'}"
                spy = py_spy_prefix(profile or None, 400)
                row = measure_checkout(
                    HERE, path, code_dir, env, args.count, args.concurrency, prefix=spy
                )
                rows[code_dir].append(row)
                print(f"{code_dir}: {row}", flush=True)
        if bench.stack.dead():
            raise SystemExit(f"processes died: {bench.stack.dead()}")
    print(f"\n{'code':<40}{'order µs':>10}{'history µs':>12}{'bare µs':>10}{'ratio':>8}")
    for code_dir, measured in rows.items():
        order = sorted(r["order_us"] for r in measured)[len(measured) // 2]
        history = sorted(r["history_us"] for r in measured)[len(measured) // 2]
        bare = sorted(r["bare_us"] for r in measured)[len(measured) // 2]
        ratios = [round(r["bare_us"] / r["order_us"], 3) for r in measured]
        print(
            f"{code_dir:<40}{order:>10}{history:>12}{bare:>10}{bare / order:>8.1%}"
            f"  per round {ratios}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.read_cost")
    parser.add_argument("code_dirs", nargs="*", default=["."])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--orders", type=int, default=600)
    parser.add_argument("--z", type=int, default=10_240)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--profile", help="py-spy raw profiles to PROFILE.<code dir name>")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        import uvloop

        uvloop.install()
        print(json.dumps(asyncio.run(_measure(args.measure, args.count, args.concurrency))))
        return
    _orchestrate(args)


if __name__ == "__main__":
    if os.environ.get("PYTHONPATH") and "--measure" in sys.argv:
        sys.path.insert(0, os.environ["PYTHONPATH"])  # the checkout measured, before ours
    main()
