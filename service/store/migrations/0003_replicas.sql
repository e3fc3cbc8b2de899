-- Live service replicas, for spreading instance leases fairly over them (issue 10).
-- Each replica's row is refreshed whenever it takes or renews a lease (and by its heartbeat);
-- a row whose expires_at has passed is a replica that is gone.

CREATE TABLE replicas (
    holder TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Leases a replica holds, counted when it asks for one more.
CREATE INDEX instance_leases_by_holder ON instance_leases (holder, expires_at);
