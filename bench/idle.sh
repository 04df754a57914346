#!/usr/bin/env bash
# bench/idle.sh: private memory per idle authenticated session of facteur, plain POP3 and
# POP3S (implicit TLS), as workload 5 of compare.sh measures it, without root or Dovecot.
#
#   bash bench/idle.sh [SESSIONS [RUNS]]        # defaults: 1000 sessions, 3 runs
#
# Builds facteur and facteur-bench in release mode (unless FACTEUR_BIN / FACTEUR_BENCH_BIN name
# binaries), seeds SESSIONS users (bench/seed.py, 10 x 4 KiB each) in a scratch folder, and
# configures facteur as compare.sh does (one passwd-file of {SHA512-CRYPT} hashes, the default
# auth cache, an ECDSA P-256 certificate; loopback high ports only). Each run, for plain then
# POP3S (the order alternates from run to run): a fresh facteur, 64 warm-up sessions, its USS
# (bench/probe.py uss), SESSIONS sessions of facteur-bench that log in and stay idle (--idle 90),
# its USS again once all are idle; the figure is the difference / SESSIONS. Prints every run,
# then the median and the spread (min..max) per mode, in KiB per idle session.
#
# Environment (all optional):
#   IDLE_DIR            the scratch folder [/tmp/facteur-idle-$UID]; emptied first unless
#                       it holds the seed of the same SESSIONS
#   IDLE_PORT           plain port; POP3S is IDLE_PORT+1 [26110]
#   FACTEUR_BIN         a facteur binary instead of building target/release/facteur
#   FACTEUR_BENCH_BIN   a facteur-bench binary instead of target/release/facteur-bench
#   IDLE_MODES          the modes to measure ["plain pop3s"]
#   IDLE_WARM_ALL       1: the warm-up logs every one of the SESSIONS users in once (32 at a
#                       time) instead of 64 of them, so the figure leaves out what the server
#                       keeps per user (its authentication and maildrop caches) and the
#                       allocator's growth on first logins: the cost of one more idle session
#                       of a user seen before [0]

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SESSIONS=${1:-1000}
RUNS=${2:-3}
SCRATCH=${IDLE_DIR:-/tmp/facteur-idle-$(id -u)}
PORT=${IDLE_PORT:-26110}
TLS_PORT=$((PORT + 1))
MODES=${IDLE_MODES:-plain pop3s}
PASSWORD=benchpass
WARMUP=64
PY=${PYTHON:-python3}

die() {
    printf 'idle.sh: %s\n' "$*" >&2
    exit 1
}
case "$SESSIONS" in '' | *[!0-9]*) die "SESSIONS must be a number" ;; esac
case "$RUNS" in '' | *[!0-9]*) die "RUNS must be a number" ;; esac
[ "$SESSIONS" -ge "$WARMUP" ] && [ "$SESSIONS" -le 10000 ] || die "SESSIONS: $WARMUP to 10000"
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || die "RUNS: 1 to 20"
case "$SCRATCH" in /*) ;; *) die "IDLE_DIR must be an absolute path" ;; esac
command -v openssl >/dev/null || die "openssl is needed"
command -v ss >/dev/null || die "ss (iproute2) is needed"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((SESSIONS * 2 + 500)) ] ||
    die "ulimit -n is $(ulimit -n): too low for $SESSIONS sessions"

if [ -n "${FACTEUR_BIN:-}" ] && [ -n "${FACTEUR_BENCH_BIN:-}" ]; then
    FACTEUR=$FACTEUR_BIN BENCH=$FACTEUR_BENCH_BIN
else
    echo "== building facteur and facteur-bench (release)" >&2
    (cd "$REPO" && cargo build --release -p facteur -p facteur-bench --quiet) >&2
    FACTEUR=${FACTEUR_BIN:-$REPO/target/release/facteur}
    BENCH=${FACTEUR_BENCH_BIN:-$REPO/target/release/facteur-bench}
fi

FPID="" BPID=""
stop_pid() { # pid: TERM, wait up to 10 s, then KILL
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$BPID"
    stop_pid "$FPID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # port: until something listens on it (10 s at most)
    local i
    for i in $(seq 100); do
        [ -n "$(ss -Hltn "sport = :$1")" ] && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 (see $SCRATCH/facteur.log)"
}

# The users, maildrops and certificate are kept for the next run with the same SESSIONS:
# seeding takes a while on a busy machine.
if [ ! -f "$SCRATCH/seeded-$SESSIONS" ]; then
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$SCRATCH/key.pem" -out "$SCRATCH/cert.pem" 2>/dev/null
seq 0 $((SESSIONS - 1)) | sed 's/^/u/' >"$SCRATCH/names"
sed "s/.*/$PASSWORD/" "$SCRATCH/names" | openssl passwd -6 -stdin |
    sed 's/^/{SHA512-CRYPT}/' | paste -d: "$SCRATCH/names" - >"$SCRATCH/users"
"$PY" "$HERE/seed.py" "$SCRATCH/mail" "$SCRATCH/wire.bin" \
    --users "$SESSIONS" --huge 0 --big-mib 0 >/dev/null
touch "$SCRATCH/seeded-$SESSIONS"
fi
rm -f "$SCRATCH/facteur.log"
# Meant to run as an ordinary user; as root (a container), facteur must be told it may.
ROOT_LINE=""
[ "$(id -u)" -ne 0 ] || ROOT_LINE="allow_root = true"
cat >"$SCRATCH/facteur.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
listen_tls = ["127.0.0.1:$TLS_PORT"]
hostname = "localhost"
$ROOT_LINE

[limits]
max_connections = $((SESSIONS + 200))
max_connections_per_ip = $((SESSIONS + 200))
shutdown_grace_secs = 2

[auth]
passwd_file = "$SCRATCH/users"
plaintext_auth = "always"
cache_ttl_secs = 3600

[tls]
certificate = "$SCRATCH/cert.pem"
private_key = "$SCRATCH/key.pem"

[store]
maildir = "$SCRATCH/mail/%u/Maildir"

[log]
level = "info"
EOF

measure() { # mode: prints KiB per idle session
    local mode=$1 port=$PORT before after i err=$SCRATCH/bench-stderr.txt
    local tls=()
    if [ "$mode" = pop3s ]; then
        port=$TLS_PORT
        tls=(--mode pop3s --insecure) # the self-signed certificate, as in compare.sh
    fi
    "$FACTEUR" serve -c "$SCRATCH/facteur.toml" 2>>"$SCRATCH/facteur.log" &
    FPID=$!
    wait_port "$PORT"
    wait_port "$TLS_PORT"
    local warm=$WARMUP
    [ "${IDLE_WARM_ALL:-0}" != 1 ] || warm=$SESSIONS
    "$BENCH" --port "$port" "${tls[@]}" --user 'u%d' --password "$PASSWORD" \
        --user-count "$warm" --concurrency 32 --sessions "$warm" >/dev/null 2>&1 ||
        die "the warm-up sessions failed"
    sleep 1
    before=$("$PY" "$HERE/probe.py" uss "$FPID")
    : >"$err"
    "$BENCH" --port "$port" "${tls[@]}" --user 'u%d' --password "$PASSWORD" \
        --user-count "$SESSIONS" --concurrency "$SESSIONS" --sessions "$SESSIONS" \
        --idle 90 >/dev/null 2>"$err" &
    BPID=$!
    for i in $(seq 900); do
        grep -q 'logged in and idle' "$err" && break
        kill -0 "$BPID" 2>/dev/null || break
        sleep 0.1
    done
    grep -q 'logged in and idle' "$err" || die "the $mode sessions never were all idle: $(tail -3 "$err")"
    sleep 2
    after=$("$PY" "$HERE/probe.py" uss "$FPID")
    stop_pid "$BPID"
    BPID=""
    stop_pid "$FPID"
    FPID=""
    "$PY" - "$before" "$after" "$SESSIONS" <<'EOF'
import json, sys
b, a = (json.loads(s)["uss_kib"] for s in sys.argv[1:3])
n = int(sys.argv[3])
print(f"{(a - b) / n:.2f}")
EOF
}

declare -A FIGURES
for run in $(seq "$RUNS"); do
    order=$MODES
    if [ $((run % 2)) -eq 0 ]; then order=$(echo "$MODES" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for mode in $order; do
        kib=$(measure "$mode")
        FIGURES[$mode]="${FIGURES[$mode]:-} $kib"
        printf 'run %d  %-6s %7s KiB per idle session\n' "$run" "$mode" "$kib"
    done
done
if [ -n "${FACTEUR_BIN:-}" ]; then BUILD=$FACTEUR_BIN; else
    BUILD=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
fi
WARMED="$WARMUP users warmed up"
[ "${IDLE_WARM_ALL:-0}" != 1 ] || WARMED="every user warmed up"
echo "== $SESSIONS idle sessions, $RUNS runs ($BUILD; $WARMED)"
for mode in $MODES; do
    "$PY" - "$mode" ${FIGURES[$mode]} <<'EOF'
import statistics, sys
mode, xs = sys.argv[1], [float(x) for x in sys.argv[2:]]
print(f"{mode:6s} median {statistics.median(xs):6.2f} KiB per idle session  (min {min(xs):.2f}, max {max(xs):.2f}, runs {len(xs)})")
EOF
done
