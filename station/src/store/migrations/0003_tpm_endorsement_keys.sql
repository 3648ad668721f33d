-- 0003: the EK of every TPM unit, so that no EK is ever enrolled for two units.
-- The UNIQUE constraint, not a lookup before insert, is the guard: two fixtures recording the
-- same TPM at the same moment cannot both succeed.

CREATE TABLE tpm_endorsement_keys (
    -- One EK per unit; a unit whose TPM was replaced gets its row updated, audited by the caller.
    unit_id      INTEGER PRIMARY KEY REFERENCES units(id),
    -- Lowercase hex SHA-256 of the EK's TPM2B_PUBLIC.
    ek_sha256    TEXT NOT NULL UNIQUE,
    -- Base64 TPM2B_PUBLIC of the EK, as enrolled.
    ek_public    TEXT NOT NULL,
    recorded_at  TEXT NOT NULL
);
