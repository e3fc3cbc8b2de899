"""Marketo clients for destinations: one shared `httpx.AsyncClient`, one limiter per instance,
one telemetry observer."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from service.delivery.egress import (
    DEFAULT_ALLOWED_ENDPOINTS,
    OriginList,
    endpoint_allowlist,
    parse_url,
)
from service.domain import MarketoCalls, MarketoConnection
from service.errors import FailedPrecondition
from service.marketo.client import MarketoClient
from service.marketo.clock import Clock
from service.marketo.limits import InstanceLimits, instance_key
from service.settings import LimitSettings, RetryPolicy
from service.telemetry.core import QuotaSample, Telemetry
from service.telemetry.marketo import marketo_observer

INTERACTIVE_RETRY = RetryPolicy(max_attempts=3, deadline=15.0, base_delay=0.5)
"""Retries of Marketo calls made while a caller waits (Configure, Activate, DescribeMarketo)."""


class EndpointRefused(FailedPrecondition):
    """The destination's Marketo endpoint is not allowed by the egress policy."""


class MarketoConnections:
    """Builds `MarketoClient`s; clients of one instance share its limits and token cache, and
    read the Usage API at the instance's first call and hourly (others' calls spend the budget).

    Only endpoints in `allowed_endpoints` get a client (default: Marketo's own hosts and the
    origin of `default_endpoint`); see service/delivery/egress.py. With `telemetry`, every
    client's calls are traced and counted there.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        default_endpoint: str = "",
        allowed_endpoints: OriginList | None = None,
        limits: LimitSettings | None = None,
        clock: Clock | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._http = http
        self._default_endpoint = default_endpoint
        self._allowed = allowed_endpoints or endpoint_allowlist(
            DEFAULT_ALLOWED_ENDPOINTS, default_endpoint
        )
        self._limits = limits or LimitSettings()
        self._clock = clock
        self._observer = marketo_observer(telemetry)

    def base_url(self, connection: MarketoConnection) -> str:
        """The REST base URL: the connection's endpoint, the default (sandbox), or Marketo's."""
        endpoint = connection.endpoint or self._default_endpoint
        if not endpoint:
            endpoint = f"https://{connection.munchkin_id}.mktorest.com"
        endpoint = endpoint.rstrip("/")
        return endpoint.removesuffix("/rest")

    def endpoint_problem(self, connection: MarketoConnection) -> str | None:
        """Why the connection's REST base URL may not be called, or None when it may."""
        try:
            origin = parse_url(self.base_url(connection), what="the endpoint")
        except ValueError as error:
            return str(error)
        if not self._allowed.allows(origin):
            return f"{origin} is not an allowed Marketo endpoint (MARKETO_DEST_ALLOWED_ENDPOINTS)"
        return None

    def instance_key(self, connection: MarketoConnection) -> str:
        """The key that identifies the Marketo instance (the dispatcher's and limiter's unit)."""
        return instance_key(self.base_url(connection))

    def _limits_of(self, base_url: str) -> InstanceLimits:
        return InstanceLimits.shared(
            self._http,
            base_url,
            clock=self._clock,
            share=self._limits.share,
            window_seconds=self._limits.window_seconds,
            concurrency=self._limits.concurrency,
            daily_quota=self._limits.daily_quota,
            daily_reserve=self._limits.daily_reserve,
        )

    def calls_today(self, connection: MarketoConnection) -> MarketoCalls:
        """Today's calls of the connection's instance: ours, the others' (Usage API), what is
        left of this process's budget. Nothing is sent."""
        usage = self._limits_of(self.base_url(connection)).usage
        read_at = usage.usage_read_at
        return MarketoCalls(
            ours=usage.ours,
            others=usage.others,
            remaining=usage.remaining,
            usage_read_at=None if read_at is None else datetime.fromtimestamp(read_at, UTC),
        )

    def calls_per_second(self, connection: MarketoConnection) -> float:
        """The call rate this process allows itself on the connection's instance (its share of
        Marketo's calls per window). Nothing is sent."""
        limits = self._limits_of(self.base_url(connection))
        return limits.allowance / limits.window_seconds

    def quota_samples(self) -> list[QuotaSample]:
        """Today's use of the daily quota of every instance a client was built for (kept at
        rest or in use), by instance key. Nothing is sent."""
        samples = []
        for key, limits in sorted(InstanceLimits.known(self._http).items()):
            usage = limits.usage
            samples.append(QuotaSample(key, usage.ours, usage.others, usage.remaining))
        return samples

    def client(self, connection: MarketoConnection, *, interactive: bool = False) -> MarketoClient:
        """A client for the connection's instance; `interactive` clients (used while a caller
        waits on an RPC) give up within seconds instead of retrying for minutes.

        Raises `EndpointRefused` when the endpoint is not allowed (nothing is sent).
        """
        problem = self.endpoint_problem(connection)
        if problem is not None:
            raise EndpointRefused(f"the destination's Marketo endpoint is refused: {problem}")
        base_url = self.base_url(connection)
        return MarketoClient(
            self._http,
            base_url=base_url,
            client_id=connection.client_id,
            client_secret=connection.client_secret,
            limits=self._limits_of(base_url),
            clock=self._clock,
            retry=INTERACTIVE_RETRY if interactive else None,
            observer=self._observer,
            seed_from_usage=True,
        )
