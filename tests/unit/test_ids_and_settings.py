"""UUIDv7 ids carry their partition key; settings refuse unsafe production values."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shared.ids import created_at_of, parse_order_id, uuid7
from shared.settings import DEVELOPMENT_SIGNING_KEY, Settings, SettingsError


def test_uuid7_embeds_its_creation_time() -> None:
    ms = 1_795_000_000_123
    value = uuid7(ms)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert created_at_of(value) == datetime.fromtimestamp(ms / 1000, tz=UTC)


def test_uuid7_sorts_by_time() -> None:
    assert uuid7(1_000) < uuid7(2_000)


def test_parse_order_id() -> None:
    value = uuid7()
    assert parse_order_id(str(value)) == value
    assert parse_order_id("nonsense") is None
    assert parse_order_id(str(uuid.uuid4())) is None


def test_settings_from_env_convert_types() -> None:
    settings = Settings.from_env(
        {"SCOOTERS_OFFER_TTL_SECONDS": "7", "SCOOTERS_SURGE_DEFAULT": "1.5"}
    )
    assert settings.offers.ttl_seconds == 7
    assert settings.pricing.surge_default == 1.5


def test_bad_setting_is_reported() -> None:
    with pytest.raises(SettingsError, match="SCOOTERS_OFFER_TTL_SECONDS"):
        Settings.from_env({"SCOOTERS_OFFER_TTL_SECONDS": "soon"})


def test_production_refuses_the_development_key() -> None:
    with pytest.raises(SettingsError, match="signing key"):
        Settings.from_env({"SCOOTERS_ENVIRONMENT": "production"})
    with pytest.raises(SettingsError):
        Settings.from_env(
            {"SCOOTERS_ENVIRONMENT": "production", "SCOOTERS_OFFER_SIGNING_KEY": "short"}
        )
    ok = Settings.from_env(
        {"SCOOTERS_ENVIRONMENT": "production", "SCOOTERS_OFFER_SIGNING_KEY": "s" * 40}
    )
    assert ok.offers.signing_key != DEVELOPMENT_SIGNING_KEY
