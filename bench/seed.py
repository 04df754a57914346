#!/usr/bin/env python3
"""Seed the maildrops of the facteur / Dovecot comparison (bench/compare.sh).

Writes one Maildir tree under ROOT/<user>/Maildir, deterministic (a fixed random seed), in the
shape Postfix leaves behind: LF line endings, files already in cur/ with the Seen flag (mail a
POP3 client left on the server), and base names without ,S= or ,W= so that both servers must
read every file to learn its size:

  u0 .. u{N-1}   10 messages of 4 KiB each            (workloads 1, 2 and 5)
  big            one message of 64 MiB                 (workload 3)
  huge           100,000 messages of 0.3 to 1.5 KiB    (workload 4)

It also writes WIRE: the 64 MiB message exactly as RETR puts it on the wire (CRLF line endings,
dot-stuffed, then the ".CRLF" terminator), which the raw loopback copy of workload 3 sends.

Usage: seed.py ROOT WIRE [--users N] [--huge COUNT] [--big-mib MIB]
"""

import argparse
import os
import random

BASE_TIME = 1_700_000_000
WORDS = (
    "the quick brown fox jumps over lazy dog post office protocol maildrop message unique "
    "listing retrieve delete quit octets server client session mail box letter facteur "
    "courier stamp envelope address header body line"
).split()


def text_lines(rng, count, width=72):
    """`count` lines of words, none starting with a dot (so no dot-stuffing is needed)."""
    out = []
    for _ in range(count):
        line = []
        n = 0
        while n < width - 10:
            w = rng.choice(WORDS)
            line.append(w)
            n += len(w) + 1
        out.append(" ".join(line))
    return out


def message(rng, index, user, body_octets):
    head = (
        f"Return-Path: <sender{index}@example.org>\n"
        f"Delivered-To: {user}@example.net\n"
        f"Received: from mx.example.org (mx.example.org [192.0.2.{index % 250 + 1}])\n"
        f"\tby mail.example.net (Postfix) with ESMTPS id {index:010X}\n"
        f"\tfor <{user}@example.net>; Tue, 14 Nov 2023 22:13:20 +0000 (UTC)\n"
        f"From: Sender {index} <sender{index}@example.org>\n"
        f"To: {user}@example.net\n"
        f"Subject: benchmark message {index}\n"
        f"Date: Tue, 14 Nov 2023 22:13:20 +0000\n"
        f"Message-ID: <{index}.{user}@example.org>\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset=us-ascii\n"
        f"\n"
    ).encode()
    body = bytearray()
    while len(head) + len(body) < body_octets:
        body += (" ".join(rng.choice(WORDS) for _ in range(11)) + "\n").encode()
    data = head + bytes(body)
    # Exactly body_octets long, still ending with a newline.
    return data[: body_octets - 1] + b"\n" if len(data) > body_octets else data


def maildir(root, user):
    md = os.path.join(root, user, "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub), exist_ok=True)
    return md


def file_name(index, user_no):
    # A Maildir base name as Postfix writes them (time.M<usec>P<pid>Q<n>.host), no size fields.
    return f"{BASE_TIME + index}.M{index % 1_000_000:06d}P{1000 + user_no}Q{index}.bench:2,S"


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("wire")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--huge", type=int, default=100_000)
    p.add_argument("--big-mib", type=int, default=64)
    a = p.parse_args()
    rng = random.Random(1939)

    # u<i>: 10 x 4 KiB. The ten messages are the same for every user (the content is
    # irrelevant to a server; the files are distinct).
    small = [message(rng, i, "u", 4096) for i in range(10)]
    for u in range(a.users):
        md = maildir(a.root, f"u{u}")
        for i, data in enumerate(small):
            write(os.path.join(md, "cur", file_name(i, u)), data)

    # huge: many small messages of varied sizes.
    md = maildir(a.root, "huge")
    pool = [message(rng, i, "huge", rng.randint(300, 1500)) for i in range(64)]
    for i in range(a.huge):
        write(os.path.join(md, "cur", file_name(i, 9000)), pool[i % len(pool)])

    # big: one message of exactly big_mib MiB, LF line endings, and its wire form.
    md = maildir(a.root, "big")
    target = a.big_mib * 1024 * 1024
    block = ("\n".join(text_lines(rng, 14_000)) + "\n").encode()  # about 1 MiB
    head = message(rng, 0, "big", 600)
    path = os.path.join(md, "cur", file_name(0, 9001))
    with open(path, "wb") as f, open(a.wire, "wb") as w:
        written = 0
        for piece in [head] + [block] * (target // len(block) + 1):
            piece = piece[: target - written]
            if not piece:
                break
            if written + len(piece) == target and not piece.endswith(b"\n"):
                piece = piece[:-1] + b"\n"
            f.write(piece)
            # No line starts with '.', so the wire form is the CRLF form.
            w.write(piece.replace(b"\n", b"\r\n"))
            written += len(piece)
        # The terminator RETR ends with, so the raw copy's receiver stops where RETR's does.
        w.write(b".\r\n")
    print(
        f"seeded {a.users} users x 10 x 4 KiB, huge: {a.huge} messages, "
        f"big: {os.path.getsize(path)} octets (wire {os.path.getsize(a.wire)})"
    )


if __name__ == "__main__":
    main()
