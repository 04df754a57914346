-- facteur's PostgreSQL store, schema version 5: app passwords (`[auth] backend = "sql"`).
--
-- Extra passwords of a user, each with a label, for POP3 logins only (USER/PASS, SASL PLAIN and
-- LOGIN). A password of the app password shape starts with its id, which names the one row a
-- login reads (the primary key); only the hash of the rest is stored, in the same
-- `{SCHEME}hash` form as `users.password`. Removing a user removes theirs.
CREATE TABLE app_passwords (
    user_name text NOT NULL REFERENCES users (name) ON DELETE CASCADE ON UPDATE CASCADE,
    id text NOT NULL CHECK (id ~ '^[a-z]{4}$'),
    label text NOT NULL CHECK (octet_length(label) BETWEEN 1 AND 64),
    password text NOT NULL CHECK (octet_length(password) BETWEEN 1 AND 4096),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set by a login that used it, at most once a minute (the database's clock, the one every
    -- node shares).
    last_used_at timestamptz,
    PRIMARY KEY (user_name, id),
    UNIQUE (user_name, label)
);
