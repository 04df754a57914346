#!/usr/bin/env python3
"""Messages for the Dovecot suite (tests/dovecot/run.sh) and the fetch benchmark
(bench/fetch.sh): seed a server-side Maildir, and check what a fetcher stored against it.

    mail.py seed MAILDIR MANIFEST PREFIX COUNT [--size OCTETS] [--start N] [--big]
        Write COUNT messages into MAILDIR/new (created if missing), the way an MDA leaves them,
        and append one line per message to MANIFEST: its Message-ID, the SHA-256 of the
        message with CRLF turned into LF, and the same without the header fields a client may
        add (see --added-fields-ok). --size pads each message to about OCTETS; --start
        numbers the messages from N (to add messages to a seeded maildrop); --big makes the
        first message about 300 KB.
    mail.py check FORMAT PATH MANIFEST [--added-fields-ok]
        Compare what a fetcher stored at PATH (FORMAT: maildir, or mbox read the mboxrd way)
        with MANIFEST: every message exactly once, identical after CRLF -> LF, and nothing
        else. Prints one line, or the problems; exit status 0 only if all is well. With
        --added-fields-ok, header fields that clients add (Received, Delivered-To,
        Return-Path, Status, X-*) are left out of the comparison on both sides: fetchmail and
        mpop add a Received field.
    mail.py count MAILDIR
        The number of messages in MAILDIR/new and MAILDIR/cur.

The messages vary on purpose: lines that start with a dot (a lone ".", "..", ". x") that the
server must dot-stuff and the client un-stuff; lines that start with "From " and ">From " that
an mbox must quote and unquote; every eleventh message stored with CRLF line ends, the others
with LF. Each carries its own Message-ID, which is how the check finds it.
"""

import hashlib
import os
import random
import sys

BASE_TIME = 1_700_000_000
FILLER = "All work and no play makes a dull fetcher; the postman always rings twice."


def message(prefix, i, size):
    rng = random.Random(f"{prefix}/{i}")
    head = (
        f"Return-Path: <sender@example.org>\n"
        f"From: Seed Sender <sender@example.org>\n"
        f"To: rcpt@localhost\n"
        f"Subject: {prefix} message {i}\n"
        f"Date: Mon, 01 Jan 2024 12:00:00 +0000\n"
        f"Message-ID: <{prefix}.{i}@facteur.test>\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset=us-ascii\n"
    )
    lines = [f"{prefix} message {i}, first line"]
    kind = i % 5
    if kind == 1:
        lines += [".", "..", ". a dot and a space", ".leading dot", "..."]
    elif kind == 2:
        lines += ["From the start of a line", ">From already quoted", ">>From twice", ""]
        lines += ["From after an empty line, where an unquoted one would split the mbox"]
    elif kind == 3:
        lines += ["", "", "three blank lines above", "\ttab first", "trailing spaces   "]
    body_len = len(head) + sum(len(x) + 1 for x in lines) + 1
    while body_len < size:
        line = f"{rng.randrange(10**6):06d} {FILLER}"
        # Now and then a dot first, deep in the message too.
        if rng.random() < 0.02:
            line = "." + line
        lines.append(line)
        body_len += len(line) + 1
    lines.append(f"{prefix} message {i}, last line")
    text = head + "\n" + "\n".join(lines) + "\n"
    if i % 11 == 0:
        text = text.replace("\n", "\r\n")
    return text.encode("ascii")


def normalised_sha(data):
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


ADDED_FIELDS = (b"received", b"delivered-to", b"return-path", b"status")


def without_added_fields_sha(data):
    """SHA-256 of the message (CRLF -> LF) without the fields that a client may add."""
    data = data.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    kept = []
    keep = True
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = name not in ADDED_FIELDS and not name.startswith(b"x-")
        if keep:
            kept.append(line)
    return hashlib.sha256(b"\n".join(kept) + sep + body).hexdigest()


def message_id(data):
    head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    for line in head.split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


def seed(maildir, manifest, prefix, count, size, start, big):
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    with open(manifest, "a") as out:
        for i in range(start, start + count):
            data = message(prefix, i, 300_000 if big and i == start else size)
            name = f"{BASE_TIME + i}.M{i}P{os.getpid()}.seed"
            with open(os.path.join(maildir, "new", name), "wb") as f:
                f.write(data)
            out.write(
                f"{message_id(data)} {normalised_sha(data)} {without_added_fields_sha(data)}\n"
            )


def maildir_messages(path):
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        if not os.path.isdir(d):
            continue
        for n in sorted(os.listdir(d)):
            if not n.startswith("."):
                with open(os.path.join(d, n), "rb") as f:
                    yield f"{sub}/{n}", f.read()


def mbox_messages(path):
    """The entries of an mboxrd file: a "From " line at the start or after an empty line
    begins one; each ends with an empty line (dropped); ">From " loses one ">"."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        data = f.read()
    entries = []
    prev_blank = True
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        if prev_blank and line.startswith(b"From "):
            entries.append([])
            prev_blank = False
            continue
        if not entries:
            raise SystemExit(f"{path}: does not start with a From line")
        prev_blank = line == b""
        gts = len(line) - len(line.lstrip(b">"))
        if gts and line[gts:].startswith(b"From "):
            line = line[1:]
        entries[-1].append(line)
    for n, e in enumerate(entries, 1):
        if not e or e[-1] != b"":
            raise SystemExit(f"{path}: entry {n} does not end with an empty line")
        yield f"mbox#{n}", b"\n".join(e[:-1]) + b"\n"


def check(fmt, path, manifest, added_fields_ok):
    want = {}
    with open(manifest) as f:
        for line in f:
            mid, whole, stripped = line.split()
            want[mid] = stripped if added_fields_ok else whole
    digest = without_added_fields_sha if added_fields_ok else normalised_sha
    seen = {}
    problems = []
    found = maildir_messages(path) if fmt == "maildir" else mbox_messages(path)
    total = 0
    for name, data in found:
        total += 1
        mid = message_id(data)
        if mid not in want:
            problems.append(f"{name}: not a seeded message (Message-ID {mid})")
            continue
        seen[mid] = seen.get(mid, 0) + 1
        if digest(data) != want[mid]:
            problems.append(f"{name}: {mid} differs from what was seeded")
    missing = [m for m in want if m not in seen]
    doubled = [m for m, c in seen.items() if c > 1]
    if missing:
        problems.append(f"{len(missing)} messages missing, e.g. {missing[:3]}")
    if doubled:
        problems.append(f"{len(doubled)} messages there more than once, e.g. {doubled[:3]}")
    if problems:
        for p in problems[:20]:
            print(f"PROBLEM {p}")
        if len(problems) > 20:
            print(f"PROBLEM ... and {len(problems) - 20} more")
        return 1
    same = "identical but for added header fields" if added_fields_ok else "identical"
    print(f"{total} messages, each seeded message exactly once, all {same}")
    return 0


def count(maildir):
    n = 0
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        if os.path.isdir(d):
            n += sum(1 for x in os.listdir(d) if not x.startswith("."))
    return n


def main(argv):
    args = argv[1:]
    if len(args) >= 5 and args[0] == "seed":
        size, start, big = 2000, 0, False
        rest = args[5:]
        while rest:
            opt = rest.pop(0)
            if opt == "--size":
                size = int(rest.pop(0))
            elif opt == "--start":
                start = int(rest.pop(0))
            elif opt == "--big":
                big = True
            else:
                raise SystemExit(f"unknown option {opt}")
        seed(args[1], args[2], args[3], int(args[4]), size, start, big)
        return 0
    if len(args) in (4, 5) and args[0] == "check" and args[1] in ("maildir", "mbox"):
        if len(args) == 5 and args[4] != "--added-fields-ok":
            raise SystemExit(f"unknown option {args[4]}")
        return check(args[1], args[2], args[3], len(args) == 5)
    if len(args) == 2 and args[0] == "count":
        print(count(args[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
