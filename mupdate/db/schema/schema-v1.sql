-- mupdate embedded store, schema version 1 (design.md "Master": SQLite, WAL, synchronous=FULL).
-- Names, locations and ACLs are BLOBs: stored and returned byte for byte, never as text.
-- A new database is built from this file beside its final path and renamed in.

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);

INSERT INTO schema_version (version) VALUES (1);

-- The mailbox list. RESERVED entries are kept across restarts (Cyrus drops them, §7.5).
CREATE TABLE mailboxes (
    name     BLOB NOT NULL PRIMARY KEY CHECK (typeof(name) = 'blob'),
    state    TEXT NOT NULL CHECK (state IN ('reserved', 'active')),
    location BLOB NOT NULL CHECK (typeof(location) = 'blob'),
    acl      BLOB NOT NULL CHECK (typeof(acl) = 'blob'),
    CHECK (state = 'active' OR length(acl) = 0)
) WITHOUT ROWID;

-- Recently deleted names, so a replica's repeated DELETE is answered OK (§7.3, §15).
CREATE TABLE tombstones (
    name       BLOB NOT NULL PRIMARY KEY CHECK (typeof(name) = 'blob'),
    location   BLOB NOT NULL CHECK (typeof(location) = 'blob'),
    deleted_at REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX tombstones_by_time ON tombstones (deleted_at);
