"""Settings, read from the environment once per process.

Every address, port, DSN, limit and business threshold is a setting with its own
environment variable ``SCOOTERS_<NAME>``. The settings are grouped by concern
(``settings.db.url``, ``settings.payments.max_attempts``...); each field names its
variable, and the names are those of the former flat settings, so an existing
environment keeps working (``tests/unit/test_settings.py`` pins every name). Defaults
work on a developer machine with Postgres and Redis on loopback.

Units: durations in seconds, money in integer currency units, counts are counts.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, TypeVar, get_type_hints
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "SCOOTERS_"
OFFER_KEY_BYTES = 32  # AES-256-GCM keys of the offer token (ADR 0006)
# variables that are gone, with what replaces them: setting one is an error, not a no-op
REMOVED = {
    "SCOOTERS_OFFER_SIGNING_KEY": "SCOOTERS_OFFER_KEYS (base64url 32-byte keys, ADR 0006)",
}

T = TypeVar("T")
G = TypeVar("G")


class SettingsError(RuntimeError):
    """A setting is missing, malformed or unsafe for the chosen environment."""


def setting(name: str, default: T) -> T:
    """A field read from the variable ``SCOOTERS_<name>`` (``default`` when it is unset)."""
    return dataclasses.field(default=default, metadata={"env": PREFIX + name})


def _is_group(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def variables(cls: type[Any]) -> dict[str, str]:
    """Every variable of the settings class ``cls``: ``SCOOTERS_X`` → dotted field path."""
    found: dict[str, str] = {}
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if _is_group(kind):
            found.update({var: f"{field.name}.{path}" for var, path in variables(kind).items()})
        else:
            found[field.metadata["env"]] = field.name
    return found


def _convert(kind: Any, var: str, raw: str) -> Any:
    try:
        return kind(raw) if kind is not bool else raw.lower() in {"1", "true", "yes", "on"}
    except ValueError as exc:
        raise SettingsError(f"{var}={raw!r}: {exc}") from exc


def load(cls: type[G], source: Mapping[str, str]) -> G:
    """Build the settings class ``cls`` (groups included) from ``SCOOTERS_*`` variables.

    Raises ``SettingsError`` naming the variable when a value does not convert.
    """
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[field.name]
        if _is_group(kind):
            values[field.name] = load(kind, source)
            continue
        var = field.metadata["env"]
        raw = source.get(var)
        if raw is not None:
            values[field.name] = _convert(kind, var, raw)
    return cls(**values)


def _items(obj: Any) -> Iterator[tuple[str, Any]]:
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            yield from _items(value)
        else:
            yield field.metadata["env"], value


def to_env(obj: Any) -> dict[str, str]:
    """The ``SCOOTERS_*`` variables that rebuild ``obj`` (settings or a group) via ``load``."""
    return {var: str(value) for var, value in _items(obj)}


def replace(obj: G, **groups: Mapping[str, Any]) -> G:
    """``obj`` with some fields of some groups changed: ``replace(s, db={"url": dsn})``."""
    changed = {
        name: dataclasses.replace(getattr(obj, name), **fields) for name, fields in groups.items()
    }
    return dataclasses.replace(obj, **changed)  # type: ignore[type-var]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """Environment and logging."""

    environment: str = setting("ENVIRONMENT", "development")  # "development" | "production"
    log_level: str = setting("LOG_LEVEL", "WARNING")
    # lines that repeat once per request, written per process and kind: this many per
    # interval, then one "log lines suppressed" line with the count. uvicorn's warnings
    # about one client's bad request ("Invalid HTTP request received."; ClientNoiseLimit,
    # all counted in http_malformed_requests_total) and a dependency's failures
    # ("dependency unavailable", "nonsense answer"...; RepeatedFailureLimit, per event and
    # service, all counted in log_repeated_failure_events_total), shared.infra.logs
    log_noise_burst: int = setting("LOG_NOISE_BURST", 10)
    log_noise_interval_seconds: float = setting("LOG_NOISE_INTERVAL_SECONDS", 60.0)


def database_password(url: str) -> str | None:
    """The password a libpq/asyncpg DSN carries, in its userinfo or as ``?password=``;
    None when it names none (it may then come from ``PGPASSWORD`` or a password file)."""
    parts = urlsplit(url)
    if parts.password is not None:
        return unquote(parts.password)
    given = parse_qs(parts.query).get("password")
    return given[-1] if given else None


# the development role bin/up creates; its well-known password is never for production
DEVELOPMENT_DATABASE_URL = "postgresql://scooters:scooters@127.0.0.1:5432/scooters"
DEVELOPMENT_DATABASE_PASSWORD = database_password(DEVELOPMENT_DATABASE_URL)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    """Postgres: where it is and the pool of each process."""

    # the development role and password bin/up creates (bin/_install); set your own (a
    # production start refuses the development password, Settings.check)
    url: str = setting("DATABASE_URL", DEVELOPMENT_DATABASE_URL)
    # the read side's fallback reads here when it is current (ADR 0007)
    replica_url: str = setting("DATABASE_REPLICA_URL", "")
    # a replica further behind than this: read the primary (ADR 0007)
    replica_max_wait_seconds: float = setting("REPLICA_MAX_WAIT_SECONDS", 0.05)
    pool_min: int = setting("DB_POOL_MIN", 2)
    pool_max: int = setting("DB_POOL_MAX", 10)
    command_timeout_seconds: float = setting("DB_COMMAND_TIMEOUT_SECONDS", 5.0)
    # opening a connection (TCP, TLS, start-up) gives up after this: a Postgres that
    # accepts and never answers (hung, partitioned) is down within it, not asyncpg's 60 s
    connect_timeout_seconds: float = setting("DB_CONNECT_TIMEOUT_SECONDS", 5.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """Redis (the read side's projections) and how a slow or down Redis is treated."""

    url: str = setting("REDIS_URL", "redis://127.0.0.1:6379/0")
    key_prefix: str = setting("REDIS_KEY_PREFIX", "")  # lets tests share one Redis
    cluster: bool = setting("REDIS_CLUSTER", False)  # connect with the Redis Cluster client
    timeout_seconds: float = setting("REDIS_TIMEOUT_SECONDS", 0.25)  # slower counts as down
    max_connections: int = setting("REDIS_MAX_CONNECTIONS", 1_000)  # per process
    retry_seconds: float = setting("REDIS_RETRY_SECONDS", 1.0)  # after a failure, read Postgres


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExternalSettings:
    """The external services (scooters, zones, users, configs, payments): address, HTTP
    limits and how long their answers are trusted when they are down (DOMAIN.md,
    degradation policy)."""

    base_url: str = setting("EXTERNAL_BASE_URL", "http://127.0.0.1:3629")
    http_timeout_seconds: float = setting("HTTP_TIMEOUT_SECONDS", 1.0)  # every external call
    http_max_connections: int = setting("HTTP_MAX_CONNECTIONS", 200)
    payment_timeout_seconds: float = setting("PAYMENT_TIMEOUT_SECONDS", 2.0)
    configs_refresh_seconds: int = setting("CONFIGS_REFRESH_SECONDS", 60)
    zone_freshness_seconds: int = setting("ZONE_FRESHNESS_SECONDS", 600)
    user_profile_memory_seconds: int = setting("USER_PROFILE_MEMORY_SECONDS", 86_400)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingSettings:
    """Where and how the two APIs listen."""

    command_host: str = setting("COMMAND_HOST", "127.0.0.1")
    command_port: int = setting("COMMAND_PORT", 8000)
    query_host: str = setting("QUERY_HOST", "127.0.0.1")
    query_port: int = setting("QUERY_PORT", 8001)
    command_workers: int = setting("COMMAND_WORKERS", 1)  # uvicorn worker processes
    query_workers: int = setting("QUERY_WORKERS", 1)  # uvicorn worker processes
    # with several workers, uvicorn's supervisor kills and replaces a worker that does not
    # answer its ping within this; a spawned worker answers only once it has imported the
    # app again, which on a loaded box took 9-10 s (uvicorn's default, 5 s, killed workers
    # that were only starting; shared/infra/serving.py)
    worker_healthcheck_seconds: int = setting("WORKER_HEALTHCHECK_SECONDS", 60)
    retry_after_seconds: int = setting("RETRY_AFTER_SECONDS", 2)  # Retry-After on 503
    # /metrics of each API process, on an internal port (never the API's); several
    # uvicorn workers take consecutive ports; 0 = no /metrics
    metrics_host: str = setting("METRICS_HOST", "127.0.0.1")
    command_metrics_port: int = setting("COMMAND_METRICS_PORT", 9100)
    query_metrics_port: int = setting("QUERY_METRICS_PORT", 9110)
    # overload and slow clients, per API process (shared/infra/admission.py): requests
    # handled at once, more are answered 503 overloaded at once (0 = no limit); about the
    # concurrency at which each API reaches its throughput (docs/benchmarks.md)
    command_max_requests_in_flight: int = setting("COMMAND_MAX_REQUESTS_IN_FLIGHT", 16)
    query_max_requests_in_flight: int = setting("QUERY_MAX_REQUESTS_IN_FLIGHT", 128)
    # fewer are admitted while the turns of the process's event loop take more CPU time
    # than this (an adaptive limit, so that shedding the excess keeps up; see
    # shared/infra/admission.py); 0 = always the limit above. Off on the command API:
    # its capacity is bound by Postgres and the external services, not by its loop
    command_admission_lag_target_ms: float = setting("COMMAND_ADMISSION_LAG_TARGET_MS", 0.0)
    query_admission_lag_target_ms: float = setting("QUERY_ADMISSION_LAG_TARGET_MS", 5.0)
    # open connections; past it the one waiting longest for its request is closed
    max_connections: int = setting("MAX_CONNECTIONS", 4_096)
    # a request (headers and body) must arrive within this (slowloris)
    request_read_timeout_seconds: float = setting("REQUEST_READ_TIMEOUT_SECONDS", 10.0)
    # untrusted input: an untyped JSON body nesting deeper is refused (400 invalid_request);
    # typed bodies are bounded by their type (docs/boundaries.md)
    json_max_depth: int = setting("JSON_MAX_DEPTH", 32)
    request_max_body_bytes: int = setting("REQUEST_MAX_BODY_BYTES", 2 * 1024 * 1024)
    # the command API answers plain offer/start/finish requests without Litestar's
    # request cycle (ADR 0012); false: every request goes through Litestar
    command_fast_path: bool = setting("COMMAND_FAST_PATH", True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OfferSettings:
    """Sealed offers (ADR 0001, ADR 0006) and how many a rider may ask for."""

    # comma-separated base64url keys of 32 bytes, newest first: tokens are sealed with
    # the first and opened with any (rotation). Required in production; when empty in
    # development, one random key is created once in Postgres (table offer_keys).
    keys: str = setting("OFFER_KEYS", "")
    ttl_seconds: int = setting("OFFER_TTL_SECONDS", 300)
    rate_limit: int = setting("OFFER_RATE_LIMIT", 30)  # per rider per window, all processes
    rate_window_seconds: int = setting("OFFER_RATE_WINDOW_SECONDS", 60)

    def key_bytes(self) -> tuple[bytes, ...]:
        """The keys of ``keys``, newest first; raises SettingsError if one is malformed."""
        found = []
        for text in filter(None, (part.strip() for part in self.keys.split(","))):
            try:
                key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except (ValueError, binascii.Error) as exc:
                raise SettingsError(f"SCOOTERS_OFFER_KEYS: not base64url: {exc}") from exc
            if len(key) != OFFER_KEY_BYTES:
                raise SettingsError(
                    f"SCOOTERS_OFFER_KEYS: each key must be {OFFER_KEY_BYTES} bytes, got {len(key)}"
                )
            found.append(key)
        return tuple(found)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdentitySettings:
    """Bearer tokens of the identity provider, checked on every request but /health/*
    (ADR 0006); the identity stub issues tokens with the same issuer, audience, lifetime."""

    url: str = setting("IDENTITY_URL", "")  # base URL of the provider; empty = external
    issuer: str = setting("AUTH_ISSUER", "https://identity.superscooters.dev")
    audience: str = setting("AUTH_AUDIENCE", "superscooters-api")
    token_ttl_seconds: int = setting("AUTH_TOKEN_TTL_SECONDS", 3_600)  # the stub's tokens
    leeway_seconds: int = setting("AUTH_LEEWAY_SECONDS", 5)  # clock skew on exp/iat
    # an unknown kid refetches the JWKS at most this often; known keys after max age
    jwks_refresh_min_seconds: float = setting("JWKS_REFRESH_MIN_SECONDS", 10.0)
    jwks_max_age_seconds: int = setting("JWKS_MAX_AGE_SECONDS", 300)
    cache_size: int = setting("AUTH_CACHE_SIZE", 10_000)  # verified tokens kept per process


@dataclasses.dataclass(frozen=True, kw_only=True)
class PricingDefaults:
    """Pricing coefficients used while the configs were never fetched, and the configured
    base tariff used when the zone is unknown to the cache and the tariff service is down."""

    surge_default: float = setting("SURGE_DEFAULT", 1.0)
    low_charge_discount_default: float = setting("LOW_CHARGE_DISCOUNT_DEFAULT", 1.0)
    low_charge_threshold: int = setting("LOW_CHARGE_THRESHOLD", 28)
    deposit_multiplier: float = setting("DEPOSIT_MULTIPLIER", 1.25)
    deposit_debt_threshold: int = setting("DEPOSIT_DEBT_THRESHOLD", 10_000)
    free_ride_seconds: int = setting("FREE_RIDE_SECONDS", 5)
    base_price_per_minute: int = setting("BASE_PRICE_PER_MINUTE", 10)
    base_price_unlock: int = setting("BASE_PRICE_UNLOCK", 50)
    base_deposit: int = setting("BASE_DEPOSIT", 500)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RideSettings:
    """Limits of a ride."""

    max_active_per_user: int = setting("MAX_ACTIVE_RIDES_PER_USER", 1)
    track_max_points: int = setting("TRACK_MAX_POINTS", 2_000)
    # rides gone wrong (shared/ride_rules.py, docs/rides-gone-wrong.md)
    abandoned_after_seconds: int = setting("ABANDONED_RIDE_SECONDS", 43_200)  # ended by the worker
    # the most one ride costs, unlock included, whoever ends it; the ride screen's
    # running cost stops there too. 0 = no cap. Set it per market; the default is
    # explained in docs/rides-gone-wrong.md ("The ride cost cap")
    max_cost: int = setting("MAX_RIDE_COST", 10_000)
    # a GPS segment faster than this is a glitch and adds no distance (DOMAIN.md, "When
    # rides go wrong"; docs/boundaries.md)
    track_max_speed_kmh: float = setting("TRACK_MAX_SPEED_KMH", 150.0)
    # a ride is charged for at most this long, however long it lasted (an app that never
    # finished it, a clock gone wrong); its recorded duration stays the real one
    max_charged_seconds: int = setting("RIDE_MAX_CHARGED_SECONDS", 86_400)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnswerBounds:
    """Sane bounds of what the external services answer; outside them an answer is
    nonsense and that service's degradation policy applies (DOMAIN.md; a battery charge
    is always 0-100 %). Money in currency units, durations in seconds."""

    surge_min: float = setting("SURGE_MIN", 0.1)
    surge_max: float = setting("SURGE_MAX", 10.0)
    low_charge_discount_min: float = setting("LOW_CHARGE_DISCOUNT_MIN", 0.1)  # at most 1.0
    deposit_multiplier_max: float = setting("DEPOSIT_MULTIPLIER_MAX", 10.0)  # at least 1.0
    free_ride_seconds_max: int = setting("FREE_RIDE_SECONDS_MAX", 3_600)
    tariff_price_per_minute_max: int = setting("TARIFF_PRICE_PER_MINUTE_MAX", 100_000)
    tariff_price_unlock_max: int = setting("TARIFF_PRICE_UNLOCK_MAX", 1_000_000)
    tariff_deposit_max: int = setting("TARIFF_DEPOSIT_MAX", 10_000_000)
    user_debt_max: int = setting("USER_DEBT_MAX", 1_000_000_000_000)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PaymentSettings:
    """Retries of owed payment operations by the worker."""

    retry_base_seconds: float = setting("PAYMENT_RETRY_BASE_SECONDS", 1.0)
    retry_max_seconds: float = setting("PAYMENT_RETRY_MAX_SECONDS", 300.0)
    # a charge payments declines on this try or later becomes debt; an unknown outcome is
    # never debt and is retried past it (ADR 0002)
    max_attempts: int = setting("PAYMENT_MAX_ATTEMPTS", 10)
    # a start that never confirmed its hold is undone after this (by the worker, or by
    # the next start that needs its offer, scooter or ride slot); > 2 payment timeouts
    stuck_hold_seconds: int = setting("STUCK_HOLD_SECONDS", 10)
    # an Idempotency-Key claim whose request gave no answer is taken over by a retry
    # after this (its request died); longer than any live request
    idempotency_lease_seconds: float = setting("IDEMPOTENCY_LEASE_SECONDS", 10.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaintenanceSettings:
    """Partitions, retention and pruning (ADR 0003), and the worker's pace."""

    partition_premake_days: int = setting("PARTITION_PREMAKE_DAYS", 7)
    hot_days: int = setting("HOT_DAYS", 30)
    retention_days: int = setting("RETENTION_DAYS", 1_826)  # ~5 years
    interval_seconds: int = setting("MAINTENANCE_INTERVAL_SECONDS", 3_600)
    worker_poll_seconds: float = setting("WORKER_POLL_SECONDS", 1.0)
    idempotency_ttl_seconds: int = setting("IDEMPOTENCY_TTL_SECONDS", 86_400)
    outbox_keep_seconds: int = setting("OUTBOX_KEEP_SECONDS", 86_400)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReadSideSettings:
    """Views in Redis and the projector that writes them (ADR 0004)."""

    finished_view_ttl_seconds: int = setting("FINISHED_VIEW_TTL_SECONDS", 7 * 86_400)
    user_recent_orders: int = setting("USER_RECENT_ORDERS", 50)
    # TTL of a view refilled from Postgres that isn't done
    refill_ttl_seconds: int = setting("REFILL_TTL_SECONDS", 300)
    projector_batch_size: int = setting("PROJECTOR_BATCH_SIZE", 500)
    # how often an idle projector looks for a new outbox row (the outbox does not NOTIFY,
    # ADR 0027): adds at most this to an idle system's first event's lag, for one indexed
    # query per poll (docs/benchmarks.md "i13notify")
    projector_poll_seconds: float = setting("PROJECTOR_POLL_SECONDS", 0.05)
    # a busy projector claims at most once per this long, so a batch gathers the events of
    # the whole interval; adds at most this to the lag (25 ms, not 10: half the wake-ups
    # under load, docs/benchmarks.md "i13proj2")
    projector_batch_interval_seconds: float = setting("PROJECTOR_BATCH_INTERVAL_SECONDS", 0.025)
    # published marks wait this long in the projector's open transaction before one commit
    # covers them all (ADR 0016); Redis is still written per batch. 0 = commit per wake-up
    projector_commit_interval_seconds: float = setting("PROJECTOR_COMMIT_INTERVAL_SECONDS", 0.1)
    projector_metrics_port: int = setting("PROJECTOR_METRICS_PORT", 8002)  # 0 = no /metrics


def origins(text: str) -> list[str]:
    """The browser origins of a comma-separated list (empty entries dropped)."""
    return [o.strip() for o in text.split(",") if o.strip()]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsoleSettings:
    """The operations console (query_api/console/, docs/operator-api.md), served by the
    query API, and the browser origins allowed to call the command API (CORS)."""

    # comma-separated; empty: no CORS headers at all
    cors_allow_origins: str = setting(
        "CORS_ALLOW_ORIGINS", "http://127.0.0.1:8001,http://localhost:8001"
    )
    command_url: str = setting("CONSOLE_COMMAND_URL", "")  # as the browser reaches it; "" = derived
    identity_url: str = setting("CONSOLE_IDENTITY_URL", "")  # "" = the external services' address

    def cors_origins(self) -> list[str]:
        """The origins of ``cors_allow_origins``."""
        return origins(self.cors_allow_origins)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """All knobs of the services, one group per concern."""

    runtime: RuntimeSettings = dataclasses.field(default_factory=RuntimeSettings)
    db: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    redis: RedisSettings = dataclasses.field(default_factory=RedisSettings)
    external: ExternalSettings = dataclasses.field(default_factory=ExternalSettings)
    serving: ServingSettings = dataclasses.field(default_factory=ServingSettings)
    offers: OfferSettings = dataclasses.field(default_factory=OfferSettings)
    identity: IdentitySettings = dataclasses.field(default_factory=IdentitySettings)
    pricing: PricingDefaults = dataclasses.field(default_factory=PricingDefaults)
    rides: RideSettings = dataclasses.field(default_factory=RideSettings)
    bounds: AnswerBounds = dataclasses.field(default_factory=AnswerBounds)
    payments: PaymentSettings = dataclasses.field(default_factory=PaymentSettings)
    maintenance: MaintenanceSettings = dataclasses.field(default_factory=MaintenanceSettings)
    read: ReadSideSettings = dataclasses.field(default_factory=ReadSideSettings)
    console: ConsoleSettings = dataclasses.field(default_factory=ConsoleSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``SCOOTERS_*`` variables (``os.environ`` by default),
        converting to each field's type; raises ``SettingsError`` on a bad value."""
        source = os.environ if env is None else env
        for gone, instead in REMOVED.items():
            if gone in source:
                raise SettingsError(f"{gone} is no longer read: set {instead}")
        settings = load(cls, source)
        settings.check()
        return settings

    def to_env(self) -> dict[str, str]:
        """The ``SCOOTERS_*`` variables that make ``from_env`` rebuild these settings."""
        return to_env(self)

    def replace(self, **groups: Mapping[str, Any]) -> Settings:
        """These settings with some fields changed: ``s.replace(db={"url": dsn})``."""
        return replace(self, **groups)

    def check(self) -> None:
        """Refuse settings that are unsafe for the environment."""
        if self.payments.stuck_hold_seconds < 2 * self.external.payment_timeout_seconds:
            raise SettingsError(
                "SCOOTERS_STUCK_HOLD_SECONDS must be at least two payment timeouts (a hold is"
                " tried twice), or live starts would be undone mid-hold"
            )
        if self.runtime.environment not in {"development", "production"}:
            raise SettingsError("SCOOTERS_ENVIRONMENT must be 'development' or 'production'")
        keys = self.offers.key_bytes()  # raises on a malformed key
        if self.runtime.environment == "production" and not keys:
            raise SettingsError(
                "refusing to start in production without offer keys: set SCOOTERS_OFFER_KEYS "
                "to one or more base64url keys of 32 random bytes, newest first"
            )
        if self.runtime.environment == "production":
            for var, url in (
                ("SCOOTERS_DATABASE_URL", self.db.url),
                ("SCOOTERS_DATABASE_REPLICA_URL", self.db.replica_url),
            ):
                if url and database_password(url) == DEVELOPMENT_DATABASE_PASSWORD:
                    raise SettingsError(
                        f"refusing to start in production with the development database "
                        f"password: set {var} to a DSN with the production role's own "
                        "credentials (or leave the password out of it and give it by "
                        "PGPASSWORD or a password file)"
                    )
        if self.offers.rate_limit < 1 or self.offers.rate_window_seconds < 1:
            raise SettingsError("SCOOTERS_OFFER_RATE_LIMIT and _WINDOW_SECONDS must be positive")
        if self.runtime.log_noise_burst < 0 or not self.runtime.log_noise_interval_seconds > 0:
            raise SettingsError(
                "SCOOTERS_LOG_NOISE_BURST must be >= 0 and _INTERVAL_SECONDS positive"
            )

    @property
    def identity_base_url(self) -> str:
        """Where the identity provider answers (its JWKS and, for the stub, tokens)."""
        return (self.identity.url or self.external.base_url).rstrip("/")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()
