#!/usr/bin/env python3
"""Small measuring tools for bench/compare.sh; each prints one JSON object on stdout.

  probe.py uidl HOST PORT USER PASSWORD
      One session: greeting, then the timed part: USER, PASS, UIDL until the whole listing is
      in; then STAT, timed apart (the first STAT sizes a maildrop whose login deferred it).
      Then QUIT (waited for, untimed). Prints the seconds and the number of listing lines.

  probe.py cpu PID...
      CPU seconds (user + system) used so far by each PID and all its descendants, including
      descendants that have exited and been reaped (their time is in their parent's cutime and
      cstime), and the busy CPU seconds of the whole machine (from /proc/stat): the difference
      of two readings tells what a server used during a run and what else the machine did.

  probe.py uss PID...
      USS (Private_Clean + Private_Dirty from /proc/PID/smaps_rollup) summed over each PID and
      all its descendants, in KiB, with the number of processes.

Workload 3 (RETR and the raw copies it is compared with) is measured by `facteur-bench retr`
and `facteur-bench raw`, one Rust client on both sides of every ratio (bench/README.md).
"""

import argparse
import json
import os
import socket
import time

TERMINATOR = b"\r\n.\r\n"
BUFFER = 1 << 20


class Pop3:
    def __init__(self, host, port, timeout=300):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
    s = sub.add_parser("uidl")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("user")
    s.add_argument("password")
    for name in ("uss", "cpu"):
        s = sub.add_parser(name)
        s.add_argument("pids", type=int, nargs="+")
    a = p.parse_args()
    result = {
        "uidl": cmd_uidl,
        "uss": cmd_uss,
        "cpu": cmd_cpu,
    }[a.cmd](a)
    if result is not None:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
