"""``python -m query_api``: serve the query API."""

from __future__ import annotations

from shared.logs import configure_logging
from shared.serving import serve
from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    serve(
        "query_api.app:create_app",
        host=settings.query_host,
        port=settings.query_port,
        workers=settings.query_workers,
        log_level=settings.log_level,
    )


if __name__ == "__main__":
    main()
