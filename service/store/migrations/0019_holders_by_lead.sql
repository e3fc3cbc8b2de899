-- The desired state of a batch's profiles comes with the other profiles that want the same leads
-- in the same lists (co-holders: a member holding the lead, or holding none and bound to it), so
-- that an exit of one profile removes a lead only when no other profile still wants it. They are
-- found by lead: the memberships a lead holds (this index) and the profiles bound to a lead
-- (profile_state_by_lead, migration 0018).

CREATE INDEX membership_marks_by_lead ON membership_marks (destination_id, lead_id);
