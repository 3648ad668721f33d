-- 0001: the tables the flow of one unit needs (DESIGN.md "The flow of one unit").
-- Applied in one transaction together with its schema_version bump.

CREATE TABLE schema_version (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    version     INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE schema_history (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL
);

-- People who work the line. Passwords are argon2id hashes; badges are stored hashed too.
CREATE TABLE operators (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL DEFAULT '',
    role          TEXT NOT NULL CHECK (role IN ('operator', 'supervisor', 'admin')),
    password_hash TEXT,
    badge_hash    TEXT UNIQUE,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
);

-- Work orders.
CREATE TABLE lots (
    id          TEXT PRIMARY KEY,
    product     TEXT NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    status      TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    opened_at   TEXT NOT NULL,
    opened_by   TEXT NOT NULL,
    closed_at   TEXT
);

-- One row per physical unit. Registration IDs are case-insensitive in DPS.
CREATE TABLE units (
    id               INTEGER PRIMARY KEY,
    serial           TEXT NOT NULL UNIQUE,
    lot_id           TEXT REFERENCES lots(id),
    product          TEXT NOT NULL,
    registration_id  TEXT UNIQUE COLLATE NOCASE,
    device_id        TEXT,
    model            TEXT,
    hw_rev           TEXT,
    fw_version       TEXT,
    attestation      TEXT,
    state            TEXT NOT NULL,
    state_data       TEXT NOT NULL DEFAULT '{}',
    fixture          TEXT,
    operator         TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);

-- One row per attempt to provision a unit (a retry is a new run).
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    unit_id      INTEGER NOT NULL REFERENCES units(id),
    fixture      TEXT NOT NULL,
    operator     TEXT,
    started_at   TEXT NOT NULL,
    ended_at     TEXT,
    result       TEXT CHECK (result IN ('passed', 'failed', 'aborted')),
    fail_step    TEXT,
    fail_reason  TEXT
);

-- Every state transition of a run, in order.
CREATE TABLE run_transitions (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    data        TEXT NOT NULL DEFAULT '{}',
    at          TEXT NOT NULL
);
CREATE INDEX run_transitions_run ON run_transitions(run_id);

-- Every certificate the CA signed, released or not. Serial numbers are unique per issuer.
CREATE TABLE certificates (
    id                  INTEGER PRIMARY KEY,
    issuer_key_id       TEXT NOT NULL,
    serial_hex          TEXT NOT NULL,
    unit_id             INTEGER REFERENCES units(id),
    registration_id     TEXT COLLATE NOCASE,
    subject             TEXT NOT NULL,
    profile             TEXT NOT NULL,
    not_before          TEXT NOT NULL,
    not_after           TEXT NOT NULL,
    fingerprint_sha256  TEXT NOT NULL,
    der                 BLOB NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('issued', 'live', 'superseded', 'revoked')),
    issued_at           TEXT NOT NULL,
    UNIQUE (issuer_key_id, serial_hex)
);

-- Enrollments as the station means them to be in DPS.
CREATE TABLE enrollments (
    id              INTEGER PRIMARY KEY,
    unit_id         INTEGER REFERENCES units(id),
    dps_target      TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('individual', 'group')),
    enrollment_id   TEXT NOT NULL COLLATE NOCASE,
    body            TEXT NOT NULL,
    etag            TEXT,
    status          TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (dps_target, kind, enrollment_id)
);

-- Work to deliver elsewhere (DPS first; later a plant database, MES webhooks). Secret payloads
-- are stored encrypted and erased once delivered.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    destination      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    item_key         TEXT NOT NULL,
    payload          BLOB,
    created_at       TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    last_error       TEXT,
    done_at          TEXT
);
CREATE INDEX outbox_pending ON outbox(destination, done_at);

-- The append-only, hash-chained audit log.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    ts          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    station_id  TEXT NOT NULL,
    event       TEXT NOT NULL,
    subject     TEXT NOT NULL,
    details     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- The last entry of the chain, updated in the same transaction as each append, so that a
-- truncated tail is detected.
CREATE TABLE audit_checkpoint (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq   INTEGER NOT NULL,
    last_hash  TEXT NOT NULL,
    mac        TEXT
);
