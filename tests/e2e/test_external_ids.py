"""Strings in the external services' answers are bounded (issue 8): an id that is no id
(1 MB long, NUL, a line break, an escape sequence, empty) in an answer of scooters,
zones, users or payments is that service answering nonsense, so its degradation policy
of DOMAIN.md applies, with a log line and ``scooters_external_nonsense_total``; the value
reaches no offer, token, log line or store. The stubs' ``answer_fields`` fault makes
them answer such values."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from command_api.external import ExternalServices, ServiceError, make_http_client
from shared.settings import Settings
from tests.e2e.conftest import Ids, command_client, new_offer, set_fault
from tests.e2e.test_failures import (
    assert_unavailable,
    base_tariff_settings,
    inputs,
    per_minute,
    stub_get,
)

pytestmark = pytest.mark.usefixtures("reset_faults")

NO_IDS = ["z" * 1_000_000, "zone-1\n", "zone\x001", "zone-\x1b[31m1", "", "zone 1", "zöne-1"]
NO_ID_NAMES = ["1MB", "line-break", "nul", "escape", "empty", "space", "not-ascii"]


def nonsense_count(service: str) -> float:
    value = REGISTRY.get_sample_value("scooters_external_nonsense_total", {"service": service})
    return value or 0.0


@pytest.mark.parametrize("zone_id", NO_IDS, ids=NO_ID_NAMES)
async def test_scooters_answering_a_zone_id_that_is_no_id_refuse_the_offer_with_retry_after(
    api: AsyncTestClient[Any], stubs: str, ids: Ids, base_settings: Settings, zone_id: str
) -> None:
    rider, scooter = ids.rider(), ids.scooter()
    before = nonsense_count("scooters")
    await set_fault(stubs, "scooters", answer_fields={"zone_id": zone_id})

    response = await api.post("/offers", json={"user_id": rider, "scooter_id": scooter})

    assert_unavailable(response, base_settings, "scooters")  # critical: 503, Retry-After
    assert nonsense_count("scooters") == before + 1
    assert len(response.content) < 1000
    assert "zone-1" not in response.json()["detail"]  # the value is not echoed

    await set_fault(stubs, "scooters", answer_fields={})
    await new_offer(api, rider, scooter)  # and works again as soon as it answers sense


@pytest.mark.parametrize("field", ["id", "zone_id"])
async def test_scooters_answering_an_oversized_id_field_is_nonsense(
    api: AsyncTestClient[Any], stubs: str, ids: Ids, base_settings: Settings, field: str
) -> None:
    await set_fault(stubs, "scooters", answer_fields={field: "s" * 65})
    response = await api.post("/offers", json={"user_id": ids.rider(), "scooter_id": ids.scooter()})
    assert_unavailable(response, base_settings, "scooters")


async def test_scooters_answering_for_another_scooter_is_nonsense(
    api: AsyncTestClient[Any], stubs: str, ids: Ids, base_settings: Settings
) -> None:
    """break8 (issue 8): an answer about another scooter than asked was priced as ours."""
    asked, other = ids.scooter(), ids.scooter()
    before = nonsense_count("scooters")
    await set_fault(stubs, "scooters", answer_fields={"id": other})
    response = await api.post("/offers", json={"user_id": ids.rider(), "scooter_id": asked})
    assert_unavailable(response, base_settings, "scooters")
    assert nonsense_count("scooters") == before + 1


@pytest.mark.parametrize("zone_id", NO_IDS[:4], ids=NO_ID_NAMES[:4])
async def test_zones_answering_an_id_that_is_no_id_price_at_the_base_tariff(
    base_settings: Settings, database: str, stubs: str, ids: Ids, zone_id: str
) -> None:
    rider = ids.rider(has_subscribtion=False, trusted=False, total_debt=0)
    scooter = ids.scooter()
    data = stub_get(stubs, "/scooter-data", scooter)
    settings = base_tariff_settings(base_settings)  # a fresh app: nothing cached
    before = nonsense_count("zones")
    await set_fault(stubs, "zones", answer_fields={"id": zone_id})
    async with command_client(settings) as api:
        offer = await new_offer(api, rider, scooter)
    assert (offer["price_per_minute"], offer["price_unlock"], offer["deposit"]) == (
        per_minute(7, data["charge"], 2.0, 0.75),
        33,
        444,
    )
    assert inputs(settings, offer).zone_source == "base_tariff"
    assert offer["zone_id"] == data["zone_id"]
    assert nonsense_count("zones") == before + 1


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "u" * 1_000_000},
        {"id": "user-1\r\nX: 1"},
        {"last_payment_status": "ok\n"},
        {"id": "user-1"},  # break8: another rider's profile was used as is
        {"rides_count": -5},  # break8: taken as is
    ],
    ids=["1MB-id", "crlf-id", "status-line-break", "another-user", "negative-rides"],
)
async def test_users_answering_nonsense_price_an_unseen_rider_conservatively(
    api: AsyncTestClient[Any],
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    fields: dict[str, Any],
) -> None:
    """An id that is no id, a line break in a field, another rider's profile or an absurd
    count: the users service answered nonsense (DOMAIN.md's policy: a rider we have not
    seen is priced conservatively), counted once."""
    rider = ids.rider(has_subscribtion=True, trusted=True)  # never asked for by the app
    before = nonsense_count("users")
    await set_fault(stubs, "users", answer_fields=fields)
    offer = await new_offer(api, rider, ids.scooter())
    used = inputs(base_settings, offer)
    assert used.user_source == "conservative"
    assert (used.has_subscription, used.trusted) == (False, False)
    assert nonsense_count("users") == before + 1


@pytest.mark.parametrize(
    "fields",
    [{"order_id": "o\n"}, {"order_id": "o" * 1_000_000}, {"order_id": "another-order"}],
    ids=["line-break", "1MB", "another-order"],
)
async def test_payments_lookup_answering_nonsense_cannot_tell(
    base_settings: Settings, stubs: str, fields: dict[str, str]
) -> None:
    """The lookup (``GET /payment-operation``) settles ambiguous payments; an answer
    about no such id, or about another order, says nothing: the caller keeps waiting."""
    async with make_http_client(base_settings) as client:
        services = ExternalServices(client, base_settings)
        order = "0190a3b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b"
        assert (await services.payment_operation(order, "hold")).state == "absent"
        before = nonsense_count("payments")
        await set_fault(stubs, "payments", answer_fields=fields)
        with pytest.raises(ServiceError, match="nonsense answer"):
            await services.payment_operation(order, "hold")
        assert nonsense_count("payments") == before + 1
