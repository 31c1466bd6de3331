"""``python -m query_api``: serve the query API with uvicorn (uvloop, httptools)."""

from __future__ import annotations

import logging

import uvicorn

from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s: %(message)s")
    uvicorn.run(
        "query_api.app:create_app",
        factory=True,
        host=settings.query_host,
        port=settings.query_port,
        workers=settings.query_workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
