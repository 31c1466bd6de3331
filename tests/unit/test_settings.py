"""The grouped settings answer to the same SCOOTERS_* variables as the flat ones did."""

from __future__ import annotations

import operator
from typing import Any

import pytest

from shared.settings import Settings, SettingsError, variables
from stubs import StubSettings

# Every variable the flat Settings of before read, with the field it now sets and its
# default then. A user's environment must keep working: never remove a line here.
OLD_VARIABLES: dict[str, tuple[str, Any]] = {
    "SCOOTERS_ENVIRONMENT": ("runtime.environment", "development"),
    "SCOOTERS_LOG_LEVEL": ("runtime.log_level", "WARNING"),
    # the development role bin/up creates (issue 10: no trust authentication assumed)
    "SCOOTERS_DATABASE_URL": ("db.url", "postgresql://scooters:scooters@127.0.0.1:5432/scooters"),
    "SCOOTERS_DATABASE_REPLICA_URL": ("db.replica_url", ""),
    "SCOOTERS_REDIS_URL": ("redis.url", "redis://127.0.0.1:6379/0"),
    "SCOOTERS_REDIS_KEY_PREFIX": ("redis.key_prefix", ""),
    "SCOOTERS_EXTERNAL_BASE_URL": ("external.base_url", "http://127.0.0.1:3629"),
    "SCOOTERS_STUBS_HOST": ("stub.host", "127.0.0.1"),
    "SCOOTERS_STUBS_PORT": ("stub.port", 3629),
    "SCOOTERS_COMMAND_HOST": ("serving.command_host", "127.0.0.1"),
    "SCOOTERS_COMMAND_PORT": ("serving.command_port", 8000),
    "SCOOTERS_QUERY_HOST": ("serving.query_host", "127.0.0.1"),
    "SCOOTERS_QUERY_PORT": ("serving.query_port", 8001),
    "SCOOTERS_COMMAND_WORKERS": ("serving.command_workers", 1),
    "SCOOTERS_QUERY_WORKERS": ("serving.query_workers", 1),
    "SCOOTERS_DB_POOL_MIN": ("db.pool_min", 2),
    "SCOOTERS_DB_POOL_MAX": ("db.pool_max", 10),
    "SCOOTERS_DB_COMMAND_TIMEOUT_SECONDS": ("db.command_timeout_seconds", 5.0),
    "SCOOTERS_DB_CONNECT_TIMEOUT_SECONDS": ("db.connect_timeout_seconds", 5.0),
    "SCOOTERS_HTTP_TIMEOUT_SECONDS": ("external.http_timeout_seconds", 1.0),
    "SCOOTERS_HTTP_MAX_CONNECTIONS": ("external.http_max_connections", 200),
    "SCOOTERS_PAYMENT_TIMEOUT_SECONDS": ("external.payment_timeout_seconds", 2.0),
    "SCOOTERS_RETRY_AFTER_SECONDS": ("serving.retry_after_seconds", 2),
    "SCOOTERS_COMMAND_MAX_REQUESTS_IN_FLIGHT": ("serving.command_max_requests_in_flight", 16),
    "SCOOTERS_QUERY_MAX_REQUESTS_IN_FLIGHT": ("serving.query_max_requests_in_flight", 128),
    "SCOOTERS_MAX_CONNECTIONS": ("serving.max_connections", 4_096),
    "SCOOTERS_REQUEST_READ_TIMEOUT_SECONDS": ("serving.request_read_timeout_seconds", 10.0),
    "SCOOTERS_OFFER_TTL_SECONDS": ("offers.ttl_seconds", 300),
    "SCOOTERS_SURGE_DEFAULT": ("pricing.surge_default", 1.0),
    "SCOOTERS_LOW_CHARGE_DISCOUNT_DEFAULT": ("pricing.low_charge_discount_default", 1.0),
    "SCOOTERS_LOW_CHARGE_THRESHOLD": ("pricing.low_charge_threshold", 28),
    "SCOOTERS_DEPOSIT_MULTIPLIER": ("pricing.deposit_multiplier", 1.25),
    "SCOOTERS_DEPOSIT_DEBT_THRESHOLD": ("pricing.deposit_debt_threshold", 10000),
    "SCOOTERS_FREE_RIDE_SECONDS": ("pricing.free_ride_seconds", 5),
    "SCOOTERS_MAX_ACTIVE_RIDES_PER_USER": ("rides.max_active_per_user", 1),
    "SCOOTERS_BASE_PRICE_PER_MINUTE": ("pricing.base_price_per_minute", 10),
    "SCOOTERS_BASE_PRICE_UNLOCK": ("pricing.base_price_unlock", 50),
    "SCOOTERS_BASE_DEPOSIT": ("pricing.base_deposit", 500),
    "SCOOTERS_CONFIGS_REFRESH_SECONDS": ("external.configs_refresh_seconds", 60),
    "SCOOTERS_ZONE_FRESHNESS_SECONDS": ("external.zone_freshness_seconds", 600),
    "SCOOTERS_USER_PROFILE_MEMORY_SECONDS": ("external.user_profile_memory_seconds", 86400),
    "SCOOTERS_TRACK_MAX_POINTS": ("rides.track_max_points", 2000),
    "SCOOTERS_PAYMENT_RETRY_BASE_SECONDS": ("payments.retry_base_seconds", 1.0),
    "SCOOTERS_PAYMENT_RETRY_MAX_SECONDS": ("payments.retry_max_seconds", 300.0),
    "SCOOTERS_PAYMENT_MAX_ATTEMPTS": ("payments.max_attempts", 10),
    # 30 before issue 8: a start whose request died locks nobody out longer than this
    "SCOOTERS_STUCK_HOLD_SECONDS": ("payments.stuck_hold_seconds", 10),
    "SCOOTERS_IDEMPOTENCY_LEASE_SECONDS": ("payments.idempotency_lease_seconds", 10.0),
    "SCOOTERS_PARTITION_PREMAKE_DAYS": ("maintenance.partition_premake_days", 7),
    "SCOOTERS_HOT_DAYS": ("maintenance.hot_days", 30),
    "SCOOTERS_RETENTION_DAYS": ("maintenance.retention_days", 1826),
    "SCOOTERS_MAINTENANCE_INTERVAL_SECONDS": ("maintenance.interval_seconds", 3600),
    "SCOOTERS_WORKER_POLL_SECONDS": ("maintenance.worker_poll_seconds", 1.0),
    "SCOOTERS_IDEMPOTENCY_TTL_SECONDS": ("maintenance.idempotency_ttl_seconds", 86400),
    "SCOOTERS_OUTBOX_KEEP_SECONDS": ("maintenance.outbox_keep_seconds", 86400),
    "SCOOTERS_FINISHED_VIEW_TTL_SECONDS": ("read.finished_view_ttl_seconds", 604800),
    "SCOOTERS_USER_RECENT_ORDERS": ("read.user_recent_orders", 50),
    "SCOOTERS_REDIS_CLUSTER": ("redis.cluster", False),
    "SCOOTERS_REDIS_TIMEOUT_SECONDS": ("redis.timeout_seconds", 0.25),
    "SCOOTERS_REDIS_MAX_CONNECTIONS": ("redis.max_connections", 1000),
    "SCOOTERS_REDIS_RETRY_SECONDS": ("redis.retry_seconds", 1.0),
    "SCOOTERS_REFILL_TTL_SECONDS": ("read.refill_ttl_seconds", 300),
    "SCOOTERS_PROJECTOR_BATCH_SIZE": ("read.projector_batch_size", 500),
    "SCOOTERS_PROJECTOR_POLL_SECONDS": ("read.projector_poll_seconds", 0.05),
    "SCOOTERS_PROJECTOR_BATCH_INTERVAL_SECONDS": ("read.projector_batch_interval_seconds", 0.025),
    "SCOOTERS_PROJECTOR_METRICS_PORT": ("read.projector_metrics_port", 8002),
    "SCOOTERS_STUB_SCOOTERS": ("stub.scooters", 10000),
    "SCOOTERS_STUB_ZONES": ("stub.zones", 10),
    "SCOOTERS_STUB_USERS": ("stub.users", 100000),
    "SCOOTERS_STUB_SEED": ("stub.seed", 42),
    # added with the operations console and the rules for rides gone wrong (issue 12)
    "SCOOTERS_ABANDONED_RIDE_SECONDS": ("rides.abandoned_after_seconds", 43200),
    "SCOOTERS_MAX_RIDE_COST": ("rides.max_cost", 10_000),
    "SCOOTERS_CORS_ALLOW_ORIGINS": (
        "console.cors_allow_origins",
        "http://127.0.0.1:8001,http://localhost:8001",
    ),
    "SCOOTERS_CONSOLE_COMMAND_URL": ("console.command_url", ""),
    "SCOOTERS_CONSOLE_IDENTITY_URL": ("console.identity_url", ""),
    "SCOOTERS_STUB_CORS_ALLOW_ORIGINS": (
        "stub.cors_allow_origins",
        "http://127.0.0.1:8001,http://localhost:8001",
    ),
    # added since (issue 8: untrusted input, sane bounds of external answers)
    "SCOOTERS_JSON_MAX_DEPTH": ("serving.json_max_depth", 32),
    "SCOOTERS_REQUEST_MAX_BODY_BYTES": ("serving.request_max_body_bytes", 2 * 1024 * 1024),
    "SCOOTERS_TRACK_MAX_SPEED_KMH": ("rides.track_max_speed_kmh", 150.0),
    "SCOOTERS_RIDE_MAX_CHARGED_SECONDS": ("rides.max_charged_seconds", 86_400),
    "SCOOTERS_SURGE_MIN": ("bounds.surge_min", 0.1),
    "SCOOTERS_SURGE_MAX": ("bounds.surge_max", 10.0),
    "SCOOTERS_LOW_CHARGE_DISCOUNT_MIN": ("bounds.low_charge_discount_min", 0.1),
    "SCOOTERS_DEPOSIT_MULTIPLIER_MAX": ("bounds.deposit_multiplier_max", 10.0),
    "SCOOTERS_FREE_RIDE_SECONDS_MAX": ("bounds.free_ride_seconds_max", 3_600),
    "SCOOTERS_TARIFF_PRICE_PER_MINUTE_MAX": ("bounds.tariff_price_per_minute_max", 100_000),
    "SCOOTERS_TARIFF_PRICE_UNLOCK_MAX": ("bounds.tariff_price_unlock_max", 1_000_000),
    "SCOOTERS_TARIFF_DEPOSIT_MAX": ("bounds.tariff_deposit_max", 10_000_000),
    "SCOOTERS_USER_DEBT_MAX": ("bounds.user_debt_max", 1_000_000_000_000),
}

# Variables that are gone on purpose: setting one is refused with what replaces it.
# SCOOTERS_OFFER_SIGNING_KEY carried the HMAC key whose development default shipped in
# the code (issue 9, ADR 0006); SCOOTERS_OFFER_KEYS replaced it.
REMOVED_VARIABLES = {"SCOOTERS_OFFER_SIGNING_KEY": "SCOOTERS_OFFER_KEYS"}

# Variables added after the grouping, with their field and default.
NEW_VARIABLES: dict[str, tuple[str, Any]] = {
    "SCOOTERS_WORKER_HEALTHCHECK_SECONDS": ("serving.worker_healthcheck_seconds", 60),
    "SCOOTERS_OFFER_KEYS": ("offers.keys", ""),
    "SCOOTERS_OFFER_RATE_LIMIT": ("offers.rate_limit", 30),
    "SCOOTERS_OFFER_RATE_WINDOW_SECONDS": ("offers.rate_window_seconds", 60),
    "SCOOTERS_IDENTITY_URL": ("identity.url", ""),
    "SCOOTERS_AUTH_ISSUER": ("identity.issuer", "https://identity.superscooters.dev"),
    "SCOOTERS_AUTH_AUDIENCE": ("identity.audience", "superscooters-api"),
    "SCOOTERS_AUTH_TOKEN_TTL_SECONDS": ("identity.token_ttl_seconds", 3600),
    "SCOOTERS_AUTH_LEEWAY_SECONDS": ("identity.leeway_seconds", 5),
    "SCOOTERS_JWKS_REFRESH_MIN_SECONDS": ("identity.jwks_refresh_min_seconds", 10.0),
    "SCOOTERS_JWKS_MAX_AGE_SECONDS": ("identity.jwks_max_age_seconds", 300),
    "SCOOTERS_AUTH_CACHE_SIZE": ("identity.cache_size", 10000),
    "SCOOTERS_METRICS_HOST": ("serving.metrics_host", "127.0.0.1"),
    "SCOOTERS_COMMAND_METRICS_PORT": ("serving.command_metrics_port", 9100),
    "SCOOTERS_QUERY_METRICS_PORT": ("serving.query_metrics_port", 9110),
    "SCOOTERS_STUBS_ADMIN_TOKEN": ("stub.admin_token", ""),
    "SCOOTERS_REPLICA_MAX_WAIT_SECONDS": ("db.replica_max_wait_seconds", 0.05),  # ADR 0007
    "SCOOTERS_COMMAND_FAST_PATH": ("serving.command_fast_path", True),  # ADR 0012
    # the adaptive admission limit (issue 8, overload at 4x)
    "SCOOTERS_COMMAND_ADMISSION_LAG_TARGET_MS": ("serving.command_admission_lag_target_ms", 0.0),
    "SCOOTERS_QUERY_ADMISSION_LAG_TARGET_MS": ("serving.query_admission_lag_target_ms", 5.0),
    # published marks committed together (issue 13, ADR 0016)
    "SCOOTERS_PROJECTOR_COMMIT_INTERVAL_SECONDS": ("read.projector_commit_interval_seconds", 0.1),
    # a flood of bad requests writes a bounded log (issue 8, shared.infra.logs)
    "SCOOTERS_LOG_NOISE_BURST": ("runtime.log_noise_burst", 10),
    "SCOOTERS_LOG_NOISE_INTERVAL_SECONDS": ("runtime.log_noise_interval_seconds", 60.0),
}
ALL_VARIABLES = {**OLD_VARIABLES, **NEW_VARIABLES}


def _field(path: str) -> Any:
    """A getter of the field at ``path`` (``stub.`` paths are read on StubSettings)."""
    return operator.attrgetter(path.removeprefix("stub."))


def _build(env: dict[str, str], path: str) -> Any:
    if path.startswith("stub."):
        return StubSettings.from_env(env)
    return Settings.from_env(env)


def _sample(default: Any) -> str:
    """A value different from ``default``, as an environment variable would carry it."""
    if isinstance(default, bool):
        return "false" if default else "true"
    if isinstance(default, int | float):
        return str(default + 3)
    return "production" if default == "development" else default + "-x"


def test_every_variable_is_known_once() -> None:
    now = {**variables(Settings), **{k: f"stub.{p}" for k, p in variables(StubSettings).items()}}
    assert now == {var: path for var, (path, _) in ALL_VARIABLES.items()}


def test_removed_variables_are_refused_with_their_replacement() -> None:
    for var, instead in REMOVED_VARIABLES.items():
        with pytest.raises(SettingsError, match=instead):
            Settings.from_env({var: "k" * 40})


@pytest.mark.parametrize(("var", "path", "default"), [(k, *v) for k, v in ALL_VARIABLES.items()])
def test_old_variable_sets_the_same_field(var: str, path: str, default: Any) -> None:
    assert _field(path)(_build({}, path)) == default
    env = {var: _sample(default)}
    if var == "SCOOTERS_ENVIRONMENT":  # production needs offer keys and its own DB password
        env["SCOOTERS_OFFER_KEYS"] = "k" * 43  # 32 bytes in base64url
        env["SCOOTERS_DATABASE_URL"] = "postgresql://app:own-password@db/scooters"
    if var == "SCOOTERS_OFFER_KEYS":
        env[var] = "k" * 43
    value = _field(path)(_build(env, path))
    assert value != default
    assert str(value).lower() == env[var].lower()


def test_to_env_round_trips_every_group() -> None:
    settings = Settings().replace(
        db={"url": "postgresql://elsewhere/x", "pool_max": 3},
        redis={"cluster": True, "timeout_seconds": 0.5},
        payments={"max_attempts": 4},
    )
    assert Settings.from_env(settings.to_env()) == settings
    assert set(settings.to_env()) == set(variables(Settings))
    stub = StubSettings(port=1234, seed=7)
    assert StubSettings.from_env(stub.to_env()) == stub


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="SCOOTERS_DB_POOL_MAX"):
        Settings.from_env({"SCOOTERS_DB_POOL_MAX": "many"})
