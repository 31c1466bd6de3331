"""A ride's receipt and GPS track, and the operations console's static files (issue 12).

Both read Postgres directly: they are opened once per ride, not on every refresh of
the ride screen, and the projections stay small (no pricing inputs, no track).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Request, Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, SkipValidation
from litestar.static_files import create_static_files_router

from query_api.reads import Reads
from shared.domain import TrackPoint
from shared.errors import OrderNotEnded, OrderNotFound, echo
from shared.ids import parse_order_id
from shared.infra.auth import principal_of
from shared.infra.openapi import READ, problem_responses
from shared.pricing import track_distance_meters
from shared.receipt import Receipt
from shared.settings import Settings

CONSOLE_DIR = Path(__file__).resolve().parent / "console"

ReadsDep = SkipValidation[Reads]  # built by the lifespan: not validated per request
_track_decoder = msgspec.json.Decoder(list[TrackPoint])


class ReceiptAnswer(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    status: str
    receipt: Receipt


class TrackAnswer(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    points: list[TrackPoint]  # in the order sent; t in seconds since the epoch
    distance_meters: int


class ConsoleConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the console's browser reaches the other services."""

    command_url: str
    identity_url: str


@get(
    "/orders/{order_id:str}/receipt",
    summary="A ride's itemised receipt",
    responses=problem_responses("GetReceipt", {**READ, 404: [OrderNotFound], 409: [OrderNotEnded]}),
)
async def get_receipt(
    request: Request[Any, Any, Any], order_id: FromPath[str], reads: ReadsDep
) -> ReceiptAnswer:
    """The itemised receipt of a finished or cancelled ride (409 while it is active).

    Only its rider (or support) sees it; to anyone else the order does not exist (404).
    """
    parsed = parse_order_id(order_id)
    view = None if parsed is None else await reads.order_from_postgres(parsed)
    if view is None or not principal_of(request.user).may_read(view.user_id):
        raise OrderNotFound(f"no order {echo(order_id)}")
    if view.receipt is None:
        raise OrderNotEnded(f"an order in status {view.status!r} has no receipt yet")
    return ReceiptAnswer(order_id=view.id, status=view.status, receipt=view.receipt)


@get(
    "/orders/{order_id:str}/track",
    summary="A ride's GPS track",
    responses=problem_responses("GetTrack", {**READ, 404: [OrderNotFound]}),
)
async def get_track(
    request: Request[Any, Any, Any], order_id: FromPath[str], reads: ReadsDep
) -> TrackAnswer:
    """The GPS points the rider's app sent at finish (none for an active ride); only for
    its rider or support (404 to anyone else)."""
    parsed = parse_order_id(order_id)
    found = None if parsed is None else await reads.order_track(parsed)
    if found is None or not principal_of(request.user).may_read(found[0]):
        raise OrderNotFound(f"no order {echo(order_id)}")
    points = _track_decoder.decode(found[1])
    return TrackAnswer(  # the id as we spell it, not as asked (urn:uuid:, braces, case)
        order_id=str(parsed), points=points, distance_meters=track_distance_meters(points)
    )


def console_handlers(settings: Settings) -> list[Any]:
    """The console's static files under ``/console/`` and its configuration."""
    host = settings.serving.command_host
    if host in {"0.0.0.0", "::", ""}:  # listening everywhere: the browser is on this machine
        host = "127.0.0.1"
    port = settings.serving.command_port
    command_url = settings.console.command_url or f"http://{host}:{port}"
    identity_url = settings.console.identity_url or settings.identity_base_url

    @get("/console-config")
    async def console_config() -> ConsoleConfig:
        return ConsoleConfig(command_url=command_url, identity_url=identity_url)

    # the pages may load only our own files and talk only to the query API, the command
    # API and the identity provider: injected markup could neither run nor phone home
    csp = console_csp(command_url, identity_url)

    async def console_headers(response: Response[Any]) -> Response[Any]:
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    static: Router = create_static_files_router(
        path="/console",
        directories=[CONSOLE_DIR],
        html_mode=True,
        name="console",
        before_request=only_console_file_names,
        after_request=console_headers,
    )
    return [get_receipt, get_track, console_config, static]


# the console is one flat directory of a few files with plain names
_CONSOLE_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


async def only_console_file_names(request: Request[Any, Any, Any]) -> None:
    """Refuse (404) a name no console file can have before the file system sees it: the
    static files app answered 500 to a NUL (``ValueError: embedded null byte``) and to a
    name longer than the file system allows (``OSError: File name too long``)."""
    name = request.scope["path"].removeprefix("/console").lstrip("/")
    if name and not _CONSOLE_FILE.fullmatch(name):
        raise NotFoundException(f"the console has no file {name[:100]!r}")


def console_csp(*urls: str) -> str:
    """The console pages' Content-Security-Policy: scripts, styles and images from the
    query API only, requests to it and to the origins of ``urls`` (http or https; a URL
    that is not a plain origin is left out)."""
    origins = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in {"http", "https"} and _NETLOC.fullmatch(parts.netloc):
            origins.append(f"{parts.scheme}://{parts.netloc}")
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            " ".join(("connect-src 'self'", *dict.fromkeys(origins))),
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


_NETLOC = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
