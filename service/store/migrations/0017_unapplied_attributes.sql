-- A profile that is a member of no activated audience gets no attributes written, but its
-- newest attributes still win once it is exported: they are kept in resync_sources with
-- applied = 0 (the profile's watermark moved to them) and read with the desired state, so that
-- an older update exporting the profile writes them instead of its own. An activated outcome
-- that reaches them marks them applied. Resync re-sends applied sources only.

ALTER TABLE resync_sources ADD COLUMN applied INTEGER NOT NULL DEFAULT 1;
