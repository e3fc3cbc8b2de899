"""A Python client of the Marketo Engage destination service.

:class:`AsyncClient` (grpc.aio) and :class:`Client` (blocking) have one method per RPC;
:meth:`AsyncClient.sync_stream` opens a :class:`SyncStream` that keeps several requests in
flight, matches answers by ``request_id``, waits as RESOURCE_EXHAUSTED / UNAVAILABLE RetryInfo
asks and resends what was not acknowledged after a reconnect. :class:`Connection` holds the
address, bearer token and TLS / mutual TLS files; every call carries the caller's OpenTelemetry
trace context. The API's messages are ``pb`` (see docs/client.md).
"""

from marketo_destination_client.blocking import BlockingSyncStream, Client
from marketo_destination_client.client import AsyncClient
from marketo_destination_client.connection import DEFAULT_ADDRESS, TLS, Connection
from marketo_destination_client.errors import RETRYABLE, SyncStreamError, retry_delay
from marketo_destination_client.messages import pb
from marketo_destination_client.stream import (
    DEFAULT_BACKOFF,
    DEFAULT_DEPTH,
    MAX_UPDATES_PER_REQUEST,
    Backoff,
    RetryEvent,
    SyncResult,
    SyncStream,
    UpdateRejection,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_BACKOFF",
    "DEFAULT_DEPTH",
    "MAX_UPDATES_PER_REQUEST",
    "RETRYABLE",
    "TLS",
    "AsyncClient",
    "Backoff",
    "BlockingSyncStream",
    "Client",
    "Connection",
    "RetryEvent",
    "SyncResult",
    "SyncStream",
    "SyncStreamError",
    "UpdateRejection",
    "pb",
    "retry_delay",
]
