#!/usr/bin/env bash
# bench/cpu_ab.sh: the server's CPU time per POP3 session, two builds of facteur side by side.
#
#   bash bench/cpu_ab.sh FACTEUR_A FACTEUR_B [MODE...]
#
# MODE is plain, pop3s or pop3s-resume (clients that resume their TLS sessions) [all three].
# Both binaries serve the same seeded maildrops (64 users x 10 messages of 4 KiB, the
# {SHA512-CRYPT} passwd-file of compare.sh with the authentication cache on, so each user's
# hash is paid once) at the same time, on two ports; facteur-bench runs workload 1 of
# compare.sh (greeting, USER/PASS, STAT, RETR of the 10 messages, QUIT, 32 at a time) against
# A, then B, then B, then A..., ROUNDS times each, SESSIONS sessions a round. The CPU time of
# each server (user + system, from /proc/PID/stat, which includes the kernel's work for its
# sockets and files) over a round, divided by the round's sessions, is the figure. Alternating
# rounds, and the two servers' ratio in each round, keep the machine's other work from
# favouring either; the load average is printed beside each round. Medians at the end.
#
# Environment (all optional):
#   FACTEUR_BENCH_BIN  the load generator [target/release/facteur-bench, built if missing]
#   CPU_AB_DIR         the scratch folder [/tmp/facteur-cpu-ab]; emptied first
#   SESSIONS           sessions per round [2000]
#   ROUNDS             rounds per binary and mode [4]
#
# Needs python3, openssl and free ports 127.0.0.1:2411x and 2499x. Runs as root (the servers
# then serve as nobody) or as any user. Loopback only; every run is bounded by SESSIONS.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SCRATCH=${CPU_AB_DIR:-/tmp/facteur-cpu-ab}
SESSIONS=${SESSIONS:-2000}
ROUNDS=${ROUNDS:-4}
USERS=64
PASSWORD=benchpass

die() { echo "cpu_ab.sh: $*" >&2; exit 1; }
[ "$#" -ge 2 ] || die "usage: bash bench/cpu_ab.sh FACTEUR_A FACTEUR_B [plain|pop3s|pop3s-resume...]"
A=$(realpath "$1")
B=$(realpath "$2")
shift 2
MODES=("$@")
[ "${#MODES[@]}" -gt 0 ] || MODES=(plain pop3s pop3s-resume)
for m in "${MODES[@]}"; do
    case "$m" in plain | pop3s | pop3s-resume) ;; *) die "unknown mode $m" ;; esac
done

BENCH=${FACTEUR_BENCH_BIN:-$REPO/target/release/facteur-bench}
if [ ! -x "$BENCH" ]; then
    (cd "$REPO" && cargo build --release -p facteur-bench --quiet)
fi

rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
python3 "$HERE/seed.py" "$SCRATCH/mail" "$SCRATCH/wire.bin" --users $USERS --huge 0 --big-mib 1 >/dev/null
rm -f "$SCRATCH/wire.bin"
: >"$SCRATCH/users"
for i in $(seq 0 $((USERS - 1))); do
    echo "u$i:{SHA512-CRYPT}$(openssl passwd -6 "$PASSWORD")" >>"$SCRATCH/users"
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -keyout "$SCRATCH/key.pem" -out "$SCRATCH/cert.pem" 2>/dev/null
as_user=""
if [ "$(id -u)" -eq 0 ]; then
    as_user='user = "nobody"'
    chown -R nobody "$SCRATCH/mail"
    chmod 644 "$SCRATCH/key.pem"
fi
chmod 755 "$SCRATCH"
chmod 644 "$SCRATCH/users"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

start() { # name binary plain-port tls-port
    cat >"$SCRATCH/$1.toml" <<EOF
[server]
listen = ["127.0.0.1:$3"]
listen_tls = ["127.0.0.1:$4"]
hostname = "localhost"
$as_user
[limits]
max_connections = 20000
max_connections_per_ip = 10000
shutdown_grace_secs = 1
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
    "$2" serve --config "$SCRATCH/$1.toml" >"$SCRATCH/$1.log" 2>&1 &
    PIDS+=("$!")
    local i
    for i in $(seq 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $3), 1).close()" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$1 did not start: $(tail -3 "$SCRATCH/$1.log")"
}
start a "$A" 24110 24995
PID_A=${PIDS[0]}
start b "$B" 24111 24996
PID_B=${PIDS[1]}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

round() { # pid port mode-args...: prints "cpu_ms_per_session sessions_per_sec"
    local pid=$1 port=$2 t0 t1 out
    shift 2
    t0=$(cpu_ticks "$pid")
    out=$("$BENCH" --host 127.0.0.1 --port "$port" --insecure --password "$PASSWORD" \
        --user 'u%d' --user-count $USERS --concurrency 32 --retr 10 --sessions "$SESSIONS" \
        --json "$@" 2>>"$SCRATCH/bench-stderr.txt")
    t1=$(cpu_ticks "$pid")
    python3 - "$t0" "$t1" "$(getconf CLK_TCK)" "$out" <<'EOF'
import json, sys
t0, t1, hz = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
d = json.loads(sys.argv[4])
ok = d["sessions_ok"]
if ok == 0 or d["sessions_failed"]:
    sys.exit(f"cpu_ab.sh: {d['sessions_failed']} sessions failed")
print(f"{(t1 - t0) / hz * 1000 / ok:.3f} {d['sessions_per_sec']:.0f}")
EOF
}

for mode in "${MODES[@]}"; do
    case "$mode" in
    plain) args=(--mode plain) pa=24110 pb=24111 ;;
    pop3s) args=(--mode pop3s) pa=24995 pb=24996 ;;
    pop3s-resume) args=(--mode pop3s --tls-resume) pa=24995 pb=24996 ;;
    esac
    # Warm-up: the authentication caches, the page cache, the allocators.
    round "$PID_A" $pa "${args[@]}" >/dev/null
    round "$PID_B" $pb "${args[@]}" >/dev/null
    echo "$mode: server CPU ms per session (sessions/s), $SESSIONS sessions a round"
    : >"$SCRATCH/$mode.txt"
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then
            a=$(round "$PID_A" $pa "${args[@]}")
            b=$(round "$PID_B" $pb "${args[@]}")
        else
            b=$(round "$PID_B" $pb "${args[@]}")
            a=$(round "$PID_A" $pa "${args[@]}")
        fi
        echo "$a $b" >>"$SCRATCH/$mode.txt"
        set -- $a $b
        printf '  round %d  A %s ms (%s/s)  B %s ms (%s/s)  B/A %.2f  load %s\n' \
            "$r" "$1" "$2" "$3" "$4" "$(python3 -c "print($3 / $1)")" "$(cut -d' ' -f1 /proc/loadavg)"
    done
    python3 - "$SCRATCH/$mode.txt" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
a = [r[0] for r in rows]
b = [r[2] for r in rows]
ratio = [r[2] / r[0] for r in rows]
print(f"  median  A {statistics.median(a):.3f} ms ({min(a):.3f}-{max(a):.3f})"
      f"  B {statistics.median(b):.3f} ms ({min(b):.3f}-{max(b):.3f})"
      f"  B/A {statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})")
EOF
done
