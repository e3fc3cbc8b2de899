"""The server skeleton: health, reflection, UNIMPLEMENTED RPCs, the error interceptor, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from service import errors
from service.__main__ import check_health
from service._proto.marketo_destination.v1 import destination_pb2
from service.api.interceptors import INTERNAL_MESSAGE
from service.api.server import (
    SERVICE_NAME,
    HealthServicer,
    StartupError,
    build_server,
    new_health_servicer,
    shutdown,
)
from service.api.servicer import MarketoDestinationServicer
from service.settings import Settings
from tests.harness import Service, violations

from .conftest import REPO

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
SERVICE = destination_pb2.DESCRIPTOR.services_by_name["MarketoDestinationService"]


# --- health and reflection ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", SERVICE_NAME])
async def test_health_reports_serving(channel: grpc.aio.Channel, name: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=name))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_an_unknown_service_is_not_found(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def _reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(request)
    await call.done_writing()
    response: reflection_pb2.ServerReflectionResponse = await call.read()
    call.cancel()
    return response


async def test_reflection_lists_the_service_health_and_reflection(
    channel: grpc.aio.Channel,
) -> None:
    response = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in response.list_services_response.service}
    assert names == {SERVICE_NAME, HEALTH, REFLECTION}


async def test_reflection_describes_the_api(channel: grpc.aio.Channel) -> None:
    response = await _reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    ours = next(f for f in files if f.package == "marketo_destination.v1")
    methods = {m.name for m in ours.service[0].method}
    assert methods == {m.name for m in SERVICE.methods}


# --- every RPC is reachable and honest about what is missing --------------------------------


def _empty(type_name: str) -> bytes:
    return b""  # every request message serialises to nothing when no field is set


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
async def test_every_rpc_is_implemented_and_refuses_an_empty_request_clearly(
    channel: grpc.aio.Channel, method: Any
) -> None:
    """An empty request reaches a real use case: INVALID_ARGUMENT naming a required field (the
    destination_id of an RPC about one destination), never UNIMPLEMENTED or NOT_FOUND."""
    path = f"/{SERVICE_NAME}/{method.name}"
    try:
        if method.client_streaming:
            call = channel.stream_stream(path)(iter([b""]))
            async for _ in call:
                pass
        elif method.server_streaming:
            async for _ in channel.unary_stream(path)(b""):
                pass
        else:
            await channel.unary_unary(path)(b"")
    except grpc.aio.AioRpcError as error:
        fields = set(violations(error))  # INVALID_ARGUMENT with a BadRequest
        if "destination_id" in method.input_type.fields_by_name and method.name not in (
            "Configure",
            "DescribeMarketo",
        ):
            assert fields == {"destination_id"}, error.details()
        else:
            assert fields, error.details()
    else:
        assert method.name == "ListDestinations"


# --- the error interceptor ------------------------------------------------------------------

_Behavior = Callable[..., Any]


def _test_service(**methods: grpc.RpcMethodHandler[Any, Any]) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler("test.Errors", methods)


def _raising(error: BaseException) -> _Behavior:
    async def behavior(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise error

    return behavior


@pytest.fixture
async def serve_handlers(settings: Settings, service: Service) -> AsyncIterator[Callable[..., Any]]:
    """Starts a server with extra handlers; returns a channel to it."""
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def start(
        *handlers: grpc.GenericRpcHandler[Any, Any],
        tracing: grpc.aio.ServerInterceptor[Any, Any] | None = None,
    ) -> grpc.aio.Channel:
        server, port = await build_server(
            settings,
            servicer=MarketoDestinationServicer(service.app),
            extra_handlers=handlers,
            open_services={"test.Errors"},
            tracing_interceptor=tracing,
        )
        await server.start()
        servers.append(server)
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        return channels[-1]

    yield start
    for ch in channels:
        await ch.close()
    for server in servers:
        await server.stop(None)


async def _unary_error(channel: grpc.aio.Channel, method: str) -> grpc.aio.AioRpcError:
    call = channel.unary_unary(f"/test.Errors/{method}")(b"")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFound("destination d1 not found"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("exists"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("Marketo says no"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PermissionDenied("needs destinations.manage"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.Unavailable("Marketo unreachable"), grpc.StatusCode.UNAVAILABLE),
        (errors.Unimplemented("later"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.DestinationError("plain"), grpc.StatusCode.INTERNAL),
    ],
)
async def test_domain_errors_become_their_status(
    serve_handlers: Callable[..., Any], error: errors.DestinationError, code: grpc.StatusCode
) -> None:
    channel = await serve_handlers(
        _test_service(Fail=grpc.unary_unary_rpc_method_handler(_raising(error)))
    )
    failure = await _unary_error(channel, "Fail")
    assert failure.code() == code
    assert failure.details() == error.message


async def test_invalid_argument_carries_bad_request(serve_handlers: Callable[..., Any]) -> None:
    error = errors.InvalidArgument(
        [
            errors.FieldViolation("spec.name", "required"),
            errors.FieldViolation("spec.dedupe_field", '"id" is not allowed'),
        ]
    )
    channel = await serve_handlers(
        _test_service(Fail=grpc.unary_unary_rpc_method_handler(_raising(error)))
    )
    failure = await _unary_error(channel, "Fail")
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(failure)
    assert status is not None
    assert status.message == failure.details()
    assert len(status.details) == 1
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("spec.name", "required"),
        ("spec.dedupe_field", '"id" is not allowed'),
    ]


async def test_resource_exhausted_carries_retry_info(serve_handlers: Callable[..., Any]) -> None:
    error = errors.ResourceExhausted("outbox full", retry_after=timedelta(seconds=2.5))
    channel = await serve_handlers(
        _test_service(Fail=grpc.unary_unary_rpc_method_handler(_raising(error)))
    )
    failure = await _unary_error(channel, "Fail")
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(failure)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToTimedelta() == timedelta(seconds=2.5)


async def test_unexpected_errors_are_internal_and_logged_not_leaked(
    serve_handlers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    channel = await serve_handlers(
        _test_service(
            Fail=grpc.unary_unary_rpc_method_handler(_raising(KeyError("client_secret=s3cr3t")))
        )
    )
    with caplog.at_level(logging.ERROR, logger="service.api.interceptors"):
        failure = await _unary_error(channel, "Fail")
    assert failure.code() == grpc.StatusCode.INTERNAL
    assert failure.details() == INTERNAL_MESSAGE
    assert "s3cr3t" not in str(failure.trailing_metadata())
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert logged, "the traceback is logged"
    assert "/test.Errors/Fail" in logged[0].getMessage()


async def test_errors_in_a_server_stream_after_some_responses(
    serve_handlers: Callable[..., Any],
) -> None:
    async def some_then_fail(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"
        raise errors.NotFound("gone")

    channel = await serve_handlers(
        _test_service(Stream=grpc.unary_stream_rpc_method_handler(some_then_fail))
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in channel.unary_stream("/test.Errors/Stream")(b""):
            received.append(item)
    assert received == [b"one", b"two"]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "gone"


async def test_errors_in_a_bidi_stream(serve_handlers: Callable[..., Any]) -> None:
    async def echo_until_empty(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            if not request:
                raise errors.InvalidArgument([errors.FieldViolation("updates", "empty")])
            yield request

    async def write_then_fail(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await context.write(b"written")
        raise errors.ResourceExhausted("slow down", retry_after=timedelta(seconds=1))

    channel = await serve_handlers(
        _test_service(
            Echo=grpc.stream_stream_rpc_method_handler(echo_until_empty),
            Write=grpc.stream_stream_rpc_method_handler(write_then_fail),
            Collect=grpc.stream_unary_rpc_method_handler(_raising(errors.NotFound("nope"))),
        )
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in channel.stream_stream("/test.Errors/Echo")(iter([b"a", b"b", b""])):
            received.append(item)
    assert received == [b"a", b"b"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_status.from_call(caught.value) is not None

    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in channel.stream_stream("/test.Errors/Write")(iter([b"x"])):
            received.append(item)
    assert received == [b"written"]
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.stream_unary("/test.Errors/Collect")(iter([b"x"]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_explicit_abort_passes_through(serve_handlers: Callable[..., Any]) -> None:
    async def aborts(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "page token expired")

    channel = await serve_handlers(_test_service(Abort=grpc.unary_unary_rpc_method_handler(aborts)))
    failure = await _unary_error(channel, "Abort")
    assert failure.code() == grpc.StatusCode.OUT_OF_RANGE
    assert failure.details() == "page token expired"


class _RecordingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Stands in for the tracing interceptor: records what escapes the handler it wraps."""

    def __init__(self) -> None:
        self.escaped: list[type[BaseException]] = []
        self.seen = asyncio.Event()

    async def intercept_service(
        self, continuation: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def recorded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await inner(request, context)
            except BaseException as error:
                self.escaped.append(type(error))
                self.seen.set()
                raise

        return grpc.unary_unary_rpc_method_handler(
            recorded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def test_tracing_runs_outside_the_error_interceptor(
    serve_handlers: Callable[..., Any],
) -> None:
    tracing = _RecordingInterceptor()
    channel = await serve_handlers(
        _test_service(Fail=grpc.unary_unary_rpc_method_handler(_raising(errors.NotFound("x")))),
        tracing=tracing,
    )
    failure = await _unary_error(channel, "Fail")
    assert failure.code() == grpc.StatusCode.NOT_FOUND
    # The status reaches the client as the abort is raised, before it leaves the handler.
    await asyncio.wait_for(tracing.seen.wait(), timeout=10)
    # Outermost, tracing sees the abort that carries the real status, not the domain error.
    assert tracing.escaped == [grpc.aio.AbortError]


# --- building and stopping --------------------------------------------------------------------


async def test_an_unusable_address_is_reported(settings: Settings, service: Service) -> None:
    servicer = MarketoDestinationServicer(service.app)
    server, port = await build_server(settings, servicer=servicer)
    try:
        with pytest.raises(StartupError, match=r"cannot listen on 127\.0\.0\.1"):
            await build_server(settings.replace(address=f"127.0.0.1:{port}"), servicer=servicer)
    finally:
        await server.stop(None)


async def _hold(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return b"done"


_SLOW = grpc.method_handlers_generic_handler(
    "test.Slow", {"Hold": grpc.unary_unary_rpc_method_handler(_hold)}
)


async def started_with_slow_calls(
    settings: Settings, service: Service
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """A started server that also answers test.Slow/Hold, and its health servicer."""
    health = new_health_servicer()
    server, port = await build_server(
        settings,
        servicer=MarketoDestinationServicer(service.app),
        health_servicer=health,
        extra_handlers=[_SLOW],
        open_services={"test.Slow"},
    )
    await server.start()
    return server, port, health


async def test_shutdown_turns_health_not_serving_and_lets_calls_finish(
    settings: Settings, service: Service
) -> None:
    server, port, health = await started_with_slow_calls(settings, service)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        slow = asyncio.ensure_future(channel.unary_unary("/test.Slow/Hold")(b"1.0"))
        await asyncio.sleep(0.3)  # let the call reach the server
        stopping = asyncio.ensure_future(shutdown(server, health, grace_seconds=30))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert await slow == b"done"
        await asyncio.wait_for(stopping, timeout=20)


async def test_calls_longer_than_the_grace_period_are_cancelled(
    settings: Settings, service: Service
) -> None:
    server, port, health = await started_with_slow_calls(settings, service)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        slow = asyncio.ensure_future(channel.unary_unary("/test.Slow/Hold")(b"60"))
        await asyncio.sleep(0.3)
        await asyncio.wait_for(shutdown(server, health, grace_seconds=0.2), timeout=20)
        with pytest.raises(grpc.aio.AioRpcError):
            await slow


async def test_health_command(settings: Settings, service: Service) -> None:
    server, port = await build_server(settings, servicer=MarketoDestinationServicer(service.app))
    await server.start()
    try:
        assert await asyncio.to_thread(check_health, f"0.0.0.0:{port}") == 0
        assert await asyncio.to_thread(check_health, f"127.0.0.1:{port}", "no.such.Service") == 1
    finally:
        await server.stop(None)


def test_health_command_without_a_server() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert check_health(f"127.0.0.1:{port}", timeout=1.0) == 1


# --- the process: signals and exit codes ------------------------------------------------------


class _Process:
    """A service subprocess whose stderr lines are collected in the background."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            args, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.lines: Queue[str] = Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        try:
            while True:
                line = self.lines.get(timeout=timeout)
                self.seen.append(line)
                if text in line:
                    return line
        except Empty:
            raise AssertionError(f"no line with {text!r}; stderr so far: {self.seen}") from None

    def port(self) -> int:
        return int(self.wait_for(" service: listening on").rsplit(":", 1)[1])


@pytest.fixture
def process_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETO_DEST_")}
    env["MARKETO_DEST_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONUNBUFFERED"] = "1"
    yield env


def test_serve_command_answers_health_and_exits_0_on_sigint(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    cli = Path(sys.executable).with_name("marketo-destination")
    proc = _Process([str(cli), "serve", "--address", "127.0.0.1:0"], process_env)
    try:
        port = proc.port()
        assert check_health(f"127.0.0.1:{port}") == 0
        assert (tmp_path / "data").is_dir()
        proc.popen.send_signal(signal.SIGINT)
        assert proc.popen.wait(timeout=30) == 0
    finally:
        proc.popen.kill()


def test_serve_with_the_embedded_sandbox(process_env: dict[str, str]) -> None:
    pytest.importorskip("sandbox")
    import httpx

    cli = Path(sys.executable).with_name("marketo-destination")
    proc = _Process([str(cli), "serve", "--sandbox", "--address", "127.0.0.1:0"], process_env)
    try:
        url = proc.wait_for("embedded Marketo sandbox at").rsplit(" ", 1)[1].strip()
        port = proc.port()
        assert check_health(f"127.0.0.1:{port}") == 0
        assert httpx.get(f"{url}/_sandbox/leads", timeout=10).status_code == 200
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=30) == 0
    finally:
        proc.popen.kill()


_SLOW_SERVER = textwrap.dedent(
    """
    import asyncio, functools, sys
    import grpc
    import service.__main__ as cli

    async def hold(request, context):
        print("holding", file=sys.stderr, flush=True)
        await asyncio.sleep(float(request.decode()))
        return b"done"

    slow = grpc.method_handlers_generic_handler(
        "test.Slow", {"Hold": grpc.unary_unary_rpc_method_handler(hold)}
    )
    cli.serve = functools.partial(cli.serve, extra_handlers=[slow], open_services=["test.Slow"])
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_sigterm_during_a_slow_call_lets_it_finish_then_exits_0(
    process_env: dict[str, str],
) -> None:
    process_env["MARKETO_DEST_GRACE_SECONDS"] = "30"
    proc = _Process(
        [sys.executable, "-c", _SLOW_SERVER, "serve", "--address", "127.0.0.1:0"], process_env
    )
    try:
        port = proc.port()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            slow = channel.unary_unary("/test.Slow/Hold").future(b"2.0", timeout=60)
            proc.wait_for("holding")
            proc.popen.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            assert slow.result(timeout=60) == b"done"
        assert proc.popen.wait(timeout=30) == 0  # well before the 30 s grace period
    finally:
        proc.popen.kill()


def test_serve_refuses_a_bad_setting_naming_the_variable(process_env: dict[str, str]) -> None:
    process_env["MARKETO_DEST_GRACE_SECONDS"] = "soon"
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        cwd=REPO,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MARKETO_DEST_GRACE_SECONDS" in result.stderr


async def test_serve_reports_a_busy_address_and_exits_1(
    settings: Settings, process_env: dict[str, str], service: Service
) -> None:
    server, port = await build_server(settings, servicer=MarketoDestinationServicer(service.app))
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service", "serve", "--address", f"127.0.0.1:{port}"],
            cwd=REPO,
            env=process_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        await server.stop(None)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# --- the embedded sandbox ---------------------------------------------------------------------


async def test_embedded_sandbox_serves_marketo_on_loopback() -> None:
    sandbox = pytest.importorskip("sandbox")
    if not hasattr(sandbox, "create_app"):
        pytest.skip("sandbox.create_app is not available yet (issue 3)")
    import httpx

    from service.__main__ import embedded_sandbox

    async with embedded_sandbox() as url, httpx.AsyncClient(base_url=url) as client:
        assert url.startswith("http://127.0.0.1:")
        response = await client.get("/_sandbox/leads")
        assert response.status_code == 200
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/_sandbox/leads")
