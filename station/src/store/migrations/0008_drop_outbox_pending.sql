-- 0008: the index outbox_pending (destination, done_at), from migration 1, is dropped. Since
-- migration 4 the uploader finds its rows by delivery state (outbox_due) and a unit's by
-- outbox_unit; no query reads done_at. Every queued enrollment and every delivery still wrote
-- a page of it to the WAL: two of the ~40 pages a unit writes under `scripts/bench line`.
DROP INDEX IF EXISTS outbox_pending;
