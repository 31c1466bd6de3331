"""How every HTTP process of ours is served: one uvicorn configuration.

The load tests' ceiling app is served the same way, so its throughput is a fair
measure of what the framework and server reach on the machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import uvicorn
from litestar.config.cors import CORSConfig


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
        max_age=600,
    )
