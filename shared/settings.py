"""Settings, read from the environment once per process.

Every address, port, DSN, limit and business threshold is a setting named
``SCOOTERS_<FIELD>`` (upper case). Defaults work on a developer machine with
Postgres and Redis on loopback.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from functools import lru_cache
from typing import Any, get_type_hints

OFFER_KEY_BYTES = 32  # AES-256-GCM keys of the offer token (ADR 0006)


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
    # comma-separated base64url keys of 32 bytes, newest first: offer tokens are sealed
    # with the first and opened with any (rotation). Required in production; when empty
    # in development, one random key is created once in Postgres (table offer_keys).
    offer_keys: str = ""
    offer_ttl_seconds: int = 300
    offer_rate_limit: int = 30  # offers per rider per window, across all processes (Redis)
    offer_rate_window_seconds: int = 60

    # --- identity (ADR 0006): bearer tokens of the identity provider, checked on every
    # request but /health/*
    identity_url: str = ""  # base URL of the provider; empty = external_base_url
    auth_issuer: str = "https://identity.superscooters.dev"
    auth_audience: str = "superscooters-api"
    auth_token_ttl_seconds: int = 3_600  # lifetime of the tokens the stub provider issues
    auth_leeway_seconds: int = 5  # clock skew tolerated on exp/iat
    jwks_refresh_min_seconds: float = 10.0  # an unknown kid refetches the JWKS at most this often
    jwks_max_age_seconds: int = 300  # known keys are refetched after this
    auth_cache_size: int = 10_000  # verified tokens remembered until they expire (per process)

    # --- internal surfaces (never published)
    metrics_host: str = "127.0.0.1"
    command_metrics_port: int = 9100  # 0 = no /metrics; workers take the next free ports
    query_metrics_port: int = 9110  # 0 = no /metrics; workers take the next free ports
    stubs_admin_token: str = ""  # bearer token of the stubs' /admin/* and /ledger; empty = off

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
        keys = self.offer_key_bytes()  # raises on a malformed key
        if self.environment == "production" and not keys:
            raise SettingsError(
                "refusing to start in production without offer keys: set SCOOTERS_OFFER_KEYS "
                "to one or more base64url keys of 32 random bytes, newest first"
            )
        if self.offer_rate_limit < 1 or self.offer_rate_window_seconds < 1:
            raise SettingsError("SCOOTERS_OFFER_RATE_LIMIT and _WINDOW_SECONDS must be positive")

    def offer_key_bytes(self) -> tuple[bytes, ...]:
        """The offer keys of ``offer_keys``, newest first; raises SettingsError if malformed."""
        keys = []
        for text in filter(None, (part.strip() for part in self.offer_keys.split(","))):
            try:
                key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except (ValueError, binascii.Error) as exc:
                raise SettingsError(f"SCOOTERS_OFFER_KEYS: not base64url: {exc}") from exc
            if len(key) != OFFER_KEY_BYTES:
                raise SettingsError(
                    f"SCOOTERS_OFFER_KEYS: each key must be {OFFER_KEY_BYTES} bytes, got {len(key)}"
                )
            keys.append(key)
        return tuple(keys)

    @property
    def identity_base_url(self) -> str:
        """Where the identity provider answers (its JWKS and, for the stub, tokens)."""
        return (self.identity_url or self.external_base_url).rstrip("/")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()
