"""A tiny app served like our APIs (``shared.infra.serving.serve``, two uvicorn workers),
whose workers start slowly: run as a script, each worker process, spawned, imports this
file again as ``__mp_main__`` and sleeps ``SLOW_START_SECONDS`` there, as importing an
API's ``__main__`` took 9-10 s on a loaded box. Used by tests/scale/test_worker_start.py.

``python tests/scale/slow_start_server.py PORT [HEALTHCHECK_SECONDS]``
"""

from __future__ import annotations

import logging
import os
import sys
import time

from litestar import Litestar, get

if __name__ == "__mp_main__":  # a worker re-importing the script it was started from
    time.sleep(float(os.environ.get("SLOW_START_SECONDS", "0")))


@get("/pid")
async def pid() -> dict[str, int]:
    """The answering worker's process id."""
    return {"pid": os.getpid()}


def create_app() -> Litestar:
    return Litestar([pid])


def main() -> None:
    from shared.infra.serving import serve

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # uvicorn's supervisor lines
    kwargs = {"healthcheck_seconds": int(sys.argv[2])} if len(sys.argv) > 2 else {}
    serve(
        "tests.scale.slow_start_server:create_app",
        host="127.0.0.1",
        port=int(sys.argv[1]),
        workers=2,
        log_level="info",
        **kwargs,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
