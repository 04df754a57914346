#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for a test run: one server that every test process shares
# (each test in a fresh database of its own), instead of one initdb per process.
#
#   bash tests/pg/throwaway.sh start        makes and starts a cluster, prints its folder
#   bash tests/pg/throwaway.sh url FOLDER   prints the connection string of its admin role
#   bash tests/pg/throwaway.sh stop FOLDER  stops it (immediate) and removes the folder
#
# The cluster listens on a Unix socket only, in the folder (under /tmp whatever TMPDIR says:
# nobody must reach it, and a socket path must stay short), with durability off (fsync,
# synchronous_commit, full_page_writes): it is thrown away. Run as root, it runs as nobody
# (initdb refuses root). Debian's initdb and pg_ctl, the newest under /usr/lib/postgresql.
# The caller stops it with a trap, as .ci/run does: `FACTEUR_TEST_DATABASE_URL=$(... url ...)`.
set -euo pipefail

die() { echo "throwaway.sh: $*" >&2; exit 1; }

as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    as_owner=(setpriv "--reuid=$(id -u nobody)" "--regid=$(id -g nobody)" --clear-groups)
fi

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$bin" ] && [ -x "$bin/initdb" ] || die "no PostgreSQL under /usr/lib/postgresql/*/bin"
    echo "$bin"
}

# A folder this script made: the data directory and the socket live there.
check_folder() {
    [ -n "${1:-}" ] && [ -d "$1/data" ] || die "not a throwaway cluster's folder: ${1:-(none)}"
    case "$1" in /tmp/facteur-test-pg.*) ;; *) die "not a throwaway cluster's folder: $1" ;; esac
}

case "${1:-}" in
start)
    bin=$(pg_bin)
    dir=$(mktemp -d /tmp/facteur-test-pg.XXXXXX)
    if [ "${#as_owner[@]}" -gt 0 ]; then chown "$(id -u nobody):$(id -g nobody)" "$dir"; fi
    if ! "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 \
        --no-locale --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        die "initdb failed"
    fi
    # max_connections: each test process holds a few pools (the server's, the fixture's); many
    # run at once.
    opts="-k $dir -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
    opts="$opts -c full_page_writes=off -c max_connections=400 -c shared_buffers=32MB"
    if ! "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 -o "$opts" \
        start >"$dir/pg_ctl.log" 2>&1; then
        cat "$dir/pg_ctl.log" "$dir/log" >&2 || true
        "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" stop -m immediate >/dev/null 2>&1 || true
        rm -rf "$dir"
        die "pg_ctl start failed"
    fi
    echo "$dir"
    ;;
url)
    check_folder "${2:-}"
    echo "host=$2 user=postgres dbname=postgres"
    ;;
stop)
    check_folder "${2:-}"
    bin=$(pg_bin)
    if [ -f "$2/data/postmaster.pid" ]; then
        "${as_owner[@]}" "$bin/pg_ctl" -D "$2/data" stop -m immediate >/dev/null 2>&1 || true
    fi
    rm -rf "$2"
    ;;
*)
    die "usage: throwaway.sh start | url FOLDER | stop FOLDER"
    ;;
esac
