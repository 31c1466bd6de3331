"""Litestar, uvicorn and asyncpg glue shared by the services (the impure side of ``shared``)."""
