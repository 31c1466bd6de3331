"""UUIDv7 ids carry their partition key; settings refuse unsafe production values."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shared.ids import created_at_of, parse_order_id, uuid7
from shared.offer_token import encode_offer_key, new_offer_key
from shared.settings import Settings, SettingsError


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


def test_production_requires_offer_keys() -> None:
    with pytest.raises(SettingsError, match="offer keys"):
        Settings.from_env({"SCOOTERS_ENVIRONMENT": "production"})
    with pytest.raises(SettingsError, match="32 bytes"):
        Settings.from_env({"SCOOTERS_ENVIRONMENT": "production", "SCOOTERS_OFFER_KEYS": "shortkey"})
    with pytest.raises(SettingsError, match="base64url"):
        Settings.from_env({"SCOOTERS_ENVIRONMENT": "production", "SCOOTERS_OFFER_KEYS": "a"})
    new, old = encode_offer_key(new_offer_key()), encode_offer_key(new_offer_key())
    ok = Settings.from_env(
        {
            "SCOOTERS_ENVIRONMENT": "production",
            "SCOOTERS_OFFER_KEYS": f"{new}, {old}",
            "SCOOTERS_DATABASE_URL": PRODUCTION_DSN,
        }
    )
    assert len(ok.offers.key_bytes()) == 2


PRODUCTION_DSN = "postgresql://scooters:s3cr%40t@db.internal:5432/scooters"


def production(**env: str) -> dict[str, str]:
    return {
        "SCOOTERS_ENVIRONMENT": "production",
        "SCOOTERS_OFFER_KEYS": encode_offer_key(new_offer_key()),
        **env,
    }


@pytest.mark.parametrize(
    ("var", "url"),
    [
        ("SCOOTERS_DATABASE_URL", None),  # the default: the development role and password
        ("SCOOTERS_DATABASE_URL", "postgresql://scooters:scooters@db.internal/scooters"),
        ("SCOOTERS_DATABASE_URL", "postgres://app:scooters@10.0.0.5:6432/rides?sslmode=require"),
        ("SCOOTERS_DATABASE_URL", "postgresql://app@db.internal/rides?password=scooters"),
        ("SCOOTERS_DATABASE_REPLICA_URL", "postgresql://app:%73cooters@replica.internal/rides"),
    ],
)
def test_production_refuses_the_development_database_password(var: str, url: str | None) -> None:
    env = production() if url is None else production(**{var: url})
    if var != "SCOOTERS_DATABASE_URL":
        env["SCOOTERS_DATABASE_URL"] = PRODUCTION_DSN
    with pytest.raises(SettingsError, match=f"{var} to a DSN") as refused:
        Settings.from_env(env)
    assert "development database password" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        PRODUCTION_DSN,
        "postgresql://scooters@db.internal/scooters",  # password from PGPASSWORD or a file
        "postgresql://app:scooters2@db.internal/rides",
    ],
)
def test_production_takes_a_database_password_of_its_own(url: str) -> None:
    settings = Settings.from_env(production(SCOOTERS_DATABASE_URL=url))
    assert settings.db.url == url


def test_development_keeps_the_development_database_password() -> None:
    assert Settings.from_env({}).db.url == "postgresql://scooters:scooters@127.0.0.1:5432/scooters"


def test_no_offer_key_in_the_code() -> None:
    """A development stack has no key unless it creates one (shared/infra/offer_keys.py)."""
    assert Settings().offers.keys == ""
    assert Settings().offers.key_bytes() == ()
