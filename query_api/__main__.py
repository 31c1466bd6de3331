"""``python -m query_api``: serve the query API."""

from __future__ import annotations

from shared.infra.admission import Admission
from shared.infra.logs import configure_logging
from shared.infra.serving import serve
from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    serving = settings.serving
    serve(
        "query_api.app:create_app",
        host=serving.query_host,
        port=serving.query_port,
        workers=serving.query_workers,
        healthcheck_seconds=serving.worker_healthcheck_seconds,
        log_level=settings.runtime.log_level,
        admission=Admission(
            "query_api",
            serving.query_max_requests_in_flight,
            serving.retry_after_seconds,
            serving.query_admission_lag_target_ms / 1000,
        ),
    )


if __name__ == "__main__":
    main()
