"""Settings, read from the environment once per process.

Every address, port, DSN, limit and business threshold is a setting named
``SCOOTERS_<FIELD>`` (upper case). Defaults work on a developer machine with
Postgres and Redis on loopback.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from typing import Any, get_type_hints

DEVELOPMENT_SIGNING_KEY = "dev-only-offer-signing-key-change-me"


class SettingsError(RuntimeError):
    """A setting is missing, malformed or unsafe for the chosen environment."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """All knobs of the system; grouped by concern below."""

    # --- environment
    environment: str = "development"  # "development" | "production"
    log_level: str = "WARNING"

    # --- addresses
    database_url: str = "postgresql://postgres@127.0.0.1:5432/scooters"
    database_replica_url: str = ""  # read-side fallback reads here when set
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = ""  # lets tests share one Redis without colliding
    external_base_url: str = "http://127.0.0.1:3629"  # scooters/zones/users/configs/payments
    stubs_host: str = "127.0.0.1"
    stubs_port: int = 3629
    command_host: str = "127.0.0.1"
    command_port: int = 8000
    query_host: str = "127.0.0.1"
    query_port: int = 8001
    command_workers: int = 1  # uvicorn worker processes of the command API
    query_workers: int = 1  # uvicorn worker processes of the query API

    # --- pools and timeouts
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_command_timeout_seconds: float = 5.0
    http_timeout_seconds: float = 1.0  # every external call
    http_max_connections: int = 200
    payment_timeout_seconds: float = 2.0
    retry_after_seconds: int = 2  # Retry-After on 503

    # --- offers
    offer_signing_key: str = DEVELOPMENT_SIGNING_KEY
    offer_ttl_seconds: int = 300

    # --- pricing defaults (used when configs were never fetched)
    surge_default: float = 1.0
    low_charge_discount_default: float = 1.0
    low_charge_threshold: int = 28
    deposit_multiplier: float = 1.25
    deposit_debt_threshold: int = 10_000
    free_ride_seconds: int = 5
    max_active_rides_per_user: int = 1
    # the configured base tariff, used when the zone is unknown to the cache and
    # the tariff service is down
    base_price_per_minute: int = 10
    base_price_unlock: int = 50
    base_deposit: int = 500

    # --- caches (degradation policy)
    configs_refresh_seconds: int = 60
    zone_freshness_seconds: int = 600
    user_profile_memory_seconds: int = 86_400

    # --- rides
    track_max_points: int = 2_000
    # a GPS segment faster than this is a glitch and adds no distance (DOMAIN.md, "When
    # rides go wrong")
    track_max_speed_kmh: float = 150.0
    # a ride is charged for at most this long, however long it lasted (an app that never
    # finished it, a clock gone wrong); its recorded duration stays the real one
    ride_max_charged_seconds: int = 86_400

    # --- untrusted input (every boundary: both APIs and the stubs)
    json_max_depth: int = 32  # deeper JSON bodies are refused with 400 invalid_request
    request_max_body_bytes: int = 2 * 1024 * 1024

    # --- sane bounds of what the external services answer; outside them the answer is
    # nonsense and that service's degradation policy applies (DOMAIN.md)
    surge_min: float = 0.1
    surge_max: float = 10.0
    low_charge_discount_min: float = 0.1  # a discount multiplies, at most by 1.0
    deposit_multiplier_max: float = 10.0  # at least 1.0
    free_ride_seconds_max: int = 3_600
    tariff_price_per_minute_max: int = 100_000
    tariff_price_unlock_max: int = 1_000_000
    tariff_deposit_max: int = 10_000_000
    user_debt_max: int = 1_000_000_000_000

    # --- payments retry
    payment_retry_base_seconds: float = 1.0
    payment_retry_max_seconds: float = 300.0
    payment_max_attempts: int = 10
    stuck_hold_seconds: int = 30  # a start that never confirmed its hold is undone after this

    # --- maintenance
    partition_premake_days: int = 7
    hot_days: int = 30
    retention_days: int = 1_826  # ~5 years
    maintenance_interval_seconds: int = 3_600
    worker_poll_seconds: float = 1.0
    idempotency_ttl_seconds: int = 86_400
    outbox_keep_seconds: int = 86_400

    # --- read side
    finished_view_ttl_seconds: int = 7 * 86_400
    user_recent_orders: int = 50
    redis_cluster: bool = False  # connect with the Redis Cluster client
    redis_timeout_seconds: float = 0.25  # a slower Redis counts as down for a while
    redis_max_connections: int = 1_000  # per process (redis-py's default is 100)
    redis_retry_seconds: float = 1.0  # after a Redis failure, read Postgres this long
    refill_ttl_seconds: int = 300  # TTL of a view refilled from Postgres that isn't done
    projector_batch_size: int = 500
    projector_poll_seconds: float = 1.0  # fallback when a NOTIFY is missed
    projector_metrics_port: int = 8002  # 0 = no /metrics server

    # --- stubs data set
    stub_scooters: int = 10_000
    stub_zones: int = 10
    stub_users: int = 100_000
    stub_seed: int = 42

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from ``SCOOTERS_*`` variables, converting to each field's type."""
        source = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = source.get(f"SCOOTERS_{field.name.upper()}")
            if raw is None:
                continue
            kind = hints[field.name]
            try:
                values[field.name] = (
                    kind(raw) if kind is not bool else raw.lower() in {"1", "true", "yes", "on"}
                )
            except ValueError as exc:
                raise SettingsError(f"SCOOTERS_{field.name.upper()}={raw!r}: {exc}") from exc
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that are unsafe for the environment."""
        if self.environment not in {"development", "production"}:
            raise SettingsError("SCOOTERS_ENVIRONMENT must be 'development' or 'production'")
        if self.environment == "production" and (
            self.offer_signing_key == DEVELOPMENT_SIGNING_KEY or len(self.offer_signing_key) < 32
        ):
            raise SettingsError(
                "refusing to start in production with the development offer signing key: "
                "set SCOOTERS_OFFER_SIGNING_KEY to a secret of at least 32 characters"
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()
