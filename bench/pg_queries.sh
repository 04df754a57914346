#!/usr/bin/env bash
# bench/pg_queries.sh: what one POP3 session costs the PostgreSQL database, counted by it.
#
#   bash bench/pg_queries.sh [SESSIONS]
#
# Starts a throwaway PostgreSQL cluster (Debian's initdb and pg_ctl, on a Unix socket in a scratch
# folder, as nobody when run as root) with pg_stat_statements, applies facteur's schema, adds 64
# users to the `users` table ({PLAIN} passwords, so that the figures are the database's and not
# the hash's), delivers 10 messages of about 4 KB to each with `facteur deliver`, and runs
# SESSIONS sessions of compare.sh's workload 1 (USER/PASS, STAT, RETR of the 10 messages, QUIT,
# plain, 32 at a time) through one `facteur serve` node with the PostgreSQL store and SQL users.
# Then it prints, per session: statements by kind, transactions, rows and bytes read and
# written, and the sessions/s of that node (on this machine, with the database beside it).
# These are the inputs of the capacity model in docs/capacity.md.
#
# Environment (optional):
#   FACTEUR_BIN        the facteur binary [target/release/facteur, built if missing]
#   FACTEUR_BENCH_BIN  the load generator [target/release/facteur-bench, built if missing]
#   PG_QUERIES_DIR     the scratch folder [/tmp/facteur-pg-queries]; emptied first, removed after
#
# Everything listens on 127.0.0.1 or a Unix socket in the scratch folder.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SESSIONS=${1:-2000}
SCRATCH=${PG_QUERIES_DIR:-/tmp/facteur-pg-queries}
PORT=24110
USERS=64

die() { echo "pg_queries.sh: $*" >&2; exit 1; }
FACTEUR=${FACTEUR_BIN:-$REPO/target/release/facteur}
BENCH=${FACTEUR_BENCH_BIN:-$REPO/target/release/facteur-bench}
if [ ! -x "$FACTEUR" ] || [ ! -x "$BENCH" ]; then
    (cd "$REPO" && cargo build --release -p facteur -p facteur-bench --quiet)
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || die "PostgreSQL is missing (apt-get install postgresql)"

as_owner=()
if [ "$(id -u)" -eq 0 ]; then as_owner=(setpriv --reuid=nobody --regid=nogroup --clear-groups); fi

server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    "${as_owner[@]}" "$PGBIN/pg_ctl" -D "$SCRATCH/pg" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/pg" "$SCRATCH/sock"
[ "$(id -u)" -eq 0 ] && chown nobody "$SCRATCH/pg" "$SCRATCH/sock"
chmod 755 "$SCRATCH"
"${as_owner[@]}" "$PGBIN/initdb" -D "$SCRATCH/pg" -U postgres --auth=trust >/dev/null
"${as_owner[@]}" "$PGBIN/pg_ctl" -D "$SCRATCH/pg" -l "$SCRATCH/pg/log" -w start -o \
    "-c listen_addresses='' -c unix_socket_directories='$SCRATCH/sock' -c fsync=on \
     -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all ${PG_EXTRA_OPTIONS:-}" >/dev/null
psql() { "$PGBIN/psql" -h "$SCRATCH/sock" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "CREATE DATABASE mail"
psql -d mail -c "CREATE EXTENSION pg_stat_statements"

cat >"$SCRATCH/facteur.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
hostname = "localhost"
$([ "$(id -u)" -eq 0 ] && echo 'user = "nobody"')

[limits]
max_connections_per_ip = 10000
shutdown_grace_secs = 2

[auth]
backend = "sql"
plaintext_auth = "always"

[store]
backend = "postgresql"
url = "host=$SCRATCH/sock dbname=mail user=postgres"

[log]
level = "warn"
EOF
"$FACTEUR" db migrate -c "$SCRATCH/facteur.toml" >/dev/null
for i in $(seq 0 $((USERS - 1))); do
    echo benchpass | "$FACTEUR" user add -c "$SCRATCH/facteur.toml" --scheme PLAIN --password-stdin "u$i" >/dev/null
done
python3 "$HERE/seed.py" "$SCRATCH/seed" "$SCRATCH/wire.bin" --users $USERS --huge 0 --big-mib 1 >/dev/null
for i in $(seq 0 $((USERS - 1))); do
    for f in "$SCRATCH/seed/u$i/Maildir/cur/"*; do
        "$FACTEUR" deliver -c "$SCRATCH/facteur.toml" "u$i" <"$f"
    done
done

"$FACTEUR" serve -c "$SCRATCH/facteur.toml" 2>"$SCRATCH/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), timeout=1)" 2>/dev/null && break
    sleep 0.2
done
# A warm-up, so that the counts are those of sessions on a running node (pool open, statements
# prepared), then the measured run.
"$BENCH" --port $PORT --mode plain --user 'u%d' --password benchpass --user-count $USERS \
    --concurrency 32 --retr 10 --sessions 200 --json >/dev/null
psql -d mail -c "SELECT pg_stat_statements_reset(), pg_stat_reset(), pg_stat_reset_shared('wal')" >/dev/null
"$BENCH" --port $PORT --mode plain --user 'u%d' --password benchpass --user-count $USERS \
    --concurrency 32 --retr 10 --sessions "$SESSIONS" --json >"$SCRATCH/bench.json"
sleep 1 # let the statistics collector catch up
python3 - "$SCRATCH/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"sessions: {r['sessions_ok']} ok, {r['sessions_failed']} failed, "
      f"{r['sessions_per_sec']:.0f} sessions/s on one node beside its database")
if r["errors"]:
    sys.exit(f"errors: {r['errors_by_kind']}")
PY
echo "per session (workload 1: USER/PASS, STAT, 10 x RETR of 4 KB, QUIT):"
psql -d mail -A -F ' | ' -t <<SQL
SELECT 'statements, total' , round(sum(calls)::numeric / $SESSIONS, 2)
  FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'mail')
UNION ALL
SELECT 'transactions committed', round(xact_commit::numeric / $SESSIONS, 2)
  FROM pg_stat_database WHERE datname = 'mail'
UNION ALL
SELECT 'rows read (fetched)', round(tup_fetched::numeric / $SESSIONS, 2)
  FROM pg_stat_database WHERE datname = 'mail'
UNION ALL
SELECT 'rows written (ins+upd+del)', round((tup_inserted + tup_updated + tup_deleted)::numeric / $SESSIONS, 2)
  FROM pg_stat_database WHERE datname = 'mail'
UNION ALL
SELECT 'WAL bytes', round(wal_bytes / $SESSIONS, 0) FROM pg_stat_wal
UNION ALL
SELECT 'WAL flushes (fsync)', round(wal_sync::numeric / $SESSIONS, 2) FROM pg_stat_wal;
SQL
echo "statements, per session, by kind:"
psql -d mail -A -F ' | ' -t <<SQL
SELECT round(sum(calls)::numeric / $SESSIONS, 2), regexp_replace(left(query, 100), '\s+', ' ', 'g')
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'mail')
GROUP BY query ORDER BY 1 DESC;
SQL
