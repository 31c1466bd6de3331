"""Load-test plumbing: arrival schedules, latency records, CPU per process, reports."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.load.client import HttpError, content_length

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Recorder:
    """Latencies per endpoint and errors by kind, for one phase of a run."""

    def __init__(self) -> None:
        self.latencies: defaultdict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.flows = 0
        self.schedule_lag: list[float] = []  # how late the generator started each flow

    async def call(
        self, endpoint: str, request: Awaitable[tuple[int, bytes]], ok: Iterable[int] = (200, 201)
    ) -> tuple[int, bytes] | None:
        """Time ``request``; record an error (by status or exception) and return None on one."""
        started = time.perf_counter()
        try:
            status, body = await request
        except (HttpError, OSError, TimeoutError) as exc:
            self.errors[f"{endpoint}: {type(exc).__name__}"] += 1
            return None
        self.latencies[endpoint].append(time.perf_counter() - started)
        if status not in ok:
            self.errors[f"{endpoint}: HTTP {status} {_code(body)}"] += 1
            return None
        return status, body


def _code(body: bytes) -> str:
    """The problem-details code of an error answer, for grouping errors by kind."""
    marker = body.find(b'"code":"')
    if marker < 0:
        return ""
    end = body.find(b'"', marker + 8)
    return body[marker + 8 : end].decode(errors="replace")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def latency_table(recorder: Recorder, seconds: float) -> dict[str, dict[str, float]]:
    """Throughput and p50/p95/p99/max (ms) per endpoint."""
    table: dict[str, dict[str, float]] = {}
    for endpoint, values in sorted(recorder.latencies.items()):
        values.sort()
        table[endpoint] = {
            "count": len(values),
            "rps": round(len(values) / seconds, 1),
            "p50_ms": round(percentile(values, 0.50) * 1000, 2),
            "p95_ms": round(percentile(values, 0.95) * 1000, 2),
            "p99_ms": round(percentile(values, 0.99) * 1000, 2),
            "max_ms": round(values[-1] * 1000, 2),
        }
    return table


async def open_loop(
    rate: float, duration: float, flow: Callable[[], Coroutine[Any, Any, None]], recorder: Recorder
) -> float:
    """Start ``flow`` at a fixed arrival rate, whatever the answers' speed; returns seconds."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    started = loop.time()
    total = int(rate * duration)
    for i in range(total):
        due = started + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            recorder.schedule_lag.append(-delay)
        task = loop.create_task(flow())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    return loop.time() - started


async def closed_loop(
    concurrency: int, duration: float, flow: Callable[[], Awaitable[None]]
) -> float:
    """``concurrency`` workers run ``flow`` back to back for ``duration``; returns seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration

    async def worker() -> None:
        while loop.time() < deadline:
            await flow()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return loop.time() - started


# --- CPU per process --------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core; not idle or iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


# "postgres: 15/main: USER DATABASE HOST(PORT) ACTIVITY" (or [local]) names a client backend
_BACKEND = re.compile(r"^postgres: \S+: \S+ (\S+) (?:\S+\(\d+\)|\[local\])")


def postgres_kind(cmdline: str, database: str) -> str:
    """Which Postgres figure a process's CPU goes to: ``postgres`` (a backend of the
    benchmark's ``database``), ``postgres background`` (the server's own processes:
    WAL writer, checkpointer, ...; shared by every database), ``postgres others``
    (backends of other databases: other jobs on the machine, not counted as ours)."""
    match = _BACKEND.match(cmdline)
    if match is None:
        return "postgres background"
    return "postgres" if match.group(1) == database else "postgres others"


@dataclass
class CpuMeter:
    """CPU seconds used by named process trees (and by name, for Postgres and Redis).

    With ``database`` set, Postgres is split by process title (:func:`postgres_kind`), so
    other jobs' queries on a shared server are not counted; with ``redis_port`` set, only
    the Redis server on that port is (a shared one still serves other jobs too).
    """

    roots: dict[str, int]
    by_name: dict[str, str] = field(
        default_factory=lambda: {"postgres": "postgres", "redis": "redis-server"}
    )
    database: str | None = None
    redis_port: int | None = None  # count only the redis-server listening there
    _seen: dict[tuple[int, str], float] = field(default_factory=dict)

    def _by_name_kinds(self) -> list[str]:
        kinds = list(self.by_name)
        if self.database is not None and "postgres" in self.by_name:
            kinds += ["postgres background", "postgres others"]
        return kinds

    def _by_name_kind(self, pid: int) -> str | None:
        """Which by-name figure ``pid`` counts in, if any."""
        comm = _comm(pid)
        for name, wanted in self.by_name.items():
            if comm != wanted:
                continue
            if name == "postgres" and self.database is not None:
                return postgres_kind(_cmdline(pid), self.database)
            # other jobs' Redis servers come and go on a shared machine
            if (
                name == "redis"
                and self.redis_port is not None
                and not _cmdline(pid).rstrip().endswith(f":{self.redis_port}")
            ):
                return None
            return name
        return None

    def sample(self) -> dict[str, float]:
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(int(entry))) is not None:
                stats[int(entry)] = stat
        children: defaultdict[int, list[int]] = defaultdict(list)
        for pid, (ppid, _) in stats.items():
            children[ppid].append(pid)
        usage: dict[str, float] = {}
        roots = set(self.roots.values())
        for name, root in self.roots.items():
            total, todo = 0.0, [root]
            while todo:
                pid = todo.pop()
                if pid in stats:
                    total += stats[pid][1]
                    # a root's own tree only: the generator's children are the stack
                    todo.extend(c for c in children[pid] if c not in roots)
            usage[name] = total
        for pid, (_, cpu) in stats.items():
            kind = self._by_name_kind(pid)
            if kind is not None:
                # a process that ended keeps its last count: sums never go down
                self._seen[(pid, kind)] = max(cpu, self._seen.get((pid, kind), 0.0))
        for name in self._by_name_kinds():
            usage[name] = 0.0
        for (_, name), cpu in self._seen.items():
            usage[name] += cpu
        usage["machine (all)"] = _machine_busy_seconds()
        return usage


def rss_bytes(root: int) -> int:
    """Resident memory of a process and its descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)] = stat[0]
    tree, total = {root}, 0
    for pid in sorted(parents):
        if parents[pid] in tree:
            tree.add(pid)
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def cpu_share(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Cores used per process over the interval (1.0 = one full core)."""
    return {name: round((after[name] - before.get(name, 0.0)) / seconds, 3) for name in after}


# what runs the service; the rest (stubs, load generator, ceiling, machine) is the bench
OURS = (
    "command_api",
    "worker",
    "projector",
    "query_api",
    "query_api x2",
    "postgres",
    "postgres background",
    "redis",
    "redis (own)",
)


def cpu_ms_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """CPU milliseconds per flow (or request) of each process over the interval, and
    ``ours``: the sum over :data:`OURS` (not the stubs, the load generator or a ceiling)."""
    if count <= 0:
        return {}
    per = {
        name: round((after[name] - before.get(name, 0.0)) * 1000 / count, 3)
        for name in after
        if name != "machine (all)"
    }
    per["ours"] = round(sum(v for name, v in per.items() if name in OURS), 3)
    per["machine (all)"] = round(
        (after["machine (all)"] - before["machine (all)"]) * 1000 / count, 3
    )
    return per


# --- Postgres work per flow ---------------------------------------------------------------------

_PG_SAMPLE = """
SELECT d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted,
       pg_current_wal_lsn() - '0/0'::pg_lsn AS wal_lsn,
       w.wal_records, w.wal_fpi, w.wal_bytes
FROM pg_stat_database d, pg_stat_wal w
WHERE d.datname = current_database()
"""
# a backend sends its counters to the statistics at most once a second (PostgreSQL 15:
# PGSTAT_MIN_INTERVAL); one that goes idle sooner sends them PGSTAT_IDLE_INTERVAL (10 s)
# later. Read 1.2 s after the work, a run missed up to a second of its pools' commits
# (±0.4 commits per flow between runs of the same code, "i13proj"): wait them out.
PG_STATS_DELAY_SECONDS = 11.0


async def pg_sample(dsn: str) -> dict[str, float]:
    """Counters of the benchmark's own database (``pg_stat_database``: commits, rollbacks,
    rows inserted/updated/deleted) and of the whole cluster's WAL (``pg_current_wal_lsn``
    in bytes, and ``pg_stat_wal``). Read them ``PG_STATS_DELAY_SECONDS`` after the work,
    and before the database is dropped. The sample's own connection adds one commit."""
    import asyncpg

    for attempt in range(40):  # a server shared with other jobs may be full for a moment
        try:
            conn = await asyncpg.connect(dsn)
            break
        except asyncpg.TooManyConnectionsError:
            if attempt == 39:
                raise
            await asyncio.sleep(0.5)
    try:
        row = await conn.fetchrow(_PG_SAMPLE)
    finally:
        await conn.close()
    assert row is not None
    return {key: float(value) for key, value in row.items()}


def pg_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Postgres work per flow (or request): commits, row writes, WAL bytes (cluster-wide:
    other databases' writes on the same server count too)."""
    if count <= 0:
        return {}
    d = {key: after[key] - before[key] for key in after}
    return {
        "commits": round((d["xact_commit"] - 1) / count, 3),  # minus the sample's own
        "rollbacks": round(d["xact_rollback"] / count, 3),
        "row_writes": round((d["tup_inserted"] + d["tup_updated"] + d["tup_deleted"]) / count, 3),
        "rows_inserted": round(d["tup_inserted"] / count, 3),
        "rows_updated": round(d["tup_updated"] / count, 3),
        "rows_deleted": round(d["tup_deleted"] / count, 3),
        "wal_bytes": round(d["wal_lsn"] / count, 1),
        "wal_records": round(d["wal_records"] / count, 2),
        "wal_full_page_images": round(d["wal_fpi"] / count, 3),
    }


async def scrape_metric(host: str, port: int, name: str) -> dict[str, float]:
    """Samples of one Prometheus metric family from ``/metrics`` (label string → value)."""
    from tests.load.client import Connection

    conn = Connection(host, port)
    try:
        status, body = await conn.request("GET", "/metrics")
    finally:
        conn.close()
    samples: dict[str, float] = {}
    if status != 200:
        return samples
    for line in body.decode().splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[key] = float(value)
    return samples


def print_report(title: str, report: dict[str, Any]) -> None:
    """A human-readable summary of one phase."""
    print(f"\n== {title}")
    for key in (
        "offered",
        "seconds",
        "flows_per_s",
        "views_per_s",
        "ratio_to_ceiling",
        "cpu_ratio_to_ceiling",
    ):
        if key in report:
            print(f"   {key}: {report[key]}")
    print(f"   {'endpoint':<28}{'count':>8}{'rps':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")
    for endpoint, row in report["latency"].items():
        print(
            f"   {endpoint:<28}{row['count']:>8}{row['rps']:>9}{row['p50_ms']:>9}"
            f"{row['p95_ms']:>9}{row['p99_ms']:>9}{row['max_ms']:>9}"
        )
    print(f"   errors: {report['errors'] or 'none'}")
    print(f"   cpu (cores): {report['cpu']}")
    if "cpu_ms_per" in report:
        print(f"   cpu ms per {report['per']}: {report['cpu_ms_per']}")
    if "postgres_per" in report:
        print(f"   postgres per {report['per']}: {report['postgres_per']}")
    for key in ("schedule_lag_p99_ms", "projection_lag", "extra"):
        if key in report:
            print(f"   {key}: {report[key]}")


# --- the read phase's closed loop: callbacks, no tasks ------------------------------------------

# what the next request of a read loop is: (endpoint, the whole request as bytes, and a
# coroutine function to run before sending it, or None)
NextRead = tuple[str, bytes, Callable[[], Awaitable[None]] | None]


class _LoopConnection(asyncio.Protocol):
    """One keep-alive connection of :func:`read_loop`: it sends its next request from the
    callback that read the answer to the previous one (no task, no future per request)."""

    def __init__(self, driver: _ReadLoop) -> None:
        self.driver = driver
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.endpoint = ""
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.endpoint:  # a request was waiting for its answer
            self.driver.failed(self, f"{self.endpoint}: HttpError")

    def send(self, endpoint: str, raw: bytes) -> None:
        assert self.transport is not None
        self.endpoint, self.buffer = endpoint, b""
        self.sent_at = time.perf_counter()
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buffer
            return
        length = content_length(buffer, end)
        if length < 0:  # not an answer this loop can read: drop the connection
            if self.transport is not None:
                self.transport.close()
                self.transport = None
            self.driver.failed(self, f"{self.endpoint}: HttpError")
            return
        if len(buffer) < end + 4 + length:
            self.buffer = buffer
            return
        endpoint, self.endpoint, self.buffer = self.endpoint, "", b""
        self.driver.answered(self, endpoint, int(buffer[9:12]), buffer[end + 4 : end + 4 + length])


class _ReadLoop:
    def __init__(
        self,
        host: str,
        port: int,
        next_read: Callable[[], NextRead],
        recorder: Recorder,
        deadline: float,
        ok: Iterable[int],
    ) -> None:
        self.host, self.port = host, port
        self.next_read = next_read
        self.recorder = recorder
        self.deadline = deadline
        self.ok = frozenset(ok)
        self.loop = asyncio.get_running_loop()
        self.running = 0
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, connections: int) -> None:
        for _ in range(connections):
            _, conn = await self.loop.create_connection(
                lambda: _LoopConnection(self), self.host, self.port
            )
            self.running += 1
            self.next(conn)

    def next(self, conn: _LoopConnection) -> None:
        """Send ``conn``'s next request, or retire it once the window is over."""
        if self.loop.time() >= self.deadline:
            self._retire(conn)
            return
        endpoint, raw, before = self.next_read()
        if before is None and conn.transport is not None:
            conn.send(endpoint, raw)
            return
        task = self.loop.create_task(self._send_after(conn, endpoint, raw, before))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_after(
        self,
        conn: _LoopConnection,
        endpoint: str,
        raw: bytes,
        before: Callable[[], Awaitable[None]] | None,
    ) -> None:
        if before is not None:
            await before()
        if conn.transport is None:  # lost: a new connection takes its place
            try:
                _, conn = await self.loop.create_connection(
                    lambda: _LoopConnection(self), self.host, self.port
                )
            except OSError as exc:
                self.recorder.errors[f"{endpoint}: {type(exc).__name__}"] += 1
                self.recorder.flows += 1
                self._retire(conn)
                return
        conn.send(endpoint, raw)

    def answered(self, conn: _LoopConnection, endpoint: str, status: int, body: bytes) -> None:
        rec = self.recorder
        rec.latencies[endpoint].append(time.perf_counter() - conn.sent_at)
        if status not in self.ok:
            rec.errors[f"{endpoint}: HTTP {status} {_code(body)}"] += 1
        rec.flows += 1
        self.next(conn)

    def failed(self, conn: _LoopConnection, error: str) -> None:
        conn.endpoint = ""
        self.recorder.errors[error] += 1
        self.recorder.flows += 1
        self.next(conn)

    def _retire(self, conn: _LoopConnection) -> None:
        if conn.transport is not None:
            conn.transport.close()
        self.running -= 1
        if self.running == 0 and not self.finished.done():
            self.finished.set_result(None)


async def read_loop(
    host: str,
    port: int,
    connections: int,
    duration: float,
    next_read: Callable[[], NextRead],
    recorder: Recorder,
    ok: Iterable[int] = (200,),
) -> float:
    """A closed loop of reads over ``connections`` keep-alive connections for ``duration``
    seconds; returns the seconds until the last answer.

    What :func:`closed_loop` with the HTTP client's ``Pool`` does for the query side's max
    phases, at a fraction of the generator's CPU per request: each connection sends its
    next request (``next_read()``: endpoint, raw request bytes, and an optional coroutine
    to await first) from the callback that read the previous answer, with no task or
    future per request. Records into ``recorder`` as :meth:`Recorder.call` does: latency
    per endpoint, a non-``ok`` status or a lost connection as an error, every request as a
    flow. Answers must carry a Content-Length (ours and uvicorn's do).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    driver = _ReadLoop(host, port, next_read, recorder, started + duration, ok)
    await driver.start(connections)
    await driver.finished
    if driver.tasks:
        await asyncio.wait(driver.tasks)
    return loop.time() - started
