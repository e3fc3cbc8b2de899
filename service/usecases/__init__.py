"""The use cases behind the RPCs: destinations, activation, ingest, preview, monitoring, alerts."""
