-- Exclusions are counted by code and field, never by a description that could quote a value:
-- a description per distinct rejected value made one counter each, for ever.

-- An excluded outcome's code and the Marketo field it concerns ('' when none).
ALTER TABLE outcomes ADD COLUMN exclusion_code TEXT NOT NULL DEFAULT '';
ALTER TABLE outcomes ADD COLUMN exclusion_field TEXT NOT NULL DEFAULT '';

-- Outcomes recorded before: the code their description stands for. A mapping rejection's
-- description quoted the rejected value; it keeps only the words before that.
UPDATE outcomes SET exclusion_code = CASE
        WHEN reason = 'marketing consent refused' THEN 'consent_refused'
        WHEN reason = 'no dedupe value' THEN 'missing_dedupe_value'
        WHEN substr(reason, 1, 25) = 'value rejected by mapping' THEN 'value_rejected'
        WHEN reason = 'no membership of an activated audience' THEN 'no_audience'
        WHEN reason = 'no matching lead' THEN 'no_matching_lead'
        WHEN substr(reason, 1, 27) = 'missing required attributes' THEN 'missing_required'
        ELSE 'unknown'
    END
    WHERE kind = 'excluded';
UPDATE outcomes SET reason = 'value rejected by mapping'
    WHERE kind = 'excluded' AND exclusion_code = 'value_rejected';

-- Hourly counts by (kind, reason, field): excluded by exclusion code and field ('' when none),
-- failed by Marketo code (field ''). Counts recorded by description are folded into codes.
CREATE TABLE dataflow_reason_counts (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    hour_start BIGINT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    field TEXT NOT NULL DEFAULT '',
    count BIGINT NOT NULL,
    PRIMARY KEY (destination_id, hour_start, kind, reason, field)
);

INSERT INTO dataflow_reason_counts (destination_id, hour_start, kind, reason, field, count)
    SELECT destination_id, hour_start, kind, code, '', SUM(count) FROM (
        SELECT destination_id, hour_start, kind, count, CASE
                WHEN kind <> 'excluded' THEN reason
                WHEN reason = 'marketing consent refused' THEN 'consent_refused'
                WHEN reason = 'no dedupe value' THEN 'missing_dedupe_value'
                WHEN substr(reason, 1, 25) = 'value rejected by mapping' THEN 'value_rejected'
                WHEN reason = 'no membership of an activated audience' THEN 'no_audience'
                WHEN reason = 'no matching lead' THEN 'no_matching_lead'
                WHEN substr(reason, 1, 27) = 'missing required attributes'
                    THEN 'missing_required'
                ELSE 'unknown'
            END AS code
        FROM dataflow_reasons
    ) AS old
    GROUP BY destination_id, hour_start, kind, code;

DROP TABLE dataflow_reasons;
ALTER TABLE dataflow_reason_counts RENAME TO dataflow_reasons;
