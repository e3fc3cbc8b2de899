-- The durable outbox, outcomes, watermarks, dataflow counters, alerts and leases (issue 7).

-- Backlog size per destination, kept by append and retire so it is never counted by a scan.
ALTER TABLE destinations ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;

CREATE TABLE outbox (
    sequence ${AUTO_ID},
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    instance_key TEXT NOT NULL,
    update_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    event_time BIGINT NOT NULL,
    payload TEXT NOT NULL,
    trace_context TEXT,
    enqueued_at BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);

-- Idempotent append.
CREATE UNIQUE INDEX outbox_by_update ON outbox (destination_id, update_id);
-- claim_due walks an instance's rows in sequence order and filters not_before in the index.
CREATE INDEX outbox_due ON outbox (instance_key, sequence, not_before);
-- Oldest pending entry of a destination.
CREATE INDEX outbox_by_destination ON outbox (destination_id, sequence);

-- Every instance key ever appended to, so finding due work never scans the outbox.
CREATE TABLE outbox_instances (
    instance_key TEXT PRIMARY KEY
);

CREATE TABLE outcomes (
    id ${AUTO_ID},
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    update_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    dedupe_value TEXT,
    event_time BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actions TEXT NOT NULL,
    lead_id BIGINT,
    reason TEXT NOT NULL,
    marketo_code TEXT NOT NULL
);

-- Also makes append idempotent for updates already delivered.
CREATE UNIQUE INDEX outcomes_by_update ON outcomes (destination_id, update_id);
CREATE INDEX outcomes_by_destination ON outcomes (destination_id, id);
CREATE INDEX outcomes_by_profile ON outcomes (destination_id, profile_id, id);
CREATE INDEX outcomes_by_dedupe ON outcomes (destination_id, dedupe_value, id);

CREATE TABLE profile_watermarks (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    profile_id TEXT NOT NULL,
    event_time BIGINT NOT NULL,
    PRIMARY KEY (destination_id, profile_id)
);

CREATE TABLE dataflow_hours (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    hour_start BIGINT NOT NULL,
    received BIGINT NOT NULL DEFAULT 0,
    activated BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL DEFAULT 0,
    updated BIGINT NOT NULL DEFAULT 0,
    added BIGINT NOT NULL DEFAULT 0,
    removed BIGINT NOT NULL DEFAULT 0,
    excluded BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    superseded BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (destination_id, hour_start)
);

-- Excluded counts by reason and failed counts by code, per hour.
CREATE TABLE dataflow_reasons (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    hour_start BIGINT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (destination_id, hour_start, kind, reason)
);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    raised_at BIGINT NOT NULL,
    resolved_at BIGINT,
    paused_until BIGINT
);

-- At most one open alert per destination and type.
CREATE UNIQUE INDEX alerts_open ON alerts (destination_id, type) WHERE resolved_at IS NULL;
CREATE INDEX alerts_by_destination ON alerts (destination_id, raised_at);

-- One drainer per Marketo instance; generation is the fencing token.
CREATE TABLE instance_leases (
    instance_key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    generation BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
