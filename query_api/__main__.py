"""``python -m query_api``: serve the query API."""

from __future__ import annotations

from shared.infra.logs import configure_logging
from shared.infra.serving import serve
from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    serve(
        "query_api.app:create_app",
        host=settings.serving.query_host,
        port=settings.serving.query_port,
        workers=settings.serving.query_workers,
        log_level=settings.runtime.log_level,
    )


if __name__ == "__main__":
    main()
