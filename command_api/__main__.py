"""``python -m command_api``: serve the command API."""

from shared.logs import configure_logging
from shared.serving import serve
from shared.settings import get_settings

settings = get_settings()
configure_logging(settings)
serve(
    "command_api.app:create_app",
    host=settings.command_host,
    port=settings.command_port,
    workers=settings.command_workers,
    log_level=settings.log_level,
)
