"""Stubs of the external services (scooters, tariff zones, users, configs, payments).

Run with ``python -m stubs``; tests drive them through ``/admin`` and read ``/ledger``.
"""

from stubs._app import DEFAULT_COEFFS, create_app
from stubs._dataset import DataSet
from stubs._faults import SERVICES, Fault, FaultUpdate
from stubs._settings import StubSettings

__all__ = [
    "DEFAULT_COEFFS",
    "SERVICES",
    "DataSet",
    "Fault",
    "FaultUpdate",
    "StubSettings",
    "create_app",
]
