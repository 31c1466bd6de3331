# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""The reference's settings, from plain environment variables (the seed's style)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    database_url: str = field(
        default_factory=lambda: _env(
            "DATABASE_URL", "postgresql://scooters:scooters@127.0.0.1:5432/scooters_refimpl"
        )
    )
    external_base_url: str = field(
        default_factory=lambda: _env("EXTERNAL_BASE_URL", "http://127.0.0.1:3629")
    )
    jwks_url: str = field(
        default_factory=lambda: _env("JWKS_URL", "http://127.0.0.1:3629/.well-known/jwks.json")
    )
    auth_issuer: str = field(
        default_factory=lambda: _env("AUTH_ISSUER", "https://identity.superscooters.dev")
    )
    auth_audience: str = field(default_factory=lambda: _env("AUTH_AUDIENCE", "superscooters-api"))
    # 1: remember verified tokens until they expire (off by default: the seed checks each)
    auth_cache: bool = field(default_factory=lambda: _env("AUTH_CACHE", "0") == "1")
    offer_secret: str = field(default_factory=lambda: _env("OFFER_SECRET", "change-me"))
    offer_ttl_seconds: int = field(default_factory=lambda: int(_env("OFFER_TTL_SECONDS", "300")))
    db_pool_min: int = field(default_factory=lambda: int(_env("DB_POOL_MIN", "2")))
    db_pool_max: int = field(default_factory=lambda: int(_env("DB_POOL_MAX", "8")))
    # connections above the minimum are closed after this long unused
    db_pool_max_idle_seconds: float = field(
        default_factory=lambda: float(_env("DB_POOL_MAX_IDLE_SECONDS", "600"))
    )
    http_timeout_seconds: float = field(
        default_factory=lambda: float(_env("HTTP_TIMEOUT_SECONDS", "2.0"))
    )
    # zones and configs change rarely: cached in memory for this long
    zone_cache_seconds: float = field(
        default_factory=lambda: float(_env("ZONE_CACHE_SECONDS", "600"))
    )
    configs_cache_seconds: float = field(
        default_factory=lambda: float(_env("CONFIGS_CACHE_SECONDS", "60"))
    )


settings = Settings()
