-- resync_sources hold personal data (each profile's latest applied profile): they are kept for
-- the outcome retention (MARKETO_DEST_OUTCOME_RETENTION_DAYS) after they were recorded, then
-- purged with the outcomes (`Store.purge_resync_sources`). recorded_at is microseconds since
-- the epoch, set at every retire that renews the source. Rows recorded before this migration
-- take their event time: never later than their recording, so they go no later than due.

ALTER TABLE resync_sources ADD COLUMN recorded_at BIGINT NOT NULL DEFAULT 0;
UPDATE resync_sources SET recorded_at = event_time;
CREATE INDEX resync_sources_by_recorded_at ON resync_sources (recorded_at);
