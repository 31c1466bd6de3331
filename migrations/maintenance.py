"""Scheduled database maintenance, run by the worker (``command_api.worker``).

- :func:`run_partition_maintenance`: pg_partman premakes daily ``orders`` partitions
  and moves the ones past the hot window into the ``archive`` schema; archived tables
  past total retention are then dropped here.
- :func:`prune`: deletes expired offer redemptions, old idempotency keys and
  published outbox rows, in small batches so no statement holds locks for long.

Both are safe to run from several workers at once.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

from migrations.runner import Connection, configure_partitions
from shared.settings import Settings

log = logging.getLogger("migrations.maintenance")

PARENT_TABLE = "public.orders"
ARCHIVE_SCHEMA = "archive"
# An offer redemption is kept this long past the offer's expiry, so a retry that
# arrives just after expiry still finds the claim instead of a fresh offer slot.
REDEMPTION_GRACE = timedelta(hours=1)
DEFAULT_BATCH_SIZE = 5_000
_LOCK_ID = 0x5C007E26  # advisory lock key: "scooters partition maintenance"

# pg_partman's datetime_string (to_char tokens) → strptime tokens; 4.7 names daily
# partitions YYYY_MM_DD, 5.x YYYYMMDD.
_TOKENS = {"YYYY": "%Y", "MM": "%m", "DD": "%d", "HH24": "%H", "MI": "%M", "SS": "%S"}


@dataclasses.dataclass(frozen=True)
class PartitionReport:
    """What one partition maintenance run changed (table counts)."""

    created: int
    archived: int
    dropped: int
    skipped: bool = False  # another session was running maintenance


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """Rows deleted by one prune run, per table."""

    offer_redemptions: int
    idempotency_keys: int
    outbox: int


async def _children(conn: Connection, parent: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass",
        parent,
    )
    return {r["relname"] for r in rows}


async def _archived(conn: Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
        ARCHIVE_SCHEMA,
    )
    return {r["relname"] for r in rows}


def partition_start(name: str, prefix: str, datetime_string: str) -> datetime | None:
    """The start of the day a partition covers, parsed from its name; None if the
    name is not one of pg_partman's for this parent."""
    if not name.startswith(prefix):
        return None
    pattern = datetime_string
    for token, directive in _TOKENS.items():
        pattern = pattern.replace(token, directive)
    try:
        return datetime.strptime(name[len(prefix) :], pattern).replace(tzinfo=UTC)
    except ValueError:
        return None


async def run_partition_maintenance(
    conn: Connection, settings: Settings, *, now: datetime | None = None
) -> PartitionReport:
    """Premake partitions, archive those past the hot window, drop archived ones past
    retention. ``conn`` must not be inside a transaction."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_ID):
        return PartitionReport(created=0, archived=0, dropped=0, skipped=True)
    try:
        before = await _children(conn, PARENT_TABLE)
        archived_before = await _archived(conn)
        await configure_partitions(conn, settings)  # pushes settings, runs pg_partman
        after = await _children(conn, PARENT_TABLE)
        archived_now = await _archived(conn)

        datetime_string = await conn.fetchval(
            "SELECT datetime_string FROM partman.part_config WHERE parent_table = $1",
            PARENT_TABLE,
        )
        prefix = PARENT_TABLE.split(".", 1)[1] + "_p"
        # Same rule as pg_partman's: a partition goes once its whole day is older
        # than the limit.
        limit = (now or datetime.now(UTC)) - timedelta(days=settings.maintenance.retention_days)
        dropped = 0
        for name in sorted(archived_now):
            start = partition_start(name, prefix, datetime_string)
            if start is None or start + timedelta(days=1) > limit:
                continue
            await conn.execute(f"DROP TABLE IF EXISTS {ARCHIVE_SCHEMA}.{_quote(name)}")
            log.info("dropped %s.%s (past retention)", ARCHIVE_SCHEMA, name)
            dropped += 1
        return PartitionReport(
            created=len(after - before),
            archived=len(archived_now - archived_before),
            dropped=dropped,
        )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def _delete_batched(
    conn: Connection, table: str, condition: str, arg: object, batch_size: int
) -> int:
    """Delete rows of ``table`` matching ``condition`` ($2), ``batch_size`` at a time.

    Rows locked by a concurrent writer are skipped, to be taken on the next run.
    """
    # ``table`` and ``condition`` are constants of this module, never input.
    query = (
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {table} WHERE {condition} LIMIT $1 FOR UPDATE SKIP LOCKED))"
    )
    total = 0
    while True:
        status = await conn.execute(query, batch_size, arg)
        deleted = int(status.rsplit(" ", 1)[1])
        total += deleted
        if deleted < batch_size:
            return total


async def prune(
    conn: Connection, settings: Settings, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> PruneReport:
    """Delete what is due: offer redemptions an hour past expiry, idempotency keys
    older than their TTL, outbox rows published longer ago than ``outbox_keep_seconds``.
    ``conn`` should not be inside a transaction, so each batch commits on its own."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    redemptions = await _delete_batched(
        conn,
        "offer_redemptions",
        "expires_at < now() - $2::interval",
        REDEMPTION_GRACE,
        batch_size,
    )
    keys = await _delete_batched(
        conn,
        "idempotency_keys",
        "created_at < now() - $2::interval",
        timedelta(seconds=settings.maintenance.idempotency_ttl_seconds),
        batch_size,
    )
    outbox = await _delete_batched(
        conn,
        "outbox",
        "published_at < now() - $2::interval",
        timedelta(seconds=settings.maintenance.outbox_keep_seconds),
        batch_size,
    )
    return PruneReport(offer_redemptions=redemptions, idempotency_keys=keys, outbox=outbox)


__all__ = [
    "PartitionReport",
    "PruneReport",
    "partition_start",
    "prune",
    "run_partition_maintenance",
]
