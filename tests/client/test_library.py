"""The client library against a real service (tests/harness.py): every RPC, a pipelined Sync
stream, per-update rejections, reconnects that resend what was not acknowledged (through a
failing proxy, and across a service stopped and started again), RetryInfo back-off, bearer
tokens, TLS, mutual TLS and trace context propagation."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from marketo_destination_client import (
    DEFAULT_DEPTH,
    MAX_UPDATES_PER_REQUEST,
    TLS,
    AsyncClient,
    Backoff,
    Client,
    Connection,
    SyncStreamError,
    pb,
)
from sandbox import SandboxSettings, create_app
from service.api.access import ALL_PERMISSIONS, AccessInterceptor, parse_principals
from service.api.servicer import SYNC_PIPELINE_DEPTH
from service.api.sync_checks import MAX_UPDATES
from service.api.tls import server_credentials
from tests.access.harness import Pki, principals_json, serve, token_for
from tests.client.proxy import Fault, sync_proxy
from tests.harness import STANDARD_MAPPINGS, Service, running_service, spec, update

ROOT = Path(__file__).resolve().parents[2]
AUDIENCE = pb.Audience(id="newsletter", name="Newsletter subscribers")
REALIZED = {"newsletter": pb.MEMBERSHIP_STATUS_REALIZED}


def client_of(service: Service, **connection: Any) -> AsyncClient:
    return AsyncClient(Connection(f"127.0.0.1:{service.port}", **connection))


async def activated_destination(client: AsyncClient) -> str:
    destination = await client.configure(spec())
    await client.activate(destination.id, [AUDIENCE], STANDARD_MAPPINGS)
    destination_id: str = destination.id
    return destination_id


async def drained(client: AsyncClient, destination_id: str) -> Any:
    for _ in range(600):
        flow = await client.get_dataflow(destination_id)
        if flow.pending == 0 and flow.received > 0:
            return flow
        await asyncio.sleep(0.05)
    raise AssertionError(f"the backlog did not drain: {flow}")


def test_the_default_depth_is_the_services_pipeline_depth() -> None:
    assert DEFAULT_DEPTH == SYNC_PIPELINE_DEPTH


async def test_every_unary_call_and_its_typed_result(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service, client_of(service) as client:
        first = await client.configure(spec(name="First"))
        checked = await client.configure(spec(name="Checked"), validate_only=True)
        second = await client.configure(spec(name="Second"))
        assert isinstance(first, pb.Destination) and first.id and checked.id == ""
        renamed = await client.configure(spec(name="First again"), destination_id=first.id)
        assert renamed.id == first.id and renamed.spec.name == "First again"
        assert (await client.get_destination(first.id)).spec.name == "First again"

        page = await client.list_destinations(page_size=1)
        assert [d.id for d in page.destinations] == [first.id] and page.next_page_token
        assert [d.id async for d in client.all_destinations(page_size=1)] == [first.id, second.id]

        described = await client.describe_marketo(destination_id=first.id)
        assert "email" in described.dedupe_fields
        lists = await client.activate(first.id, [AUDIENCE], STANDARD_MAPPINGS)
        assert [a.audience_id for a in lists] == ["newsletter"] and lists[0].marketo_list_id

        preview = await client.preview_sync(
            first.id, [update("p1", "ada@example.com", audiences=REALIZED)]
        )
        assert preview.created == 1 and preview.outcomes[0].profile_id == "p1"

        async with client.sync_stream(first.id) as stream:
            answer = await stream.send([update("p1", "Ada@Example.com", audiences=REALIZED)])
        assert (await answer).accepted == 1
        flow = await drained(client, first.id)
        assert flow.activated.created == 1 and flow.activated.added == 1
        outcomes = await client.list_profile_outcomes(first.id, profile_id="p1")
        assert [o.kind for o in outcomes.outcomes] == [pb.OUTCOME_KIND_ACTIVATED]
        by_value = await client.list_profile_outcomes(first.id, dedupe_value="ada@example.com")
        assert [o.profile_id for o in by_value.outcomes] == ["p1"]

        (drift,) = await client.reconcile(first.id, dry_run=True)
        assert (drift.audience_id, drift.missing, drift.unexpected) == ("newsletter", 0, 0)

        assert await client.deactivate(first.id, ["newsletter"]) == ["newsletter"]
        await client.delete_destination(second.id)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.get_destination(second.id)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError, match="profile_id or dedupe_value"):
            await client.list_profile_outcomes(first.id)


async def test_alerts_are_watched_until_the_caller_stops(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service, client_of(service) as client:
        destination_id = await activated_destination(client)
        alerts = client.watch_alerts(destination_id, include_open=True)
        waiting = asyncio.ensure_future(anext(alerts))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # no alert open: the call stays open
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await alerts.aclose()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await anext(client.watch_alerts("dst_missing"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stream_pipelines_requests_and_matches_answers(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service, client_of(service) as client:
        destination_id = await activated_destination(client)
        answers = []
        async with client.sync_stream(destination_id, depth=4) as stream:
            for n in range(20):
                updates = [update(f"p{n}", f"p{n}@example.com", audiences=REALIZED)]
                if n == 7:
                    bad = pb.ProfileUpdate(profile_id="no-time")
                    updates = [updates[0], bad]
                answers.append(await stream.send(updates, request_id=f"req-{n}"))
                assert stream.unacknowledged <= 4
        results = [await answer for answer in answers]
        assert [r.request_id for r in results] == [f"req-{n}" for n in range(20)]
        assert [r.accepted for r in results] == [1] * 20
        assert [r.attempts for r in results] == [1] * 20
        # Sequences grow with each commit; requests committed together share one.
        sequences = [r.ack_sequence for r in results]
        assert sequences == sorted(sequences) and sequences[0] > 0
        (rejection,) = results[7].rejections
        assert rejection.index == 1 and rejection.profile_id == "no-time"
        assert rejection.field == "updates[1].event_time" and rejection.reason
        assert stream.rejections == [rejection] and stream.retries == []


def test_the_request_bound_is_the_services() -> None:
    assert MAX_UPDATES_PER_REQUEST == MAX_UPDATES


async def test_an_oversized_request_is_refused_before_it_ends_the_stream(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service, client_of(service) as client:
        destination_id = await activated_destination(client)
        async with client.sync_stream(destination_id) as stream:
            one = update("p1", "a@example.com", audiences=REALIZED)
            with pytest.raises(ValueError, match="updates: 10001 in one request"):
                await stream.send([one] * (MAX_UPDATES_PER_REQUEST + 1))
            answer = await stream.send([one])
        assert (await answer).accepted == 1
        assert stream.unacknowledged == 0


async def test_a_request_id_in_flight_cannot_be_used_twice(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service, client_of(service) as client:
        destination_id = await activated_destination(client)
        async with client.sync_stream(destination_id, depth=2) as stream:
            first = await stream.send(
                [update("p1", "a@example.com", audiences=REALIZED)], request_id="same"
            )
            if not first.done():
                with pytest.raises(ValueError, match="request_id"):
                    await stream.send(
                        [update("p2", "b@example.com", audiences=REALIZED)], request_id="same"
                    )
        assert (await first).accepted == 1


async def test_a_refused_stream_fails_every_request_without_retrying(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service, client_of(service) as client:
        stream = client.sync_stream("dst_missing")
        answer = await stream.send([update("p1", "a@example.com", audiences=REALIZED)])
        with pytest.raises(SyncStreamError) as failed:
            await stream.close()
        assert failed.value.code == grpc.StatusCode.NOT_FOUND
        assert len(failed.value.unacknowledged) == 1
        assert answer.exception() is failed.value and stream.retries == []
        with pytest.raises(SyncStreamError):
            await stream.send([update("p2", "b@example.com", audiences=REALIZED)])


async def test_unacknowledged_requests_are_resent_after_retry_info_and_unavailable(
    tmp_path: Path,
) -> None:
    faults = [
        # The first call: two requests read, RESOURCE_EXHAUSTED with a RetryInfo of 250 ms.
        Fault(2, grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=timedelta(milliseconds=250)),
        # The second: the service accepts both, their answers are lost, UNAVAILABLE.
        Fault(2, grpc.StatusCode.UNAVAILABLE, forward=True),
    ]
    backoff = Backoff(initial=0.05)
    seen: list[Any] = []
    async with (
        running_service(tmp_path) as service,
        sync_proxy(service.port, faults) as proxy,
        AsyncClient(Connection(f"127.0.0.1:{proxy.port}")) as through_proxy,
        client_of(service) as direct,
    ):
        destination_id = await activated_destination(direct)
        stream = through_proxy.sync_stream(destination_id, backoff=backoff, on_retry=seen.append)
        first = [
            await stream.send([update(f"p{n}", f"p{n}@example.com", audiences=REALIZED)])
            for n in range(2)
        ]
        results = [await answer for answer in first]
        later = await stream.send([update("p2", "p2@example.com", audiences=REALIZED)])
        await stream.close()
        assert (await later).attempts == 1

        assert [r.accepted for r in results] == [1, 1]
        assert [r.attempts for r in results] == [3, 3]
        assert [(e.code, e.delay, e.from_retry_info, e.resend) for e in stream.retries] == [
            (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.25, True, 2),
            # The second failure in a row without an answer: twice the initial delay.
            (grpc.StatusCode.UNAVAILABLE, 0.1, False, 2),
        ]
        assert seen == stream.retries
        assert proxy.faults == [] and proxy.forwarded == 3

        # Sent twice to the service, each profile is delivered once.
        flow = await drained(direct, destination_id)
        assert flow.activated.created == 3 and flow.activated.added == 3
        assert len(await service.leads()) == 3


async def test_a_stream_waits_for_a_restarted_service_and_resends(tmp_path: Path) -> None:
    marketo = create_app(SandboxSettings())
    async with running_service(tmp_path, marketo=marketo) as service:
        port = service.port
        client = client_of(service)
        destination_id = await activated_destination(client)
        # Many short waits: the stream must not give up while the service is away.
        backoff = Backoff(initial=0.05, maximum=0.2, max_failures=1000)
        stream = client.sync_stream(destination_id, backoff=backoff)
        before = await stream.send([update("p1", "p1@example.com", audiences=REALIZED)])
        assert (await before).attempts == 1
    # The service is stopped: these wait, and go out once it is back.
    during = [
        await stream.send([update(f"p{n}", f"p{n}@example.com", audiences=REALIZED)])
        for n in (2, 3)
    ]
    await asyncio.sleep(0.3)
    assert not any(answer.done() for answer in during)
    assert stream.retries and stream.retries[0].code == grpc.StatusCode.UNAVAILABLE
    async with running_service(tmp_path, marketo=marketo, address=f"127.0.0.1:{port}") as again:
        results = [await answer for answer in during]
        await stream.close()
        assert [r.accepted for r in results] == [1, 1]
        flow = await drained(client_of(again), destination_id)
        assert flow.received == 3 and flow.activated.created == 3
    await client.close()


async def test_the_bearer_token_is_sent_and_checked(tmp_path: Path) -> None:
    token = token_for(ALL_PERMISSIONS)
    principals = parse_principals(principals_json([ALL_PERMISSIONS]))
    async with running_service(tmp_path, principals=principals) as service:
        async with client_of(service, token=token) as client:
            assert (await client.configure(spec())).id
        async with client_of(service, token="wrong-token") as wrong:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await wrong.list_destinations()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_trace_context_and_token_reach_the_service(tmp_path: Path) -> None:
    tracer = TracerProvider().get_tracer("test")
    async with (
        running_service(tmp_path) as service,
        sync_proxy(service.port, []) as proxy,
        AsyncClient(Connection(f"127.0.0.1:{proxy.port}", token="t0ken")) as client,
        client_of(service) as direct,
    ):
        destination_id = await activated_destination(direct)
        with tracer.start_as_current_span("caller") as span:
            async with client.sync_stream(destination_id) as stream:
                await stream.send([update("p1", "a@example.com", audiences=REALIZED)])
        trace_id = format(span.get_span_context().trace_id, "032x")
        (metadata,) = proxy.metadata
        assert metadata["authorization"] == "Bearer t0ken"
        assert metadata["traceparent"].split("-")[1] == trace_id


def test_tls_and_mutual_tls(pki: Pki) -> None:
    entries = [
        *principals_json([ALL_PERMISSIONS]),
        {
            "name": "batch",
            "tenant": "acme",
            "permissions": ["destinations.view"],
            "mtls_subject": "batch.acme.internal",
        },
    ]

    async def scenario() -> list[str]:
        names: list[str] = []
        credentials = server_credentials(pki.server_cert, pki.server_key)
        interceptor = AccessInterceptor(parse_principals(entries), mtls=False)
        async with serve(interceptor, credentials) as running:
            tls = TLS(ca_file=pki.ca_cert, server_name="localhost")
            token = token_for(ALL_PERMISSIONS)
            async with AsyncClient(Connection(running.target, token=token, tls=tls)) as client:
                await client.get_destination("dst_1")
            async with AsyncClient(Connection(running.target, token=token)) as plain:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await plain.get_destination("dst_1")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            names += [p.name for _, p in running.recorder.seen]
        mutual = server_credentials(pki.server_cert, pki.server_key, pki.client_ca_cert)
        interceptor = AccessInterceptor(parse_principals(entries), mtls=True)
        async with serve(interceptor, mutual) as running:
            tls = TLS(ca_file=pki.ca_cert, client_cert=pki.client_cert, client_key=pki.client_key)
            async with AsyncClient(Connection(running.target, tls=tls)) as client:
                await client.get_destination("dst_1")
            names += [p.name for _, p in running.recorder.seen]
        return names

    assert asyncio.run(scenario()) == ["p:" + "+".join(sorted(ALL_PERMISSIONS)), "batch"]
    with pytest.raises(ValueError, match="client_cert and client_key"):
        TLS(client_cert=pki.client_cert)
    with pytest.raises(ValueError, match=re.escape("ca_file '/nowhere/ca.pem' cannot be read")):
        Client(Connection(tls=TLS(ca_file=Path("/nowhere/ca.pem"))))


def test_the_blocking_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_service(tmp_path) as service:
            await asyncio.to_thread(blocking_calls, service.port)

    def blocking_calls(port: int) -> None:
        with Client(Connection(f"127.0.0.1:{port}")) as client:
            destination = client.configure(spec())
            client.activate(destination.id, [AUDIENCE], STANDARD_MAPPINGS)
            assert [d.id for d in client.all_destinations()] == [destination.id]
            with client.sync_stream(destination.id) as stream:
                answers = [
                    stream.send([update(f"p{n}", f"p{n}@example.com", audiences=REALIZED)])
                    for n in range(10)
                ]
            assert [a.result().accepted for a in answers] == [1] * 10
            alerts = client.watch_alerts(destination.id)
            alerts.close()
            assert client.get_dataflow(destination.id).received == 10

    asyncio.run(scenario())


def test_the_readme_example_runs_against_a_service(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    (example,) = [b for b in blocks if "marketo_destination_client" in b]
    printed = io.StringIO()

    def run(port: int) -> None:
        program = example.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
        with contextlib.redirect_stdout(printed):
            exec(compile(program, "README.md", "exec"), {})

    async def scenario() -> None:
        async with running_service(tmp_path) as service:
            await asyncio.to_thread(run, service.port)

    asyncio.run(scenario())
    assert printed.getvalue().splitlines() == ["[]", "100"]
