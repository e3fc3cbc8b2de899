-- The profiles of a destination bound to one lead: when a retire stores the digest of the
-- attributes written to a lead, the other profiles bound to it that last applied something else
-- get their digest cleared (the lead no longer holds it), found through this index.
CREATE INDEX profile_state_by_lead ON profile_state (destination_id, lead_id);
