"""The stubs' data set, ledger and fault parsing, without a server."""

from __future__ import annotations

import msgspec
import pytest

from stubs import DataSet
from stubs._faults import UnknownService, faults_from_json
from stubs._ledger import Ledger, PaymentConflict


def data_set(seed: int = 42, scooters: int = 10_000) -> DataSet:
    return DataSet(seed=seed, scooters=scooters, zones=10, users=100_000)


def test_same_seed_same_records_different_seed_different_records() -> None:
    ids = [f"user-{n}" for n in range(21, 121)]
    first, again, other = data_set(), data_set(), data_set(seed=7)
    assert [first.user(i) for i in ids] == [again.user(i) for i in ids]
    assert [first.user(i) for i in ids] != [other.user(i) for i in ids]


def test_fixed_records_do_not_depend_on_the_seed() -> None:
    for seed in (1, 42, 1_000):
        data = data_set(seed)
        assert data.zone("zone-1") == data_set().zone("zone-1")
        assert data.scooter("scooter-1") == data_set().scooter("scooter-1")
        assert data.user("user-5") == data_set().user("user-5")


def test_ids_outside_the_configured_counts_do_not_exist() -> None:
    data = data_set(scooters=5)
    assert data.scooter("scooter-5") is not None
    assert data.scooter("scooter-6") is None
    assert data.scooter("scooter-99999999999999999999") is None
    assert data.zone("scooter-1") is None


def test_about_five_percent_of_users_owe_money() -> None:
    data = data_set()
    users = [data.user(f"user-{n}") for n in range(21, 10_021)]
    debtors = sum(1 for user in users if user is not None and user.current_debt > 0)
    assert 0.03 < debtors / len(users) < 0.07


def test_ledger_keeps_one_hold_and_one_charge_per_order() -> None:
    ledger = Ledger()
    ledger.hold(user_id="user-1", order_id="o", amount=300)
    ledger.hold(user_id="user-1", order_id="o", amount=300)
    ledger.clear(user_id="user-1", order_id="o", amount=48)
    ledger.clear(user_id="user-1", order_id="o", amount=48)
    with pytest.raises(PaymentConflict):
        ledger.clear(user_id="user-1", order_id="o", amount=50)
    account = ledger.account("o")
    assert account is not None
    assert [(e.kind, e.amount) for e in account.entries] == [
        ("hold", 300),
        ("charge", 48),
        ("release", 252),
    ]


def test_fault_list_from_json() -> None:
    [change] = faults_from_json('[{"service": "payments", "outage": true}]')
    assert (change.service, change.outage, change.latency_ms) == ("payments", True, None)
    with pytest.raises(UnknownService):
        faults_from_json('[{"service": "weather"}]')
    with pytest.raises(msgspec.ValidationError):
        faults_from_json('[{"service": "users", "error_rate": 2}]')
