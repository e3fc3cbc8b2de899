-- An activated outcome's fields whose Marketo value a write policy kept (a JSON array of REST
-- names), and the key outcomes are found by their dedupe value under: the value without
-- surrounding white space, case folded, as the planner matches dedupe values. Rows from before
-- get SQL's lower(trim()), the same key for the ASCII values they hold in practice.
ALTER TABLE outcomes ADD COLUMN kept_fields TEXT NOT NULL DEFAULT '[]';
ALTER TABLE outcomes ADD COLUMN dedupe_key TEXT;
UPDATE outcomes SET dedupe_key = lower(trim(dedupe_value)) WHERE dedupe_value IS NOT NULL;
DROP INDEX outcomes_by_dedupe;
CREATE INDEX outcomes_by_dedupe_key ON outcomes (destination_id, dedupe_key, id);
