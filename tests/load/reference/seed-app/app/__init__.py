# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""The reference implementation of the seed (issue 13): FastAPI + psycopg, seed layout."""
