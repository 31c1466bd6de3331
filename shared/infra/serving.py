"""How every HTTP process of ours is served: one uvicorn configuration.

The load tests' ceiling app is served the same way, so its throughput is a fair
measure of what the framework and server reach on the machine.
"""

from __future__ import annotations

import resource

import uvicorn

from shared.infra.admission import GuardedHttpToolsProtocol


def _raise_open_files_limit() -> None:
    """Use the hard limit of open files: connections past the soft one would fail accept()."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(factory: str, *, host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the Litestar app built by ``factory`` ("module:function") in the foreground.

    httptools with a request read timeout and a connection cap (shared/infra/admission.py).
    """
    _raise_open_files_limit()
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        access_log=False,
        proxy_headers=False,  # no proxy in front here; saves a middleware per request
        server_header=False,
        date_header=False,
        log_level=log_level.lower(),
    )
