-- The heartbeat flush updates license_sessions (heartbeat_count, last_heartbeat_at) and
-- device_registrations (last_seen_at) for every session and device of every batch: with a million
-- sessions beating every 30 s, a row update per heartbeat.  None of those columns is indexed, so each
-- update can be HOT (heap-only: the new row version goes on the same page, no index entry is written
-- for any of the tables' indexes) - but only if the page has room for it.  At the default fillfactor
-- (100) pages are packed full, and most updates went to another page and wrote an entry into every
-- index (docs/performance.md, "Worker flush").  A fillfactor of 70 leaves 30 % of each page free for
-- the next versions of its rows.
--
-- It applies to pages written from now on (new rows, and rows moved by their next non-HOT update);
-- an existing table's pages are repacked only by a rewrite (VACUUM FULL or pg_repack, at a quiet hour),
-- which is optional: the table converges as its rows are updated.
ALTER TABLE license_sessions SET (fillfactor = 70);
ALTER TABLE device_registrations SET (fillfactor = 70);
