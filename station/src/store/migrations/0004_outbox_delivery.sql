-- The outbox uploader: each row links its unit, says whether its payload is sealed (encrypted
-- with the outbox cipher because it holds keys), and carries its delivery state. A 'conflict'
-- row waits for a supervisor and is never retried on its own.
ALTER TABLE outbox ADD COLUMN unit_id INTEGER REFERENCES units(id);
ALTER TABLE outbox ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0 CHECK (sealed IN (0, 1));
ALTER TABLE outbox ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'
    CHECK (state IN ('pending', 'done', 'conflict'));
ALTER TABLE outbox ADD COLUMN etag TEXT;
ALTER TABLE outbox ADD COLUMN last_attempt_at TEXT;
UPDATE outbox SET state = 'done' WHERE done_at IS NOT NULL;
CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
CREATE INDEX outbox_unit ON outbox(unit_id);
