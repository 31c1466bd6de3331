"""``python -m command_api``: serve the command API with uvicorn."""

import uvicorn

from shared.settings import get_settings

settings = get_settings()
uvicorn.run(
    "command_api.app:create_app",
    factory=True,
    host=settings.command_host,
    port=settings.command_port,
    workers=settings.command_workers,
    loop="uvloop",
    http="httptools",
    access_log=False,
    log_level=settings.log_level.lower(),
)
