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

``--apps ours,litestar,raw`` measures, for each checkout, our command API and the floor
apps of ``tests.load.floor`` (the three commands and nothing else, in Litestar or in one
raw ASGI callable; docs/benchmarks.md "i13floor") in turn, as if they were checkouts.
Each measurement then also reads back the orders of its flows: all ended and charged
(or released, a free ride), the same answers' shape for every app.

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
# an ended ride's states: charged, or released (a cancelled ride, or a zone without an
# unlock price at 0 s)
SETTLED = frozenset({"finished/charged", "finished/released", "cancelled/released"})
APP_VARIABLE = "COMMAND_COST_APP"  # which app a measuring process serves: ours, or a floor


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


async def _flows(
    app: Any, seeded: dict[str, Any], count: int, concurrency: int, shapes: set[str] | None = None
) -> int:
    """Run ``count`` ride flows, ``concurrency`` at a time; returns the failed ones.
    ``shapes``: add each answer's path kind and keys to it."""
    riders: deque[str] = deque(seeded["riders"])
    scooters: deque[str] = deque(seeded["scooters"])
    finish = json.dumps({"track": seeded["track"]}).encode()
    todo = iter(range(count))
    failed = 0

    def shape(kind: str, status: int, body: bytes) -> None:
        if shapes is not None:
            answer = json.loads(body)
            keys = ",".join(sorted(answer))
            receipt = answer.get("receipt")
            if isinstance(receipt, dict):
                keys += " receipt:" + ",".join(sorted(receipt))
            shapes.add(f"{kind} {status} {keys}")

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
            shape("offer", status, body)
            token = json.loads(body)["token"]
            status, body = await _call(
                app, "/orders", auth, json.dumps({"offer_token": token}).encode()
            )
            if status != 201:
                failed += 1
                return
            shape("start", status, body)
            order_id = json.loads(body)["id"]
            status, body = await _call(app, f"/orders/{order_id}/finish", auth, finish)
            if status != 200:
                failed += 1
                return
            shape("finish", status, body)
        finally:
            riders.append(rider)
            scooters.append(scooter)

    async def worker() -> None:
        for _ in todo:
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def _measure(
    seeded_path: Path, count: int, concurrency: int, app_name: str = "ours"
) -> dict[str, Any]:
    import gc
    from datetime import UTC, datetime

    from shared.settings import get_settings

    seeded = json.loads(seeded_path.read_text())
    settings = get_settings()
    if app_name == "ours":
        from command_api.app import create_app

        app: Any = create_app(settings)
    else:
        from tests.load.floor import floor_app

        app = floor_app(app_name, settings)
    began = datetime.now(UTC)
    shapes: set[str] = set()
    async with app.lifespan():
        # connections, caches, statements, tokens; the answers' shapes
        await _flows(app, seeded, 100, concurrency, shapes)
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
        "orders": await _orders_of(settings.db.url, seeded["riders"], began),
        "shapes": sorted(shapes),
    }


async def _orders_of(dsn: str, riders: list[str], since: Any) -> dict[str, Any]:
    """The orders ``riders`` started since ``since``, as stored: how many of each
    (status, payment status), and what was charged (issue 13: the floor does the
    same work as ours, so its rows are the same)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status || '/' || payment_status AS state, count(*) AS n,"
            " sum(total_amount) AS charged, count(track) AS tracks,"
            " min(distance_meters) AS distance"
            " FROM orders WHERE user_id = ANY($1) AND created_at >= $2 GROUP BY 1",
            riders,
            since,
        )
    finally:
        await conn.close()
    return {
        r["state"]: {
            "n": r["n"],
            "charged_avg": round(float(r["charged"] or 0) / r["n"], 2),
            "tracks": r["tracks"],
            "distance_min": r["distance"],
        }
        for r in rows
    }


def _orchestrate(args: argparse.Namespace) -> None:
    import httpx

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
        stub = bench_stub_settings(settings)
        riders, scooters = riders_and_scooters(stub, args.riders)
        if args.free_ride_seconds is not None:  # 0: every ride is finished and charged
            httpx.post(
                f"http://127.0.0.1:{stub.port}/admin/configs",
                json={"free_ride_seconds": args.free_ride_seconds},
                headers={"authorization": f"Bearer {stub.admin_token}"},
            ).raise_for_status()
        auth = asyncio.run(sign_in(settings, list(riders)))
        tokens = {r: line.split(": ", 1)[1].strip() for r, line in auth.items()}
        track = track_for(args.z)
        # each checkout's apps, measured as if each were a checkout of its own
        units = [(d, a) for d in args.code_dirs for a in args.apps.split(",")]
        names = {u: u[0] if u[1] == "ours" else f"{u[0]} [{u[1]}]" for u in units}
        # --together: the units run at once, each on its own riders and scooters
        parts = len(units) if args.together else 1
        paths = {}
        for index, unit in enumerate(units):
            part = index % parts
            path = paths[unit] = Path(tmp) / f"seeded.{part}.json"
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
        rows: dict[tuple[str, str], list[dict[str, Any]]] = {u: [] for u in units}

        def measure(unit: tuple[str, str], round_: int) -> dict[str, Any]:
            code_dir, app = unit
            name = (Path(code_dir).name or "here") + ("" if app == "ours" else f".{app}")
            profile = args.profile and f"{args.profile}.{name}.{round_}"
            spy = py_spy_prefix(profile or None, 250)
            return measure_checkout(
                HERE,
                paths[unit],
                code_dir,
                {**env, APP_VARIABLE: app},
                args.count,
                args.concurrency,
                prefix=spy,
            )

        def show(unit: tuple[str, str], row: dict[str, Any]) -> None:
            rows[unit].append(row)
            brief = {k: v for k, v in row.items() if k != "shapes"}
            print(f"{names[unit]}: {brief}", flush=True)

        for round_ in range(args.rounds):
            if args.together:  # the same machine load for each, minute by minute
                with ThreadPoolExecutor(len(units)) as threads:
                    measured = list(threads.map(measure, units, [round_] * parts))
                for unit, row in zip(units, measured, strict=True):
                    show(unit, row)
                continue
            # every other round in reverse: what drifts within a round hits each side alike
            order = units if round_ % 2 == 0 else units[::-1]
            for unit in order:
                show(unit, measure(unit, round_))
        if bench.stack.dead():
            raise SystemExit(f"processes died: {bench.stack.dead()}")
    print(f"\n{'code':<40}{'CPU ms per flow, per round':>30}{'median':>10}")
    for unit, measured in rows.items():
        values = [r["flow_ms"] for r in measured]
        median = sorted(values)[len(values) // 2]
        print(f"{names[unit]:<40}{' '.join(f'{v:.3f}' for v in values):>30}{median:>10.3f}")
    problems = _check_rows(rows, names)
    if problems:
        raise SystemExit("\n".join(problems))


def _check_rows(
    rows: dict[tuple[str, str], list[dict[str, Any]]], names: dict[tuple[str, str], str]
) -> list[str]:
    """What is wrong with the measured flows: failures, orders not ended and settled
    (the warm-up's and the window's: all in :data:`SETTLED`), and
    answers of another shape than the first app's. Rows of an older checkout (no
    ``orders``) are not checked."""
    problems, first = [], None
    for unit, measured in rows.items():
        for row in measured:
            if row["failed"]:
                problems.append(f"{names[unit]}: {row['failed']} flows failed")
            if "orders" not in row:
                continue
            states = row["orders"]
            unsettled = set(states) - SETTLED
            if unsettled or not states:
                problems.append(f"{names[unit]}: orders left {sorted(unsettled) or 'none'}")
            if first is None:
                first = (unit, row["shapes"])
            elif row["shapes"] != first[1]:
                problems.append(
                    f"{names[unit]}: answers {row['shapes']} unlike {names[first[0]]}'s {first[1]}"
                )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.command_cost")
    parser.add_argument("code_dirs", nargs="*", default=["."])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=1_500, help="ride flows measured")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--riders", type=int, default=400)
    parser.add_argument("--pool", type=int, default=10, help="Postgres connections at most")
    parser.add_argument(
        "--free-ride-seconds",
        type=int,
        help="set the stubs' configs first (0: every ride is finished and charged; the"
        " stubs' default of 5 s makes the benchmark's rides cancelled and released)",
    )
    parser.add_argument("--z", type=int, default=10_240, help="bytes of the finish's track")
    parser.add_argument(
        "--together",
        action="store_true",
        help="measure the checkouts of a round at once (each on its own riders and scooters)",
    )
    parser.add_argument(
        "--apps",
        default="ours",
        help="comma-separated: ours (the command API) and/or the floor apps of"
        " tests.load.floor (litestar, raw), each measured as a checkout of its own",
    )
    parser.add_argument("--profile", help="py-spy raw profiles to PROFILE.<dir name>.<round>")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        import uvloop

        uvloop.install()
        app = os.environ.get(APP_VARIABLE, "ours")
        print(json.dumps(asyncio.run(_measure(args.measure, args.count, args.concurrency, app))))
        return
    _orchestrate(args)


if __name__ == "__main__":
    if os.environ.get("PYTHONPATH") and "--measure" in sys.argv:
        sys.path.insert(0, os.environ["PYTHONPATH"])  # the checkout measured, before ours
    main()
