"""How every HTTP process of ours is served: one uvicorn configuration.

The load tests' ceiling app is served the same way, so its throughput is a fair
measure of what the framework and server reach on the machine.
"""

from __future__ import annotations

import uvicorn
from litestar.config.cors import CORSConfig

from shared.settings import Settings


def serve(factory: str, *, host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the Litestar app built by ``factory`` ("module:function") in the foreground."""
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # no proxy in front here; saves a middleware per request
        server_header=False,
        date_header=False,
        log_level=log_level.lower(),
    )


def cors_config(settings: Settings) -> CORSConfig | None:
    """CORS for the operations console's origins (``cors_allow_origins``); None when empty.

    Bearer tokens travel in a header, never in cookies, so a listed origin gains nothing
    a script elsewhere could not do with the same token.
    """
    origins = settings.cors_origins()
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type", "idempotency-key"],
        max_age=600,
    )
