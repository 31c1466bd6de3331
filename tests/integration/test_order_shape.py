"""The order's shape and lifecycle agree between Python and Postgres.

``shared.domain.Order`` is the order written once; the ``orders`` table and the SQL type
``order_snapshot`` (what the ride steps return and the outbox carries) must match it
field by field, name and type, and the CHECK constraints and refusal codes of the
database must be the names of ``shared.lifecycle``. Any disagreement fails here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from query_api.screens import OrderScreen
from shared.domain import NewOrder, Order, OrderFields
from shared.events import UserSummarySnapshot
from shared.lifecycle import OperationKind, OperationState, OrderStatus, PaymentStatus, Refusal
from shared.views import OrderView

# columns of `orders` that are not part of the stored order's snapshot
NOT_IN_SNAPSHOT = {
    "track": "json",
    "track_jsonb": "jsonb",  # tracks of rides finished before migration 0012 (ADR 0021)
    "pricing": "jsonb",
    "updated_at": "timestamp with time zone",
}
UUIDS = {"id", "offer_id"}  # ids are text in the Structs (as the JSON events carry them)


def pg_type_of(name: str, info: msgspec.inspect.Type, *, ints: str = "bigint") -> tuple[str, bool]:
    """The Postgres type a Struct field must have, and whether it may be NULL."""
    nullable = False
    if isinstance(info, msgspec.inspect.UnionType):
        rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        assert len(rest) == 1, f"{name}: one type or None"
        info, nullable = rest[0], True
    if isinstance(info, msgspec.inspect.StrType):
        return ("uuid" if name in UUIDS else "text"), nullable
    if isinstance(info, msgspec.inspect.EnumType):
        return "text", nullable
    if isinstance(info, msgspec.inspect.IntType):
        return ints, nullable  # money, durations, distances: 64-bit end to end
    if isinstance(info, msgspec.inspect.DateTimeType):
        return "timestamp with time zone", nullable
    if isinstance(info, msgspec.inspect.StructType):
        return "jsonb", nullable
    raise AssertionError(f"{name}: no Postgres type for {info}")


def struct_columns(cls: type[msgspec.Struct], *, ints: str = "bigint") -> list[tuple[str, str]]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return [(f.name, pg_type_of(f.name, f.type, ints=ints)[0]) for f in info.fields]


async def composite(conn: asyncpg.Connection, type_name: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
        " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        type_name,
    )
    return [(r["attname"], r["type"]) for r in rows]


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


async def test_snapshot_type_is_the_order_struct(conn: asyncpg.Connection) -> None:
    """Same names, same order (the snapshot is built with ROW(...)), same types."""
    assert await composite(conn, "order_snapshot") == struct_columns(Order)


async def test_orders_table_is_the_order_struct(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = 'orders'"
    )
    table = {r["column_name"]: (r["data_type"], r["is_nullable"] == "YES") for r in rows}
    info = msgspec.inspect.type_info(NewOrder)
    assert isinstance(info, msgspec.inspect.StructType)
    expected = {f.name: pg_type_of(f.name, f.type) for f in info.fields}
    expected |= {name: (pg, name.startswith("track")) for name, pg in NOT_IN_SNAPSHOT.items()}
    assert table == expected
    assert set(NewOrder.__struct_fields__) - set(Order.__struct_fields__) == {"pricing"}


async def test_summary_snapshot_type_is_its_struct(conn: asyncpg.Connection) -> None:
    found = await composite(conn, "summary_snapshot")
    expected = struct_columns(UserSummarySnapshot, ints="int")
    assert [name for name, _ in found] == [name for name, _ in expected]
    for (name, pg), (_, want) in zip(found, expected, strict=True):
        assert pg.startswith(want) or (want == "int" and pg in ("integer", "bigint")), name


def test_views_and_screens_are_derived_from_the_order() -> None:
    for cls in (Order, OrderView, OrderScreen):
        assert issubclass(cls, OrderFields)
    # the receipt is built from what is stored with the order (shared/receipt.py)
    assert set(OrderView.__struct_fields__) - set(Order.__struct_fields__) == {
        "schema",
        "receipt",
    }


async def test_status_checks_are_the_lifecycle_names(conn: asyncpg.Connection) -> None:
    async def allowed(table: str, column: str) -> set[str]:
        defs = await conn.fetch(
            "SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)"
            " WHERE c.conrelid = $1::regclass AND c.contype = 'c' AND a.attname = $2",
            table,
            column,
        )
        assert len(defs) == 1, (table, column)
        return set(re.findall(r"'(\w+)'::text", defs[0]["def"]))

    assert await allowed("orders", "status") == set(OrderStatus)
    assert await allowed("orders", "payment_status") == set(PaymentStatus)
    assert await allowed("payment_operations", "kind") == set(OperationKind)
    assert await allowed("payment_operations", "state") == set(OperationState)


async def test_the_ride_steps_decide_nothing(conn: asyncpg.Connection) -> None:
    """The start step refuses with the lifecycle's refusal codes, and no step names an
    order or payment status: the statuses come in as parameters (shared.lifecycle)."""
    bodies = {
        r["proname"]: r["prosrc"]
        for r in await conn.fetch(
            "SELECT proname, prosrc FROM pg_proc WHERE proname = ANY($1::text[])",
            ["start_ride", "activate_ride", "reject_start", "finish_ride", "settle_charge"],
        )
    }
    assert len(bodies) == 5
    assert set(re.findall(r"RAISE EXCEPTION '(\w+)'", bodies["start_ride"])) == set(Refusal)
    # 'pending' is also the state of an owed operation (payment_operations.state)
    statuses = set(OrderStatus) | set(PaymentStatus) - {PaymentStatus.PENDING}
    for name, body in bodies.items():
        assert not {s for s in statuses if f"'{s}'" in body}, name
