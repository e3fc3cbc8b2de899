"""OpenTelemetry, wired once and injected: traces, metrics and logs of the service.

- :mod:`service.telemetry.core`: :class:`~service.telemetry.core.Telemetry`, the providers and
  the service's instruments, batch and mapping spans;
- :mod:`service.telemetry.setup`: the providers from the ``OTEL_*`` variables;
- :mod:`service.telemetry.context`: W3C trace context, stored with updates and read back as
  span links;
- :mod:`service.telemetry.rpc`: the gRPC server interceptor (SERVER spans);
- :mod:`service.telemetry.marketo`: the Marketo client's observer (CLIENT spans, call metrics);
- :mod:`service.telemetry.logs`: logging with trace ids, secrets and query values masked.

Tracing stays at the edges (the interceptor and the Marketo client's observer); business code
only calls the small helpers of ``Telemetry``, which never see profile attribute values, secrets
or tokens. The trace of one profile update::

    caller span ──▶ Sync (SERVER span, parent = the caller's traceparent)
                       │ current_trace_context() stored with the update in the outbox
                       ▼
    dispatch batch (root span, one link per stored traceparent)
        ├── map batch
        ├── marketo GET leads          (CLIENT span, from the client's observer)
        └── marketo POST leads/sync
"""
