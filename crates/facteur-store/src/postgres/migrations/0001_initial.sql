-- facteur's PostgreSQL store, schema version 1.
--
-- Portable on purpose: the same statements run on PostgreSQL, CockroachDB and YugabyteDB. Ids are
-- UUIDs made by the client (no sequence, no serial), and nothing here needs advisory locks or
-- LISTEN/NOTIFY.

-- One row per maildrop; `name` is the authenticated user name the server hands to the store.
CREATE TABLE maildrops (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per message. `wire_size` is what STAT and LIST report: the octets RETR sends before
-- dot-stuffing, every bare LF counted as CRLF. `uid` is the unique-id UIDL reports, recorded at
-- delivery and never changed. `octets` and `sha256` describe the stored bytes (for checks and
-- migrations); `chunks` is how many rows of message_chunks hold them.
CREATE TABLE messages (
    id uuid PRIMARY KEY,
    maildrop_id uuid NOT NULL REFERENCES maildrops (id) ON DELETE CASCADE,
    uid text NOT NULL CHECK (octet_length(uid) BETWEEN 1 AND 70),
    wire_size bigint NOT NULL CHECK (wire_size >= 0),
    octets bigint NOT NULL CHECK (octets >= 0),
    chunks integer NOT NULL CHECK (chunks >= 0),
    sha256 bytea NOT NULL,
    delivered_at timestamptz NOT NULL,
    UNIQUE (maildrop_id, uid)
);

-- The snapshot a session takes at login (STAT, LIST and UIDL all answer from it) is one
-- index-only range scan of this index, in delivery order.
CREATE INDEX messages_listing ON messages (maildrop_id, delivered_at, id) INCLUDE (uid, wire_size);

-- A message's bytes, in order, each chunk at most 64 KiB: no message is ever whole in memory.
CREATE TABLE message_chunks (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq integer NOT NULL CHECK (seq >= 0),
    data bytea NOT NULL CHECK (octet_length(data) BETWEEN 1 AND 65536),
    PRIMARY KEY (message_id, seq)
);

-- The maildrop lock across nodes: a lease. `token` is a fresh fencing token for each session
-- that takes it; `expires_at` (the database's clock) is pushed forward while the session lives.
CREATE TABLE leases (
    maildrop_id uuid PRIMARY KEY REFERENCES maildrops (id) ON DELETE CASCADE,
    token uuid NOT NULL,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
