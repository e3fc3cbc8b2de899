-- A destination's desired and applied state (issue 21). The inbox holds the facts not yet folded
-- in: it is the pending part of the desired state; the retire transaction folds each delivered
-- fact in and records what Marketo confirmed.
--
-- membership_marks gains the lead that holds each membership in Marketo (NULL: the service has
-- put no lead of the profile in the list). Rows written before with a member status have an
-- unknown holder: -1 stands for "the lead the profile resolves to", so their exit still removes it.
--
-- profile_state keeps, per profile, its dedupe value (and key), the lead it resolved to at its
-- last confirmed write (the binding), a digest of the mapped attributes last applied (sha256 of
-- their canonical JSON: never the values, which are personal data) and whether its marketing
-- consent is refused. The attribute event-time order stays in profile_watermarks.
--
-- activations.holders_tracked: the service created the list since holders are recorded, so it
-- knows every lead it added there (an exit with no holder costs no call). Linked lists and lists
-- from before count as untracked: someone else may have added the lead.

ALTER TABLE membership_marks ADD COLUMN lead_id BIGINT;
UPDATE membership_marks SET lead_id = -1 WHERE status <> 'exited';

CREATE TABLE profile_state (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    profile_id TEXT NOT NULL,
    dedupe_value TEXT,
    dedupe_key TEXT,
    lead_id BIGINT,
    digest TEXT,
    consent_refused INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (destination_id, profile_id)
);

ALTER TABLE activations ADD COLUMN holders_tracked INTEGER NOT NULL DEFAULT 0;
