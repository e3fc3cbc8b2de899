"""What a failed call says: its retry delay (google.rpc.RetryInfo) and whether retrying may
help."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["RETRYABLE", "SyncStreamError", "retry_delay"]

# The codes the service answers when trying again later may succeed (see the proto's header).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

_DETAILS_KEY = "grpc-status-details-bin"


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """Seconds the service asked the caller to wait (its google.rpc.RetryInfo), or ``None``."""
    metadata = cast(Iterable[tuple[str, Any]], error.trailing_metadata() or ())
    for key, value in metadata:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                delay: float = info.retry_delay.ToTimedelta().total_seconds()
                return max(delay, 0.0)
    return None


class SyncStreamError(Exception):
    """A Sync stream gave up: a call failed with a code retrying cannot help, or the retries
    ran out. ``unacknowledged`` holds the request ids the service never acknowledged."""

    def __init__(
        self, code: grpc.StatusCode, details: str, unacknowledged: tuple[str, ...]
    ) -> None:
        super().__init__(f"Sync stream failed: {code.name}: {details}")
        self.code = code
        self.details = details
        self.unacknowledged = unacknowledged
