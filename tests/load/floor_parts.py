"""``python -m tests.load.floor_parts``: where the floor's CPU per ride flow goes
(issue 13, docs/benchmarks.md "i13floor").

In one process against real Postgres, Redis and the stubs (started as
``tests.load.command_cost`` starts them), CPU time of the process (``time.process_time``:
user + system) per operation, each measured alone, one at a time, so nothing else of the
process runs in its window:

- **pure CPU** (best of three batches): the cached token verification, the bodies'
  msgspec decoding and the answers' encoding, the offer token's sealing and opening
  (AES-GCM), the finish's 10 KB track (distance, JSON for the row);
- **one call at a time over the network**: each external call (scooter and user GETs,
  configs and zone from their caches, hold and clear POSTs), the offer's Redis round
  trip, asyncpg's pool checkout bare and around ``SELECT 1``, and the ride steps'
  statements through ``command_api.repository`` inside whole ``rides`` commands (the
  statements timed by wrappers; the start's and finish's rest is pool, payments call and
  our logic). These include each call's system calls and its event-loop wake-up, which a
  process serving 32 flows at once shares between calls: they are upper bounds for the
  loaded process;
- **the request cycle** (``--cycle``): ours, the Litestar floor and the raw floor
  (``tests.load.floor``) with the three commands replaced by their real answers (so
  what remains is routing, sign-in, the body's decoding and the answer), per flow, in
  process as ``command_cost`` calls them; and the same canned raw app served by uvicorn
  (``python -m tests.load.floor``, ``FLOOR_APP=canned``) over real sockets from 32
  connections (``tests.load.client``): its server process's CPU per flow, which adds
  uvicorn, httptools and the sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from command_api import app as command_app
from command_api import repository as repo
from command_api import rides
from shared.ids import uuid7
from shared.pricing import track_distance_meters
from shared.settings import Settings
from tests.load.command_cost import _call

ROOT = Path(__file__).resolve().parents[2]


def _cpu_us(fn: Callable[[], Any], n: int) -> float:
    """Best of three batches of ``n`` calls of ``fn``: µs of CPU per call."""
    best = float("inf")
    for _ in range(3):
        began = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - began)
    return round(best / n * 1e6, 2)


async def _acpu_us(make: Callable[[int], Awaitable[Any]], n: int) -> float:
    """``n`` awaited calls ``make(i)`` one after another: µs of CPU per call."""
    began = time.process_time()
    for i in range(n):
        await make(i)
    return round((time.process_time() - began) / n * 1e6, 2)


async def _acpu_us_at(make: Callable[[int], Awaitable[Any]], n: int, at: int) -> float:
    """``n`` calls ``make(i)``, ``at`` at a time (as a loaded process runs them): µs of CPU
    per call."""
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            await make(i)

    began = time.process_time()
    await asyncio.gather(*(worker() for _ in range(at)))
    return round((time.process_time() - began) / n * 1e6, 2)


class _Timed:
    """CPU µs of the calls of wrapped functions, by name (one call at a time only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def wrap(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.process_time()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds[name].append(time.process_time() - began)

        return timed

    def us(self) -> dict[str, float]:
        return {k: round(sum(v) / len(v) * 1e6, 2) for k, v in self.seconds.items()}


@contextmanager
def _patched(target: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, old)


async def parts(
    seeded: dict[str, Any], settings: Settings, n: int, concurrency: int
) -> dict[str, Any]:
    """µs of CPU per operation of the floor's flow (see the module's docstring)."""
    from tests.load.floor import _finish_decoder, _offer_decoder, _start_decoder, open_floor

    out: dict[str, Any] = {}
    riders: list[str] = seeded["riders"]
    scooters: list[str] = seeded["scooters"]
    track = seeded["track"]
    finish_body = json.dumps({"track": track}).encode()
    async with open_floor(settings) as floor:
        deps, services = floor.deps, floor.deps.services
        tokens = [seeded["auth"][r].split(" ", 1)[1] for r in riders]
        for token in tokens:  # every rider's token verified once, as before the window
            await floor.verifier.verify(token)

        # --- pure CPU -----------------------------------------------------------------
        cycle = iter(range(10**9))

        def verify() -> None:
            coroutine = floor.verifier.verify(tokens[next(cycle) % len(tokens)])
            try:
                coroutine.send(None)
            except StopIteration:
                return
            raise AssertionError("a cached verification awaited")

        out["sign-in (cached token)"] = _cpu_us(verify, n)
        offer, token = await rides.create_offer(deps, riders[0], scooters[0], owes_nothing=True)
        offer_answer = await command_app._offer(
            await floor.verifier.verify(tokens[0]),
            command_app.CreateOffer(scooter_id=scooters[1]),
            deps,
            floor.rate_limit,
        )
        offer_body = json.dumps({"scooter_id": scooters[0]}).encode()
        start_body = json.dumps({"offer_token": token}).encode()
        out["decode offer body"] = _cpu_us(lambda: _offer_decoder.decode(offer_body), n)
        out["decode start body"] = _cpu_us(lambda: _start_decoder.decode(start_body), n)
        out["decode finish body (10 KB track)"] = _cpu_us(
            lambda: _finish_decoder.decode(finish_body), n // 4
        )
        encoder = msgspec.json.Encoder()
        out["encode offer answer"] = _cpu_us(lambda: encoder.encode(offer_answer), n)
        out["offer token: seal (sign)"] = _cpu_us(lambda: deps.signer.sign(offer), n)
        now = datetime.now(UTC)
        out["offer token: open (verify)"] = _cpu_us(lambda: deps.signer.verify(token, now), n)
        points = _finish_decoder.decode(finish_body).track
        out["track: distance"] = _cpu_us(lambda: track_distance_meters(points, 60.0), n // 4)
        out["track: JSON for the row"] = _cpu_us(lambda: repo.encode_json(points), n // 4)

        # --- over the network: one at a time, and 32 at a time ---------------------------
        at = concurrency
        network: dict[str, Callable[[int], Awaitable[Any]]] = {}
        network["scooter GET (a new id each)"] = lambda i: services.scooter(
            scooters[(i * 7 + 3) % len(scooters)]
        )
        network["user GET"] = lambda i: services.user(riders[i % len(riders)])
        orders = [str(uuid7()) for _ in range(n)]
        network["hold POST"] = lambda i: services.hold(riders[i % len(riders)], orders[i], 100)
        network["clear POST"] = lambda i: services.clear(riders[i % len(riders)], orders[i], 50)
        network["Redis: rate limit + debt mark"] = lambda i: (
            floor.rate_limit.check_and_read_debt_mark(riders[i % len(riders)])
        )

        async def checkout(_: int) -> None:
            async with deps.pool.acquire():
                pass

        async def select_one(_: int) -> None:
            async with deps.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        network["pool checkout + SELECT 1"] = select_one
        # the same calls through our transport alone (httpx Request in, Response out): what
        # the services' own code adds per call is the difference
        get_url = f"{services._base_url}/scooter-data?id={scooters[0]}"
        network["GET through the transport alone (_fetch)"] = lambda _: services._fetch(get_url)
        hold_url = httpx.URL(f"{services._base_url}/hold-money-for-order")
        holds = [
            msgspec.json.encode({"user_id": riders[0], "order_id": str(uuid7()), "amount": 100})
            for _ in range(n + n // 4)
        ]
        network["POST through the transport alone (_post)"] = lambda i: services._post(
            hold_url, holds[i]
        )
        for name, make in network.items():
            one = await _acpu_us(make, n // 4)
            loaded = await _acpu_us_at(make, n, at)
            out[name] = f"{one} / {loaded}"
        profile = await services.user(riders[0])
        out["aiocache set with a ttl (each user GET)"] = await _acpu_us(
            lambda i: services._users.set(riders[i % len(riders)], profile.value, ttl=300), n
        )
        out["configs (cached)"] = await _acpu_us(lambda _: services.configs(), n)
        out["zone (cached)"] = await _acpu_us(lambda _: services.zone(offer.zone_id), n)
        out["pool checkout, bare"] = await _acpu_us(checkout, n)
        async with deps.pool.acquire() as held:
            out["SELECT 1 on a held connection"] = await _acpu_us(
                lambda _: held.fetchval("SELECT 1"), n // 2
            )

        # the commands, 32 at a time, one kind after the other (offers, starts, finishes)
        rides_n = min(n, len(scooters), len(riders))
        made: list[Any] = [None] * rides_n
        started: list[Any] = [None] * rides_n
        principals = [await floor.verifier.verify(tokens[i % len(tokens)]) for i in range(rides_n)]

        async def offer_one(i: int) -> None:
            made[i] = (
                await rides.create_offer(
                    deps, riders[i % len(riders)], scooters[i], owes_nothing=True
                )
            )[0]

        async def start_one(i: int) -> None:
            started[i] = await rides.start_ride(deps, made[i])

        async def finish_one(i: int) -> None:
            await rides.finish_ride(deps, uuid.UUID(started[i].id), points, principals[i])

        per = min(at, len(riders))  # a rider has one ride at a time
        out["offer command, 32 at a time"] = await _acpu_us_at(offer_one, rides_n, per)
        out["start command, 32 at a time"] = await _acpu_us_at(start_one, rides_n, per)
        out["finish command, 32 at a time"] = await _acpu_us_at(finish_one, rides_n, per)

        # the ride steps, whole commands one at a time, statements timed inside
        timed = _Timed()
        principal = await floor.verifier.verify(tokens[0])
        with (
            _patched(repo, "start_ride", timed.wrap("SQL start_ride", repo.start_ride)),
            _patched(repo, "activate_ride", timed.wrap("SQL activate", repo.activate_ride)),
            _patched(repo, "finish_ride", timed.wrap("SQL finish", repo.finish_ride)),
            _patched(repo, "settle_charge", timed.wrap("SQL settle", repo.settle_charge)),
            _patched(services, "hold", timed.wrap("hold POST (in start)", services.hold)),
            _patched(services, "clear", timed.wrap("clear POST (in finish)", services.clear)),
        ):
            rides_n = min(n // 4, len(scooters), len(riders))
            wholes: dict[str, float] = defaultdict(float)
            for i in range(rides_n):
                rider = riders[i % len(riders)]
                principal = await floor.verifier.verify(tokens[i % len(tokens)])
                began = time.process_time()
                offer, _ = await rides.create_offer(
                    deps, rider, scooters[i], owes_nothing=i % 2 == 0
                )
                wholes["offer command (rides.create_offer, tasks)"] += time.process_time() - began
                began = time.process_time()
                order = await rides.start_ride(deps, offer)
                wholes["start command (rides.start_ride)"] += time.process_time() - began
                began = time.process_time()
                await rides.finish_ride(deps, uuid.UUID(order.id), points, principal)
                wholes["finish command (rides.finish_ride, 10 KB track)"] += (
                    time.process_time() - began
                )
        out.update({k: round(v / rides_n * 1e6, 2) for k, v in wholes.items()})
        out.update(timed.us())
    return out


async def cycle(seeded: dict[str, Any], settings: Settings, flows: int) -> dict[str, float]:
    """CPU µs per flow of the request cycle in process: ours, the Litestar and raw floors,
    the commands canned (their real answers), sign-in and decoding real."""
    from tests.load.floor import _answer, canned_app, floor_app

    riders: deque[str] = deque(seeded["riders"])
    finish_body = json.dumps({"track": seeded["track"]}).encode()
    apps: dict[str, Any] = {"ours": command_app.create_app(settings)}
    apps.update({name: floor_app(name, settings) for name in ("litestar", "raw")})
    answers: dict[str, bytes] = {}
    result: dict[str, list[float]] = defaultdict(list)

    async def flow(app: Any, rider: str, token: str = "x" * 400, order_id: str = "") -> None:
        auth = seeded["auth"][rider].encode()
        scooter = seeded["scooters"][0]
        status, body = await _call(app, "/offers", auth, b'{"scooter_id":"%s"}' % scooter.encode())
        assert status == 201, (status, body)
        answers.setdefault("offer", body)
        token = token if order_id else json.loads(body)["token"]
        start = json.dumps({"offer_token": token}).encode()
        status, body = await _call(app, "/orders", auth, start)
        assert status == 201, (status, body)
        answers.setdefault("start", body)
        order_id = order_id or json.loads(body)["id"]
        status, body = await _call(app, f"/orders/{order_id}/finish", auth, finish_body)
        assert status == 200, (status, body)
        answers.setdefault("finish", body)

    async with apps["ours"].lifespan():  # a real flow: the answers to can
        await flow(apps["ours"], riders[0])
    offer = msgspec.json.decode(answers["offer"], type=command_app.OfferAnswer)

    async def offered(*_: Any) -> command_app.OfferAnswer:
        return offer

    async def started(*_: Any) -> tuple[int, bytes]:
        return 201, answers["start"]

    async def finished(*_: Any) -> tuple[int, bytes]:
        return 200, answers["finish"]

    order_id = json.loads(answers["start"])["id"]

    class Canned:  # the driver alone: an app that reads the body and answers at once
        @staticmethod
        async def __call__(scope: Any, receive: Any, send: Any) -> None:
            if scope["path"] == "/offers":
                await _answer(send, 201, answers["offer"])
            elif scope["path"] == "/orders":
                await _answer(send, 201, answers["start"])
            else:
                await canned_app(scope, receive, send)

        @staticmethod
        @asynccontextmanager
        async def lifespan() -> AsyncIterator[None]:
            yield

    apps["driver alone"] = Canned()
    with (
        _patched(command_app, "_offer", offered),
        _patched(command_app, "_start", started),
        _patched(command_app, "_finish", finished),
    ):
        for _ in range(3):
            for name, app in apps.items():
                async with app.lifespan():
                    for rider in list(riders)[:50]:  # warm-up
                        await flow(app, rider, order_id=order_id)
                    began = time.process_time()
                    for i in range(flows):
                        await flow(app, riders[i % len(riders)], order_id=order_id)
                    result[name].append((time.process_time() - began) / flows * 1e6)
    sizes = {k: len(v) for k, v in answers.items()}
    print(f"answers' bytes: {sizes}", flush=True)
    return {name: round(min(values), 1) for name, values in result.items()}


async def served(
    seeded: dict[str, Any], auth: str, port: int, pid: int, args: argparse.Namespace
) -> float:
    """CPU µs per flow of the canned app served by uvicorn (process ``pid``) on ``port``,
    ``concurrency`` connections each running flows one request at a time."""
    from tests.load.client import Pool
    from tests.load.harness import _stat

    flows: int = args.served
    concurrency: int = args.concurrency
    offer = json.dumps({"scooter_id": seeded["scooters"][0]}).encode()
    start = json.dumps({"offer_token": "x" * 400}).encode()
    finish = json.dumps({"track": seeded["track"]}).encode()
    headers = f"{auth}\r\n"
    pool = Pool("127.0.0.1", port, concurrency)
    todo = iter(range(flows))

    async def worker() -> None:
        for _ in todo:
            for path, body in (
                ("/offers", offer),
                ("/orders", start),
                ("/orders/x/finish", finish),
            ):
                status, _ = await pool.request("POST", path, body, headers)
                assert status in (200, 201), status

    todo = iter(range(300))
    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up
    todo = iter(range(flows))
    before = _stat(pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    after = _stat(pid)
    pool.close()
    assert before is not None
    assert after is not None
    return round(float(after[1] - before[1]) / flows * 1e6, 1)


# where a py-spy sample is, by the innermost frame's file that names one (first match from the
# innermost frame out); a sample in C code (msgspec, uvloop) shows as its Python caller
_KINDS = (
    ("asyncpg/", "asyncpg: pool and statements"),
    ("httpx/", "HTTP client: httpx and our transport"),
    ("http_transport.py", "HTTP client: httpx and our transport"),
    ("read_connection.py", "Redis lane"),
    ("offer_token.py", "offer token (AES-GCM)"),
    ("cryptography/", "offer token (AES-GCM)"),
    ("shared/infra/auth.py", "sign-in (cached token)"),
    ("track_distance_meters", "10 KB track: distance, JSON for the row"),
    ("encode_json", "10 KB track: distance, JSON for the row"),
    ("aiocache/", "commands' own Python"),
    ("prometheus_client/", "commands' own Python"),
    ("asyncio/", "asyncio: tasks, futures, shield"),
    ("tests/load/floor.py", "request cycle (raw ASGI), bodies' decoding"),
    ("command_cost.py", "driver (tests.load.command_cost)"),
    ("command_api/", "commands' own Python"),
    ("shared/", "commands' own Python"),
)
_STARTUP = ("importlib._bootstrap", "open_floor", "create_app", "_orders_of")
# innermost frames that are a socket write: the system call, where the process mostly waits
# to run again after waking Postgres, a stub or Redis (its CPU is the kernel's share)
_WRITES = ("Connection._do_execute", "_Connection.send", "_RespProtocol._flush")
WRITE = "socket writes (the system call)"


def shares(profile: Path) -> dict[str, float]:
    """Percent of a raw py-spy profile's samples (``command_cost --profile``) per kind
    of work (:data:`_KINDS`), start-up and the rows' read-back left out."""
    counts: dict[str, int] = defaultdict(int)
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or any(mark in stack for mark in _STARTUP):
            continue
        frames = stack.split(";")
        kind = "the loop: uvloop's C code (epoll, callbacks, protocols)"
        if any(frames[-1].startswith(write) for write in _WRITES):
            counts[WRITE] += int(count)
            continue
        if frames[-1].startswith("Runner.run "):  # no Python frame above the loop's C code
            counts[kind] += int(count)
            continue
        for frame in reversed(frames):
            found = next((k for mark, k in _KINDS if mark in frame), None)
            if found is not None:
                kind = found
                break
        counts[kind] += int(count)
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return {kind: round(100 * n / total, 1) for kind, n in ordered}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.floor_parts")
    parser.add_argument("--n", type=int, default=2_000, help="calls per pure-CPU figure")
    parser.add_argument("--flows", type=int, default=2_000, help="flows per cycle figure")
    parser.add_argument("--riders", type=int, default=400)
    parser.add_argument("--z", type=int, default=10_240, help="bytes of the finish's track")
    parser.add_argument("--cycle", action="store_true", help="also the request cycle")
    parser.add_argument("--served", type=int, default=0, help="flows through uvicorn (0: none)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--shares",
        type=Path,
        help="only print the shares of a raw py-spy profile of the floor (command_cost"
        " --apps raw --profile P) per kind of work",
    )
    args = parser.parse_args()
    if args.shares:
        for kind, percent in shares(args.shares).items():
            print(f"{kind:<50}{percent:>6} %")
        return

    import uvloop

    from tests.load.bench import (
        bench_settings,
        bench_stub_settings,
        running_stack,
        settings_env,
    )
    from tests.load.scenarios import riders_and_scooters, sign_in, track_for
    from tests.ports import free_port

    settings = bench_settings(1, 1).replace(
        db={"pool_min": 2, "pool_max": 10},
        offers={"rate_limit": 10**6},  # one rider asks many offers here
    )
    results: dict[str, Any] = {}
    with running_stack(settings, ("stubs",)) as bench:
        riders, scooters = riders_and_scooters(bench_stub_settings(settings), args.riders)
        auth = asyncio.run(sign_in(settings, list(riders)))
        seeded: dict[str, Any] = {
            "riders": list(riders),
            "scooters": list(scooters),
            "auth": {r: line.split(": ", 1)[1].strip() for r, line in auth.items()},
            "track": track_for(args.z),
        }
        os.environ.update(settings_env(settings))
        uvloop.install()
        results["parts_us"] = asyncio.run(parts(seeded, settings, args.n, args.concurrency))
        if args.cycle:
            results["cycle_us_per_flow"] = asyncio.run(cycle(seeded, settings, args.flows))
        if args.served:
            port = free_port()
            env = {
                **settings_env(settings.replace(serving={"command_port": port})),
                "FLOOR_APP": "canned",
            }
            proc = subprocess.Popen([sys.executable, "-m", "tests.load.floor"], cwd=ROOT, env=env)
            try:
                from scripts.stack import wait_healthy

                wait_healthy(f"http://127.0.0.1:{port}/health/live", proc, 120)
                line = auth[riders[0]].strip()  # "Authorization: Bearer ..."
                results["served_canned_us_per_flow"] = [
                    asyncio.run(served(seeded, line, port, proc.pid, args)) for _ in range(3)
                ]
            finally:
                proc.terminate()
                proc.wait(10)
        if bench.stack.dead():
            raise SystemExit(f"processes died: {bench.stack.dead()}")
    for section, values in results.items():
        print(f"\n{section}")
        if isinstance(values, dict):
            for name, value in values.items():
                print(f"  {name:<50}{value:>10}")
        else:
            print(f"  {values}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
