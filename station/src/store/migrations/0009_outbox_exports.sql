-- 0009: air-gapped transfer. `station upload --export` writes a target's waiting rows to a file
-- (an `exports` row records it) and marks each row with the export's id: the uploader leaves
-- such a row alone while it travels. `station upload --receipt` applies the receipt written
-- where DPS is reachable (`station upload --deliver`): rows delivered, in conflict, or back in
-- the queue (export_id cleared). A row stays 'pending' while exported.
CREATE TABLE exports (
    id          TEXT PRIMARY KEY,
    target      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    file_name   TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    row_count   INTEGER NOT NULL,
    receipt_at  TEXT
);
ALTER TABLE outbox ADD COLUMN export_id TEXT REFERENCES exports(id);
CREATE INDEX outbox_export ON outbox(export_id) WHERE export_id IS NOT NULL;
