# One image for all our processes (stubs, command_api, worker, projector, query_api,
# migrate); compose picks the process with `command`. Dependencies come from uv.lock.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

# the same pinned, hash-checked uv as bin/up and bin/test
COPY bin/uv-requirements.txt /tmp/uv-requirements.txt
RUN pip install --no-cache-dir --require-hashes --only-binary :all: -r /tmp/uv-requirements.txt \
    && useradd --system --uid 10001 --home-dir /app scooters

WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project && rm -rf /root/.cache

COPY shared ./shared
COPY migrations ./migrations
COPY stubs ./stubs
COPY command_api ./command_api
COPY query_api ./query_api

USER scooters
CMD ["python", "-m", "command_api"]
