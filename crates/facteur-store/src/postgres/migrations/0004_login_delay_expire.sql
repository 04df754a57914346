-- facteur's PostgreSQL store, schema version 4: RFC 2449's LOGIN-DELAY and EXPIRE.
--
-- Portable like the versions before it. Every time is the database's clock, the one clock every
-- node shares.

-- The last login that passed LOGIN-DELAY: set by one conditional UPDATE of this row, so two
-- logins at once (on any nodes) cannot both pass.
ALTER TABLE maildrops ADD COLUMN last_login_at timestamptz;

-- When a message was first retrieved (RETR, recorded at a committed QUIT); EXPIRE N removes it
-- N days later. NULL: never retrieved, never expired.
ALTER TABLE messages ADD COLUMN first_retrieved_at timestamptz;

-- The expiry at login looks for retrieved messages only: a small index, NULLs left out.
CREATE INDEX messages_retrieved ON messages (maildrop_id, first_retrieved_at)
    WHERE first_retrieved_at IS NOT NULL;

-- A user's own LOGIN-DELAY (seconds) and EXPIRE (`never`, or days); NULL: the server's.
ALTER TABLE users ADD COLUMN login_delay_secs integer
    CHECK (login_delay_secs BETWEEN 0 AND 604800);
ALTER TABLE users ADD COLUMN expire text CHECK (octet_length(expire) BETWEEN 1 AND 16);

-- "Has any user a policy of their own?" (CAPA's USER tag before login) is a probe of this
-- index, not a scan of the users.
CREATE INDEX users_policy ON users (name)
    WHERE login_delay_secs IS NOT NULL OR expire IS NOT NULL;
