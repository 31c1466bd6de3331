"""``python -m stubs``: serve the stubs on ``SCOOTERS_STUBS_HOST:SCOOTERS_STUBS_PORT``.

``SCOOTERS_STUB_FAULTS`` (a JSON list of fault switches) starts them already faulty.
"""

from __future__ import annotations

import os

import msgspec
import uvicorn

from shared.infra.admission import GuardedHttpToolsProtocol
from shared.infra.logs import configure_logging
from shared.settings import SettingsError, get_settings
from stubs._app import create_app
from stubs._faults import UnknownService, faults_from_json
from stubs._settings import StubSettings


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    stub = StubSettings.from_env()
    try:
        faults = faults_from_json(os.environ.get("SCOOTERS_STUB_FAULTS", "[]"))
    except (msgspec.DecodeError, UnknownService) as exc:
        raise SettingsError(f"SCOOTERS_STUB_FAULTS: {exc}") from exc
    uvicorn.run(
        create_app(stub, faults, settings.identity),  # tokens the services accept
        host=stub.host,
        port=stub.port,
        loop="uvloop",
        # as the APIs' (shared.infra.serving.serve), without admission control: bytes
        # that are no HTTP request get a 400 problem, slow and idle clients are timed out
        http=GuardedHttpToolsProtocol,
        ws="none",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_level=settings.runtime.log_level.lower(),
        log_config=None,  # shared.infra.logs configures logging
    )


if __name__ == "__main__":
    main()
