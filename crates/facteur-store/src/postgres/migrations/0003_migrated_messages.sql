-- facteur's PostgreSQL store: the ledger of `facteur migrate`.
--
-- One row per message `facteur migrate` has copied from a Maildir (or found already there), kept
-- after the message itself is deleted. It is what makes a catch-up run after the cutover safe:
-- a message a POP3 session deleted from PostgreSQL is never copied again from the old Maildir,
-- and a message deleted from the Maildir (by the old server) after it was copied is removed from
-- PostgreSQL, but only when the ledger says it came from there with the same content.
CREATE TABLE migrated_messages (
    maildrop_id uuid NOT NULL REFERENCES maildrops (id) ON DELETE CASCADE,
    uid text NOT NULL CHECK (octet_length(uid) BETWEEN 1 AND 70),
    sha256 bytea NOT NULL,
    wire_size bigint NOT NULL CHECK (wire_size >= 0),
    migrated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (maildrop_id, uid)
);
