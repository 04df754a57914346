#!/usr/bin/env bash
# bench/uidl_warm.sh: workload 4 of compare.sh (login + UIDL on a maildrop of 100,000 messages,
# warm), for facteur alone, without root and in about a minute: for trying a change quickly.
#
#   bash bench/uidl_warm.sh [FACTEUR_BIN...]
#
# Seeds one Maildir as compare.sh does (bench/seed.py, once; kept in SCRATCH), writes the same
# passwd-file ({SHA512-CRYPT}, the authentication cache on) and configuration, then for each
# binary (default target/release/facteur; several are run side by side, in alternating rounds):
# starts it, removes its index, runs the cold session (the index written, then the first STAT
# sizes every message), then RUNS warm sessions of bench/probe.py uidl. Also times the Python
# client alone against a trivial server that sends the same listing: the floor any server has.
# Prints median, min and quartiles in ms per server. The servers share the one maildrop: each
# cold session rewrites its index, so a server started earlier serves its first warm session
# from that new file (not from memory); the median over RUNS is not moved by it.
#
# Environment: FACTEUR_BENCH_DIR [/tmp/facteur-uidl-warm], BENCH_HUGE [100000], RUNS [21],
# PORT [46310] (the servers take PORT, PORT+1, ...; the trivial server PORT+100).
# Running as root adds `allow_root = true` (compare.sh uses `[server] user` instead).

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SCRATCH=${FACTEUR_BENCH_DIR:-/tmp/facteur-uidl-warm}
HUGE=${BENCH_HUGE:-100000}
RUNS=${RUNS:-21}
PORT=${PORT:-46310}
PY=${PYTHON:-python3}
PASSWORD=benchpass
if [ $# -eq 0 ]; then set -- "$REPO/target/release/facteur"; fi

mkdir -p "$SCRATCH"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 600); do
        if "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "uidl_warm.sh: nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

if [ ! -d "$SCRATCH/mail/huge/Maildir/cur" ] || [ "$(cat "$SCRATCH/seeded" 2>/dev/null)" != "$HUGE" ]; then
    rm -rf "$SCRATCH/mail"
    "$PY" "$HERE/seed.py" "$SCRATCH/mail" "$SCRATCH/wire.bin" --users 1 --huge "$HUGE" --big-mib 1 >&2
    echo "$HUGE" >"$SCRATCH/seeded"
fi
echo huge | sed "s/.*/$PASSWORD/" | openssl passwd -6 -stdin | sed 's/^/huge:{SHA512-CRYPT}/' >"$SCRATCH/users"
ALLOW_ROOT=""
if [ "$(id -u)" = 0 ]; then ALLOW_ROOT="allow_root = true"; fi

n=0
for bin in "$@"; do
    port=$((PORT + n))
    conf="$SCRATCH/facteur-$n.toml"
    cat >"$conf" <<EOF
[server]
listen = ["127.0.0.1:$port"]
hostname = "localhost"
$ALLOW_ROOT

[auth]
passwd_file = "$SCRATCH/users"
plaintext_auth = "always"
cache_ttl_secs = 3600

[store]
maildir = "$SCRATCH/mail/%u/Maildir"

[log]
level = "info"
EOF
    rm -f "$SCRATCH/mail/huge/Maildir/"facteur-index*
    "$bin" serve -c "$conf" 2>>"$SCRATCH/facteur-$n.log" &
    PIDS+=($!)
    wait_port "$port"
    echo "server $n: $bin on $port; cold session:" >&2
    "$PY" "$HERE/probe.py" uidl 127.0.0.1 "$port" huge "$PASSWORD" >&2
    n=$((n + 1))
done

# The client's floor: the same listing from a server that does nothing else.
floor=$((PORT + 100))
"$PY" - "$floor" "$SCRATCH/mail/huge/Maildir/cur" <<'EOF' &
import os, socket, sys
port, cur = int(sys.argv[1]), sys.argv[2]
names = sorted(os.listdir(cur), key=lambda n: (int(n.split(".")[0]), n))
lines = [b"+OK\r\n"] + [b"%d %s\r\n" % (i + 1, n.split(":")[0].encode()) for i, n in enumerate(names)]
listing = b"".join(lines) + b".\r\n"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b"+OK ready\r\n")
    for line in c.makefile("rb"):
        cmd = line.split()[0].upper() if line.split() else b""
        if cmd == b"UIDL":
            c.sendall(listing)
        elif cmd == b"STAT":
            c.sendall(b"+OK %d 0\r\n" % len(names))
        elif cmd == b"QUIT":
            c.sendall(b"+OK\r\n")
            break
        else:
            c.sendall(b"+OK\r\n")
    c.close()
EOF
PIDS+=($!)
wait_port "$floor"

ports=()
for i in $(seq 0 $((n - 1))); do ports+=($((PORT + i))); done
ports+=("$floor")
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for _ in $(seq "$RUNS"); do
    for p in "${ports[@]}"; do
        printf '%s ' "$p"
        "$PY" "$HERE/probe.py" uidl 127.0.0.1 "$p" huge "$PASSWORD"
    done
done | "$PY" -c '
import collections, json, statistics, sys
floor = sys.argv[1]
d = collections.defaultdict(list)
for l in sys.stdin:
    p, j = l.split(" ", 1)
    r = json.loads(j)
    d[p].append((r["secs"] * 1000, r["uidl_lines"]))
for i, (p, v) in enumerate(d.items()):
    t = sorted(x for x, _ in v)
    name = "client floor" if p == floor else "server %d" % i
    print("%-12s port %s: %d warm runs, %d lines, median %.1f ms, min %.1f, p25 %.1f, p75 %.1f, max %.1f"
          % (name, p, len(t), v[0][1], statistics.median(t), t[0], t[len(t)//4], t[3*len(t)//4], t[-1]))
' "$floor"
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
