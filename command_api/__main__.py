"""``python -m command_api``: serve the command API."""

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
        "command_api.app:create_app",
        host=serving.command_host,
        port=serving.command_port,
        workers=serving.command_workers,
        healthcheck_seconds=serving.worker_healthcheck_seconds,
        log_level=settings.runtime.log_level,
        admission=Admission(
            "command_api",
            serving.command_max_requests_in_flight,
            serving.retry_after_seconds,
            serving.command_admission_lag_target_ms / 1000,
        ),
    )


if __name__ == "__main__":
    main()
