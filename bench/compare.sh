#!/usr/bin/env bash
# bench/compare.sh: facteur against Dovecot's POP3 server, side by side, in one run; and facteur
# on its PostgreSQL store, directly and through HAProxy in front of 1 and 3 nodes.
#
#   sudo bash bench/compare.sh
#
# Installs Dovecot's POP3 server from Debian's packages if it is missing, builds facteur and
# facteur-bench (the load generator) in release mode, configures both servers in a scratch folder (loopback high ports only), seeds
# identical maildrops for each, runs the same five workloads against each, prints a table with
# the ratio facteur/Dovecot and the goals, and writes everything to bench/results/latest.json.
#
# Needs root: Dovecot's master process must start as root to switch users, and apt-get.
# Takes about 11 minutes on 2 cores, 3 of them migrating the seed into PostgreSQL (5 with
# BENCH_PG=0). Everything listens on 127.0.0.1; nothing outside SCRATCH changes but the Dovecot,
# PostgreSQL and HAProxy packages and one system user (facteurbench, that owns Dovecot's mail).
#
# Environment (all optional):
#   FACTEUR_BENCH_DIR   the scratch folder            [/tmp/facteur-bench]; emptied first
#   FACTEUR_BIN         a facteur binary to use instead of building target/release/facteur
#   FACTEUR_BENCH_BIN   a facteur-bench binary to use instead of target/release/facteur-bench
#   BENCH_DURATION      seconds per server of workloads 1 and 2 [15], in 3 alternating turns,
#                       after a 2 s warm-up
#   BENCH_IDLE          idle sessions of workload 5   [2000]
#   BENCH_HUGE          messages of workload 4        [100000]
#   BENCH_REPS          cold/warm repetitions of workload 4 [3]
#   BENCH_KEEP          1: keep the seeded maildrops (about 1.2 GB) in SCRATCH after the run;
#                       the logs, configurations and raw figures are always kept
#   BENCH_SCHEME        SHA512-CRYPT (default) or PLAIN: the password scheme of every user.
#                       PLAIN takes the hash out of the login, to see the servers' own cost.
#   BENCH_PG            0: leave PostgreSQL and HAProxy out (the two-server run); 1 (default):
#                       also facteur on the PostgreSQL store (the same passwd-file, maildrops
#                       copied by `facteur migrate`), directly (all five workloads) and through
#                       HAProxy in front of 1 and of 3 nodes (workloads 1 and 2)
#
# Fairness, in short (details in the printed notes): one passwd-file ({SHA512-CRYPT}, 5000
# rounds, the default of `openssl passwd -6`) read by both servers; one seeded Maildir tree
# copied into two roots; one certificate (ECDSA P-256); the same load generator (`facteur-bench`,
# which speaks POP3 through facteur-proto's client; its `retr` and `raw` for workload 3)
# and the same Python probes (workload 4, CPU and memory readings) for both; each server
# logs one or two lines per session at level info. Dovecot gets its own
# documented performance settings: login processes in high-performance mode, pop3 processes
# reused (service_count = 100, same uid for every user), pop3_no_flag_updates.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SCRATCH=${FACTEUR_BENCH_DIR:-/tmp/facteur-bench}
DURATION=${BENCH_DURATION:-15}
WARMUP=2
IDLE_SESSIONS=${BENCH_IDLE:-2000}
HUGE=${BENCH_HUGE:-100000}
REPS=${BENCH_REPS:-3}
ROUNDS=3 # workloads 1 and 2: DURATION is cut into this many turns per server
ROUND_SECS=$(awk -v d="$DURATION" -v r=$ROUNDS 'BEGIN { print d / r }')
W3_RUNS=5 # workload 3: measured RETRs per server (median), after one warm-up
# Workload 3's sendfile row: pairs of (raw copy, facteur RETR), each 1 warm-up + 3 transfers.
W3_PAIRS=${BENCH_W3_PAIRS:-15}
SCHEME=${BENCH_SCHEME:-SHA512-CRYPT}
CONCURRENCY=32
USER_COUNT=64 # workloads 1 and 2: two users per concurrent session, never a lock wait
PASSWORD=benchpass
BENCH_USER=facteurbench

F_POP3=21110 F_POP3S=21995
D_POP3=22110 D_POP3S=22995
P_POP3=23110 P_POP3S=23995   # facteur-pg: one node on PostgreSQL, clients connect to it
N_POP3=23120 N_POP3S=23920   # nodes 1 to 3 behind HAProxy: 23121..23123, 23921..23923
H1_POP3=24110 H1_POP3S=24995 # HAProxy in front of node 1
H3_POP3=25110 H3_POP3S=25995 # HAProxy in front of nodes 1, 2 and 3
PG_ON=${BENCH_PG:-1}
case "$PG_ON" in 0 | 1) ;; *) echo "compare.sh: BENCH_PG must be 0 or 1" >&2; exit 1 ;; esac

PY=${PYTHON:-python3}
PROBE=("$PY" "$HERE/probe.py")
RESULTS=$SCRATCH/results
COMMAND="sudo bash bench/compare.sh"

say() { printf '\n== %s\n' "$*" >&2; }
die() {
    printf 'compare.sh: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (Dovecot's master starts as root): $COMMAND"
command -v "$PY" >/dev/null || die "python3 is needed"
command -v openssl >/dev/null || die "openssl is needed"
command -v ss >/dev/null || die "ss (iproute2) is needed"
case "$SCRATCH" in /*) ;; *) die "FACTEUR_BENCH_DIR must be an absolute path" ;; esac

# --- the software --------------------------------------------------------------------------

if ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/pop3 ]; then
    say "installing Dovecot (dovecot-core, dovecot-pop3d)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        dovecot-core dovecot-pop3d >&2
    # The package may have started the system instance; it listens on 110/995, not on our
    # ports, and is left as the package manager set it up.
fi

PGBIN="" HAPROXY=""
if [ "$PG_ON" = 1 ]; then
    need=()
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
    fi
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
    [ -x "$PGBIN/initdb" ] || die "PostgreSQL's initdb is missing"
    [ -x "$HAPROXY" ] || die "haproxy is missing"
fi

if [ -n "${FACTEUR_BIN:-}" ]; then
    BUILT=$FACTEUR_BIN
    FACTEUR_REV="given as FACTEUR_BIN=$FACTEUR_BIN"
else
    say "building facteur (release)"
    (cd "$REPO" && cargo build --release -p facteur --quiet) >&2
    BUILT=$REPO/target/release/facteur
    FACTEUR_REV=$(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo unknown)
fi
# The load generator is a binary of its own, never part of facteur's.
if [ -n "${FACTEUR_BENCH_BIN:-}" ]; then
    BUILT_BENCH=$FACTEUR_BENCH_BIN
else
    say "building facteur-bench (release)"
    (cd "$REPO" && cargo build --release -p facteur-bench --quiet) >&2
    BUILT_BENCH=$REPO/target/release/facteur-bench
fi
"$BUILT_BENCH" --help >/dev/null 2>&1 || die "$BUILT_BENCH does not run"

# Workload 5 needs thousands of descriptors in the bench and in each server.
hard=$(ulimit -Hn)
want=65536
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
    ulimit -Hn "$want" 2>/dev/null || want=$hard
fi
ulimit -n "$want"
[ "$(ulimit -n)" -ge $((IDLE_SESSIONS * 3 + 1000)) ] ||
    die "ulimit -n is $(ulimit -n): too low for $IDLE_SESSIONS idle sessions"

id "$BENCH_USER" >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$BENCH_USER"
BENCH_UID=$(id -u "$BENCH_USER")
BENCH_GID=$(id -g "$BENCH_USER")

# --- processes we start, and stopping them whatever happens -----------------------------------

FPID="" DPID="" BPID="" PPID_NODE="" HPID="" PG_STARTED=""
N_PIDS=("" "" "" "")
starttime() { # pid: its start time in clock ticks (field 22 of /proc/PID/stat), or nothing
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 0
    stat=${stat##*) }
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- $stat
    echo "${20}"
}
descendants() { # pid: "pid:starttime" of its children, grandchildren... (one ps for all)
    local pid
    for pid in $(ps -eo pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END { for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q];
              if (q == root && p != root) print p } }'); do
        echo "$pid:$(starttime "$pid")"
    done
}
stop_pid() { # pid: TERM, wait up to 30 s; then KILL it, and those of its descendants still there
    local pid=$1 i kids
    [ -n "$pid" ] || return 0
    kids=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "compare.sh: process $pid did not stop in 30 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        # Only the very processes seen before (same pid and start time), never a reused pid.
        for i in $kids; do
            [ "$(starttime "${i%%:*}")" = "${i#*:}" ] && kill -KILL "${i%%:*}" 2>/dev/null
        done
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$BPID"
    stop_pid "$FPID"
    stop_pid "$DPID"
    stop_pid "$HPID"
    stop_pid "$PPID_NODE"
    local n
    for n in 1 2 3; do stop_pid "${N_PIDS[$n]}"; done
    if [ -n "$PG_STARTED" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$SCRATCH/pg" stop -m fast -t 60 >/dev/null 2>&1 ||
            as_pg "$PGBIN/pg_ctl" -D "$SCRATCH/pg" stop -m immediate >/dev/null 2>&1 || true
    fi
}
# PostgreSQL refuses to run as root: its cluster belongs to nobody.
as_pg() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
trap cleanup EXIT
trap 'echo "compare.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM

wait_port() { # port: until something listens on 127.0.0.1:port (10 s at most)
    local i
    for i in $(seq 100); do
        # Asked of the kernel, not by connecting: a probe connection would be a session too.
        if [ -n "$(ss -Hltn "sport = :$1")" ]; then return 0; fi
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 (see $SCRATCH/*.log)"
}

start_facteur() {
    "$FACTEUR" serve -c "$SCRATCH/facteur.toml" 2>>"$SCRATCH/facteur.log" &
    FPID=$!
    wait_port $F_POP3
    wait_port $F_POP3S
}
stop_facteur() {
    stop_pid "$FPID"
    FPID=""
}
start_dovecot() {
    dovecot -F -c "$SCRATCH/dovecot.conf" &
    DPID=$!
    wait_port $D_POP3
    wait_port $D_POP3S
}
stop_dovecot() {
    stop_pid "$DPID"
    DPID=""
}
# facteur on PostgreSQL: the node clients reach directly, and nodes 1 to 3 behind HAProxy.
start_pg_node() {
    "$FACTEUR" serve -c "$SCRATCH/facteur-pg.toml" 2>>"$SCRATCH/facteur-pg.log" &
    PPID_NODE=$!
    wait_port $P_POP3
    wait_port $P_POP3S
}
stop_pg_node() {
    stop_pid "$PPID_NODE"
    PPID_NODE=""
}
start_nodes() {
    local n
    for n in 1 2 3; do
        "$FACTEUR" serve -c "$SCRATCH/node$n.toml" 2>>"$SCRATCH/node$n.log" &
        N_PIDS[n]=$!
    done
    for n in 1 2 3; do
        wait_port $((N_POP3 + n))
        wait_port $((N_POP3S + n))
    done
}
stop_nodes() {
    local n
    for n in 1 2 3; do
        stop_pid "${N_PIDS[$n]}"
        N_PIDS[n]=""
    done
}
start_all() {
    start_facteur
    start_dovecot
    if [ "$PG_ON" = 1 ]; then
        start_pg_node
        start_nodes
    fi
}
stop_all() {
    stop_facteur
    stop_dovecot
    if [ "$PG_ON" = 1 ]; then
        stop_pg_node
        stop_nodes
    fi
}
pg_pid() { head -n 1 "$SCRATCH/pg/postmaster.pid"; }

# --- the scratch folder ---------------------------------------------------------------------

say "preparing $SCRATCH"
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH" "$RESULTS"
# A copy, so that a rebuild during the run cannot swap the binary under the benchmark.
FACTEUR=$SCRATCH/facteur
cp "$BUILT" "$FACTEUR"
BENCH=$SCRATCH/facteur-bench
cp "$BUILT_BENCH" "$BENCH"
# Dovecot's login and internal users must traverse it.
chmod 755 "$SCRATCH"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
ps -eo pcpu=,comm= --sort=-pcpu >"$RESULTS/ps.txt"
head -n 5 "$RESULTS/ps.txt" >"$RESULTS/busy-at-start.txt"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$SCRATCH/key.pem" -out "$SCRATCH/cert.pem" 2>/dev/null
chmod 644 "$SCRATCH/key.pem" # scratch only: Dovecot's config process reads it as root anyway

# One users file for both: Dovecot's passwd-file format, {SHA512-CRYPT} with 5000 rounds (the
# default of both openssl and Dovecot's doveadm pw).
{
    seq 0 $((IDLE_SESSIONS - 1)) | sed 's/^/u/'
    echo big
    echo bigcrlf
    echo huge
} >"$SCRATCH/names"
[ "$IDLE_SESSIONS" -ge $USER_COUNT ] || die "BENCH_IDLE must be at least $USER_COUNT"
case "$SCHEME" in
SHA512-CRYPT)
    sed "s/.*/$PASSWORD/" "$SCRATCH/names" | openssl passwd -6 -stdin |
        sed 's/^/{SHA512-CRYPT}/' | paste -d: "$SCRATCH/names" - >"$SCRATCH/users"
    ;;
PLAIN) sed "s/\$/:{PLAIN}$PASSWORD/" "$SCRATCH/names" >"$SCRATCH/users" ;;
*) die "BENCH_SCHEME must be SHA512-CRYPT or PLAIN" ;;
esac
chmod 644 "$SCRATCH/users"

say "seeding the maildrops ($IDLE_SESSIONS users x 10 x 4 KiB, 1 x 64 MiB, 1 x $HUGE messages)"
"$PY" "$HERE/seed.py" "$SCRATCH/facteur-mail" "$SCRATCH/wire.bin" \
    --users "$IDLE_SESSIONS" --huge "$HUGE" --big-mib 64 >&2

facteur_conf() { # pop3-port pop3s-port store-block [server-lines]
    cat <<EOF
# facteur for the comparison with Dovecot: loopback only.
[server]
listen = ["127.0.0.1:$1"]
listen_tls = ["127.0.0.1:$2"]
hostname = "localhost"
# As Dovecot's mail processes: bind as root, then serve as the bench user.
user = "$BENCH_USER"
${4:-}

[limits]
max_connections = 20000
max_connections_per_ip = 10000
shutdown_grace_secs = 2

[auth]
passwd_file = "$SCRATCH/users"
plaintext_auth = "always"
# The default, spelled out: successful logins remembered for an hour (see the Dovecot side).
cache_ttl_secs = 3600

[tls]
certificate = "$SCRATCH/cert.pem"
private_key = "$SCRATCH/key.pem"

[store]
$3

[log]
level = "info"
EOF
}
facteur_conf $F_POP3 $F_POP3S "maildir = \"$SCRATCH/facteur-mail/%u/Maildir\"" >"$SCRATCH/facteur.toml"
# bigcrlf: the same 64 MiB message as big, delivered by `facteur deliver` (stored the way its
# delivery stores mail: CRLF line ends, and named as its own wire form), for both servers.
mkdir -p "$SCRATCH/facteur-mail/bigcrlf/Maildir"
"$FACTEUR" deliver bigcrlf -c "$SCRATCH/facteur.toml" \
    <"$(find "$SCRATCH/facteur-mail/big/Maildir" -type f -path '*/[cn][ue][rw]/*' | head -1)"
cp -a "$SCRATCH/facteur-mail" "$SCRATCH/dovecot-mail"
chown -R "$BENCH_USER:$BENCH_USER" "$SCRATCH/dovecot-mail" "$SCRATCH/facteur-mail"
"$FACTEUR" check-config -c "$SCRATCH/facteur.toml" >&2

MIGRATE_SECS=""
if [ "$PG_ON" = 1 ]; then
    # PostgreSQL with its defaults and fsync on (durable, as in production), on a Unix socket in
    # SCRATCH; stopped by the cleanup trap.
    say "starting PostgreSQL ($("$PGBIN/postgres" --version)) in $SCRATCH/pg"
    mkdir -p "$SCRATCH/pg" "$SCRATCH/pg-sock"
    chown nobody "$SCRATCH/pg" "$SCRATCH/pg-sock"
    as_pg "$PGBIN/initdb" -D "$SCRATCH/pg" -U postgres --auth=trust >"$RESULTS/initdb.txt"
    PG_STARTED=1
    as_pg "$PGBIN/pg_ctl" -D "$SCRATCH/pg" -l "$SCRATCH/pg-sock/postgresql.log" -w start -o \
        "-c listen_addresses='' -c unix_socket_directories='$SCRATCH/pg-sock' -c fsync=on" >&2
    "$PGBIN/psql" -h "$SCRATCH/pg-sock" -U postgres -X -q -v ON_ERROR_STOP=1 -d postgres \
        -c "CREATE DATABASE mail" >&2
    PG_STORE="backend = \"postgresql\"
url = \"host=$SCRATCH/pg-sock dbname=mail user=postgres\""
    facteur_conf $P_POP3 $P_POP3S "$PG_STORE" >"$SCRATCH/facteur-pg.toml"
    for n in 1 2 3; do
        facteur_conf $((N_POP3 + n)) $((N_POP3S + n)) "$PG_STORE" \
            'proxy_protocol = ["127.0.0.1/32"]' >"$SCRATCH/node$n.toml"
    done
    "$FACTEUR" db migrate -c "$SCRATCH/facteur-pg.toml" >&2
    for c in facteur-pg node1 node2 node3; do
        "$FACTEUR" check-config -c "$SCRATCH/$c.toml" >"$RESULTS/check-config-$c.txt"
    done
    cat >"$SCRATCH/haproxy.cfg" <<EOF
# HAProxy in front of facteur's PostgreSQL nodes: TCP only, TLS passes through to the nodes,
# which trust its PROXY v2 header ([server] proxy_protocol). No health checks: they would be
# sessions of their own in the figures.
global
    # Each connection takes two descriptors; the limit must fit this shell's open-file limit.
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s

frontend pop3_1
    bind 127.0.0.1:$H1_POP3
    default_backend pop3_1
frontend pop3s_1
    bind 127.0.0.1:$H1_POP3S
    default_backend pop3s_1
frontend pop3_3
    bind 127.0.0.1:$H3_POP3
    default_backend pop3_3
frontend pop3s_3
    bind 127.0.0.1:$H3_POP3S
    default_backend pop3s_3

backend pop3_1
    balance roundrobin
    server n1 127.0.0.1:$((N_POP3 + 1)) send-proxy-v2
backend pop3s_1
    balance roundrobin
    server n1 127.0.0.1:$((N_POP3S + 1)) send-proxy-v2
backend pop3_3
    balance roundrobin
    server n1 127.0.0.1:$((N_POP3 + 1)) send-proxy-v2
    server n2 127.0.0.1:$((N_POP3 + 2)) send-proxy-v2
    server n3 127.0.0.1:$((N_POP3 + 3)) send-proxy-v2
backend pop3s_3
    balance roundrobin
    server n1 127.0.0.1:$((N_POP3S + 1)) send-proxy-v2
    server n2 127.0.0.1:$((N_POP3S + 2)) send-proxy-v2
    server n3 127.0.0.1:$((N_POP3S + 3)) send-proxy-v2
EOF
    "$HAPROXY" -c -f "$SCRATCH/haproxy.cfg" >&2 || die "haproxy rejects $SCRATCH/haproxy.cfg"
    # The maildrops into PostgreSQL from the same seeded Maildirs, unique-ids kept.
    # It commits each message on its own; with synchronous commits that is one WAL flush per
    # message. For the bulk copy only, the database commits asynchronously (a crash would lose
    # the last commits, and migrate, which can run again, would copy them again); everything
    # measured afterwards runs with PostgreSQL's default, synchronous_commit = on.
    say "facteur migrate: the seeded Maildirs into PostgreSQL (synchronous_commit off for the copy)"
    pg_sql() { "$PGBIN/psql" -h "$SCRATCH/pg-sock" -U postgres -X -q -v ON_ERROR_STOP=1 -d mail -c "$1" >&2; }
    pg_sql "ALTER DATABASE mail SET synchronous_commit = off"
    t0=$(date +%s.%N)
    # Four `facteur migrate` processes at once, each on its own users (huge; big and a third of
    # the others; ...), as one would split a large migration.
    mig_pids=()
    for part in 0 1 2 3; do
        if [ $part = 0 ]; then
            set -- --user huge
        else
            set -- $(awk -v p=$part 'NR % 3 == p - 1 && $0 != "huge" { printf "--user %s ", $0 }' "$SCRATCH/names")
        fi
        "$FACTEUR" migrate --from-config "$SCRATCH/facteur.toml" --to-config "$SCRATCH/facteur-pg.toml" \
            "$@" >"$RESULTS/migrate-$part.txt" 2>&1 &
        mig_pids+=($!)
    done
    for part in 0 1 2 3; do
        wait "${mig_pids[part]}" || { tail -n 20 "$RESULTS/migrate-$part.txt" >&2; die "facteur migrate failed"; }
    done
    t1=$(date +%s.%N)
    MIGRATE_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    pg_sql "ALTER DATABASE mail RESET synchronous_commit"
    pg_sql "CHECKPOINT"
    say "facteur migrate took $MIGRATE_SECS s"
    "$PGBIN/psql" -h "$SCRATCH/pg-sock" -U postgres -X -A -t -d mail \
        -c "SELECT pg_database_size('mail')" >"$RESULTS/pg-size-bytes.txt" 2>&1 || true
fi

cat >"$SCRATCH/dovecot.conf" <<EOF
# Dovecot for the comparison with facteur: loopback only, everything in $SCRATCH.
instance_name = facteur-bench
base_dir = $SCRATCH/dovecot-run
state_dir = $SCRATCH/dovecot-state
log_path = $SCRATCH/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <$SCRATCH/cert.pem
ssl_key = <$SCRATCH/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
# Both servers with their authentication caches on, for an hour: facteur's default, and
# Dovecot's auth cache (off by default) turned on. No negative caching on either side.
auth_cache_size = 10M
auth_cache_ttl = 1 hour
auth_cache_negative_ttl = 0
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT $SCRATCH/users
}
userdb {
  driver = static
  args = uid=$BENCH_USER gid=$BENCH_USER home=$SCRATCH/dovecot-mail/%u
}
mail_location = maildir:$SCRATCH/dovecot-mail/%u/Maildir
first_valid_uid = $BENCH_UID
first_valid_gid = $BENCH_GID
# The default UIDL format, spelled out.
pop3_uidl_format = %08Xu%08Xv
# facteur does not rename files to add the Seen flag on RETR; do not make Dovecot do it either.
pop3_no_flag_updates = yes
mail_max_userip_connections = 10000
default_process_limit = $((IDLE_SESSIONS + 500))
default_client_limit = $((IDLE_SESSIONS * 3))

# Dovecot's performance tuning: one long-lived login process per CPU serving many clients
# (high-performance mode), and pop3 processes reused for 100 sessions instead of a fork per
# session (possible because every user has the same uid).
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $D_POP3
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $D_POP3S
    ssl = yes
  }
  service_count = 0
  process_min_avail = $(nproc)
  process_limit = $(nproc)
  client_limit = $((IDLE_SESSIONS * 3))
}
service pop3 {
  # One process per session is Dovecot's design (client_limit = 1 for pop3).
  process_limit = $((IDLE_SESSIONS + 500))
  service_count = 100
  process_min_avail = $(nproc)
}
# Every reused pop3 process and every login process keeps a connection to these two.
service auth {
  client_limit = $((IDLE_SESSIONS * 2 + 1100))
}
service anvil {
  client_limit = $((IDLE_SESSIONS * 2 + 1100))
}
EOF
doveconf -n -c "$SCRATCH/dovecot.conf" >"$RESULTS/doveconf-n.txt" ||
    die "doveconf rejects $SCRATCH/dovecot.conf"

warm_cache() { # dir...: read every file so that the page cache holds them
    find "$@" -type f -print0 | xargs -0 cat >/dev/null
}

bench() { # out-file, then facteur-bench arguments
    local out=$1
    shift
    "$BENCH" --host 127.0.0.1 --password "$PASSWORD" --json "$@" >"$out" \
        2>>"$RESULTS/bench-stderr.txt" || echo "compare.sh: facteur-bench failed: $*" >&2
}

# --- workload 4: login + UIDL on a maildrop of $HUGE messages, cold and warm ------------------
# Cold: the first session after a restart of the server with its index files removed (and the
# page cache warm). Warm: the session after it.

drop_caches() { # the kernel's page cache, dentries and inodes: the truly cold case
    sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
}

w4_once() { # name port maildir index-glob start stop rep
    local name=$1 port=$2 md=$3 glob=$4 start=$5 stop=$6 rep=$7
    $stop
    if [ "$md" != - ] && drop_caches; then
        # Truly cold: the index gone and nothing of the maildrop in the page cache (the server
        # binary is read back from disk too, as after a reboot).
        # shellcheck disable=SC2086 # the glob is meant to expand
        (cd "$md" && rm -f $glob)
        drop_caches
        $start
        "${PROBE[@]}" uidl 127.0.0.1 "$port" huge "$PASSWORD" >"$RESULTS/w4-$name-dropped-$rep.json"
        $stop
    fi
    if [ "$md" != - ]; then
        # shellcheck disable=SC2086 # the glob is meant to expand
        (cd "$md" && rm -f $glob)
        warm_cache "$md"
    fi
    $start
    "${PROBE[@]}" uidl 127.0.0.1 "$port" huge "$PASSWORD" >"$RESULTS/w4-$name-cold-$rep.json"
    "${PROBE[@]}" uidl 127.0.0.1 "$port" huge "$PASSWORD" >"$RESULTS/w4-$name-warm-$rep.json"
}

say "workload 4: login + UIDL on $HUGE messages, cold and warm ($REPS times each, interleaved)"
for rep in $(seq "$REPS"); do
    w4_once facteur $F_POP3 "$SCRATCH/facteur-mail/huge/Maildir" 'facteur-index*' \
        start_facteur stop_facteur "$rep"
    w4_once dovecot $D_POP3 "$SCRATCH/dovecot-mail/huge/Maildir" 'dovecot*' \
        start_dovecot stop_dovecot "$rep"
    # On PostgreSQL, cold is the first session after the node restarts (its connection pool
    # empty, no statement prepared, its caches empty); the database keeps running, its buffers
    # as the migration and the earlier runs left them. The store keeps no index file.
    if [ "$PG_ON" = 1 ]; then w4_once facteur-pg $P_POP3 - - start_pg_node stop_pg_node "$rep"; fi
done
stop_facteur
stop_dovecot
stop_pg_node

# Every server stays up from here on, each idle while another is measured.
SERVERS=(facteur dovecot)
if [ "$PG_ON" = 1 ]; then SERVERS+=(facteur-pg pg-haproxy-1 pg-haproxy-3); fi
start_all
if [ "$PG_ON" = 1 ]; then
    "$HAPROXY" -db -f "$SCRATCH/haproxy.cfg" >"$SCRATCH/haproxy.log" 2>&1 &
    HPID=$!
    for port in $H1_POP3 $H1_POP3S $H3_POP3 $H3_POP3S; do wait_port $port; done
fi

port_of() { # server plain|pop3s
    local p mode=$2
    case "$1" in
    facteur) p="$F_POP3 $F_POP3S" ;;
    dovecot) p="$D_POP3 $D_POP3S" ;;
    facteur-pg) p="$P_POP3 $P_POP3S" ;;
    pg-haproxy-1) p="$H1_POP3 $H1_POP3S" ;;
    pg-haproxy-3) p="$H3_POP3 $H3_POP3S" ;;
    esac
    set -- $p
    if [ "$mode" = pop3s ]; then echo "$2"; else echo "$1"; fi
}
pids_of() { # server: its processes whose CPU time is the server's (each with its children)
    case "$1" in
    facteur) echo "$FPID" ;;
    dovecot) echo "$DPID" ;;
    facteur-pg) echo "$PPID_NODE" ;;
    pg-haproxy-1) echo "${N_PIDS[1]}" ;;
    pg-haproxy-3) echo "${N_PIDS[1]} ${N_PIDS[2]} ${N_PIDS[3]}" ;;
    esac
}

# --- workloads 1 and 2: full sessions, 10 x 4 KB RETR, 32 at a time ------------------------------

# The time is cut into $ROUNDS rounds, the servers taking turns in the order ABBAAB..., so that
# a change in what else the machine does weighs on both alike.
w12() { # label mode "servers..." extra-args...
    local label=$1 mode=$2
    local -a names
    read -r -a names <<<"$3"
    shift 3
    local common=(--mode "$mode" --user 'u%d' --user-count "$USER_COUNT"
        --concurrency "$CONCURRENCY" --retr 10 "$@")
    local name port pids round order i when
    say "workload $label ($mode) on ${names[*]}: $WARMUP s warm-up each, then $ROUNDS rounds of $ROUND_SECS s each"
    for name in "${names[@]}"; do
        bench /dev/null --port "$(port_of "$name" "$mode")" "${common[@]}" --duration $WARMUP
    done
    for round in $(seq "$ROUNDS"); do
        # Odd rounds in the list's order, even rounds in reverse: ABC CBA ABC...
        order=()
        for i in "${!names[@]}"; do
            if [ $((round % 2)) = 1 ]; then order+=("${names[i]}"); else order=("${names[i]}" "${order[@]}"); fi
        done
        for name in "${order[@]}"; do
            port=$(port_of "$name" "$mode")
            pids=$(pids_of "$name")
            # The server's CPU time around the run: CPU per session does not depend on what
            # else the machine was doing, sessions per second does. Beside it, PostgreSQL's
            # (every postgres process) and HAProxy's, whichever setup runs.
            for when in before after; do
                if [ "$when" = after ]; then
                    bench "$RESULTS/w$label-$name-r$round.json" --port "$port" "${common[@]}" \
                        --duration "$ROUND_SECS"
                fi
                # shellcheck disable=SC2086 # one or several pids
                "${PROBE[@]}" cpu $pids >"$RESULTS/w$label-$name-r$round-cpu-$when.json"
                if [ "$PG_ON" = 1 ]; then
                    "${PROBE[@]}" cpu "$(pg_pid)" >"$RESULTS/w$label-$name-r$round-pgcpu-$when.json"
                    "${PROBE[@]}" cpu "$HPID" >"$RESULTS/w$label-$name-r$round-lbcpu-$when.json"
                fi
            done
        done
    done
}

warm_cache "$SCRATCH/facteur-mail/"u[0-9] "$SCRATCH/facteur-mail/"u[0-9][0-9] \
    "$SCRATCH/dovecot-mail/"u[0-9] "$SCRATCH/dovecot-mail/"u[0-9][0-9]
w12 1 plain "${SERVERS[*]}"
w12 2 pop3s "${SERVERS[*]}" --insecure
# 2r: the same, with clients that resume their TLS sessions (tickets), as clients that
# reconnect every few minutes do.
w12 2r pop3s "${SERVERS[*]}" --insecure --tls-resume

# Workload 1 again with both authentication caches off: every login hashes its password.
caches() { # on|off: set both servers' authentication caches, and restart both
    local ttl=3600 size=10M
    if [ "$1" = off ]; then ttl=0 size=0; fi
    stop_all
    sed -i "s/^cache_ttl_secs = .*/cache_ttl_secs = $ttl/" "$SCRATCH"/facteur*.toml "$SCRATCH"/node*.toml 2>/dev/null || true
    sed -i "s/^auth_cache_size = .*/auth_cache_size = $size/" "$SCRATCH/dovecot.conf"
    start_all
}
caches off
# The nodes behind HAProxy are left out here: the same code as facteur-pg, and time is short.
W1N=(facteur dovecot)
if [ "$PG_ON" = 1 ]; then W1N+=(facteur-pg); fi
w12 1n plain "${W1N[*]}"
caches on

# --- workload 3: RETR of one 64 MiB message, and the raw loopback copy ---------------------------

# One client on both sides of every ratio: `facteur-bench retr` (one session, RETR 1, the answer
# read with 256 KiB reads and counted) against each server, and `facteur-bench raw`, the same
# client code against a sender of the same wire bytes that does nothing else: sendfile(2) (or
# read + write of 64 KiB blocks), and, for POP3S, rustls encrypting them from memory with
# facteur's own server configuration (TLS 1.3, AES-128-GCM). Round 0 warms up; rounds 1 to
# $W3_RUNS are measured, each server and each raw copy in turn.
say "workload 3: RETR of 64 MiB and the raw loopback copy (1 warm-up + $W3_RUNS rounds)"
warm_cache "$SCRATCH/facteur-mail/big" "$SCRATCH/dovecot-mail/big" "$SCRATCH/wire.bin" \
    "$SCRATCH/facteur-mail/bigcrlf" "$SCRATCH/dovecot-mail/bigcrlf"
# How fast one core of this machine seals and opens AES-128-GCM records: over POP3S one core
# must encrypt (the server) and another decrypt (the client) at the speed of the transfer.
"$BENCH" aes-speed --json >"$RESULTS/w3-aes.json"
w3() { # result-name port user [retr options]
    local name=$1 port=$2 user=$3
    shift 3
    "$BENCH" retr --host 127.0.0.1 --port "$port" --user "$user" --password "$PASSWORD" \
        --runs 1 --json "$@" >"$RESULTS/w3-$name-r$round.json"
}
for round in $(seq 0 "$W3_RUNS"); do
    w3 facteur $F_POP3 big
    w3 dovecot $D_POP3 big
    # The message as facteur's delivery stores it: by sendfile over plain TCP, then over POP3S.
    w3 facteur-crlf $F_POP3 bigcrlf
    w3 dovecot-crlf $D_POP3 bigcrlf
    w3 facteur-crlf-tls $F_POP3S bigcrlf --mode pop3s --insecure
    w3 dovecot-crlf-tls $D_POP3S bigcrlf --mode pop3s --insecure
    if [ "$PG_ON" = 1 ]; then w3 facteur-pg $P_POP3 big; fi
    "$BENCH" raw --wire "$SCRATCH/wire.bin" --runs 1 --json >"$RESULTS/w3-raw-r$round.json"
    "$BENCH" raw --wire "$SCRATCH/wire.bin" --runs 1 --json --copy \
        >"$RESULTS/w3-raw-copy-r$round.json"
    "$BENCH" raw --wire "$SCRATCH/wire.bin" --runs 1 --json \
        --tls "$SCRATCH/cert.pem" "$SCRATCH/key.pem" >"$RESULTS/w3-raw-tls-r$round.json"
done
# RETR by sendfile against the raw copy, settled over $W3_PAIRS pairs: on this kind of VM one
# loopback copy runs anywhere from 1.3 to 6 GB/s from one second to the next, so five RETRs
# against five raw copies taken a minute apart can put the same code at 35% or 119% of raw.
# Each pair measures both right after each other (the order alternating from pair to pair),
# and the row is the median of the pairs' ratios.
say "workload 3: RETR by sendfile against the raw copy and against POP3S, $W3_PAIRS alternating pairs"
for pair in $(seq 1 "$W3_PAIRS"); do
    p_raw() {
        "$BENCH" raw --wire "$SCRATCH/wire.bin" --runs 3 --warmup 1 --json \
            >"$RESULTS/w3-pair-raw-p$pair.json"
    }
    p_retr() {
        "$BENCH" retr --host 127.0.0.1 --port $F_POP3 --user bigcrlf --password "$PASSWORD" \
            --runs 3 --warmup 1 --json >"$RESULTS/w3-pair-facteur-crlf-p$pair.json"
    }
    p_tls() {
        "$BENCH" retr --host 127.0.0.1 --port $F_POP3S --user bigcrlf --password "$PASSWORD" \
            --mode pop3s --insecure --runs 3 --warmup 1 --json \
            >"$RESULTS/w3-pair-facteur-crlf-tls-p$pair.json"
    }
    # The plain RETR in the middle: right after (or before) the raw copy, and right before
    # (or after) the same RETR over POP3S, whose row is the median of those pairs' ratios.
    if [ $((pair % 2)) -eq 1 ]; then p_raw; p_retr; p_tls; else p_tls; p_retr; p_raw; fi
done

# --- workload 5: memory per idle authenticated session ----------------------------------------

w5() { # name port server-pid [facteur-bench TLS options]
    local name=$1 port=$2 pid=$3 i
    shift 3
    local err=$RESULTS/w5-$name-bench-stderr.txt
    sleep 1
    "${PROBE[@]}" uss "$pid" >"$RESULTS/w5-$name-before.json"
    if [ "$PG_ON" = 1 ]; then "${PROBE[@]}" uss "$(pg_pid)" >"$RESULTS/w5-$name-pg-before.json"; fi
    "$BENCH" --host 127.0.0.1 --port "$port" "$@" --user 'u%d' --password "$PASSWORD" \
        --user-count "$IDLE_SESSIONS" --concurrency "$IDLE_SESSIONS" \
        --sessions "$IDLE_SESSIONS" --idle 90 --json >"$RESULTS/w5-$name-bench.json" 2>"$err" &
    BPID=$!
    for i in $(seq 900); do
        grep -q 'logged in and idle' "$err" && break
        kill -0 "$BPID" 2>/dev/null || break
        sleep 0.1
    done
    if grep -q 'logged in and idle' "$err"; then
        # Let the last logins settle (Dovecot's pop3 processes finish starting).
        sleep 2
        "${PROBE[@]}" uss "$pid" >"$RESULTS/w5-$name-after.json"
        if [ "$PG_ON" = 1 ]; then "${PROBE[@]}" uss "$(pg_pid)" >"$RESULTS/w5-$name-pg-after.json"; fi
    else
        echo '{"error": "the sessions were never all logged in and idle at once"}' \
            >"$RESULTS/w5-$name-after.json"
    fi
    # The figure is taken: end the idle sessions now rather than wait out --idle.
    stop_pid "$BPID"
    BPID=""
    sleep 2
}

# Each server is restarted first: the baseline must not hold memory that earlier workloads left
# in the allocator (a 64 MiB RETR, a listing of 100,000 messages), which idle sessions would
# then reuse unseen. A few sessions warm up what every server builds on first use.
w5_fresh() { # name port start stop [facteur-bench TLS options]
    local port=$2 start=$3 stop=$4
    shift 4
    $stop
    $start
    bench /dev/null --port "$port" "$@" --user 'u%d' --user-count $USER_COUNT \
        --concurrency $CONCURRENCY --sessions $USER_COUNT
}
say "workload 5: memory per idle authenticated session ($IDLE_SESSIONS sessions), facteur"
w5_fresh facteur $F_POP3 start_facteur stop_facteur
w5 facteur $F_POP3 "$FPID"
say "workload 5: memory per idle authenticated session ($IDLE_SESSIONS sessions), Dovecot"
w5_fresh dovecot $D_POP3 start_dovecot stop_dovecot
w5 dovecot $D_POP3 "$DPID"
# The same over POP3S (implicit TLS): what a TLS session adds to an idle one (goal: <= 8 KiB).
say "workload 5: memory per idle POP3S session ($IDLE_SESSIONS sessions), facteur"
w5_fresh facteur $F_POP3S start_facteur stop_facteur --mode pop3s --insecure
w5 facteur-pop3s $F_POP3S "$FPID" --mode pop3s --insecure
say "workload 5: memory per idle POP3S session ($IDLE_SESSIONS sessions), Dovecot"
w5_fresh dovecot $D_POP3S start_dovecot stop_dovecot --mode pop3s --insecure
w5 dovecot-pop3s $D_POP3S "$DPID" --mode pop3s --insecure
if [ "$PG_ON" = 1 ]; then
    say "workload 5: memory per idle authenticated session ($IDLE_SESSIONS sessions), facteur-pg"
    w5_fresh facteur-pg $P_POP3 start_pg_node stop_pg_node
    w5 facteur-pg $P_POP3 "$PPID_NODE"
fi

# --- the report ---------------------------------------------------------------------------------

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
stop_pid "$HPID"
HPID=""
stop_all
if [ "${BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$SCRATCH/facteur-mail" "$SCRATCH/dovecot-mail" "$SCRATCH/wire.bin"
fi

"$PY" "$HERE/report.py" \
    --results "$RESULTS" \
    --out "$HERE/results/latest.json" \
    --facteur-version "$("$FACTEUR" --version) ($FACTEUR_REV)" \
    --dovecot-version "$(dovecot --version)" \
    --command "$COMMAND" \
    --load "$LOAD_START" --load-end "$LOAD_END" \
    --duration "$DURATION" --concurrency $CONCURRENCY --users $USER_COUNT \
    --idle "$IDLE_SESSIONS" --huge "$HUGE" --reps "$REPS" --scheme "$SCHEME" \
    --rounds "$ROUNDS" --w3-runs "$W3_RUNS" --w3-pairs "$W3_PAIRS" \
    --facteur-log "$SCRATCH/facteur.log" --dovecot-log "$SCRATCH/dovecot.log" \
    --pg "$PG_ON" --migrate-secs "${MIGRATE_SECS:-0}" \
    --pg-version "$([ "$PG_ON" = 1 ] && "$PGBIN/postgres" --version || echo none)" \
    --haproxy-version "$([ "$PG_ON" = 1 ] && "$HAPROXY" -v | head -n 1 || echo none)" \
    --pg-logs "$SCRATCH/facteur-pg.log" "$SCRATCH/node1.log" "$SCRATCH/node2.log" "$SCRATCH/node3.log"
