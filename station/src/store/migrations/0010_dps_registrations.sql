-- 0010: what DPS last said about each passed unit's registration, as asked by `station
-- registrations` (dps_target/check.rs): one row per unit and DPS target, the latest answer
-- (the audit log keeps each unit's move to `registered`). `status` is DPS's registration
-- status, or 'none' while DPS has no registration record for the unit.
CREATE TABLE dps_registrations (
    unit_id          INTEGER NOT NULL REFERENCES units(id),
    dps_target       TEXT NOT NULL,
    registration_id  TEXT NOT NULL COLLATE NOCASE,
    status           TEXT NOT NULL
        CHECK (status IN ('none', 'unassigned', 'assigning', 'assigned', 'failed', 'disabled')),
    assigned_hub     TEXT,
    device_id        TEXT,
    substatus        TEXT,
    error_message    TEXT,
    dps_updated_at   TEXT,
    checked_at       TEXT NOT NULL,
    PRIMARY KEY (unit_id, dps_target)
);
