-- 0002: the keyed audit checkpoint. `mac` (from 0001) is an HMAC-SHA256, computed inside the
-- HSM, over the entry `mac_seq` and its hash `mac_hash`. Appends that happen without the HSM
-- move `last_seq`/`last_hash` but leave the keyed columns at the last entry they covered.
ALTER TABLE audit_checkpoint ADD COLUMN mac_seq INTEGER;
ALTER TABLE audit_checkpoint ADD COLUMN mac_hash TEXT;
