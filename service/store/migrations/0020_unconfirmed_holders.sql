-- A list call whose outcome is unknown (the request left, no answer came back) may or may not
-- have changed the list. The lead it concerned is recorded as the membership's holder all the
-- same, marked unconfirmed: an exit, a refused consent, a forget or a reconciliation removes it
-- (removing a non-member is harmless), and a desired member's next delivery adds it again
-- (adding a member is harmless) instead of taking it as present. A confirmed answer clears it.

ALTER TABLE membership_marks ADD COLUMN holder_unconfirmed INTEGER NOT NULL DEFAULT 0;
