-- Why a destination is not ACTIVE, for states that carry a reason: SCHEMA_PAUSED names the
-- mapped fields the instance's lead schema no longer has.

ALTER TABLE destinations ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
