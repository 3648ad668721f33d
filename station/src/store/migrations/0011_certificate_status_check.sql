-- 0011: the certificates table's status check, spelled as comparisons. SQLite evaluates
-- `status IN ('issued', 'live', 'superseded', 'revoked')` (a constant list of more than two
-- values) by building an ephemeral b-tree of the list on every INSERT, once per certificate:
-- about 2 us of a row insert's ~10 (a micro-benchmark of this table's insert, bundled SQLite
-- 3.54, project 2-core VM). Four equality tests admit exactly the same values without it.
-- Nothing else changes: the same columns, the same serial check, the same two indexes.
--
-- SQLite cannot change a column's CHECK in place, so the table is rebuilt as migration 7
-- rebuilt it (rows copied in order, ids kept; no table references certificates, and it has no
-- triggers or views). It runs once, at the first start after the upgrade; see 0007 for its
-- cost (3.6 s for 200,000 certificates, room for a second copy of the table for a moment).
CREATE TABLE certificates_new (
    id                  INTEGER PRIMARY KEY,
    issuer_key_id       TEXT NOT NULL,
    serial_hex          TEXT NOT NULL CHECK (serial_hex <> '' AND serial_hex NOT GLOB '*[^0-9a-f]*'),
    unit_id             INTEGER REFERENCES units(id),
    registration_id     TEXT COLLATE NOCASE,
    subject             TEXT NOT NULL,
    profile             TEXT NOT NULL,
    not_before          TEXT NOT NULL,
    not_after           TEXT NOT NULL,
    fingerprint_sha256  TEXT NOT NULL,
    der                 BLOB NOT NULL,
    status              TEXT NOT NULL CHECK (status = 'issued' OR status = 'live'
                                             OR status = 'superseded' OR status = 'revoked'),
    issued_at           TEXT NOT NULL
);
INSERT INTO certificates_new (id, issuer_key_id, serial_hex, unit_id, registration_id, subject,
    profile, not_before, not_after, fingerprint_sha256, der, status, issued_at)
SELECT id, issuer_key_id, serial_hex, unit_id, registration_id, subject,
    profile, not_before, not_after, fingerprint_sha256, der, status, issued_at
FROM certificates ORDER BY id;
DROP TABLE certificates;
ALTER TABLE certificates_new RENAME TO certificates;
CREATE INDEX certificates_unit ON certificates(unit_id);
CREATE UNIQUE INDEX certificates_serial
    ON certificates(serial_hex, substr(issuer_key_id, 1, 16));
