-- 0007: serials stay unique per issuer, through an index about half the size. The table-level
-- UNIQUE (issuer_key_id, serial_hex) kept both hex strings whole in every entry (64 + 32
-- characters, ~105 bytes): random serials land on a random index page each, so a commit of 128
-- certificates wrote ~80 such pages to the WAL in `station ca bench`, more than the rows
-- themselves. The index now keys the serial and the first 16 characters of the issuer's key id
-- (~60 bytes an entry). That is stricter than per issuer, never looser: two issuers would also
-- need the same 64-bit key-id prefix for one to refuse the other's serial. Serials are lowercase
-- hex (as the station writes them), so one serial has one spelling.
--
-- Only functions every SQLite has: a Debian 12 `sqlite3` (3.40) must still be able to check and
-- edit the file, and unhex() (3.41) in an index would make it refuse integrity_check and writes.
--
-- SQLite cannot drop a table constraint, so the table is rebuilt (its rows copied in order, ids
-- kept). No other table references certificates, and it has no triggers or views. It runs once,
-- at the first start after the upgrade: with 200,000 certificates (a 190 MB file) it took 3.6 s
-- on the project's 2-core VM and left the file at 355 MB, the old copy's pages free for new rows
-- (the WAL holds the new copy until it is checkpointed: have about twice the table free).
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
    status              TEXT NOT NULL CHECK (status IN ('issued', 'live', 'superseded', 'revoked')),
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
