-- The first piece of a destination's desired state (issue 21): per (profile, audience), the
-- membership status last applied and the event time of the membership event that set it.
-- Membership events are ordered per (profile, audience) against these marks, independently of
-- the profile's attribute watermark (profile_watermarks): an attribute update never supersedes a
-- membership event, nor the reverse. Written with the outcomes, in the transaction that retires
-- them; a newer event time replaces the row, an older one never does.

CREATE TABLE membership_marks (
    destination_id TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    profile_id TEXT NOT NULL,
    audience_id TEXT NOT NULL,
    status TEXT NOT NULL,
    event_time BIGINT NOT NULL,
    PRIMARY KEY (destination_id, profile_id, audience_id)
);
