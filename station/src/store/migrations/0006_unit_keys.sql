-- 0006: the key of a symmetric-individual unit, sealed under the HSM's outbox key (AES-GCM,
-- the key never leaves the HSM), from the commit before the key is written to the unit until
-- the record step queues it in the outbox. A station killed (or a power cut) after the unit
-- was locked with its key and before the record can then record that key on restart, instead
-- of leaving a locked unit whose key nobody knows. Never a key in the clear.
CREATE TABLE unit_keys (
    unit_id    INTEGER PRIMARY KEY REFERENCES units(id),
    sealed     BLOB NOT NULL,
    created_at TEXT NOT NULL
);
