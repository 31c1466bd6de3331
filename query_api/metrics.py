"""Prometheus metrics of the read side (query API and projector), one registry per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_HITS = Counter("query_cache_hits_total", "Views served from Redis", ["view"])
CACHE_MISSES = Counter("query_cache_misses_total", "Views not found in Redis", ["view"])
FALLBACKS = Counter(
    "query_fallback_queries_total",
    "Postgres queries made because Redis missed or was down",
    ["view"],
)
REDIS_FAILURES = Counter(
    "query_redis_failures_total", "Times Redis was taken for down (reads went to Postgres)"
)
REDIS_TIMEOUTS = Counter(
    "query_redis_timeouts_total", "Redis reads that timed out (served from Postgres alone)"
)

PROJECTED = Counter("projector_events_total", "Outbox events projected by this process")
BAD_EVENTS = Counter("projector_bad_events_total", "Outbox payloads that could not be decoded")
PROJECTOR_ERRORS = Counter("projector_errors_total", "Batches that failed and will be retried")
PROJECTOR_LAG = Gauge(
    "projector_lag_seconds",
    "Age of the oldest outbox event not yet projected (0 when none)",
    multiprocess_mode="liveall",  # per live process; a dead worker's is dropped
)
EVENT_LAG = Histogram(
    "projector_event_lag_seconds",
    "From an event's commit to its projection",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

REPLICA_READS = Counter(
    "query_replica_reads_total",
    "Fallback reads by the pool that answered them (ADR 0007)",
    ["pool"],
)
REPLICA_CHECKS = Counter(
    "query_replica_checks_total",
    "Checks of whether the replica had replayed the primary's position, by outcome",
    ["outcome"],
)
REPLICA_READ_FAILURES = Counter(
    "query_replica_read_failures_total",
    "Fallback reads the replica failed (cancelled by a recovery conflict, or gone) and the"
    " primary answered",
)
