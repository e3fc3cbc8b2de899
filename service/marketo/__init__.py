"""Marketo Engage REST client: authentication, per-instance limits, the error table, typed
operations. See docs/marketo-client.md.

Import each name from the module that defines it: `client` (MarketoClient), `types` (the typed
results), `errors`, `limits`, `auth`, `clock`, `codes`, `gate`. How calls are retried
(`RetryPolicy`) is tuning, in `service.settings`.
"""
