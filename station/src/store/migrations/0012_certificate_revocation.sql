-- 0012: certificate revocation lists (`station ca crl`, ca/crl.rs).
-- When a certificate stopped being one the station stands behind: revoked when its unit was
-- scrapped, superseded when a retry of its unit replaced it. Certificates that were revoked or
-- superseded before this migration take their unit's last change as the best time known.
ALTER TABLE certificates ADD COLUMN revoked_at TEXT;
UPDATE certificates
   SET revoked_at = COALESCE((SELECT updated_at FROM units WHERE units.id = certificates.unit_id),
                             issued_at)
 WHERE status IN ('revoked', 'superseded');
-- Every CRL the station signed, by its CRL number (monotonic for all of the station's CAs).
CREATE TABLE crls (
    number         INTEGER PRIMARY KEY CHECK (number > 0),
    issuer_key_id  TEXT NOT NULL,
    this_update    TEXT NOT NULL,
    next_update    TEXT NOT NULL,
    entries        INTEGER NOT NULL,
    der            BLOB NOT NULL
);
