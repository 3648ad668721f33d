#!/usr/bin/env python3
"""Tampering tool for tests: alters one audit entry, then recomputes the whole unkeyed hash
chain and the checkpoint exactly as the station does (station/src/store/audit.rs), as an
attacker with write access to the database file could. Usage: rechain.py DB SEQ NEW_ACTOR [--mac-hash]
With --mac-hash it also rewrites the keyed checkpoint's recorded hash (it cannot redo the MAC)."""
import hashlib
import sqlite3
import struct
import sys

DOMAIN = b"station-audit-v1\0"
GENESIS = "0" * 64


def entry_hash(fields):
    h = hashlib.sha256()
    h.update(DOMAIN)
    for f in fields:
        b = f.encode()
        h.update(struct.pack(">Q", len(b)))
        h.update(b)
    return h.hexdigest()


def main():
    db, seq, actor = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rewrite_mac_hash = "--mac-hash" in sys.argv[4:]
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    con.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    con.execute("UPDATE audit_log SET actor = ? WHERE seq = ?", (actor, seq))
    prev = GENESIS
    rows = con.execute(
        "SELECT seq, ts, actor, station_id, event, subject, details FROM audit_log ORDER BY seq"
    ).fetchall()
    hashes = {}
    for r in rows:
        h = entry_hash([str(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], prev])
        con.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, r[0]))
        hashes[r[0]] = h
        prev = h
    last = rows[-1][0]
    con.execute("UPDATE audit_checkpoint SET last_seq = ?, last_hash = ? WHERE id = 1", (last, prev))
    if rewrite_mac_hash:
        (mac_seq,) = con.execute("SELECT mac_seq FROM audit_checkpoint WHERE id = 1").fetchone()
        con.execute("UPDATE audit_checkpoint SET mac_hash = ? WHERE id = 1", (hashes[mac_seq],))
    con.commit()


main()
