#!/usr/bin/env python3
"""Helpers of the interop suite (tests/interop/run.sh): the test messages, and the check of what
a client retrieved against them.

    interop.py messages DIR MARKER     write DIR/1.eml DIR/2.eml DIR/3.eml
    interop.py check DIR FORMAT PATH   compare what a client stored at PATH with DIR/*.eml
    interop.py transcript FILE DIR G   cut the RETR replies out of a raw POP3 transcript
                                       (G: 1 if it starts with the greeting, else 0)
    interop.py unsized DIR CUR N       write DIR/*.eml and N-3 filler messages straight into
                                       the Maildir folder CUR, with no ,W= size in their names
                                       (as Postfix writes them), so that facteur must defer
                                       sizing them when N is over 256
    interop.py check DIR FORMAT PATH FILLERS
                                       as check, with exactly FILLERS filler messages expected
                                       besides the three

FORMAT is one of:
    maildir  PATH is a Maildir: one message per file in PATH/new and PATH/cur
    files    PATH is a folder with one message per file (an MDA that writes files)
    mbox     PATH is an mbox file (messages after "From " separator lines)

The check finds each expected message by its Message-ID (which carries the run's marker), then
compares, after turning CRLF into LF: the SHA-256 of the body (trailing blank lines dropped, as
mbox writers add one), and that every header field of the original is present, unchanged, among
the retrieved headers. Fields a client adds (Received, Status, X-*, Delivered-To, Return-Path,
...) are allowed. Exactly one copy of each of the three messages, and nothing else, must be there.
"""

import hashlib
import os
import random
import re
import sys

EXPECTED = ("1.eml", "2.eml", "3.eml")


def write_messages(folder, marker):
    os.makedirs(folder, exist_ok=True)
    common = (
        "From: Interop Sender <sender@example.org>\n"
        "To: interop@localhost\n"
        "Date: Mon, 01 Jan 2024 12:00:00 +0000\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
    )

    # 1: CRLF line ends and lines that start with dots, which the server must dot-stuff and
    # the client un-stuff: a lone dot (the terminator if not stuffed), two dots, a dot first.
    body1 = (
        f"{marker}-1 first line\n"
        ".leading dot\n"
        "..two leading dots\n"
        ".\n"
        ". a dot and a space\n"
        "\n"
        "a line after an empty one\n"
        "...\n"
        "last line\n"
    )
    head1 = (
        f"Subject: interop {marker} 1 dots\n"
        f"Message-ID: <{marker}.1@interop.invalid>\n"
        "X-Interop-Folded: a header folded\n"
        "\tover two lines\n"
    )
    msg1 = (head1 + common + "\n" + body1).replace("\n", "\r\n")

    # 2: bare LF line ends, as many MDAs write them; the server must send CRLF.
    body2 = (
        f"{marker}-2 first line\n"
        "This message was stored with bare LF line ends.\n"
        "\ttab-indented line\n"
        "trailing spaces   \n"
        ".dot after LF\n"
        "last line\n"
    )
    head2 = (
        f"Subject: interop {marker} 2 lf\n"
        f"Message-ID: <{marker}.2@interop.invalid>\n"
    )
    msg2 = head2 + common + "\n" + body2

    # 3: about 200 KB, so RETR spans many reads and writes (and TLS records).
    rng = random.Random(marker)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    lines = [f"{marker}-3 first line"]
    for i in range(2700):
        line = "".join(rng.choice(alphabet) for _ in range(72))
        # Every 97th line starts with a dot, to check stuffing deep inside a large message.
        lines.append(("." + line) if i % 97 == 0 else line)
    lines.append(f"{marker}-3 last line")
    body3 = "\n".join(lines) + "\n"
    head3 = (
        f"Subject: interop {marker} 3 large\n"
        f"Message-ID: <{marker}.3@interop.invalid>\n"
    )
    msg3 = (head3 + common + "\n" + body3).replace("\n", "\r\n")

    for name, text in zip(EXPECTED, (msg1, msg2, msg3)):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(text.encode("ascii"))


def split_message(data):
    """(header fields unfolded, normalised body) of a message, line ends made LF."""
    data = data.replace(b"\r\n", b"\n")
    if data.startswith(b"From ") and not data.startswith(b"From: "):
        # An mbox "From " separator line that a client left in a file of its own.
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        head, body = data, b""
    fields = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        elif line:
            fields.append(line)
    body = body.rstrip(b"\n") + b"\n"
    return fields, body


def read_retrieved(fmt, path):
    """List of (name, bytes) of the messages a client stored."""
    found = []
    if fmt == "maildir":
        for sub in ("new", "cur"):
            d = os.path.join(path, sub)
            if os.path.isdir(d):
                for n in sorted(os.listdir(d)):
                    if not n.startswith("."):
                        with open(os.path.join(d, n), "rb") as f:
                            found.append((f"{sub}/{n}", f.read()))
    elif fmt == "files":
        if os.path.isdir(path):
            for n in sorted(os.listdir(path)):
                p = os.path.join(path, n)
                if os.path.isfile(p) and not n.startswith("."):
                    with open(p, "rb") as f:
                        found.append((n, f.read()))
    elif fmt == "mbox":
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read().replace(b"\r\n", b"\n")
            # A separator is a "From " line at the start or after an empty line.
            parts = re.split(rb"(?:^|\n\n)(?=From )", data)
            for i, part in enumerate(p for p in parts if p.startswith(b"From ")):
                found.append((f"mbox#{i + 1}", part.split(b"\n", 1)[1] + b"\n"))
    else:
        raise SystemExit(f"unknown format {fmt}")
    return found


FILLER_FIELD = b"X-Interop-Filler: yes"


def write_unsized(folder, cur, total):
    """The three messages of `folder` and total-3 fillers, as files of the Maildir folder `cur`
    named the way Postfix names them (no ,S= or ,W=), in delivery order."""
    base = 1_700_000_000
    for i in range(total):
        if i < len(EXPECTED):
            with open(os.path.join(folder, EXPECTED[i]), "rb") as f:
                data = f.read()
        else:
            data = (
                f"From: filler@example.org\nTo: interop@example.org\n"
                f"Subject: filler {i}\nMessage-ID: <filler.{i}@example.org>\n"
                f"X-Interop-Filler: yes\n\nfiller {i}\n.a line that starts with a dot\n"
            ).encode()
        name = f"{base + i}.M{i}P4242.interop:2,"
        with open(os.path.join(cur, name), "wb") as f:
            f.write(data)


def check(folder, fmt, path, fillers=0):
    problems = []
    retrieved = read_retrieved(fmt, path)
    used = set()
    filler_copies = [n for n, d in retrieved if FILLER_FIELD in d]
    used.update(filler_copies)
    if len(filler_copies) != fillers:
        problems.append(f"{len(filler_copies)} filler messages retrieved, expected {fillers}")
    for name in EXPECTED:
        with open(os.path.join(folder, name), "rb") as f:
            want_fields, want_body = split_message(f.read())
        msgid = next(f for f in want_fields if f.lower().startswith(b"message-id:"))
        msgid = msgid.split(b":", 1)[1].strip()
        copies = [(n, d) for n, d in retrieved if msgid in d]
        if not copies:
            problems.append(f"{name}: not retrieved (no message with {msgid.decode()})")
            continue
        if len(copies) > 1:
            problems.append(f"{name}: retrieved {len(copies)} times: {[n for n, _ in copies]}")
        before = len(problems)
        got_name, got = copies[0]
        used.update(n for n, _ in copies)
        got_fields, got_body = split_message(got)
        want_sum = hashlib.sha256(want_body).hexdigest()
        got_sum = hashlib.sha256(got_body).hexdigest()
        if want_sum != got_sum:
            want_lines, got_lines = want_body.split(b"\n"), got_body.split(b"\n")
            first = next(
                (i for i, (a, b) in enumerate(zip(want_lines, got_lines)) if a != b),
                min(len(want_lines), len(got_lines)),
            )
            problems.append(
                f"{name} (as {got_name}): body differs: sha256 {got_sum[:16]} != {want_sum[:16]}, "
                f"{len(got_body)} != {len(want_body)} octets, {len(got_lines)} != "
                f"{len(want_lines)} lines; first difference at body line {first + 1}: "
                f"got {got_lines[first:first + 1]!r}, expected {want_lines[first:first + 1]!r}"
            )
        missing = [f for f in want_fields if f not in got_fields]
        if missing:
            problems.append(f"{name} (as {got_name}): header fields missing or changed: {missing!r}")
        if len(problems) == before:
            print(f"  {name}: OK as {got_name} (body sha256 {got_sum[:16]}, {len(got_body)} octets)")
    extra = [n for n, _ in retrieved if n not in used]
    if extra:
        problems.append(f"unexpected extra messages: {extra}")
    for p in problems:
        print(f"  PROBLEM {p}")
    return 1 if problems else 0


def transcript(path, out, greeting):
    """Cut each RETR reply out of a raw transcript of the pipelined commands `USER, PASS, STAT,
    LIST, UIDL, RETR 1, RETR 2, RETR 3, DELE 1, DELE 2, DELE 3, QUIT`, un-stuffed, into
    out/retrN.eml, checking each size against LIST. `greeting` says whether the transcript starts with the greeting (it does not
    after `openssl s_client -starttls pop3`, which reads it itself)."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\r\n")
    kinds = ["greeting"] * greeting + ["USER", "PASS", "STAT", "LIST", "UIDL"]
    kinds += ["RETR 1", "RETR 2", "RETR 3", "DELE 1", "DELE 2", "DELE 3", "QUIT"]
    multi = {"LIST", "UIDL", "RETR 1", "RETR 2", "RETR 3"}
    os.makedirs(out, exist_ok=True)
    sizes = {}
    i = 0
    for kind in kinds:
        if i >= len(lines):
            print(f"  transcript: no reply to {kind}")
            return 1
        status = lines[i]
        i += 1
        if not status.startswith(b"+OK"):
            print(f"  transcript: reply to {kind}: {status!r}")
            return 1
        if kind not in multi:
            continue
        body = []
        while i < len(lines) and lines[i] != b".":
            line = lines[i]
            body.append(line[1:] if line.startswith(b".") else line)
            i += 1
        if i >= len(lines):
            print(f"  transcript: reply to {kind} has no terminating dot line")
            return 1
        i += 1
        if kind.startswith("RETR"):
            with open(os.path.join(out, f"retr{kind[-1]}.eml"), "wb") as f:
                f.write(b"\r\n".join(body) + b"\r\n")
            octets = sum(len(line) + 2 for line in body)
            if sizes.get(kind[-1]) != octets:
                print(f"  transcript: {kind} gave {octets} octets, LIST said {sizes.get(kind[-1])}")
                return 1
        else:
            if kind == "LIST":
                sizes = dict(line.decode().split() for line in body)
                sizes = {k: int(v) for k, v in sizes.items()}
            print(f"  {kind}: {b' | '.join(body).decode(errors='replace')}")
    rest = b"\r\n".join(lines[i:]).strip()
    if rest:
        print(f"  transcript: unexpected data after the QUIT reply: {rest[:200]!r}")
        return 1
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "messages":
        write_messages(argv[2], argv[3])
        return 0
    if len(argv) in (5, 6) and argv[1] == "check":
        return check(argv[2], argv[3], argv[4], int(argv[5]) if len(argv) == 6 else 0)
    if len(argv) == 5 and argv[1] == "unsized":
        write_unsized(argv[2], argv[3], int(argv[4]))
        return 0
    if len(argv) == 5 and argv[1] == "transcript":
        return transcript(argv[2], argv[3], int(argv[4]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
