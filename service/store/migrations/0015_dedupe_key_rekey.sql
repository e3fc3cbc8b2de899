-- Migration 0010 keyed the outcomes stored before it with SQL's lower(trim()), which is the
-- planner's key (white space stripped, case folded) for printable ASCII values only. The store
-- re-keys the other values in Python once, at its first open after this migration
-- (`service.store.sql.Store.rekey_legacy_dedupe_keys`), then empties this table.
CREATE TABLE dedupe_rekey_pending (pending INTEGER NOT NULL);
INSERT INTO dedupe_rekey_pending (pending) VALUES (1);
