-- A digest of each update's content kept with its update_id, so that an update_id
-- sent again with different content is told from a true duplicate: the outbox entry keeps it
-- while queued, the outcome once retired. Rows from before have none (NULL): an update_id
-- sent again after them is taken as a duplicate, as it was before.
ALTER TABLE outbox ADD COLUMN digest TEXT;
ALTER TABLE outcomes ADD COLUMN digest TEXT;
