#!/usr/bin/env python3
"""Python's poplib as a POP3 client: CAPA, STAT, LIST, UIDL, RETR each message into OUT/N.eml
(checking its size against LIST), DELE each, QUIT.

    poplib_client.py plain|stls|pop3s HOST PORT CAFILE USER PASSWORD_FILE OUT
"""
import os
import poplib
import ssl
import sys

mode, host, port, cafile, user, password_file, out = sys.argv[1:8]
port = int(port)
with open(password_file) as f:
    password = f.read().strip()
context = ssl.create_default_context(cafile=cafile)

if mode == "pop3s":
    pop = poplib.POP3_SSL(host, port, context=context, timeout=30)
else:
    pop = poplib.POP3(host, port, timeout=30)
pop.set_debuglevel(1)
print("greeting:", pop.getwelcome())
caps = pop.capa()
print("capa:", caps)
if mode == "stls":
    if "STLS" not in caps:
        sys.exit("the server does not offer STLS")
    pop.stls(context)
    caps = pop.capa()
    print("capa after STLS:", caps)
    if "STLS" in caps:
        sys.exit("STLS still offered after STLS")
pop.user(user)
pop.pass_(password)
count, size = pop.stat()
print("stat:", count, size)
_, listing, _ = pop.list()
print("list:", listing)
_, uids, _ = pop.uidl()
print("uidl:", uids)
if len(listing) != count or len(uids) != count:
    sys.exit(f"STAT says {count} messages, LIST {len(listing)}, UIDL {len(uids)}")
os.makedirs(out, exist_ok=True)
for entry in listing:
    num, octets = entry.split()
    _, lines, got = pop.retr(int(num))
    with open(os.path.join(out, f"{num.decode()}.eml"), "wb") as f:
        f.write(b"\r\n".join(lines) + b"\r\n")
    print(f"retr {num.decode()}: LIST size {octets.decode()}, {got} octets read")
    # poplib counts the octets of the message as stored: lines and CRLFs, stuffing removed.
    if got != int(octets):
        sys.exit(f"RETR {num.decode()} gave {got} octets, LIST said {octets.decode()}")
for entry in listing:
    pop.dele(int(entry.split()[0]))
print("quit:", pop.quit())
