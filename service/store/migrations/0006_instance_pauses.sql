-- A Marketo instance whose daily quota is spent (607) is paused until the quota resets. The
-- pause is kept here so that a restart, or another replica taking the instance over, does not
-- call Marketo again before the reset.

CREATE TABLE instance_pauses (
    instance_key TEXT PRIMARY KEY,
    paused_until BIGINT NOT NULL
);
