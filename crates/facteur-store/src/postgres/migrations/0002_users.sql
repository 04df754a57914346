-- facteur's users and shared failed-login penalties, schema version 2 (`[auth] backend = "sql"`).
--
-- Portable like version 1: no sequence, no advisory lock, no LISTEN/NOTIFY; timestamps come from
-- the database's clock, the one clock every node shares.

-- One row per user, as one line of the passwd-file: `password` holds the same `{SCHEME}hash`
-- strings; `scheme` is its scheme's name, kept beside it so that "could any user use APOP,
-- CRAM-MD5, SCRAM?" is an index probe, not a scan. `generation` goes up by one at each password
-- change: every node keys its cache of verified logins on it, so a change made anywhere
-- invalidates them all at the next login. uid and gid: who must own the maildrop, as the
-- passwd-file's third and fourth fields.
CREATE TABLE users (
    name text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 255),
    password text NOT NULL CHECK (octet_length(password) BETWEEN 1 AND 4096),
    scheme text NOT NULL,
    generation bigint NOT NULL DEFAULT 1 CHECK (generation >= 1),
    uid bigint CHECK (uid BETWEEN 0 AND 4294967295),
    gid bigint CHECK (gid BETWEEN 0 AND 4294967295),
    gecos text,
    home text,
    shell text,
    extra_fields text,
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX users_scheme ON users (scheme);

-- Failed logins counted across every node. `key` is one byte for the kind (1: a source address
-- block, 2: a user name) and the block's address or the user name's keyed hash (16 bytes): never
-- the name itself. A row is forgotten `failed_login_forget_secs` after its last failure and
-- deleted by the periodic cleaning, which also evicts the oldest rows past the configured cap.
CREATE TABLE login_penalties (
    key bytea PRIMARY KEY CHECK (octet_length(key) BETWEEN 2 AND 17),
    failures integer NOT NULL CHECK (failures >= 1),
    last_failure timestamptz NOT NULL
);

CREATE INDEX login_penalties_age ON login_penalties (last_failure);

-- The key of the user names' hashes in login_penalties, the same on every node: the first node
-- that starts draws it at random and inserts it; the others read it.
CREATE TABLE login_penalty_key (
    id integer PRIMARY KEY CHECK (id = 1),
    key bytea NOT NULL CHECK (octet_length(key) = 64)
);
