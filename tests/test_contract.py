"""The servicer implements exactly the RPCs of the v1 contract, with the right call shapes, and the
proto's comments state the limits the service applies."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from service._proto.marketo_destination.v1 import destination_pb2
from service.api.servicer import SYNC_PIPELINE_DEPTH, MarketoDestinationServicer
from service.api.sync_checks import MAX_UPDATES
from service.usecases.monitoring import MAX_HOURS
from service.usecases.preview import MAX_PREVIEW
from service.usecases.resync import MAX_RESYNC_PROFILES

SERVICE = destination_pb2.DESCRIPTOR.services_by_name["MarketoDestinationService"]


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }


def test_every_rpc_has_a_servicer_method_and_nothing_else_is_public() -> None:
    rpcs = {method.name for method in SERVICE.methods}
    methods = _public_methods(MarketoDestinationServicer)
    assert rpcs - methods == set(), "RPCs without a servicer method"
    assert methods - rpcs == set(), "public servicer methods that are not RPCs"


def test_the_contract_has_the_architecture_rpcs() -> None:
    assert SERVICE.full_name == "marketo_destination.v1.MarketoDestinationService"
    required = {
        "Configure",
        "GetDestination",
        "ListDestinations",
        "DeleteDestination",
        "DescribeMarketo",
        "Activate",
        "Deactivate",
        "Sync",
        "GetDataflow",
        "ListProfileOutcomes",
        "WatchAlerts",
    }
    assert required <= {method.name for method in SERVICE.methods}
    streams = {m.name: (m.client_streaming, m.server_streaming) for m in SERVICE.methods}
    assert streams["Sync"] == (True, True)
    assert streams["WatchAlerts"] == (False, True)


WRITES_ITS_RESPONSES = {"Sync"}
"""Streaming RPCs whose servicer method writes each response with `context.write` (a coroutine
function) instead of yielding it: Sync's answers go straight to gRPC, through no generator."""


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_servicer_method_shape_matches_the_rpc(method: object) -> None:
    function = getattr(MarketoDestinationServicer, method.name)  # type: ignore[attr-defined]
    parameters = list(inspect.signature(function).parameters)
    assert len(parameters) == 3, "(self, request or request_iterator, context)"
    if method.name in WRITES_ITS_RESPONSES:  # type: ignore[attr-defined]
        assert inspect.iscoroutinefunction(function)
    elif method.server_streaming:  # type: ignore[attr-defined]
        # grpc.aio treats a coroutine function on a streaming RPC as the context.write API;
        # responses are yielded instead.
        assert inspect.isasyncgenfunction(function)
    else:
        assert inspect.iscoroutinefunction(function)


def test_the_sync_comment_tells_callers_the_pipeline_depth() -> None:
    proto = Path(__file__).resolve().parents[1] / "proto/marketo_destination/v1/destination.proto"
    text = proto.read_text()
    comment = text[: text.index("rpc Sync(")].rsplit("returns", 1)[1]
    said = re.search(r"up to\s+(\d+)\s+per\s+stream", comment.replace("//", " "))
    assert said is not None, "the Sync comment no longer says how many requests are in flight"
    assert int(said.group(1)) == SYNC_PIPELINE_DEPTH


def field_comment(message: str, field: str) -> str:
    """The comment right above `field` in `message` of the proto, without the slashes."""
    proto = Path(__file__).resolve().parents[1] / "proto/marketo_destination/v1/destination.proto"
    body = proto.read_text().split(f"\nmessage {message} {{\n", 1)[1].split("\n}\n", 1)[0]
    comment: list[str] = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment.append(line.removeprefix("//").strip())
        elif re.search(rf"\b{field} = \d+;", line):
            return " ".join(comment)
        else:
            comment = []
    raise AssertionError(f"{message}.{field} is not in the proto")


@pytest.mark.parametrize(
    ("message", "field", "limit"),
    [
        ("SyncRequest", "updates", MAX_UPDATES),
        ("PreviewSyncRequest", "updates", MAX_PREVIEW),
        ("ResyncRequest", "profile_ids", MAX_RESYNC_PROFILES),
        ("GetDataflowRequest", "hours", MAX_HOURS),
    ],
)
def test_the_proto_comments_state_the_limits_the_service_applies(
    message: str, field: str, limit: int
) -> None:
    assert f"{limit:,}" in field_comment(message, field)
