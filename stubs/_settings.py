"""The stubs' own settings: where they listen and the data set they make up.

Same ``SCOOTERS_*`` variables as before the settings were grouped; the services never
read these (they reach the external services through ``SCOOTERS_EXTERNAL_BASE_URL``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from shared.settings import load, setting, to_env


@dataclasses.dataclass(frozen=True, kw_only=True)
class StubSettings:
    """Address of the stubs and the size and seed of their data set."""

    host: str = setting("STUBS_HOST", "127.0.0.1")
    port: int = setting("STUBS_PORT", 3629)
    scooters: int = setting("STUB_SCOOTERS", 10_000)
    zones: int = setting("STUB_ZONES", 10)
    users: int = setting("STUB_USERS", 100_000)
    seed: int = setting("STUB_SEED", 42)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StubSettings:
        """Build from ``SCOOTERS_*`` variables (``os.environ`` by default)."""
        return load(cls, os.environ if env is None else env)

    def to_env(self) -> dict[str, str]:
        """The ``SCOOTERS_*`` variables that make ``from_env`` rebuild these settings."""
        return to_env(self)

    def replace(self, **fields: Any) -> StubSettings:
        """These settings with some fields changed."""
        return dataclasses.replace(self, **fields)
