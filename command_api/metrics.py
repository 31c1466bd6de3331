"""Prometheus metrics of the command side (request latency comes from Litestar's plugin)."""

from __future__ import annotations

from prometheus_client import Counter

external_calls = Counter(
    "scooters_external_calls_total", "Calls to external services by outcome", ["service", "outcome"]
)
cache_lookups = Counter(
    "scooters_cache_lookups_total", "Cache lookups of external data", ["cache", "result"]
)
nonsense_answers = Counter(
    "scooters_external_nonsense_total",
    "Answers of external services outside the sane bounds (treated as the service failing)",
    ["service"],
)
payment_attempts = Counter(
    "scooters_payment_attempts_total",
    "Payment operations attempted by the worker",
    ["kind", "outcome"],
)
abandoned_rides = Counter(
    "scooters_abandoned_rides_total",
    "Rides ended by the worker because they stayed active past the abandoned-ride limit",
)
