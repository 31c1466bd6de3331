"""``python -m tests.load.projector_idle``: what an idle projector costs, and how soon it
projects the first event after a quiet spell (issue 13, ADR 0027).

Starts only the projector (own database and key prefix, as the load tests), lets it
project a warm-up, then reads from /proc, over ``--idle`` seconds with nothing to do, the
projector's CPU and that of the run database's Postgres backends (its pool's and, before
ADR 0027, its LISTEN connection's). Then writes ``--events`` single events, each after a
random quiet spell of 0.2 to 0.6 s and in its own transaction, and reports their projection
lag (``published_at - created_at``, read from the outbox). Compare settings with their
``SCOOTERS_*`` variables (``SCOOTERS_PROJECTOR_POLL_SECONDS``), or two checkouts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid

import asyncpg

from shared.events import event_encoder
from tests.load.bench import bench_settings, running_stack
from tests.load.commits import _backends_cpu
from tests.load.harness import _stat
from tests.load.projector_cost import _INSERT, _clear, events_of_ride, lag, write_events


async def first_event_lags(dsn: str, count: int) -> list[float]:
    """The lag in seconds of ``count`` events, each written alone after a quiet spell."""
    conn = await asyncpg.connect(dsn)
    lags: list[float] = []
    try:
        for n in range(count):
            await asyncio.sleep(random.uniform(0.2, 0.6))
            tag, event = events_of_ride(n)[0]
            outbox_id = await conn.fetchval(
                _INSERT + " RETURNING id",
                tag,
                uuid.UUID(event.order.id),
                event.order.user_id,
                event.order.version,
                event_encoder.encode(event).decode(),
            )
            for _ in range(2_000):
                found = await conn.fetchval(
                    "SELECT extract(epoch FROM published_at - created_at)::float8"
                    " FROM outbox WHERE id = $1",
                    outbox_id,
                )
                if found is not None:
                    lags.append(found)
                    break
                await asyncio.sleep(0.002)
    finally:
        await conn.close()
    return lags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.projector_idle")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds measured idle")
    parser.add_argument("--events", type=int, default=30, help="single events after a pause")
    args = parser.parse_args(argv)
    settings = bench_settings(1, 1)
    with running_stack(settings, ("projector",)) as bench:
        pid = bench.pids["projector"]
        database = settings.db.url.rsplit("/", 1)[1]
        asyncio.run(write_events(settings.db.url, 20.0, 2.0))  # warm-up: until it projects
        asyncio.run(lag(settings.db.url))
        asyncio.run(_clear(settings.db.url))
        time.sleep(2.0)
        before, pg_before, started = _stat(pid), _backends_cpu(database), time.monotonic()
        time.sleep(args.idle)
        after, pg_after, seconds = _stat(pid), _backends_cpu(database), time.monotonic() - started
        assert before is not None
        assert after is not None
        lags = sorted(asyncio.run(first_event_lags(settings.db.url, args.events)))
        print(
            f"poll {settings.read.projector_poll_seconds} s, idle {seconds:.1f} s: projector "
            f"{(after[1] - before[1]) * 1000 / seconds:.2f} CPU-ms/s, its Postgres backends "
            f"{(pg_after - pg_before) * 1000 / seconds:.2f} CPU-ms/s; first-event lag over "
            f"{len(lags)} events: p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
            f"max {lags[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
