-- Reconciliation against Marketo (issue 23): per audience of a destination, the last time its
-- list's real members were compared with the desired state, the list compared, and the drift
-- found (members missing plus members unexpected) and repaired (added plus removed). GetDataflow
-- shows these rows; the periodic reconciliation reads reconciled_at to know what is due.

CREATE TABLE list_reconciliations (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    audience_id TEXT NOT NULL,
    marketo_list_id BIGINT NOT NULL,
    reconciled_at BIGINT NOT NULL,
    drift_found BIGINT NOT NULL,
    drift_repaired BIGINT NOT NULL,
    PRIMARY KEY (destination_id, audience_id)
);
