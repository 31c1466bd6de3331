"""``python -m tests.load.command_cost [CODE_DIR ...]``: the command API's CPU per ride flow,
in-process.

Starts the stubs in benchmark configuration (a fresh database, key prefix and port), signs
riders in, then drives whole ride flows (``POST /offers``, ``POST /orders``, ``POST
/orders/{id}/finish`` with a ``--z`` byte track) through the command API's ASGI interface
(no HTTP server, so no uvicorn/httptools: that part is the same for every version) against
real Postgres, Redis and the stubs, and prints the CPU time of the process per flow. With
several ``CODE_DIR`` (checkouts of the project), each round measures each of them in turn
in a fresh process against the same stack, so versions are compared alternately under the
same machine load::

    python -m tests.load.command_cost /work/wt/ref . --rounds 3

With ``--together`` the checkouts of a round run at the same time instead, each on its
own half of the riders and scooters: on a machine shared with other work, both then see
the same load from minute to minute (alternating rounds did not resolve 5 % there).

Each flow takes a rider and a scooter nobody else uses at that moment, as the load test
does (``tests.load.scenarios.ride``); tokens are verified once before the window. The
worker and the projector do not run (their CPU is not the command API's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def _scope(path: str, auth: bytes, length: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", auth),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % length),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _call(app: Any, path: str, auth: bytes, body: bytes) -> tuple[int, bytes]:
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(_scope(path, auth, len(body)), receive, send)
    return status, b"".join(chunks)


async def _flows(app: Any, seeded: dict[str, Any], count: int, concurrency: int) -> int:
    """Run ``count`` ride flows, ``concurrency`` at a time; returns the failed ones."""
    riders: deque[str] = deque(seeded["riders"])
    scooters: deque[str] = deque(seeded["scooters"])
    finish = json.dumps({"track": seeded["track"]}).encode()
    todo = iter(range(count))
    failed = 0

    async def one() -> None:
        nonlocal failed
        rider, scooter = riders.popleft(), scooters.popleft()
        auth = seeded["auth"][rider].encode()
        try:
            status, body = await _call(
                app, "/offers", auth, json.dumps({"scooter_id": scooter}).encode()
            )
            if status != 201:
                failed += 1
                return
            token = json.loads(body)["token"]
            status, body = await _call(
                app, "/orders", auth, json.dumps({"offer_token": token}).encode()
            )
            if status != 201:
                failed += 1
                return
            order_id = json.loads(body)["id"]
            status, _ = await _call(app, f"/orders/{order_id}/finish", auth, finish)
            if status != 200:
                failed += 1
        finally:
            riders.append(rider)
            scooters.append(scooter)

    async def worker() -> None:
        for _ in todo:
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def _measure(seeded_path: Path, count: int, concurrency: int) -> dict[str, float]:
    import gc

    from command_api.app import create_app
    from shared.settings import get_settings

    seeded = json.loads(seeded_path.read_text())
    app = create_app(get_settings())
    async with app.lifespan():
        await _flows(app, seeded, 100, concurrency)  # connections, caches, statements, tokens
        gc.collect()
        before = os.times()
        failed = await _flows(app, seeded, count, concurrency)
        after = os.times()
    used = (after.user - before.user) + (after.system - before.system)
    kernel = after.system - before.system
    return {
        "flow_ms": round(used / count * 1e3, 3),
        "kernel_ms": round(kernel / count * 1e3, 3),  # of flow_ms: system calls
        "failed": failed,
    }


def _orchestrate(args: argparse.Namespace) -> None:
    from tests.load.bench import (
        bench_settings,
        bench_stub_settings,
        measure_checkout,
        py_spy_prefix,
        running_stack,
        settings_env,
    )
    from tests.load.scenarios import riders_and_scooters, sign_in, track_for

    # a small pool: Postgres's connections are shared with whoever else runs on the box
    settings = bench_settings(1, 1).replace(db={"pool_min": 2, "pool_max": args.pool})
    with running_stack(settings, ("stubs",)) as bench, tempfile.TemporaryDirectory() as tmp:
        riders, scooters = riders_and_scooters(bench_stub_settings(settings), args.riders)
        auth = asyncio.run(sign_in(settings, list(riders)))
        tokens = {r: line.split(": ", 1)[1].strip() for r, line in auth.items()}
        track = track_for(args.z)
        # --together: the checkouts run at once, each on its own riders and scooters
        parts = len(args.code_dirs) if args.together else 1
        paths = {}
        for index, code_dir in enumerate(args.code_dirs):
            part = index % parts
            path = paths[code_dir] = Path(tmp) / f"seeded.{part}.json"
            path.write_text(
                json.dumps(
                    {
                        "riders": list(riders)[part::parts],
                        "scooters": list(scooters)[part::parts],
                        "auth": tokens,
                        "track": track,
                    }
                )
            )
        env = settings_env(settings)
        rows: dict[str, list[dict[str, float]]] = {d: [] for d in args.code_dirs}

        def measure(code_dir: str, round_: int) -> dict[str, float]:
            profile = args.profile and f"{args.profile}.{Path(code_dir).name or 'here'}.{round_}"
            spy = py_spy_prefix(profile or None, 250)
            return measure_checkout(
                HERE, paths[code_dir], code_dir, env, args.count, args.concurrency, prefix=spy
            )

        for round_ in range(args.rounds):
            if args.together:  # the same machine load for each, minute by minute
                with ThreadPoolExecutor(len(args.code_dirs)) as threads:
                    measured = list(threads.map(measure, args.code_dirs, [round_] * parts))
                for code_dir, row in zip(args.code_dirs, measured, strict=True):
                    rows[code_dir].append(row)
                    print(f"{code_dir}: {row}", flush=True)
                continue
            # every other round in reverse: what drifts within a round hits each side alike
            order = args.code_dirs if round_ % 2 == 0 else args.code_dirs[::-1]
            for code_dir in order:
                row = measure(code_dir, round_)
                rows[code_dir].append(row)
                print(f"{code_dir}: {row}", flush=True)
        if bench.stack.dead():
            raise SystemExit(f"processes died: {bench.stack.dead()}")
    print(f"\n{'code':<40}{'CPU ms per flow, per round':>30}{'median':>10}")
    for code_dir, measured in rows.items():
        values = [r["flow_ms"] for r in measured]
        median = sorted(values)[len(values) // 2]
        print(f"{code_dir:<40}{' '.join(f'{v:.3f}' for v in values):>30}{median:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.command_cost")
    parser.add_argument("code_dirs", nargs="*", default=["."])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=1_500, help="ride flows measured")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--riders", type=int, default=400)
    parser.add_argument("--pool", type=int, default=10, help="Postgres connections at most")
    parser.add_argument("--z", type=int, default=10_240, help="bytes of the finish's track")
    parser.add_argument(
        "--together",
        action="store_true",
        help="measure the checkouts of a round at once (each on its own riders and scooters)",
    )
    parser.add_argument("--profile", help="py-spy raw profiles to PROFILE.<dir name>.<round>")
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
