"""Who is acting: the one place that resolves the rider behind a request.

Until authentication is put in front (a later issue), the caller names the rider in
the offer request and the offer token carries that rider onward. When auth lands,
only this module changes: it will read the authenticated rider from the request and
refuse a request that names someone else.
"""

from __future__ import annotations

from typing import Any

from litestar import Request


def resolve_rider(request: Request[Any, Any, Any], named: str | None) -> str | None:
    """The rider this request acts for; ``named`` is who the request says it is for."""
    return named
