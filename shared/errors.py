"""Domain errors with stable machine-readable codes.

The HTTP layers map each to a problem-details answer; the code never changes
once published because the app switches on it.
"""

from __future__ import annotations

ECHO_MAX_CHARS = 64


def echo(value: object, limit: int = ECHO_MAX_CHARS) -> str:
    """``value`` as text to repeat back in a problem ``detail`` or a log line: at most
    ``limit`` characters, a longer one cut there and ended with "…" (issue 8: a 65 KB
    path was echoed whole in a 404 and its log line). Control characters are left to the
    JSON encoder and the log renderer, which escape them."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


class DomainError(Exception):
    """A refusal the caller can act on."""

    code: str = "domain_error"
    status: int = 400
    title: str = "Request refused"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title


class OfferExpired(DomainError):
    code, status, title = "offer_expired", 410, "The offer has expired; ask for a new one"


class OfferInvalid(DomainError):
    code, status, title = "offer_invalid", 422, "The offer token is malformed or was altered"


class OfferAlreadyUsed(DomainError):
    code, status, title = "offer_already_used", 409, "The offer has already started a ride"


class OfferNotYours(DomainError):
    code, status, title = "offer_not_yours", 403, "The offer belongs to another user"


class ScooterBusy(DomainError):
    code, status, title = "scooter_busy", 409, "The scooter is already in a ride"


class TooManyActiveRides(DomainError):
    code, status, title = "too_many_active_rides", 409, "The user already has an active ride"


class UserHasDebt(DomainError):
    code, status, title = "user_has_debt", 402, "The user has an unpaid debt"


class PaymentDeclined(DomainError):
    """Payments declined the rider's card for the deposit hold: a definite answer, nothing
    moved (ADR 0002); the rider may try again after updating the card (no Retry-After)."""

    code, status, title = "payment_declined", 402, "The payment was declined"


class ScooterNotFound(DomainError):
    code, status, title = "scooter_not_found", 404, "No such scooter"


class OrderNotFound(DomainError):
    code, status, title = "order_not_found", 404, "No such order"


class UserNotFound(DomainError):
    code, status, title = "user_not_found", 404, "No such user"


class IdempotencyKeyReused(DomainError):
    code, status, title = (
        "idempotency_key_reused",
        422,
        "The Idempotency-Key was used with a different request",
    )


class IdempotencyKeyInFlight(DomainError):
    code, status, title = (
        "idempotency_key_in_flight",
        409,
        "A request with this Idempotency-Key is in progress",
    )


class InvalidIdempotencyKey(DomainError):
    code, status, title = (
        "invalid_idempotency_key",
        400,
        "The Idempotency-Key header is malformed",
    )


class InvalidRequest(DomainError):
    """The request's bytes are unusable: not UTF-8, not JSON, nested too deep, wrong shape."""

    code, status, title = "invalid_request", 400, "Invalid request"


class UnsupportedMediaType(DomainError):
    """A body declared (``Content-Type``) as something other than JSON in UTF-8."""

    code, status, title = (
        "unsupported_media_type",
        415,
        "The body must be application/json (UTF-8)",
    )


class InvalidParameter(DomainError):
    code, status, title = "invalid_parameter", 422, "A parameter is invalid"


class TrackTooLong(DomainError):
    code, status, title = "track_too_long", 413, "The track has too many points"


class DependencyUnavailable(DomainError):
    """A critical dependency is down: the caller should retry later (503 + Retry-After)."""

    code, status, title = "dependency_unavailable", 503, "A required service is unavailable"

    def __init__(self, service: str, detail: str | None = None) -> None:
        super().__init__(detail or f"{service} is unavailable; try again shortly")
        self.service = service


class Unauthenticated(DomainError):
    """No bearer token, or one we do not accept (ADR 0006); answered with
    ``WWW-Authenticate: Bearer``."""

    code, status, title = "unauthenticated", 401, "A valid bearer token is required"


class Forbidden(DomainError):
    """The caller is known but may not do this (another rider's offer or history)."""

    code, status, title = "forbidden", 403, "Not allowed for this caller"


class RateLimited(DomainError):
    """Too many requests of one kind from one rider; retry after ``retry_after`` seconds."""

    code, status, title = "rate_limited", 429, "Too many requests; slow down"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)


# --- rides gone wrong (issue 12; shared/ride_rules.py) ------------------------------------


class EndBeforeStart(DomainError):
    code, status, title = "end_before_start", 422, "A ride cannot end before it started"


class EndInFuture(DomainError):
    code, status, title = "end_in_future", 422, "A ride cannot be ended at a future time"


class InvalidRefund(DomainError):
    code, status, title = "invalid_refund", 422, "A refund must be a positive amount"


class RefundExceedsCharge(DomainError):
    code, status, title = (
        "refund_exceeds_charge",
        409,
        "The refunds would exceed what was charged",
    )


class OrderNotEnded(DomainError):
    code, status, title = "order_not_ended", 409, "The ride has not ended; it has no receipt yet"


class OrderNotCharged(DomainError):
    code, status, title = (
        "order_not_charged",
        409,
        "The ride has not been charged; there is nothing to refund",
    )


class IdempotencyKeyRequired(DomainError):
    code, status, title = (
        "idempotency_key_required",
        400,
        "This operation needs an Idempotency-Key header",
    )
