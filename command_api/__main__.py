"""``python -m command_api``: serve the command API."""

from shared.infra.logs import configure_logging
from shared.infra.serving import serve
from shared.settings import get_settings

settings = get_settings()
configure_logging(settings)
serve(
    "command_api.app:create_app",
    host=settings.serving.command_host,
    port=settings.serving.command_port,
    workers=settings.serving.command_workers,
    log_level=settings.runtime.log_level,
)
