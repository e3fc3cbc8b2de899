# The Marketo Engage destination service (also runs the Marketo sandbox: see docker-compose.yml).

# Build stage: a wheel with Sync's checks compiled (service/api/_wirecheck.c needs a C compiler).
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY plugins ./plugins
COPY sandbox ./sandbox
COPY marketo_destination_client ./marketo_destination_client
COPY marketo_destination_testing ./marketo_destination_testing
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m zipfile -l /wheels/*.whl | grep -q "service/api/_wirecheck\..*\.so"

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[postgres]" \
    && rm -rf /wheels

RUN useradd --create-home --uid 10001 app \
    && mkdir /data \
    && chown app /data
USER app

ENV MARKETO_DEST_ADDRESS=0.0.0.0:50051 \
    MARKETO_DEST_DATA_DIR=/data
VOLUME /data
EXPOSE 50051

# Asks grpc.health.v1 on the service's own address (0.0.0.0 is probed as 127.0.0.1), over TLS
# trusting MARKETO_DEST_TLS_CERT_FILE when that is set. Under mutual TLS, override it with
# `marketo-destination health --client-cert PEM --client-key PEM` (docs/deploying.md).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["marketo-destination", "health"]

CMD ["marketo-destination", "serve"]
