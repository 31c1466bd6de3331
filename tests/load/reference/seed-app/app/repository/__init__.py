# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
