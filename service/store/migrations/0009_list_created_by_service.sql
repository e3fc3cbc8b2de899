-- Whether the service created an activation's Marketo static list (Deactivate with
-- delete_lists deletes only those) rather than linking a list the caller named. Rows from
-- before cannot tell: they count as linked, so no list of theirs is ever deleted.
-- An activation row with active = 0 and a list id also records a list created by an Activate
-- that failed before completing: the next Activate of the audience reuses it.

ALTER TABLE activations ADD COLUMN created_by_service INTEGER NOT NULL DEFAULT 0;
