"""Bugs the reliability suite found, each pinned by a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.harness import STANDARD_MAPPINGS, connection, running_service, spec, update


def deeply_nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "bottom"}
    for level in range(levels):
        value = {f"n{level}": value}
    return value


def too_deep_update() -> pb.ProfileUpdate:
    message = update("p1", "deep@example.com", audiences={})
    # Each JSON level is a Struct inside a Value: 2 message levels; upb refuses beyond 100.
    message.profile.update({"person": {"email": "deep@example.com", "x": deeply_nested(80)}})
    return message


async def test_a_streamed_update_too_deep_to_parse_is_rejected_alone(tmp_path: Path) -> None:
    """Found by fuzzing: upb's DecodeError raised by the Sync request iterator was reported as
    INTERNAL. Sync now reads profiles as bytes, so the request parses and only the update that
    is the caller's mistake is refused; the stream goes on."""
    async with running_service(tmp_path) as service:
        destination_id = (
            await service.stub.Configure(pb.ConfigureRequest(spec=spec()))
        ).destination.id
        await service.stub.Activate(
            pb.ActivateRequest(destination_id=destination_id, mappings=STANDARD_MAPPINGS)
        )
        call = service.stub.Sync()
        request = pb.SyncRequest(destination_id=destination_id)
        request.updates.add().CopyFrom(update("p0", "fine@example.com", audiences={}))
        request.updates.add().CopyFrom(too_deep_update())
        await call.write(request)
        await call.write(
            pb.SyncRequest(
                destination_id=destination_id, updates=[update("p2", None, audiences={})]
            )
        )
        await call.done_writing()
        responses = [response async for response in call]
        assert await call.code() == grpc.StatusCode.OK
        assert [r.accepted for r in responses] == [1, 1]
        assert [(r.index, r.field) for r in responses[0].rejected] == [(1, "updates[1].profile")]
        assert "deeper than 32 levels" in responses[0].rejected[0].reason


async def test_a_unary_request_too_deep_to_parse_is_invalid_argument(tmp_path: Path) -> None:
    """Found by fuzzing: grpc.aio answered UNKNOWN ("Unexpected <class DecodeError>")."""
    async with running_service(tmp_path) as service:
        request = pb.PreviewSyncRequest(destination_id="dst_x")
        request.updates.add().CopyFrom(too_deep_update())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await service.stub.PreviewSync(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details()


async def test_a_wrong_secret_is_refused_after_another_destination_got_a_token(
    tmp_path: Path,
) -> None:
    """Found by the security suite: access tokens were cached per (instance, client id), so once
    one destination had a token, a Configure with the same client id and any secret passed the
    credential check and delivered with the other destination's token (service/marketo/auth.py,
    `TokenCache.shared`; the secret's digest is now part of the key)."""
    async with running_service(tmp_path) as service:
        await service.stub.Configure(pb.ConfigureRequest(spec=spec(name="Good")))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await service.stub.Configure(
                pb.ConfigureRequest(
                    spec=spec(name="Borrower", connection=connection(client_secret="wrong"))
                )
            )
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
