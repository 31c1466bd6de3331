# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""Calls to the external services (scooters, zones, users, configs, payments).

One keep-alive ``httpx.AsyncClient`` per process; zones and configs are cached in
memory (they change rarely), scooters and users are asked every time (charge, debt).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from fastapi import HTTPException

from app.api.schemas import ConfigsAnswer, PriceCoeffSettings, ScooterData, TariffZone, UserProfile
from app.settings import settings


class ExternalClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._zones: dict[str, tuple[float, TariffZone]] = {}
        self._configs: tuple[float, PriceCoeffSettings] | None = None

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = await self.http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise HTTPException(503, f"{path}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            raise HTTPException(404, f"{path}: not found")
        if response.status_code != 200:
            raise HTTPException(503, f"{path}: HTTP {response.status_code}")
        return response.json()

    async def get_scooter(self, scooter_id: str) -> ScooterData:
        return ScooterData(**await self._get("/scooter-data", {"id": scooter_id}))

    async def get_user(self, user_id: str) -> UserProfile:
        return UserProfile(**await self._get("/user-profile", {"id": user_id}))

    async def get_zone(self, zone_id: str) -> TariffZone:
        cached = self._zones.get(zone_id)
        if cached is not None and time.monotonic() - cached[0] < settings.zone_cache_seconds:
            return cached[1]
        zone = TariffZone(**await self._get("/tariff-zone-data", {"id": zone_id}))
        self._zones[zone_id] = (time.monotonic(), zone)
        return zone

    async def get_configs(self) -> PriceCoeffSettings:
        cached = self._configs
        if cached is not None and time.monotonic() - cached[0] < settings.configs_cache_seconds:
            return cached[1]
        coeffs = ConfigsAnswer(**await self._get("/configs")).price_coeff_settings
        self._configs = (time.monotonic(), coeffs)
        return coeffs

    async def _payment(self, path: str, user_id: str, order_id: str, amount: int) -> None:
        body = {"user_id": user_id, "order_id": order_id, "amount": amount}
        try:
            response = await self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise HTTPException(503, f"payments: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise HTTPException(
                402 if response.status_code == 402 else 503,
                f"payments: HTTP {response.status_code}",
            )

    async def hold(self, user_id: str, order_id: str, amount: int) -> None:
        await self._payment("/hold-money-for-order", user_id, order_id, amount)

    async def clear(self, user_id: str, order_id: str, amount: int) -> None:
        await self._payment("/clear-money-for-order", user_id, order_id, amount)

    async def release(self, user_id: str, order_id: str, amount: int) -> None:
        await self._payment("/release-money-for-order", user_id, order_id, amount)


def make_http_client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    return httpx.AsyncClient(
        base_url=settings.external_base_url,
        timeout=settings.http_timeout_seconds,
        limits=limits,
    )
