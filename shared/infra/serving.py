"""How every HTTP process of ours is served: one uvicorn configuration.

The load tests' ceiling app is served the same way, so its throughput is a fair
measure of what the framework and server reach on the machine.
"""

from __future__ import annotations

import uvicorn


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
        log_config=None,  # shared.infra.logs configures logging: one structured event per line
    )
