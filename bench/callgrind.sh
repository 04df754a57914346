#!/usr/bin/env bash
# bench/callgrind.sh: the server's instructions per POP3 session, counted by callgrind.
#
#   bash bench/callgrind.sh FACTEUR_BINARY [FACTEUR_BINARY...]
#
# Instruction counts do not move with the machine's load (seconds do), so this compares two
# builds of facteur on a busy machine where bench/compare.sh's sessions/s would be noise. Each
# binary serves the same seeded maildrops (64 users x 10 messages of 4 KiB, users in a
# {PLAIN} passwd-file so that the password hash does not hide the server's own cost) under
# `valgrind --tool=callgrind`, twice: once for SMALL sessions, once for LARGE. The difference
# of the two totals over LARGE - SMALL is the cost of one session, without start-up and
# shutdown. Each session is workload 1 of compare.sh: greeting, USER/PASS, STAT, RETR of the
# 10 messages, QUIT, plain POP3, 32 at a time, by facteur-bench.
#
# Environment (all optional):
#   FACTEUR_BENCH_BIN  the load generator [target/release/facteur-bench, built if missing]
#   CALLGRIND_DIR      the scratch folder [/tmp/facteur-callgrind]; emptied first
#   SMALL, LARGE       session counts of the two runs [100, 400]
#   RETR               messages retrieved per session [10]
#
# Needs valgrind, python3 and a free port 127.0.0.1:23110. Runs as root (the server then
# serves as nobody) or as any user. Takes about a minute per binary.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SCRATCH=${CALLGRIND_DIR:-/tmp/facteur-callgrind}
SMALL=${SMALL:-100}
LARGE=${LARGE:-400}
RETR=${RETR:-10}
PORT=23110
USERS=64

die() { echo "callgrind.sh: $*" >&2; exit 1; }
[ "$#" -ge 1 ] || die "usage: bash bench/callgrind.sh FACTEUR_BINARY [FACTEUR_BINARY...]"
command -v valgrind >/dev/null || die "valgrind is missing (apt-get install valgrind)"
[ "$LARGE" -gt "$SMALL" ] || die "LARGE must be greater than SMALL"

BENCH=${FACTEUR_BENCH_BIN:-$REPO/target/release/facteur-bench}
if [ ! -x "$BENCH" ]; then
    (cd "$REPO" && cargo build --release -p facteur-bench --quiet)
fi

rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/out"
seq 0 $((USERS - 1)) | sed 's/^/u/; s/$/:{PLAIN}benchpass/' >"$SCRATCH/users"
python3 "$HERE/seed.py" "$SCRATCH/mail" "$SCRATCH/wire.bin" --users $USERS --huge 0 --big-mib 1 >/dev/null
as_user=""
if [ "$(id -u)" -eq 0 ]; then
    # The server writes its callgrind output after it has become nobody.
    as_user='user = "nobody"'
    mkdir -p "$SCRATCH/out"
    chown -R nobody "$SCRATCH/mail" "$SCRATCH/out"
fi
chmod 755 "$SCRATCH"
chmod 644 "$SCRATCH/users"
cat >"$SCRATCH/facteur.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
hostname = "localhost"
$as_user

[limits]
max_connections_per_ip = 10000
shutdown_grace_secs = 2

[auth]
passwd_file = "$SCRATCH/users"
plaintext_auth = "always"

[store]
maildir = "$SCRATCH/mail/%u/Maildir"

[log]
level = "info"
EOF

# One run: the server under callgrind, N sessions, a clean shutdown; prints the total.
run() { # binary sessions tag
    local out="$SCRATCH/out/callgrind.$3.out" pid
    # Callgrind opens its output at start (as root) and writes it at exit (as the server's user).
    : >"$out"
    if [ -n "$as_user" ]; then chown nobody "$out"; fi
    valgrind --tool=callgrind --callgrind-out-file="$out" --trace-children=no \
        "$1" serve -c "$SCRATCH/facteur.toml" 2>>"$SCRATCH/server.$3.log" &
    pid=$!
    for _ in $(seq 1 600); do
        if python3 - "$PORT" <<'PY' 2>/dev/null; then break; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.recv(100)
s.sendall(b"QUIT\r\n")
s.recv(100)
PY
        kill -0 "$pid" 2>/dev/null || die "the server under valgrind exited (see $SCRATCH/server.$3.log)"
        sleep 0.5
    done
    "$BENCH" --port $PORT --mode plain --user 'u%d' --password benchpass --user-count $USERS \
        --concurrency 32 --retr "$RETR" --sessions "$2" --json >"$SCRATCH/bench.$3.json"
    kill -TERM "$pid"
    wait "$pid" || true
    python3 - "$out" "$SCRATCH/bench.$3.json" <<'PY'
import json, sys
total = None
for line in open(sys.argv[1]):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
report = json.load(open(sys.argv[2]))
if report["errors"]:
    sys.exit(f"the bench saw {report['errors']} errors: {report['errors_by_kind']}")
if total is None:
    sys.exit(f"no instruction total in {sys.argv[1]}")
print(total)
PY
}

# A first, unmeasured run builds what every later session finds ready (the maildrops' index
# files): without it the first binary measured would pay for that alone.
run "$1" $USERS warmup >/dev/null

printf '%-50s %16s %16s %14s\n' binary "Ir ($SMALL)" "Ir ($LARGE)" "Ir/session"
i=0
for bin in "$@"; do
    [ -x "$bin" ] || die "$bin is not an executable"
    i=$((i + 1))
    small=$(run "$bin" "$SMALL" "$i.small")
    large=$(run "$bin" "$LARGE" "$i.large")
    per=$(((large - small) / (LARGE - SMALL)))
    printf '%-50s %16d %16d %14d\n' "$bin" "$small" "$large" "$per"
done
