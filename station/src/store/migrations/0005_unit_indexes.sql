-- 0005: indexes for the lookups every unit makes, so that a unit's transactions cost the same
-- with a million units recorded as with ten. Before, each unit scanned the whole certificates
-- table (confirming its certificate, superseding on a retry, recovery) and each scan counted
-- its lot's units by scanning all units.
CREATE INDEX certificates_unit ON certificates(unit_id);
CREATE INDEX units_lot ON units(lot_id);
CREATE INDEX runs_unit ON runs(unit_id);
CREATE INDEX enrollments_unit ON enrollments(unit_id);
