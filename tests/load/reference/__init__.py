"""A reference implementation of the seed, and its side-by-side benchmark (issue 13).

``seed-app/`` is what issue 13 compares the project with: the seed's three methods
(create offer, create order, finish order) as a straightforward FastAPI + psycopg (3,
pooled, async) application in the seed's layout (``app/api``, ``app/services``,
``app/clients``, ``app/repository``, ``app/utils``, ``migrations/``), served by uvicorn
with 2 workers, against this project's stubs and identity provider. It is not part of the
project: its packages live in a scratch virtualenv under /tmp (never in uv.lock), and
the project's mypy skips its files (``# mypy: ignore-errors``: those packages are not in
the project's environment); ruff checks them. ADR 0020 says why it is here.

``python -m tests.load.reference`` runs it and the project's command side with the same
closed-loop generator, alternately, in one run (``tests/load/reference/__main__.py``).
"""
