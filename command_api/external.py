"""The external services, behind the degradation policy of DOMAIN.md.

| service  | policy                                                                  |
|----------|-------------------------------------------------------------------------|
| scooters | critical: fail fast with ``DependencyUnavailable``                      |
| payments | critical; calls are idempotent per (order, operation), so retry is safe |
| users    | last known profile of that user; with none, conservative                |
| configs  | fetched at most once per refresh period; last good value; defaults      |
| zones    | fresh cache entries used as they are; stale + down → base tariff        |

Every call has a timeout; GETs are retried once on a transport error or 5xx. An answer
outside the sane bounds of the settings (a surge of 1e308, a negative tariff, a charge of
250 %, -5 rides) or of its type (an id that is no id: 1 MB long, NUL, a line break; see
``shared.domain.ExternalId``), or about another id than the one asked for, is nonsense:
it counts as that service failing, so its policy applies, and is logged and counted in
``scooters_external_nonsense_total{service}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import msgspec
from aiocache import SimpleMemoryCache

from command_api import metrics
from shared.domain import (
    ConfigsAnswer,
    PaymentOperationAnswer,
    PaymentRequest,
    PriceCoeffSettings,
    RefundRequest,
    ScooterData,
    TariffZone,
    UserProfile,
)
from shared.errors import DependencyUnavailable, ScooterNotFound, UserNotFound, echo
from shared.infra.http_transport import Http1Transport
from shared.infra.logs import get_logger
from shared.settings import Settings

T = TypeVar("T")
log = get_logger("external")

_scooter_decoder = msgspec.json.Decoder(ScooterData)
_zone_decoder = msgspec.json.Decoder(TariffZone)
_user_decoder = msgspec.json.Decoder(UserProfile)
_configs_decoder = msgspec.json.Decoder(ConfigsAnswer)
_operation_decoder = msgspec.json.Decoder(PaymentOperationAnswer)
_problem_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


class ServiceError(Exception):
    """An external call failed: down, erroring, timed out or answered nonsense."""

    def __init__(
        self, service: str, reason: str, *, ambiguous: bool = False, declined: bool = False
    ) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason
        # the request may have reached the service and taken effect (timeout, reset)
        self.ambiguous = ambiguous
        # payments declined it for good: nothing moved (402 payment_declined)
        self.declined = declined


class NotFound(Exception):
    """The service answered 404 for the id."""


class Sourced(msgspec.Struct, frozen=True):
    """A value and where it came from (live, cache, fallback)."""

    value: Any
    source: str


class ServicesClient(httpx.AsyncClient):
    """The external services' ``httpx.AsyncClient``, which also names its ``transport``:
    :class:`ExternalServices` sends its calls straight through it (ADR 0018)."""

    def __init__(self, transport: Http1Transport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self.transport = transport


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one shared client of a process: pooled connections, a timeout on every call.

    httpx's API over ``shared.infra.http_transport.Http1Transport``: httpx's default
    transport costs about five times more CPU per call, httpx-aiohttp about twice
    (docs/benchmarks.md, issue 13), and these calls are on every command's path (ADR 0009).
    A :class:`ServicesClient`: :class:`ExternalServices` sends through its transport.
    """
    limits = httpx.Limits(
        max_connections=settings.external.http_max_connections,
        max_keepalive_connections=settings.external.http_max_connections,
    )
    return ServicesClient(
        Http1Transport(limits),
        base_url=settings.external.base_url,
        timeout=httpx.Timeout(settings.external.http_timeout_seconds),
    )


_JSON_CONTENT = {"content-type": "application/json"}
_NO_BODY = httpx.ByteStream(b"")
_URLS_KEPT = 10_000  # parsed GET URLs kept per process (≈ 0.5 KB each): a scooter or a rider


class ExternalServices:
    """Typed calls to the external services with their caches and fallbacks.

    With a :class:`ServicesClient` (``make_http_client``) each call is an ``httpx.Request``
    given straight to the client's transport, with the client's headers and timeout:
    ``AsyncClient.send``'s own work per call (auth flow, redirects, cookie jar, event
    hooks, the answer's stream wrapper) cost more CPU than the transport, and these calls
    use none of it (ADR 0018). Any other client is called as usual.
    """

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self._client = client
        self._transport = client.transport if isinstance(client, ServicesClient) else None
        self._base_url = str(client.base_url).rstrip("/")
        # each call's headers as httpx puts them on the wire: Host first (every URL here is
        # on the base URL's host), then the client's, then (POST) the content type; the
        # transport adds Content-Length. Given whole with the body as a stream, so httpx's
        # Request neither merges headers nor encodes content per call (ADR 0022).
        host = [] if "host" in client.headers else [(b"Host", client.base_url.netloc)]
        self._headers = [*host, *client.headers.raw]
        json_headers = httpx.Headers(client.headers)
        json_headers.update(_JSON_CONTENT)
        self._json_headers = [*host, *json_headers.raw]
        self._get_extensions = {"timeout": client.timeout.as_dict()}
        self._urls: dict[str, httpx.URL] = {}  # the GETs' URLs, parsed (at most _URLS_KEPT)
        self._settings = settings
        # no timeout per operation: a dict in memory cannot hang, and aiocache's default
        # (5 s) runs each get/set as a task under asyncio.wait_for
        self._zones = SimpleMemoryCache(timeout=None)
        self._users = SimpleMemoryCache(timeout=None)
        self._configs = SimpleMemoryCache(timeout=None)
        self._configs_lock = asyncio.Lock()
        self._configs_checked_at = float("-inf")
        # parsed once: httpx then neither parses nor merges a URL per payments call
        self._payment_urls: dict[str, httpx.URL] = {}
        self._payment_timeout = httpx.Timeout(settings.external.payment_timeout_seconds)
        self._payment_extensions = {"timeout": self._payment_timeout.as_dict()}
        self._defaults = PriceCoeffSettings(
            surge=settings.pricing.surge_default,
            low_charge_discount=settings.pricing.low_charge_discount_default,
            low_charge_threshold=settings.pricing.low_charge_threshold,
            deposit_multiplier=settings.pricing.deposit_multiplier,
            deposit_debt_threshold=settings.pricing.deposit_debt_threshold,
            free_ride_seconds=settings.pricing.free_ride_seconds,
        )

    # --- transport -----------------------------------------------------------------------

    async def _fetch(self, url: str) -> httpx.Response:
        """GET ``url`` (absolute) with the client's headers and timeout."""
        transport = self._transport
        if transport is None:
            return await self._client.get(url)
        parsed = self._urls.get(url)
        if parsed is None:  # parsing is most of a GET's own CPU; ids repeat (ADR 0022)
            if len(self._urls) >= _URLS_KEPT:
                del self._urls[next(iter(self._urls))]  # the oldest
            parsed = self._urls[url] = httpx.URL(url)
        request = httpx.Request(
            "GET", parsed, headers=self._headers, stream=_NO_BODY, extensions=self._get_extensions
        )
        request.read()  # b"": the transport sends it as it is
        return await transport.handle_async_request(request)

    async def _post(self, url: httpx.URL, content: bytes) -> httpx.Response:
        """POST JSON ``content`` to ``url`` with the client's headers and payments' timeout."""
        transport = self._transport
        if transport is None:
            return await self._client.post(
                url, content=content, headers=_JSON_CONTENT, timeout=self._payment_timeout
            )
        request = httpx.Request(
            "POST",
            url,
            headers=self._json_headers,
            stream=httpx.ByteStream(content),
            extensions=self._payment_extensions,
        )
        request.read()
        return await transport.handle_async_request(request)

    async def _get(
        self,
        service: str,
        path: str,
        decoder: msgspec.json.Decoder[T],
        params: dict[str, str] | None = None,
        nonsense: Callable[[T, Settings], str | None] | None = None,
    ) -> T:
        """GET with one retry (safe: reads have no effect) on transport errors and 5xx.

        ``nonsense(value, settings)`` names what is out of bounds in an answer, if anything;
        an answer about another ``id`` than ``params["id"]`` is nonsense too.
        """
        last: ServiceError | None = None
        # one absolute URL string: httpx parses it once, not base URL, path and params apart
        url = f"{self._base_url}{path}?{urlencode(params)}" if params else self._base_url + path
        for _ in range(2):
            try:
                response = await self._fetch(url)
            except httpx.HTTPError as exc:
                last = ServiceError(service, type(exc).__name__)
                continue
            if response.status_code == 404:
                metrics.child(metrics.external_calls, service, "not_found").inc()
                raise NotFound(service)
            if response.status_code >= 500:
                last = ServiceError(service, f"HTTP {response.status_code}")
                continue
            if response.status_code != 200:
                last = ServiceError(service, f"HTTP {response.status_code}")
                break
            try:
                value = decoder.decode(response.content)
            except msgspec.ValidationError as exc:  # JSON, but outside its type's bounds
                metrics.nonsense_answers.labels(service).inc()
                log.warning("nonsense answer", service=service, problem=_brief(exc))
                last = ServiceError(service, f"nonsense answer: {_brief(exc)}")
                break
            except msgspec.DecodeError as exc:
                last = ServiceError(service, f"bad answer: {_brief(exc)}")
                break
            wrong = _other_id(value, params)
            if wrong is None and nonsense is not None:
                wrong = nonsense(value, self._settings)
            if wrong is not None:
                metrics.nonsense_answers.labels(service).inc()
                log.warning("nonsense answer", service=service, problem=wrong)
                last = ServiceError(service, f"nonsense answer: {wrong}")
                break
            metrics.child(metrics.external_calls, service, "ok").inc()
            return value
        assert last is not None
        metrics.child(metrics.external_calls, service, "error").inc()
        raise last

    async def _post_payment(self, path: str, request: PaymentRequest | RefundRequest) -> None:
        """One payments call; ``ambiguous`` failures may have taken effect."""
        url = self._payment_urls.get(path)
        if url is None:
            url = self._payment_urls[path] = httpx.URL(self._base_url + path)
        try:
            response = await self._post(url, _encoder.encode(request))
        except httpx.ConnectError as exc:  # refused: the request never left
            metrics.child(metrics.external_calls, "payments", "error").inc()
            raise ServiceError("payments", type(exc).__name__) from exc
        except httpx.HTTPError as exc:
            metrics.child(metrics.external_calls, "payments", "error").inc()
            raise ServiceError("payments", type(exc).__name__, ambiguous=True) from exc
        if response.status_code != 200:
            metrics.child(metrics.external_calls, "payments", "error").inc()
            status = response.status_code
            # a 500 may come after the money moved; 503 and 4xx say this call did nothing,
            # but "in progress" says another call with this key may still land
            ambiguous = (status >= 500 and status != 503) or (
                status == 409 and _problem_code(response) == "operation_in_progress"
            )
            raise ServiceError(
                "payments", f"HTTP {status}", ambiguous=ambiguous, declined=status == 402
            )
        metrics.child(metrics.external_calls, "payments", "ok").inc()

    # --- services --------------------------------------------------------------------------

    async def scooter(self, scooter_id: str) -> ScooterData:
        """Critical: the scooter's zone and charge, or a clear refusal."""
        try:
            return await self._get(
                "scooters", "/scooter-data", _scooter_decoder, {"id": scooter_id}, scooter_nonsense
            )
        except NotFound:
            raise ScooterNotFound(f"no scooter {echo(scooter_id)!r}") from None
        except ServiceError as exc:
            raise DependencyUnavailable("scooters", f"scooters: {exc.reason}") from exc

    async def zone(self, zone_id: str) -> Sourced:
        """The zone's tariff: fresh cache, else live, else the configured base tariff."""
        cached = await self._zones.get(zone_id)
        if cached is not None:
            metrics.child(metrics.cache_lookups, "zones", "hit").inc()
            return Sourced(cached, "cache")
        metrics.child(metrics.cache_lookups, "zones", "miss").inc()
        try:
            zone = await self._get(
                "zones", "/tariff-zone-data", _zone_decoder, {"id": zone_id}, zone_nonsense
            )
        except (ServiceError, NotFound):
            s = self._settings.pricing
            base = TariffZone(
                id=zone_id,
                price_per_minute=s.base_price_per_minute,
                price_unlock=s.base_price_unlock,
                default_deposit=s.base_deposit,
            )
            return Sourced(base, "base_tariff")
        freshness = self._settings.external.zone_freshness_seconds
        if freshness > 0:  # a ttl of 0 would mean "fresh forever" to the cache
            await self._zones.set(zone_id, zone, ttl=freshness)
        return Sourced(zone, "live")

    async def user(self, user_id: str) -> Sourced:
        """The rider's profile: live, else the last one we saw, else conservative."""
        try:
            profile = await self._get(
                "users", "/user-profile", _user_decoder, {"id": user_id}, user_nonsense
            )
        except NotFound:
            raise UserNotFound(f"no user {echo(user_id)!r}") from None
        except ServiceError:
            known = await self._users.get(user_id)
            metrics.child(metrics.cache_lookups, "users", "hit" if known else "miss").inc()
            if known is not None:
                return Sourced(known, "last_known")
            return Sourced(UserProfile(id=user_id), "conservative")
        memory = self._settings.external.user_profile_memory_seconds
        if memory > 0:  # a ttl of 0 would mean "remember forever" to the cache
            await self._users.set(user_id, profile, ttl=memory)
        return Sourced(profile, "live")

    async def configs(self) -> Sourced:
        """Pricing knobs, fetched at most once per refresh period; last good, else defaults."""
        now = time.monotonic()
        if now - self._configs_checked_at < self._settings.external.configs_refresh_seconds:
            return await self._cached_configs()
        async with self._configs_lock:  # single flight: one fetch per period per process
            if (
                time.monotonic() - self._configs_checked_at
                < self._settings.external.configs_refresh_seconds
            ):
                return await self._cached_configs()
            previous, self._configs_checked_at = self._configs_checked_at, time.monotonic()
            try:
                answer = await self._get(
                    "configs", "/configs", _configs_decoder, nonsense=configs_nonsense
                )
            except (ServiceError, NotFound):
                return await self._cached_configs()
            except asyncio.CancelledError:
                # cancelled with its offer (scooters failed): not a check, or the defaults
                # (or an old value) would stay pinned for a whole period
                self._configs_checked_at = previous
                raise
            await self._configs.set("configs", answer.price_coeff_settings)
            return Sourced(answer.price_coeff_settings, "live")

    async def _cached_configs(self) -> Sourced:
        value = await self._configs.get("configs")
        metrics.child(metrics.cache_lookups, "configs", "hit" if value else "miss").inc()
        return (
            Sourced(value, "last_good")
            if value is not None
            else Sourced(self._defaults, "defaults")
        )

    async def hold(self, user_id: str, order_id: str, amount: int) -> None:
        """Reserve ``amount``; retried once (payments is idempotent per order and operation).

        The error says ``ambiguous`` when any attempt may have reserved money anyway.
        """
        request = PaymentRequest(user_id=user_id, order_id=order_id, amount=amount)
        await self._post_payment_twice("/hold-money-for-order", request)

    async def _post_payment_twice(self, path: str, request: PaymentRequest | RefundRequest) -> None:
        """A payments call retried once unless refused (4xx); safe because each operation
        is idempotent at payments. ``ambiguous`` if any attempt may have taken effect."""
        try:
            await self._post_payment(path, request)
            return
        except ServiceError as first:
            if first.reason.startswith("HTTP 4"):
                raise
            try:
                await self._post_payment(path, request)
            except ServiceError as second:
                second.ambiguous = second.ambiguous or first.ambiguous
                raise second from first

    async def clear(self, user_id: str, order_id: str, amount: int) -> None:
        """Charge ``amount`` (final) and release the rest of the hold; 0 releases it all."""
        request = PaymentRequest(user_id=user_id, order_id=order_id, amount=amount)
        await self._post_payment("/clear-money-for-order", request)

    async def refund(self, user_id: str, order_id: str, amount: int, refund_key: str) -> None:
        """Give back ``amount`` of the order's charge; retried once (idempotent per
        ``refund_key``). A 409 (``HTTP 409``) means payments refuses it: more than was
        charged, never charged, or the key was used with another amount."""
        request = RefundRequest(
            user_id=user_id, order_id=order_id, amount=amount, refund_key=refund_key
        )
        await self._post_payment_twice("/refund-money-for-order", request)

    async def payment_operation(
        self, order_id: str, operation: str, refund_key: str = ""
    ) -> PaymentOperationAnswer:
        """What payments knows of one operation (``hold``, ``charge``, ``release`` or
        ``refund`` with its ``refund_key``), found by its idempotency key: ``done`` with
        its amount, ``in_progress`` or ``absent``. A read, retried once; raises
        :class:`ServiceError` when payments does not answer it."""
        params = {"id": order_id, "operation": operation}
        if refund_key:
            params["refund_key"] = refund_key

        def other_operation(answer: PaymentOperationAnswer, _: Settings) -> str | None:
            if (answer.order_id, answer.operation) == (order_id, operation):
                return None
            return "an answer about another operation"

        try:
            return await self._get(
                "payments", "/payment-operation", _operation_decoder, params, other_operation
            )
        except NotFound:  # no such endpoint: payments cannot tell
            raise ServiceError("payments", "no operation lookup") from None

    async def release(self, user_id: str, order_id: str, amount: int) -> None:
        """Release the whole hold (``amount``) of an order whose charge became debt;
        retried once (idempotent per order)."""
        request = PaymentRequest(user_id=user_id, order_id=order_id, amount=amount)
        await self._post_payment_twice("/release-money-for-order", request)


def _brief(exc: msgspec.DecodeError) -> str:
    """msgspec's message about an answer, cut short: it names the field and the bound,
    but an enum's wrong value too, which is the service's (any length)."""
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _problem_code(response: httpx.Response) -> str | None:
    """The ``code`` of a problem+json answer, if it has one."""
    try:
        code = _problem_decoder.decode(response.content).get("code")
    except msgspec.DecodeError:
        return None
    return code if isinstance(code, str) else None


# --- sane bounds (settings) of what the services answer: None = sane, else what is wrong ------


def _outside(name: str, value: float, low: float, high: float) -> str | None:
    # NaN fails both comparisons, so it is outside too
    return None if low <= value <= high else f"{name}={value!r} outside [{low}, {high}]"


BIGINT_MAX = 2**63 - 1  # a count of rides fits Postgres' bigint


def _other_id(value: object, params: dict[str, str] | None) -> str | None:
    """What is wrong with an answer about another record than the one asked for."""
    asked = None if params is None else params.get("id")
    answered = getattr(value, "id", asked)
    if answered == asked:
        return None
    return f"id={echo(answered)!r} answered for id={echo(asked)!r}"


def _first(*problems: str | None) -> str | None:
    return next((p for p in problems if p is not None), None)


def scooter_nonsense(scooter: ScooterData, settings: Settings) -> str | None:
    """A battery charge is a percentage."""
    return _outside("charge", scooter.charge, 0, 100)


def zone_nonsense(zone: TariffZone, s: Settings) -> str | None:
    return _first(
        _outside(
            "price_per_minute", zone.price_per_minute, 0, s.bounds.tariff_price_per_minute_max
        ),
        _outside("price_unlock", zone.price_unlock, 0, s.bounds.tariff_price_unlock_max),
        _outside("default_deposit", zone.default_deposit, 0, s.bounds.tariff_deposit_max),
    )


def user_nonsense(user: UserProfile, s: Settings) -> str | None:
    return _first(
        _outside("current_debt", user.current_debt, 0, s.bounds.user_debt_max),
        _outside("total_debt", user.total_debt, 0, s.bounds.user_debt_max),
        _outside("rides_count", user.rides_count, 0, BIGINT_MAX),
    )


def configs_nonsense(answer: ConfigsAnswer, s: Settings) -> str | None:
    c = answer.price_coeff_settings
    return _first(
        _outside("surge", c.surge, s.bounds.surge_min, s.bounds.surge_max),
        _outside(
            "low_charge_discount", c.low_charge_discount, s.bounds.low_charge_discount_min, 1.0
        ),
        _outside("low_charge_threshold", c.low_charge_threshold, 0, 100),
        _outside("deposit_multiplier", c.deposit_multiplier, 1.0, s.bounds.deposit_multiplier_max),
        _outside("deposit_debt_threshold", c.deposit_debt_threshold, 0, s.bounds.user_debt_max),
        _outside("free_ride_seconds", c.free_ride_seconds, 0, s.bounds.free_ride_seconds_max),
    )
