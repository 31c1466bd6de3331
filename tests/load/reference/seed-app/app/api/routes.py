# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""The three methods of the seed, and health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.api.schemas import (
    CreateOfferRequest,
    CreateOrderRequest,
    FinishOrderRequest,
    OfferResponse,
    OrderResponse,
)
from app.clients.auth import current_user
from app.clients.external import ExternalClient
from app.repository import db
from app.services import offers, orders

router = APIRouter()


def external(request: Request) -> ExternalClient:
    client: ExternalClient = request.app.state.external
    return client


CurrentUser = Annotated[str, Depends(current_user)]
External = Annotated[ExternalClient, Depends(external)]


@router.post("/offers", status_code=201, response_model=OfferResponse)
async def create_offer(
    body: CreateOfferRequest,
    user_id: CurrentUser,
    client: External,
) -> OfferResponse:
    return await offers.create_offer(client, user_id, body.scooter_id)


@router.post("/orders", status_code=201, response_model=OrderResponse)
async def create_order(
    body: CreateOrderRequest,
    user_id: CurrentUser,
    client: External,
) -> OrderResponse:
    return await orders.create_order(client, user_id, body.offer_token)


@router.post("/orders/{order_id}/finish", response_model=OrderResponse)
async def finish_order(
    order_id: str,
    body: FinishOrderRequest,
    user_id: CurrentUser,
    client: External,
) -> OrderResponse:
    return await orders.finish_order(client, user_id, order_id, body.track)


@router.get("/health")
async def health() -> dict[str, str]:
    await db.ping()
    return {"status": "ok"}
