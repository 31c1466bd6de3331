"""The external services' stubs as one Litestar app: scooters, zones, users, configs, payments.

The wire contract is DOMAIN.md's (kept so the real services could be swapped in); the
identity provider's is issue 9's (``stubs/identity.py``). Payments adds ours: release,
refund, and ``GET /payment-operation`` (what became of an operation, by its idempotency
key); it works on one call per idempotency key at a time (409 ``operation_in_progress``)
and a declined hold or charge is 402 ``payment_declined`` with nothing moved. Like the
other payments endpoints (the contract has no caller authentication), the lookup needs
no token. The ``/admin``, ``/ledger``,
``/health`` and ``/metrics`` endpoints are ours, for tests and operations, and are
never faulted; ``/admin/*`` and ``/ledger`` need the admin token
(``SCOOTERS_STUBS_ADMIN_TOKEN`` as a bearer token; none set = refused).

Payments keeps the ids it is given, so it refuses (400) ids outside
``shared.domain.PaymentId`` and refund keys with control characters. The ``answer_fields``
fault makes a service answer nonsense strings (stubs/_faults.py); as service ``identity``
the faults make the JWKS slow, down, or any document (``answer_body``).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromQuery, QueryParameter
from litestar.types import Guard, Message, Scope
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from shared.domain import (
    ConfigsAnswer,
    PaymentAnswer,
    PaymentOperationAnswer,
    PaymentRequest,
    PriceCoeffSettings,
    RefundRequest,
    ScooterData,
    TariffZone,
    UserProfile,
)
from shared.errors import InvalidRequest
from shared.infra.boundary import decode_as, json_depth_exceeds
from shared.infra.logs import MALFORMED_REQUESTS, get_logger, with_request_ids
from shared.infra.serving import cors_config, cors_refusals_as_problems
from shared.settings import IdentitySettings, origins
from stubs._dataset import DataSet
from stubs._faults import Fault, Faults, FaultUpdate, ServiceFailed, UnknownService
from stubs._ledger import Ledger, Operation, OperationInProgress, OrderAccount, PaymentConflict
from stubs._settings import StubSettings
from stubs.identity import AdminTokenRequest, IdentityProvider, TokenAnswer, TokenRequest

# the configs a fresh stub answers with: DOMAIN.md's vectors assume surge 2 and discount 0.75
DEFAULT_COEFFS = PriceCoeffSettings(
    surge=2.0,
    low_charge_discount=0.75,
    low_charge_threshold=28,
    deposit_multiplier=1.25,
    deposit_debt_threshold=10_000,
    free_ride_seconds=5,
)

MAX_KEY = 255  # an idempotency key (refund key): as long as any Idempotency-Key we accept
MAX_JSON_DEPTH = 32  # our bodies nest two levels; anything deeper is refused unread
# a record id to look up: any printable text (an unknown one is 404), never a control
# character (NUL, a line break, ESC, DEL, C1), refused 400 invalid_request like the APIs
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*(?!\n)$"
IdParam = Annotated[str, QueryParameter(name="id", max_length=256, pattern=NO_CONTROL)]
# payments keeps what it is given: its ids are refused 400 unless of PaymentId's alphabet
PAYMENT_ID = r"^[A-Za-z0-9_.:-]+(?!\n)$"  # shared.domain.PaymentId, at least one
PaymentIdParam = Annotated[
    str, QueryParameter(name="id", min_length=1, max_length=256, pattern=PAYMENT_ID)
]
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class CoeffsUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A partial change of the configs; a missing field keeps its value."""

    surge: Positive | None = None
    low_charge_discount: Positive | None = None
    low_charge_threshold: NonNegative | None = None
    deposit_multiplier: Positive | None = None
    deposit_debt_threshold: NonNegative | None = None
    free_ride_seconds: NonNegative | None = None


class Health(msgspec.Struct, frozen=True):
    status: str = "ok"


OK = PaymentAnswer(status="ok")


@dataclasses.dataclass(kw_only=True)
class Stubs:
    """Everything the stubs know; one per process, handed to handlers as ``stubs``."""

    data: DataSet
    faults: Faults
    ledger: Ledger
    coeffs: PriceCoeffSettings
    registry: CollectorRegistry
    requests: Counter
    identity: IdentityProvider


# the handlers' ``stubs`` parameter, provided by ``create_app`` (named, not inferred:
# Litestar 3 drops inferred dependencies)
StubsDep = NamedDependency[Stubs]


class Problem(HTTPException):
    """An error answered as problem details, with a stable machine-readable ``code``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status_code=status, detail=detail)
        self.code = code


Body = TypeVar("Body")
log = get_logger("stubs")


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


async def decode_body(request: Request[Any, Any, Any], kind: type[Body]) -> Body:
    """Decode a JSON body strictly: Litestar's lax decoding would turn "10" into 10.

    Any bytes that are not such a body (not UTF-8, too deep, wrong shape) are a 400.
    """
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    body = await request.body()
    try:
        if json_depth_exceeds(body, MAX_JSON_DEPTH):  # the contract's structs are open
            raise InvalidRequest(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
        value: Body = decode_as(body, decoder)
    except InvalidRequest as exc:
        raise Problem(400, "malformed_body", exc.detail) from None
    return value


def not_found(kind: str, record_id: str) -> Problem:
    return Problem(404, f"{kind}_not_found", f"no {kind} with id {record_id!r}")


# --- the external services (wire contract) ---------------------------------------------------


@get("/scooter-data", opt={"service": "scooters"})
async def scooter_data(stubs: StubsDep, scooter_id: IdParam) -> ScooterData | dict[str, Any]:
    await stubs.faults.strike("scooters")
    if (scooter := stubs.data.scooter(scooter_id)) is None:
        raise not_found("scooter", scooter_id)
    return stubs.faults.answer("scooters", scooter)


@get("/tariff-zone-data", opt={"service": "zones"})
async def tariff_zone_data(stubs: StubsDep, zone_id: IdParam) -> TariffZone | dict[str, Any]:
    await stubs.faults.strike("zones")
    if (zone := stubs.data.zone(zone_id)) is None:
        raise not_found("zone", zone_id)
    return stubs.faults.answer("zones", zone)


@get("/user-profile", opt={"service": "users"})
async def user_profile(stubs: StubsDep, user_id: IdParam) -> UserProfile | dict[str, Any]:
    await stubs.faults.strike("users")
    if (user := stubs.data.user(user_id)) is None:
        raise not_found("user", user_id)
    return stubs.faults.answer("users", user)


@get("/configs", opt={"service": "configs"})
async def configs(stubs: StubsDep) -> ConfigsAnswer | dict[str, Any]:
    await stubs.faults.strike("configs")
    return stubs.faults.answer("configs", ConfigsAnswer(price_coeff_settings=stubs.coeffs))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PaymentOp:
    """One payments operation: the body it takes, how that body is checked, what it does
    to the ledger, and whether a card can decline it (the ``decline`` fault)."""

    operation: Operation
    body: type[Any]
    check: Callable[[Any], None]
    act: Callable[..., None]  # the Ledger method, called with the body's fields
    declinable: bool


async def _payment_call(
    stubs: StubsDep, request: Request[Any, Any, Any], op: PaymentOp
) -> PaymentAnswer | dict[str, Any]:
    """The steps every payments call shares: read and check the body; claim its
    idempotency key (409 ``operation_in_progress`` while another call with it is being
    worked on); strike the faults (before anything is done, so a failed call has no
    effect); decline a new operation if the ``decline`` fault says so (402
    ``payment_declined``, nothing recorded); act on the ledger (a contradiction is 409
    ``payment_conflict``); then answer, late if the "acted, replied late" fault says so.
    """
    data = await decode_body(request, op.body)
    op.check(data)
    key = getattr(data, "refund_key", "")
    try:
        with stubs.ledger.calling(data.order_id, op.operation, key):
            await stubs.faults.strike("payments")
            if (
                op.declinable
                and data.amount > 0
                and stubs.faults.declines("payments")
                and stubs.ledger.operation(data.order_id, op.operation, key)[0] != "done"
            ):
                raise Problem(
                    402, "payment_declined", f"the card declined the {op.operation} (fault)"
                )
            op.act(stubs.ledger, **msgspec.structs.asdict(data))
    except OperationInProgress as exc:
        raise Problem(409, "operation_in_progress", str(exc)) from exc
    except PaymentConflict as exc:
        raise Problem(409, "payment_conflict", str(exc)) from exc
    await stubs.faults.reply("payments")
    return stubs.faults.answer("payments", OK)


def check_payment(payment: PaymentRequest) -> None:
    if not payment.user_id or not payment.order_id:
        raise Problem(422, "invalid_payment", "user_id and order_id must not be empty")
    if payment.amount < 0:
        raise Problem(422, "invalid_payment", f"amount must not be negative, got {payment.amount}")


def check_refund(refund: RefundRequest) -> None:
    if not refund.user_id or not refund.order_id or not 1 <= len(refund.refund_key) <= MAX_KEY:
        raise Problem(
            422, "invalid_payment", f"user_id, order_id and refund_key (1-{MAX_KEY}) must be given"
        )
    if refund.amount <= 0:
        raise Problem(422, "invalid_payment", f"a refund must be positive, got {refund.amount}")


HOLD = PaymentOp(
    operation="hold", body=PaymentRequest, check=check_payment, act=Ledger.hold, declinable=True
)
CLEAR = PaymentOp(
    operation="charge", body=PaymentRequest, check=check_payment, act=Ledger.clear, declinable=True
)
RELEASE = PaymentOp(
    operation="release",
    body=PaymentRequest,
    check=check_payment,
    act=Ledger.release,
    declinable=False,
)
REFUND = PaymentOp(
    operation="refund", body=RefundRequest, check=check_refund, act=Ledger.refund, declinable=False
)


@post("/hold-money-for-order", opt={"service": "payments"}, status_code=200)
async def hold_money(
    stubs: StubsDep, request: Request[Any, Any, Any]
) -> PaymentAnswer | dict[str, Any]:
    return await _payment_call(stubs, request, HOLD)


@post("/clear-money-for-order", opt={"service": "payments"}, status_code=200)
async def clear_money(
    stubs: StubsDep, request: Request[Any, Any, Any]
) -> PaymentAnswer | dict[str, Any]:
    return await _payment_call(stubs, request, CLEAR)


@post("/release-money-for-order", opt={"service": "payments"}, status_code=200)
async def release_money(
    stubs: StubsDep, request: Request[Any, Any, Any]
) -> PaymentAnswer | dict[str, Any]:
    """Ours: release the whole hold of an order never charged (its charge became debt)."""
    return await _payment_call(stubs, request, RELEASE)


@post("/refund-money-for-order", opt={"service": "payments"}, status_code=200)
async def refund_money(
    stubs: StubsDep, request: Request[Any, Any, Any]
) -> PaymentAnswer | dict[str, Any]:
    """Ours: give back part or all of a charge; idempotent per (order, refund key)."""
    return await _payment_call(stubs, request, REFUND)


@get("/payment-operation", opt={"service": "payments"})
async def payment_operation(
    stubs: StubsDep,
    order_id: PaymentIdParam,
    operation: FromQuery[Operation],
    refund_key: Annotated[str, QueryParameter(max_length=MAX_KEY, pattern=r"^[ -~]*(?!\n)$")] = "",
) -> PaymentOperationAnswer | dict[str, Any]:
    """Ours: what became of one operation, found by its idempotency key (a read: safe to
    repeat, never acts, never answers late). Faulted like every payments call."""
    await stubs.faults.strike("payments")
    if (operation == "refund") != bool(refund_key):
        raise Problem(422, "invalid_payment", "refund_key is given for a refund, and only then")
    state, amount = stubs.ledger.operation(order_id, operation, refund_key)
    answer = PaymentOperationAnswer(
        order_id=order_id, operation=operation, state=state, amount=amount
    )
    return stubs.faults.answer("payments", answer)


# --- the identity provider (contract of issue 9) ----------------------------------------------


@post("/auth/token", status_code=200)
async def issue_token(stubs: StubsDep, request: Request[Any, Any, Any]) -> TokenAnswer:
    data = await decode_body(request, TokenRequest)
    return stubs.identity.issue(data.sub, list(data.roles))


@get("/.well-known/jwks.json", opt={"service": "identity"})
async def jwks(stubs: StubsDep) -> Response[bytes] | dict[str, Any]:
    """The provider's public keys; faulted as service ``identity`` (a broken or hostile
    provider: ``answer_fields`` replaces members of the document, ``answer_body`` all of
    it). Token issuing is never faulted."""
    await stubs.faults.strike("identity")
    body = stubs.faults.body("identity")
    if body is not None:
        return Response(body.encode(), media_type="application/json")
    return {**stubs.identity.jwks(), **stubs.faults.fields("identity")}


# --- ours: admin, ledger, health, metrics (never faulted) ------------------------------------


ADMIN = {"admin": True}  # route opt: the route needs the admin token


def admin_guard(token: str) -> Guard:
    """Guard of every route marked ``ADMIN``: ``Authorization: Bearer <token>`` required
    (an empty ``token`` refuses them all)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if not handler.opt.get("admin"):
            return
        scheme, _sep, given = connection.headers.get("authorization", "").partition(" ")
        if not token or scheme.lower() != "bearer":
            raise Problem(401, "unauthenticated", "the stubs' admin endpoints need the admin token")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Problem(401, "unauthenticated", "wrong admin token")

    return guard


@post("/admin/auth/token", status_code=200, opt=ADMIN)
async def issue_any_token(stubs: StubsDep, request: Request[Any, Any, Any]) -> TokenAnswer:
    data = await decode_body(request, AdminTokenRequest)
    return stubs.identity.issue(
        data.sub,
        list(data.roles),
        expires_in=data.expires_in,
        audience=data.audience,
        issuer=data.issuer,
    )


@post("/admin/auth/rotate", status_code=200, opt=ADMIN)
async def rotate_key(stubs: StubsDep) -> dict[str, str]:
    return {"kid": stubs.identity.rotate()}


@get("/ledger", opt=ADMIN)
async def ledger(
    stubs: StubsDep,
    order_id: Annotated[str, QueryParameter(min_length=1, max_length=256, pattern=PAYMENT_ID)],
) -> OrderAccount:
    if (account := stubs.ledger.account(order_id)) is None:
        raise not_found("order", order_id)
    return account


@get("/admin/faults", opt=ADMIN)
async def list_faults(stubs: StubsDep) -> list[Fault]:
    return stubs.faults.all()


@post("/admin/faults", status_code=200, opt=ADMIN)
async def set_faults(stubs: StubsDep, request: Request[Any, Any, Any]) -> list[Fault]:
    data = await decode_body(request, FaultUpdate)
    try:
        stubs.faults.update(data)
    except UnknownService as exc:
        raise Problem(422, "unknown_service", str(exc)) from exc
    return stubs.faults.all()


@post("/admin/configs", status_code=200, opt=ADMIN)
async def set_configs(stubs: StubsDep, request: Request[Any, Any, Any]) -> ConfigsAnswer:
    data = await decode_body(request, CoeffsUpdate)
    given = {f: v for f in data.__struct_fields__ if (v := getattr(data, f)) is not None}
    stubs.coeffs = msgspec.structs.replace(stubs.coeffs, **given)
    return ConfigsAnswer(price_coeff_settings=stubs.coeffs)


@post("/admin/configs/reset", status_code=200, opt=ADMIN)
async def reset_configs(stubs: StubsDep) -> ConfigsAnswer:
    stubs.coeffs = DEFAULT_COEFFS
    return ConfigsAnswer(price_coeff_settings=stubs.coeffs)


@get(["/health/live", "/health/ready"])
async def health() -> Health:
    return Health()


@get("/metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(stubs: StubsDep) -> bytes:
    return generate_latest(stubs.registry)


# --- wiring ------------------------------------------------------------------------------------


def outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return {404: "not_found", 409: "conflict", 500: "error", 503: "unavailable"}.get(
        status, "rejected"
    )


def problem_details(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Answer every HTTP error as RFC 9457 problem details with a ``code``."""
    status = exc.status_code
    # a 400 of Litestar's (a query parameter out of bounds) has the APIs' code
    default = "invalid_request" if status == 400 else HTTPStatus(status).name.lower()
    code = getattr(exc, "code", None) or default
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": exc.detail,
        "code": code,
    }
    if exc.extra:
        body["errors"] = exc.extra  # the validation errors of a malformed request
    return Response(
        body, status_code=status, media_type="application/problem+json", headers=exc.headers
    )


def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A bug of ours: still problem details, never a traceback."""
    log.error("unhandled error", method=request.method, path=request.url.path, exc_info=exc)
    return problem_details(request, Problem(500, "internal_error", "an unexpected error occurred"))


def fault_answer(request: Request[Any, Any, Any], exc: ServiceFailed) -> Response[Any]:
    return problem_details(request, Problem(exc.status, "injected_fault", str(exc)))


def create_app(
    settings: StubSettings,
    initial_faults: Sequence[FaultUpdate] = (),
    identity: IdentitySettings | None = None,
) -> Litestar:
    """The stubs app with a fresh data set, ledger, configs and faults; its identity
    provider issues tokens with ``identity``'s issuer, audience and lifetime."""
    idp = identity or IdentitySettings()
    registry = CollectorRegistry()
    requests = Counter(
        "stub_requests",
        "Requests to the stubbed services",
        ("service", "outcome"),
        registry=registry,
    )
    stubs = Stubs(
        data=DataSet(
            seed=settings.seed,
            scooters=settings.scooters,
            zones=settings.zones,
            users=settings.users,
        ),
        faults=Faults(settings.seed),
        ledger=Ledger(),
        coeffs=DEFAULT_COEFFS,
        registry=registry,
        requests=requests,
        identity=IdentityProvider(
            issuer=idp.issuer, audience=idp.audience, ttl_seconds=idp.token_ttl_seconds
        ),
    )
    # bytes that are no HTTP request: counted by the logging filter (shared.infra.logs)
    registry.register(MALFORMED_REQUESTS)
    for change in initial_faults:
        stubs.faults.update(change)

    async def count_request(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or "route_handler" not in scope:
            return
        service = scope["route_handler"].opt.get("service")
        if service is not None:
            requests.labels(service, outcome(message["status"])).inc()

    app = Litestar(
        route_handlers=[
            scooter_data,
            tariff_zone_data,
            user_profile,
            configs,
            hold_money,
            clear_money,
            release_money,
            refund_money,
            payment_operation,
            issue_token,
            jwks,
            issue_any_token,
            rotate_key,
            ledger,
            list_faults,
            set_faults,
            set_configs,
            reset_configs,
            health,
            metrics,
        ],
        dependencies={"stubs": Provide(lambda: stubs, sync_to_thread=False)},
        exception_handlers={
            HTTPException: problem_details,
            ServiceFailed: fault_answer,
            Exception: unexpected,
        },
        before_send=[count_request],
        guards=[admin_guard(settings.admin_token)],
        openapi_config=None,
        # shared.infra.logs configures logging (stubs/__main__.py): Litestar's default
        # config would replace its renderer, so lines would lose request ids and escaping
        logging_config=None,
        # the console's browser asks the identity provider for tokens
        cors_config=cors_config(origins(settings.cors_allow_origins)),
    )
    return with_request_ids(cors_refusals_as_problems(app))
