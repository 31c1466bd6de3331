# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""``uvicorn app.main:app --workers 2``: the reference FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.routes import router
from app.clients.auth import JwksKeys
from app.clients.external import ExternalClient, make_http_client
from app.repository import db


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await db.pool.open(wait=True)
    http = make_http_client()
    app.state.external = ExternalClient(http)
    app.state.jwks = JwksKeys(http)
    await app.state.jwks.refresh()
    try:
        yield
    finally:
        await http.aclose()
        await db.pool.close()


app = FastAPI(title="SuperScooters reference (seed)", lifespan=lifespan)
app.include_router(router)
