#!/usr/bin/env python3
"""Small measuring tools for bench/compare.sh; each prints one JSON object on stdout.

  probe.py uidl HOST PORT USER PASSWORD
      One session: greeting, then the timed part: USER, PASS, UIDL until the whole listing is
      in; then STAT, timed apart (the first STAT sizes a maildrop whose login deferred it).
      Then QUIT (waited for, untimed). Prints the seconds and the number of listing lines.

  probe.py retr HOST PORT USER PASSWORD [--runs N] [--tls]
      One session, RETR 1 N times; each RETR is timed from sending the command to the last
      octet of the terminator. Prints every run's seconds and octets. With --tls the session
      is POP3S (implicit TLS, Python's OpenSSL; the certificate is not checked: loopback).

  probe.py raw WIRE_FILE [--runs N] [--copy]
      The limit for RETR: a sender process writes WIRE_FILE (the message in its wire form,
      terminator included) with sendfile(2) over a loopback TCP connection, once per one-line
      request; the receiver is the same code as `retr` (same buffer, same end test). With
      --copy the sender reads 64 KiB blocks and sends them instead (what a server that must
      look at the bytes, as a POP3 server must, can do at best).

  probe.py raw WIRE_FILE --tls CERT KEY [--runs N]
      The limit for RETR over POP3S, for this client: the sender holds WIRE_FILE in memory and
      writes it through Python's OpenSSL (TLS 1.3, AES-128-GCM, the suite facteur's servers
      choose first) in 1 MiB calls; the receiver is `retr --tls`'s code. What the client
      can decrypt, with a sender that reads no file and looks at no byte.

  probe.py cpu PID...
      CPU seconds (user + system) used so far by each PID and all its descendants, including
      descendants that have exited and been reaped (their time is in their parent's cutime and
      cstime), and the busy CPU seconds of the whole machine (from /proc/stat): the difference
      of two readings tells what a server used during a run and what else the machine did.

  probe.py uss PID...
      USS (Private_Clean + Private_Dirty from /proc/PID/smaps_rollup) summed over each PID and
      all its descendants, in KiB, with the number of processes.

The receiving loop is the same for RETR and the raw copy: recv_into a 1 MiB buffer, look at the
last five octets for CRLF.CRLF (which dot-stuffing guarantees appears only at the end).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

TERMINATOR = b"\r\n.\r\n"
BUFFER = 1 << 20


class Pop3:
    def __init__(self, host, port, timeout=300, tls=False):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock, server_hostname=host)
        self.pending = b""
        self.buf = bytearray(BUFFER)
        self.view = memoryview(self.buf)

    def line(self):
        while b"\r\n" not in self.pending:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit("server closed the connection")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\r\n")
        return line

    def ok(self, what):
        line = self.line()
        if not line.startswith(b"+OK"):
            raise SystemExit(f"{what}: {line!r}")
        return line

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def multiline(self, count_lines=False):
        """Reads up to and including the terminator; returns (octets, lines)."""
        octets = 0
        lines = 0
        # The status line ended with CRLF: an empty listing is just ".CRLF".
        tail = b"\r\n"
        if self.pending:
            # Whatever arrived with the status line.
            data = self.pending
            self.pending = b""
            octets += len(data)
            if count_lines:
                lines += data.count(b"\r\n")
            tail = (tail + data)[-5:]
            if tail == TERMINATOR:
                return octets, lines
        recv_into = self.sock.recv_into
        view = self.view
        while True:
            n = recv_into(view)
            if n == 0:
                raise SystemExit("server closed the connection in a multi-line reply")
            octets += n
            if count_lines:
                lines += self.buf.count(b"\r\n", 0, n)
            if n >= 5:
                tail = bytes(view[n - 5 : n])
            else:
                tail = (tail + bytes(view[:n]))[-5:]
            if tail == TERMINATOR:
                return octets, lines

    def login(self, user, password):
        self.send(f"USER {user}")
        self.ok("USER")
        self.send(f"PASS {password}")
        self.ok("PASS")

    def quit(self):
        self.send("QUIT")
        try:
            self.line()
        except SystemExit:
            pass
        self.sock.close()


def cmd_uidl(a):
    c = Pop3(a.host, a.port)
    c.ok("greeting")
    t0 = time.perf_counter()
    c.login(a.user, a.password)
    c.send("UIDL")
    c.ok("UIDL")
    octets, lines = c.multiline(count_lines=True)
    secs = time.perf_counter() - t0
    # The first STAT of the session: after a login that deferred the sizes, it sizes them all.
    t1 = time.perf_counter()
    c.send("STAT")
    c.ok("STAT")
    stat_secs = time.perf_counter() - t1
    c.quit()
    # The terminator line is counted too.
    return {"secs": secs, "uidl_lines": lines - 1, "octets": octets, "stat_secs": stat_secs}


def cipher_of(c):
    """The TLS version and suite a session negotiated, or None for plain TCP."""
    cipher = getattr(c.sock, "cipher", None)
    return list(cipher()[:2]) if cipher else None


def cmd_retr(a):
    c = Pop3(a.host, a.port, tls=a.tls)
    c.ok("greeting")
    c.login(a.user, a.password)
    runs = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        c.send("RETR 1")
        c.ok("RETR")
        octets, _ = c.multiline()
        runs.append({"secs": time.perf_counter() - t0, "octets": octets})
    cipher = cipher_of(c)
    c.quit()
    return {"runs": runs, "cipher": cipher}


# The sender of `raw --tls`: only TLS 1.3's AES-128-GCM, which facteur's servers choose first
# (Python has no call to set TLS 1.3 suites; OpenSSL's configuration file does it).
OPENSSL_AES128 = """openssl_conf = init
[init]
ssl_conf = ssl
[ssl]
system_default = tls
[tls]
MinProtocol = TLSv1.3
Ciphersuites = TLS_AES_128_GCM_SHA256
"""


def cmd_raw_serve(a):
    """The sender of `raw`: one connection, one sendfile of the whole file per request line."""
    srv = socket.create_server(("127.0.0.1", 0))
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    srv.close()
    size = os.path.getsize(a.wire)
    if a.tls:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        with open(a.wire, "rb") as f:
            data = memoryview(f.read())
        conn = ctx.wrap_socket(conn, server_side=True)
        with conn:
            reader = conn.makefile("rb")
            while reader.readline():
                for at in range(0, size, 1 << 20):
                    conn.sendall(data[at : at + (1 << 20)])
        return None
    with open(a.wire, "rb") as f, conn:
        reader = conn.makefile("rb")
        block = bytearray(64 * 1024)
        while reader.readline():
            if a.copy:
                f.seek(0)
                while n := f.readinto(block):
                    conn.sendall(memoryview(block)[:n])
            else:
                sent = 0
                while sent < size:
                    sent += os.sendfile(conn.fileno(), f.fileno(), sent, size - sent)
    return None


def cmd_raw(a):
    env = None
    conf = None
    if a.tls:
        import tempfile

        conf = tempfile.NamedTemporaryFile("w", suffix=".cnf", delete=False)
        conf.write(OPENSSL_AES128)
        conf.close()
        env = dict(os.environ, OPENSSL_CONF=conf.name)
    sender = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "raw-serve", a.wire]
        + (["--copy"] if a.copy else [])
        + (["--tls", a.tls[0], a.tls[1]] if a.tls else []),
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        port = int(sender.stdout.readline())
        c = Pop3("127.0.0.1", port, tls=bool(a.tls))
        runs = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            c.send("SEND")
            octets, _ = c.multiline()
            runs.append({"secs": time.perf_counter() - t0, "octets": octets})
        cipher = cipher_of(c)
        c.sock.close()
    finally:
        sender.wait(timeout=30)
        if conf is not None:
            os.unlink(conf.name)
    return {"runs": runs, "cipher": cipher}


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def uss_kib(pid):
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return None
    return total


def tree(pids):
    kids = children_map()
    todo = list(pids)
    seen = set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(kids.get(pid, []))
    return seen


def cmd_cpu(a):
    hz = os.sysconf("SC_CLK_TCK")
    ticks = 0
    for pid in tree(a.pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # utime, stime, cutime, cstime: fields 14 to 17, counted from 1 (here from field 3).
        ticks += sum(int(x) for x in fields[11:15])
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    busy = sum(cpu[:8]) - cpu[3] - cpu[4]
    return {"cpu_secs": ticks / hz, "machine_busy_secs": busy / hz, "time": time.time()}


def cmd_uss(a):
    pids = tree(a.pids)
    total = sum(kib for kib in map(uss_kib, pids) if kib is not None)
    return {"uss_kib": total, "processes": len(pids)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("uidl", "retr"):
        s = sub.add_parser(name)
        s.add_argument("host")
        s.add_argument("port", type=int)
        s.add_argument("user")
        s.add_argument("password")
        if name == "retr":
            s.add_argument("--runs", type=int, default=4)
            s.add_argument("--tls", action="store_true")
    s = sub.add_parser("raw")
    s.add_argument("wire")
    s.add_argument("--runs", type=int, default=4)
    s.add_argument("--copy", action="store_true")
    s.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    s = sub.add_parser("raw-serve")
    s.add_argument("wire")
    s.add_argument("--copy", action="store_true")
    s.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    for name in ("uss", "cpu"):
        s = sub.add_parser(name)
        s.add_argument("pids", type=int, nargs="+")
    a = p.parse_args()
    result = {
        "uidl": cmd_uidl,
        "retr": cmd_retr,
        "raw": cmd_raw,
        "raw-serve": cmd_raw_serve,
        "uss": cmd_uss,
        "cpu": cmd_cpu,
    }[a.cmd](a)
    if result is not None:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
