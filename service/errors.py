"""Domain errors, each carrying the gRPC status it maps to as class data.

Code anywhere in the service raises these; one server interceptor
(:mod:`service.api.interceptors`) turns them into a gRPC status with ``google.rpc`` details.
Nothing else needs to know about gRPC status codes.

::

    DestinationError                 INTERNAL
    ├── InvalidArgument              INVALID_ARGUMENT     + google.rpc.BadRequest
    ├── NotFound                     NOT_FOUND
    ├── AlreadyExists                ALREADY_EXISTS
    ├── FailedPrecondition           FAILED_PRECONDITION
    ├── PermissionDenied             PERMISSION_DENIED
    ├── Unauthenticated              UNAUTHENTICATED
    ├── Unavailable                  UNAVAILABLE          + google.rpc.RetryInfo (optional)
    ├── ResourceExhausted            RESOURCE_EXHAUSTED   + google.rpc.RetryInfo
    └── Unimplemented                UNIMPLEMENTED

Messages travel to the caller verbatim: never put a secret in one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from service.domain import FieldViolation

__all__ = [
    "AlreadyExists",
    "DestinationError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]


class DestinationError(Exception):
    """Base of every error the service reports to callers on purpose."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    """The gRPC status code the error is reported with."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> Sequence[Message]:
        """``google.rpc`` detail messages attached to the status; none by default."""
        return ()


class InvalidArgument(DestinationError):
    """The request is malformed; ``violations`` lists every offending field."""

    status = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = tuple(violations)
        if message is None:
            message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or "invalid argument")

    def details(self) -> Sequence[Message]:
        return (
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            ),
        )


class NotFound(DestinationError):
    """The named resource does not exist (or the caller may not know it does)."""

    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DestinationError):
    """The resource to create exists already."""

    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DestinationError):
    """The system is not in a state the request needs, e.g. Marketo refuses the configuration."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(DestinationError):
    """The caller is known but lacks a permission the RPC needs."""

    status = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DestinationError):
    """The caller presented no valid credentials."""

    status = grpc.StatusCode.UNAUTHENTICATED


def _retry_info(retry_after: timedelta) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromTimedelta(retry_after)
    return error_details_pb2.RetryInfo(retry_delay=delay)


class Unavailable(DestinationError):
    """A dependency (Marketo, the store) cannot be reached right now; retrying may help."""

    status = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> Sequence[Message]:
        return () if self.retry_after is None else (_retry_info(self.retry_after),)


class ResourceExhausted(DestinationError):
    """Back-pressure: the caller should wait ``retry_after`` before trying again."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: timedelta) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> Sequence[Message]:
        return (_retry_info(self.retry_after),)


class Unimplemented(DestinationError):
    """The RPC exists in the contract but its capability has not been delivered yet."""

    status = grpc.StatusCode.UNIMPLEMENTED
