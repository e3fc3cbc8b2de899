"""The application: every use case wired to the store, Marketo, plugins and background tasks.

`open_application(settings)` builds it and runs the dispatcher, the alert monitor and the outcome
retention until the context exits. The servicer only ever talks to an `Application`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx

from service.api import inbox_codec
from service.api.access import Principals, load_principals
from service.delivery.config import Backoff, DeliveryServices, DeliverySettings
from service.delivery.dispatcher import Dispatcher
from service.delivery.egress import WebhookTransport
from service.delivery.fence import REPLICA_HEADER
from service.delivery.retention import OutcomeRetention
from service.mapping.registry import PluginRegistry
from service.marketo.clock import Clock, SystemClock
from service.settings import Settings, WebhookSettings
from service.store.secrets import SecretBox, owner_only_directory
from service.store.sql import Store
from service.store.sqlite import Synchronous, open_in_data_dir
from service.telemetry.context import current_trace_context
from service.telemetry.core import Telemetry
from service.usecases.activation import Activations
from service.usecases.alerts import AlertMonitor
from service.usecases.connections import MarketoConnections
from service.usecases.destinations import Destinations
from service.usecases.forget import ForgetProfile
from service.usecases.gauges import GaugeFigures
from service.usecases.governance import load_policies
from service.usecases.ingest import Ingest
from service.usecases.mapping_rules import MappingRules
from service.usecases.monitoring import Monitoring
from service.usecases.preview import Preview
from service.usecases.reconcile import Reconciliation
from service.usecases.resync import Resync


def marketo_http(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client of every Marketo call: answers awaited `marketo_timeout_seconds` (the
    Marketo client cuts each whole exchange, pool wait included, there too), the replica named
    on request (a drainer's gated client view checks each exchange against its lease gate,
    `service.marketo.gate`)."""
    timeout = settings.marketo_timeout_seconds
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
    )
    headers = {REPLICA_HEADER: replica_name(settings)} if settings.marketo_replica_header else {}
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(connect=min(10.0, timeout), read=timeout, write=30.0, pool=120.0),
        headers=headers,
    )


WEBHOOK_TIMEOUT = httpx.Timeout(WebhookSettings().timeout)
"""A webhook receiver answers quickly or the attempt is retried later: the default
`WebhookSettings.timeout`, which the alert monitor also gives each request."""


@dataclass(frozen=True, slots=True)
class Application:
    store: Store
    destinations: Destinations
    activations: Activations
    ingest: Ingest
    preview: Preview
    resync: Resync
    forget: ForgetProfile
    monitoring: Monitoring
    dispatcher: Dispatcher
    alerts: AlertMonitor
    reconciliation: Reconciliation
    principals: Principals | None


def webhook_client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client of alert webhooks: the egress policy, short timeouts, no redirects."""
    return httpx.AsyncClient(
        transport=WebhookTransport(settings.webhook_allowlist),
        timeout=WEBHOOK_TIMEOUT,
        follow_redirects=False,
        trust_env=False,
    )


def marketo_connections(
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
) -> MarketoConnections:
    """Marketo clients as the settings allow them: the endpoints, the default (sandbox) one, and
    this process's share of each instance's limits."""
    return MarketoConnections(
        http,
        default_endpoint=settings.default_marketo_endpoint,
        allowed_endpoints=settings.endpoint_allowlist,
        limits=settings.limits,
        clock=clock,
        telemetry=telemetry,
    )


def delivery_settings(settings: Settings) -> DeliverySettings:
    """The dispatcher's tuning, as the service settings give it."""
    return DeliverySettings(
        batch_size=settings.batch_size,
        linger=settings.linger_seconds,
        lease_ttl=timedelta(seconds=settings.lease_ttl),
        # Fencing against another holder: only replicas sharing PostgreSQL have one.
        call_margin=settings.call_margin_seconds if settings.database_url else 0.0,
        rate_window=settings.marketo_window_seconds if settings.database_url else 0.0,
        idle_hold=settings.marketo_window_seconds,
        bulk_threshold=settings.bulk_threshold,
        schema_recheck=Backoff(
            base=timedelta(seconds=settings.schema_recheck_seconds),
            maximum=timedelta(seconds=10 * settings.schema_recheck_seconds),
        ),
    )


def replica_name(settings: Settings) -> str:
    return settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"


@contextlib.asynccontextmanager
async def open_application(
    settings: Settings,
    *,
    http: httpx.AsyncClient | None = None,
    store: Store | None = None,
    registry: PluginRegistry | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
    run_background: bool = True,
    webhook_http: httpx.AsyncClient | None = None,
) -> AsyncIterator[Application]:
    """Build the application; the dispatcher and alert monitor run while the context is open.

    Tests inject `http` (e.g. over the sandbox's ASGI transport), `store` and `clock`.
    Webhooks go through `webhook_http`, by default a client of their own under the egress
    policy (`WebhookTransport`), never Marketo's `http` (its pool, limits and spans).
    """
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(marketo_http(settings))
        if webhook_http is None:
            webhook_http = await stack.enter_async_context(webhook_client(settings))
        if store is None:
            owner_only_directory(settings.data_dir)
            box = SecretBox.from_settings(settings.secret_key or None, settings.data_dir)
            if settings.database_url:
                # psycopg is the optional "postgres" extra: import it only when asked for.
                from service.store.postgres import PostgresStore

                store = await PostgresStore.open(settings.database_url, box)
            else:
                synchronous: Synchronous = "NORMAL"
                if settings.sqlite_synchronous == "FULL":
                    synchronous = "FULL"
                store = await open_in_data_dir(settings.data_dir, box, synchronous=synchronous)
            stack.push_async_callback(store.close)
        if registry is None:
            registry = PluginRegistry.build(blocked=settings.blocked_plugin_names)
        principals = load_principals(settings.principals_file) if settings.principals_file else None
        connections = marketo_connections(settings, http, clock=clock, telemetry=telemetry)
        alerts = AlertMonitor(store, http=webhook_http, clock=clock)
        max_clock_skew = timedelta(seconds=settings.max_clock_skew_seconds)
        reconciliation = Reconciliation(
            store,
            connections,
            alerts,
            clock=clock,
            list_folder=settings.list_folder,
            interval=settings.reconcile_interval_seconds,
            budget_share=settings.reconcile_budget_share,
            daily_quota=settings.marketo_daily_quota,
            notify=lambda instance_key: dispatcher.notify(instance_key),
            exclusive=lambda instance_key: dispatcher.exclusive(instance_key),
        )
        dispatcher = Dispatcher(
            DeliveryServices(
                store,
                connections,
                registry,
                alerts,
                decode=inbox_codec.decode_batch,
                telemetry=telemetry,
                clock=clock or SystemClock(),
                list_gone=reconciliation.list_gone,
            ),
            delivery_settings(settings),
            holder=replica_name(settings),
        )
        rules = MappingRules(registry, load_policies(settings.policies_file))
        resync = Resync(
            store,
            dispatcher.delivery,
            connections,
            batch_size=delivery_settings(settings).batch_size,
            notify=dispatcher.notify,
        )
        app = Application(
            store=store,
            destinations=Destinations(
                store,
                connections,
                rules,
                webhook_origins=settings.webhook_allowlist,
                on_changed=dispatcher.configuration_changed,
                on_lists_kept_again=reconciliation.lists_kept_again,
            ),
            activations=Activations(
                store,
                connections,
                rules,
                list_folder=settings.list_folder,
                on_changed=dispatcher.configuration_changed,
                on_lists_created=resync.add_members,
            ),
            ingest=Ingest(
                store,
                notify=dispatcher.notify,
                max_backlog=settings.max_backlog,
                max_wait=timedelta(seconds=settings.backpressure_wait_seconds),
                trace_context=current_trace_context,
                max_clock_skew=max_clock_skew,
            ),
            preview=Preview(store, dispatcher.delivery, max_clock_skew=max_clock_skew),
            resync=resync,
            forget=ForgetProfile(store, connections),
            monitoring=Monitoring(store, alerts, connections),
            dispatcher=dispatcher,
            alerts=alerts,
            reconciliation=reconciliation,
            principals=principals,
        )
        if run_background:
            if telemetry is not None and telemetry.enabled:
                gauges = GaugeFigures(store, connections, telemetry, clock=clock)
                await gauges.start()
                stack.push_async_callback(gauges.stop)
            await alerts.start()
            stack.push_async_callback(alerts.stop)
            await dispatcher.start()
            stack.push_async_callback(dispatcher.stop)
            await reconciliation.start()
            if settings.outcome_retention_days:
                retention = OutcomeRetention(
                    store, timedelta(days=settings.outcome_retention_days), clock=clock
                )
                await retention.start()
                stack.push_async_callback(retention.stop)
        # Stopped first: its periodic runs and the re-creation of deleted lists delivery asked
        # for may be waiting for a delivery turn.
        stack.push_async_callback(reconciliation.stop)
        yield app
