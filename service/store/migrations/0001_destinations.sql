-- Destinations and their activations (issue 6).
-- Times are BIGINT microseconds since the Unix epoch (UTC); flags are INTEGER 0/1.

CREATE TABLE destinations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    client_secret ${BYTES} NOT NULL,
    webhook_secret ${BYTES},
    instance_key TEXT NOT NULL,
    state TEXT NOT NULL,
    paused_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    mappings TEXT NOT NULL,
    version BIGINT NOT NULL
);

CREATE INDEX destinations_by_tenant ON destinations (tenant, created_at, id);

CREATE TABLE activations (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    audience_id TEXT NOT NULL,
    audience_name TEXT NOT NULL,
    origin TEXT NOT NULL,
    marketo_list_id BIGINT NOT NULL,
    list_name TEXT NOT NULL,
    active INTEGER NOT NULL,
    PRIMARY KEY (destination_id, audience_id)
);
