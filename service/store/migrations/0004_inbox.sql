-- The inbox: Sync batches as the caller encoded them, one row per acknowledged request.
-- Ingest only appends here; an instance's drainer unpacks the oldest batches into the outbox
-- as it needs entries, so converting an update never delays an acknowledgement.

CREATE TABLE inbox (
    id ${AUTO_ID},
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    instance_key TEXT NOT NULL,
    count INTEGER NOT NULL,
    body ${BYTES} NOT NULL,
    trace_context TEXT,
    enqueued_at BIGINT NOT NULL
);

-- Unpacking walks an instance's batches in arrival order.
CREATE INDEX inbox_by_instance ON inbox (instance_key, id);
-- Oldest pending batch of a destination.
CREATE INDEX inbox_by_destination ON inbox (destination_id, id);

-- Re-sent updates recognised when their batch is unpacked.
ALTER TABLE dataflow_hours ADD COLUMN duplicates BIGINT NOT NULL DEFAULT 0;
