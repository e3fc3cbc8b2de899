-- Resync and ForgetProfile (issue 23).
--
-- forgotten_profiles: the tombstone ForgetProfile records. Later updates of a forgotten profile
-- end EXCLUDED "forgotten"; Resync and reconciliation never write it again.
--
-- resync_sources: per profile, the latest delivered update whose attributes were applied (its
-- profile as the caller sent it, JSON). The store keeps only a digest of the attributes in
-- profile_state; Resync re-sends these. It holds personal data: ForgetProfile deletes it, and it
-- goes with its destination.
--
-- outbox.priority: 0 for live updates, 1 for resync work. The dispatcher claims by priority,
-- then sequence, so live updates always go before the resync work queued earlier.

CREATE TABLE forgotten_profiles (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    profile_id TEXT NOT NULL,
    forgotten_at BIGINT NOT NULL,
    PRIMARY KEY (destination_id, profile_id)
);

CREATE TABLE resync_sources (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    profile_id TEXT NOT NULL,
    event_time BIGINT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (destination_id, profile_id)
);

ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX outbox_due_by_priority ON outbox (instance_key, priority, sequence, not_before);
