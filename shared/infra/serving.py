"""How every HTTP process of ours is served: one uvicorn configuration.

The load tests' ceiling app is served the same way, so its throughput is a fair
measure of what the framework and server reach on the machine.

With more than one worker, metrics go through prometheus-client's multiprocess mode:
each worker writes its samples to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``
and ``/metrics`` on the internal metrics port (``shared/infra/metrics_server.py``,
whichever worker's server answers) adds up the files of all workers, so one scrape
covers the whole service. The directory is
made fresh here (a private temporary one unless the variable is set) and emptied
before the workers start, as the client's documentation requires. One worker keeps the
in-memory registry, which is cheaper per request (docs/scaling.md, "Metrics").
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import Headers
from litestar.enums import ScopeType
from litestar.exceptions import ClientException
from litestar.middleware._internal.cors import CORSMiddleware
from litestar.middleware._internal.exceptions.middleware import get_exception_handler
from litestar.types import Receive, Scope, Send

from shared.infra.admission import Admission, GuardedHttpToolsProtocol

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _raise_open_files_limit() -> None:
    """Use the hard limit of open files: connections past the soft one would fail accept()."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def metrics_directory(workers: int) -> Iterator[Path | None]:
    """Set up ``PROMETHEUS_MULTIPROC_DIR`` for ``workers`` processes (inherited by them).

    A directory given in the environment is used (and emptied) whatever ``workers`` is,
    so one worker can be measured in multiprocess mode too; else one worker needs none
    and several get a temporary directory, removed when serving stops.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield directory
        return
    if workers <= 1:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="scooters-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def serve(
    factory: str,
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    admission: Admission | None = None,
    healthcheck_seconds: int = 60,
) -> None:
    """Serve the Litestar app built by ``factory`` ("module:function") in the foreground,
    in ``workers`` processes sharing the port and one ``/metrics`` view.

    ``healthcheck_seconds``: with several workers, how long uvicorn's supervisor waits
    for a worker's answer to its ping (every 0.5 s) before it kills and replaces it. A
    worker is a spawned process that imports the ``__main__`` module again before it can
    answer; on a loaded box that takes longer than uvicorn's default of 5 s, so a worker
    that is only starting would be killed, again and again.

    httptools with admission control (``admission``: each worker process admits
    ``admission.limit`` requests at a time and sheds the rest before the app; None: no
    limit), a request read timeout and a connection cap (shared/infra/admission.py).
    No WebSocket upgrades: none of our services speaks WebSocket.
    """
    _raise_open_files_limit()
    http = GuardedHttpToolsProtocol
    if admission is not None:
        # a partial pickles (uvicorn's worker processes); each worker gets its own count
        http = functools.partial(GuardedHttpToolsProtocol, admission=admission)  # type: ignore[assignment]
    with metrics_directory(workers):
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_worker_healthcheck=healthcheck_seconds,
            loop="uvloop",
            http=http,
            ws="none",
            access_log=False,
            proxy_headers=False,  # no proxy in front here; saves a middleware per request
            server_header=False,
            date_header=False,
            log_level=log_level.lower(),
            log_config=None,  # shared.infra.logs configures logging: one event per line
        )


def cors_config(origins: Sequence[str]) -> CORSConfig | None:
    """CORS for the operations console's ``origins``; None (no middleware) when empty.

    Bearer tokens travel in a header, never in cookies, so a listed origin gains nothing
    a script elsewhere could not do with the same token.
    """
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type", "idempotency-key"],
        expose_headers=["retry-after"],  # the console tells the operator when to try again
        max_age=600,
    )


class _ProblemCORSMiddleware(CORSMiddleware):
    """Litestar's CORS middleware, but a refused preflight is the app's 400 problem."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = Headers.from_scope(scope=scope).get("origin")
        if scope["type"] != ScopeType.HTTP or scope["method"] != "OPTIONS" or not origin:
            await super().__call__(scope, receive, send)
            return
        app = scope["litestar_app"]
        request = app.request_class(scope=scope, receive=receive, send=send)
        answer = self._create_preflight_response(
            origin=origin, request_headers=Headers.from_scope(scope=scope)
        )
        if (
            answer.status_code or 204
        ) >= 400:  # "Disallowed CORS Origin" (method, headers), as text
            refusal = ClientException(detail=f"CORS preflight refused: {answer.content}")
            handler = get_exception_handler(app.exception_handlers, refusal)
            if handler is not None:
                answer = handler(request, refusal)
        await answer.to_asgi_response(app=None, request=request)(scope, receive, send)


def cors_refusals_as_problems(app: Litestar) -> Litestar:
    """``app`` (built with a :func:`cors_config`) answering a CORS preflight it refuses
    (an origin, method or header not allowed) with its exception handlers' 400 problem
    (``invalid_request``) instead of Litestar's ``400 text/plain``; an allowed one is
    answered as before (204 with the ``Access-Control-Allow-*`` headers). Without the
    allow headers a browser blocks the call either way.

    Call right after building the app, before wrapping its ``asgi_handler``.
    """
    handler = app.asgi_handler
    if isinstance(handler, CORSMiddleware):
        app.asgi_handler = _ProblemCORSMiddleware(handler.app, handler.config)
    return app
