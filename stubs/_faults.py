"""Fault switches: make one external service slow, flaky or down, at start or at run time."""

from __future__ import annotations

import asyncio
import random
from typing import Annotated, Any, TypeVar

import msgspec

# identity: its JWKS only (tokens are always issued, so tests can sign in)
SERVICES = ("scooters", "zones", "users", "configs", "payments", "identity")
T = TypeVar("T", bound=msgspec.Struct)


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """The fault switches of one service; all off is a healthy service."""

    service: str
    outage: bool = False
    latency_ms: int = 0
    error_rate: float = 0.0
    # "acted, replied late": the operation takes effect, then the answer waits this long
    # (longer than the caller's timeout makes an ambiguous failure that did happen)
    reply_delay_ms: int = 0
    # payments only: every new hold or charge of a positive amount is declined (402
    # payment_declined), nothing moves and nothing is recorded, so the same idempotency
    # key may succeed later (the card was updated); a done operation still answers ok
    decline: bool = False
    # "answers nonsense": these fields replace the same-named ones in every answer of
    # the service (e.g. {"zone_id": "<1 MB>"} or {"id": "a\u0000b"}); unset (set to {}:
    # answers as is) it is left out of the listing
    answer_fields: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    # identity only: the JWKS answer is this text (UTF-8, application/json) instead, any
    # bytes a broken provider might send ("[[[...", "null", "<html>"); "" clears it
    answer_body: str | msgspec.UnsetType = msgspec.UNSET


class FaultUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """A change to one service's switches; a missing field keeps its current value."""

    service: str
    outage: bool | None = None
    latency_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] | None = None
    error_rate: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    reply_delay_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] | None = None
    decline: bool | None = None
    answer_fields: dict[str, Any] | None = None
    answer_body: str | None = None


class UnknownService(ValueError):
    def __init__(self, service: str) -> None:
        super().__init__(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")


class ServiceFailed(Exception):
    """A fault made this call fail; ``status`` is what the service answers."""

    def __init__(self, service: str, status: int, reason: str) -> None:
        super().__init__(f"{service}: {reason} (injected fault)")
        self.service = service
        self.status = status


class Faults:
    """The current switches of every service and the seeded dice of ``error_rate``."""

    def __init__(self, seed: int) -> None:
        self._faults = {service: Fault(service=service) for service in SERVICES}
        self._dice = random.Random(seed)

    def all(self) -> list[Fault]:
        return list(self._faults.values())

    def update(self, change: FaultUpdate) -> None:
        """Apply ``change`` to its service's switches, leaving unnamed switches as they were."""
        current = self._faults.get(change.service)
        if current is None:
            raise UnknownService(change.service)
        given = {
            name: value
            for name in (
                "outage",
                "latency_ms",
                "error_rate",
                "reply_delay_ms",
                "decline",
                "answer_fields",
                "answer_body",
            )
            if (value := getattr(change, name)) is not None
        }
        if given.get("answer_fields") == {}:
            given["answer_fields"] = msgspec.UNSET
        if given.get("answer_body") == "":
            given["answer_body"] = msgspec.UNSET
        self._faults[change.service] = msgspec.structs.replace(current, **given)

    async def strike(self, service: str) -> None:
        """Play ``service``'s faults before its work: wait, then maybe fail.

        Called before the service does anything, so a failed call has no effect.
        """
        fault = self._faults[service]
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        # read again: the switches may have changed while this call slept
        fault = self._faults[service]
        if fault.outage:
            raise ServiceFailed(service, 503, "service is down")
        if fault.error_rate and self._dice.random() < fault.error_rate:
            raise ServiceFailed(service, 500, "random failure")

    def declines(self, service: str) -> bool:
        """Whether ``service`` (payments) declines new holds and charges now."""
        return self._faults[service].decline

    def answer(self, service: str, value: T) -> T | dict[str, Any]:
        """``value``, the answer of ``service``, with the fields of its ``answer_fields``
        fault replaced (as a dict then: a value of any type or size)."""
        fields = self._faults[service].answer_fields
        if not fields:
            return value
        return {**msgspec.structs.asdict(value), **fields}

    def fields(self, service: str) -> dict[str, Any]:
        """The fields of ``service``'s ``answer_fields`` fault ({} when unset)."""
        fields = self._faults[service].answer_fields
        return fields if isinstance(fields, dict) else {}

    def body(self, service: str) -> str | None:
        """The text ``service`` answers instead of its JSON (``answer_body``), if set."""
        body = self._faults[service].answer_body
        return body if isinstance(body, str) else None

    async def reply(self, service: str) -> None:
        """Play ``service``'s "acted, replied late" fault: called after the work is done,
        so the caller times out on an operation that took effect."""
        delay = self._faults[service].reply_delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)


def faults_from_json(raw: str) -> list[FaultUpdate]:
    """Parse a JSON list of fault switches (``SCOOTERS_STUB_FAULTS``); unknown services fail."""
    changes = msgspec.json.decode(raw, type=list[FaultUpdate])
    for change in changes:
        if change.service not in SERVICES:
            raise UnknownService(change.service)
    return changes
