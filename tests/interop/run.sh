#!/usr/bin/env bash
# The interop matrix: real POP3 clients that nobody here wrote, against a real `facteur serve`.
#
# For each client and each mode it supports (plain POP3, STLS, POP3S), the script delivers three
# known messages with `facteur deliver` (one with lines that start with a dot, one stored with
# bare LF line ends, one of about 200 KB), has the client list, retrieve and delete them, checks
# what the client stored against the originals (interop.py check), and checks that the maildrop
# is empty afterwards. It prints a table client x mode and exits non-zero on any FAIL.
#
# Then the clients that fetch whatever is there (not curl and openssl, scripted for three
# messages) each make a first login to a maildrop of 300 messages written the way Postfix writes
# them, with no size in their names: facteur reads none of them at login (its reply then has no
# octet count) and sizes them all at the first STAT, LIST or RETR. Each must get all 300.
#
# With INTEROP_BACKEND=postgresql the maildrop is in PostgreSQL instead of a Maildir (a
# throwaway cluster made with Debian's initdb and pg_ctl in a temporary folder, run as nobody
# when root and removed at exit, or a fresh database on the server FACTEUR_TEST_DATABASE_URL
# names, dropped at exit); with INTEROP_VIA=haproxy the clients reach INTEROP_NODES facteur
# nodes (3) through a real HAProxy (Debian's package, round robin, send-proxy-v2 and health
# checks), each node with its own configuration and `proxy_protocol = ["127.0.0.1/32"]`. Every
# session must then have come through HAProxy, and every node must have served some.
#
# Every connection goes to 127.0.0.1; every client call is bounded by `timeout`.
#
#   bash tests/interop/run.sh
#   INTEROP_BACKEND=postgresql INTEROP_VIA=haproxy bash tests/interop/run.sh
#
# Environment:
#   INTEROP_CLIENTS   the clients to run (default: all), e.g. "curl mpop"
#   INTEROP_MODES     the modes to run (default: "plain stls pop3s")
#   FACTEUR_BIN       a facteur binary to use instead of building one
#   INTEROP_KEEP=1    keep the work folder even when everything passed
#   INTEROP_UNSIZED=0 skip the maildrop of 300 messages without sizes (a Maildir case: skipped
#                     with the PostgreSQL backend, whose sizes are recorded at delivery)
#   INTEROP_BACKEND   maildir (default) or postgresql
#   INTEROP_VIA       direct (default: the clients connect to one node) or haproxy
#   INTEROP_NODES     how many nodes behind HAProxy (default 3)
#   FACTEUR_TEST_DATABASE_URL  an existing PostgreSQL server (a role that may create databases)
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tests/interop"
STARTED=$(date +%s)
CLIENT_TIMEOUT=60

ALL_CLIENTS="curl poplib fetchmail mpop getmail6 net-pop3 openssl s-nail"
ALL_MODES="plain stls pop3s"
CLIENTS=${INTEROP_CLIENTS:-$ALL_CLIENTS}
MODES=${INTEROP_MODES:-$ALL_MODES}
BACKEND=${INTEROP_BACKEND:-maildir}
VIA=${INTEROP_VIA:-direct}
case $BACKEND in maildir|postgresql) ;; *) echo "INTEROP_BACKEND: maildir or postgresql" >&2; exit 2 ;; esac
case $VIA in
    direct) NODES=1 ;;
    haproxy) NODES=${INTEROP_NODES:-3} ;;
    *) echo "INTEROP_VIA: direct or haproxy" >&2; exit 2 ;;
esac
case $NODES in [1-9]) ;; *) echo "INTEROP_NODES: 1 to 9" >&2; exit 2 ;; esac

say() { printf '%s\n' "$*"; }
# Stop the whole run (a broken setup, not a client's failure); the work folder is kept.
die() { printf 'interop: %s\n' "$*" >&2; ANY_FAIL=1; exit 2; }

# ---------------------------------------------------------------------------------------------
# 1. The clients (Debian packages), installed when missing.

install_clients() {
    local need=()
    command -v curl >/dev/null 2>&1 || need+=(curl)
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    command -v fetchmail >/dev/null 2>&1 || need+=(fetchmail)
    command -v mpop >/dev/null 2>&1 || need+=(mpop)
    command -v getmail >/dev/null 2>&1 || need+=(getmail6)
    command -v s-nail >/dev/null 2>&1 || need+=(s-nail)
    # Net::POP3 is in perl's own modules (libnet); STLS and POP3S need IO::Socket::SSL.
    perl -MNet::POP3 -e1 >/dev/null 2>&1 || need+=(perl)
    perl -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need+=(libio-socket-ssl-perl)
    if [ "$BACKEND" = postgresql ]; then
        # psql empties and counts the maildrop between cases; initdb and pg_ctl make the
        # throwaway cluster unless a server is given.
        command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
        if [ -z "${FACTEUR_TEST_DATABASE_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
            need+=(postgresql)
        fi
    fi
    if [ "$VIA" = haproxy ] && ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
        need+=(haproxy)
    fi
    if [ "${#need[@]}" -gt 0 ]; then
        say "installing: ${need[*]}"
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            ca-certificates "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
    fi
    say "clients:"
    say "  $(curl --version | head -n 1)"
    say "  $(python3 --version) (poplib)"
    say "  $(openssl version)"
    say "  $(fetchmail --version 2>/dev/null | grep -m1 'release')"
    say "  $(mpop --version | head -n 1)"
    say "  getmail $(getmail --version 2>&1 | head -n 1)"
    say "  Net::POP3 $(perl -MNet::POP3 -e 'print $Net::POP3::VERSION'), IO::Socket::SSL $(perl -MIO::Socket::SSL -e 'print $IO::Socket::SSL::VERSION')"
    say "  $(s-nail -V 2>&1 | head -n 1)"
    if [ "$VIA" = haproxy ]; then
        HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
        say "  $("$HAPROXY" -v | head -n 1)"
    fi
    if [ "$BACKEND" = postgresql ]; then say "  $(psql --version)"; fi
}

# ---------------------------------------------------------------------------------------------
# 2. facteur itself.

build_facteur() {
    if [ -n "${FACTEUR_BIN:-}" ]; then
        BIN=$FACTEUR_BIN
    else
        # The dev profile: CI's test run builds the same artifacts right after.
        (cd "$ROOT" && cargo build -q -p facteur --bin facteur) || die "cargo build failed"
        BIN="$ROOT/target/debug/facteur"
    fi
    [ -x "$BIN" ] || die "no facteur binary at $BIN"
    say "facteur: $BIN ($("$BIN" --version))"
}

# ---------------------------------------------------------------------------------------------
# 3. A fresh installation and a running server.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/facteur-interop.XXXXXX")
NODE_PIDS=() NODE_LOGS=() NODE_NAMES=()
HAPROXY_PID=""
# The throwaway PostgreSQL cluster (its folder, its programs, who runs them), or the database
# made on FACTEUR_TEST_DATABASE_URL's server.
PG_DIR="" PG_BIN="" PG_AS=() PG_ADMIN="" PG_DBNAME="" DB_URL=""
ANY_FAIL=0

stop_pid() {
    local pid=$1
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
}

cleanup() {
    stop_pid "$HAPROXY_PID"
    for pid in "${NODE_PIDS[@]}"; do stop_pid "$pid"; done
    if [ -n "$PG_DIR" ]; then
        if [ -f "$PG_DIR/data/postmaster.pid" ]; then
            "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" stop -m immediate >/dev/null 2>&1
        fi
        rm -rf "$PG_DIR"
    fi
    if [ -n "$PG_DBNAME" ]; then
        psql "$PG_ADMIN" -qAt -c "DROP DATABASE IF EXISTS $PG_DBNAME WITH (FORCE)" >/dev/null 2>&1
    fi
    if [ "$ANY_FAIL" -eq 0 ] && [ "${INTEROP_KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        say "work folder kept: $WORK (server logs: ${NODE_LOGS[*]:-none}${HAPROXY_PID:+, $WORK/server/haproxy.log})"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A CA and a server certificate it signs, for 127.0.0.1 and localhost: clients check the
# server's certificate against the CA, as they would in real use.
make_certificates() {
    local d="$WORK/tls"
    mkdir -p "$d"
    (
        cd "$d" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout ca.key -out ca.pem -days 2 -subj "/CN=facteur interop CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout key.pem -out server.csr -subj "/CN=127.0.0.1" &&
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > server.ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
            -days 2 -extfile server.ext -out cert.pem
    ) >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log"; die "cannot make the certificates"; }
    CA="$d/ca.pem"
}

# The PostgreSQL database of the run: DB_URL, and `facteur db migrate` applied to it later.
start_postgres() {
    if [ -n "${FACTEUR_TEST_DATABASE_URL:-}" ]; then
        PG_ADMIN=$FACTEUR_TEST_DATABASE_URL
        PG_DBNAME="facteur_interop_$$"
        psql "$PG_ADMIN" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $PG_DBNAME" \
            || die "cannot create a database on FACTEUR_TEST_DATABASE_URL's server"
        # The same server, the new database (a URL's path, or a later dbname= key).
        DB_URL=$(python3 -c '
import sys, urllib.parse as u
url, name = sys.argv[1], sys.argv[2]
if url.lower().startswith(("postgres://", "postgresql://")):
    print(u.urlunsplit(u.urlsplit(url)._replace(path="/" + name)))
else:
    print(url + " dbname=" + name)' "$PG_ADMIN" "$PG_DBNAME")
        say "PostgreSQL: database $PG_DBNAME on FACTEUR_TEST_DATABASE_URL's server"
        return
    fi
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL under /usr/lib/postgresql/*/bin"
    # Under /tmp whatever TMPDIR says: nobody must reach it, and a socket path is short.
    PG_DIR=$(mktemp -d /tmp/facteur-interop-pg.XXXXXX)
    if [ "$(id -u)" -eq 0 ]; then
        # initdb refuses root: the cluster runs as nobody.
        chown "$(id -u nobody):$(id -g nobody)" "$PG_DIR"
        PG_AS=(setpriv "--reuid=$(id -u nobody)" "--regid=$(id -g nobody)" --clear-groups)
    fi
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 --no-locale \
        --no-sync >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log"; die "initdb failed"; }
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 \
        -o "-k $PG_DIR -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB" \
        start >"$WORK/pg_ctl.log" 2>&1 || { cat "$WORK/pg_ctl.log" "$PG_DIR/log"; die "pg_ctl start failed"; }
    psql "host=$PG_DIR user=postgres dbname=postgres" -qAt -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE facteur" || die "cannot create the database"
    DB_URL="host=$PG_DIR user=postgres dbname=facteur"
    say "PostgreSQL: $("$PG_BIN/postgres" --version), a throwaway cluster on a Unix socket in $PG_DIR"
}

# One SQL statement on the run's database; prints the result, unaligned.
sql() { psql "$DB_URL" -qAt -v ON_ERROR_STOP=1 -c "$1"; }

# A free TCP port on 127.0.0.1 (bound, then released).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts node $1 (n1, n2...) on configuration $2; sets NODE_PLAIN and NODE_TLS to its ports.
start_node() {
    local name=$1 config=$2 log="$WORK/server/facteur-$1.log" pid
    "$BIN" serve -c "$config" >"$log" 2>&1 &
    pid=$!
    NODE_PIDS+=("$pid") NODE_LOGS+=("$log") NODE_NAMES+=("$name")
    NODE_PLAIN="" NODE_TLS=""
    for _ in $(seq 100); do
        NODE_PLAIN=$(sed -n 's/.*listening address=127\.0\.0\.1:\([0-9]*\) kind="pop3 (STLS)".*/\1/p' "$log" | head -n 1)
        NODE_TLS=$(sed -n 's/.*listening address=127\.0\.0\.1:\([0-9]*\) kind="\{0,1\}pop3s"\{0,1\}.*/\1/p' "$log" | head -n 1)
        [ -n "$NODE_PLAIN" ] && [ -n "$NODE_TLS" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$NODE_PLAIN" ] || [ -z "$NODE_TLS" ]; then
        cat "$log"
        die "node $name did not start"
    fi
    say "node $name: pid $pid, POP3+STLS on 127.0.0.1:$NODE_PLAIN, POP3S on 127.0.0.1:$NODE_TLS"
}

# HAProxy in front of the nodes: a frontend for POP3 (STLS) and one for POP3S, each balancing
# round robin over the nodes' listeners with a PROXY v2 header and health checks. TLS passes
# through: each node has the certificate.
start_haproxy() {
    local cfg="$WORK/server/haproxy.cfg" plain_servers=$1 tls_servers=$2
    PLAIN_PORT=$(free_port) TLS_PORT=$(free_port)
    cat > "$cfg" <<EOF
global
    maxconn 500

defaults
    mode tcp
    timeout connect 5s
    timeout client 90s
    timeout server 90s
    retries 3
    option redispatch 1

frontend pop3
    bind 127.0.0.1:$PLAIN_PORT
    default_backend facteur_pop3

frontend pop3s
    bind 127.0.0.1:$TLS_PORT
    default_backend facteur_pop3s

backend facteur_pop3
    balance roundrobin
$plain_servers
backend facteur_pop3s
    balance roundrobin
$tls_servers
EOF
    "$HAPROXY" -db -f "$cfg" >"$WORK/server/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    local up=0
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PLAIN_PORT") 2>/dev/null \
            && (exec 3<>"/dev/tcp/127.0.0.1/$TLS_PORT") 2>/dev/null; then
            up=1
            break
        fi
        kill -0 "$HAPROXY_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$up" -ne 1 ]; then
        cat "$WORK/server/haproxy.log"
        die "haproxy did not start"
    fi
    say "haproxy: pid $HAPROXY_PID, POP3+STLS on 127.0.0.1:$PLAIN_PORT, POP3S on 127.0.0.1:$TLS_PORT, round robin over $NODES nodes"
}

start_server() {
    local d="$WORK/server"
    mkdir -p "$d"
    USER_NAME=interop
    PASSWORD_FILE="$d/password"
    openssl rand -hex 12 > "$PASSWORD_FILE"
    PASSWORD=$(cat "$PASSWORD_FILE")
    printf '%s:{PLAIN}%s\n' "$USER_NAME" "$PASSWORD" > "$d/users"
    CONFIG="$d/facteur.toml"
    # Port 0: the kernel picks free ports, read back from the "listening" log lines. The
    # mechanisms are all those a {PLAIN} password can serve, so that each client picks the one
    # it likes best, as it would against a real server.
    local store_section
    if [ "$BACKEND" = postgresql ]; then
        start_postgres
        # TOML basic string: backslashes and quotes escaped.
        store_section="[store]
backend = \"postgresql\"
url = \"$(printf '%s' "$DB_URL" | sed 's/\\/\\\\/g; s/"/\\"/g')\""
    else
        store_section='[store]
maildir = "mail/%u/Maildir"'
    fi
    cat > "$CONFIG" <<EOF
[server]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
hostname = "interop.invalid"
# CI runs this as root, and this script writes the maildrop as root between cases: the matrix
# is about what clients see on the wire. Dropping root is tested in tests/privileges.rs.
allow_root = true

[limits]
failed_login_delay_ms = 100
shutdown_grace_secs = 2

[auth]
passwd_file = "users"
plaintext_auth = "loopback"
sasl = ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]

[tls]
certificate = "$WORK/tls/cert.pem"
private_key = "$WORK/tls/key.pem"

$store_section

[log]
level = "debug"
EOF
    MAILDIR="$d/mail/$USER_NAME/Maildir"
    if [ "$BACKEND" = postgresql ]; then
        "$BIN" db migrate -c "$CONFIG" >"$d/migrate.log" 2>&1 \
            || { cat "$d/migrate.log"; die "facteur db migrate failed"; }
    fi
    if [ "$VIA" = direct ]; then
        start_node n1 "$CONFIG"
        PLAIN_PORT=$NODE_PLAIN TLS_PORT=$NODE_TLS
        return
    fi
    # Behind HAProxy: each node its own configuration, which trusts HAProxy's PROXY headers.
    local i plain_servers="" tls_servers=""
    for i in $(seq "$NODES"); do
        sed 's/^\[server\]$/[server]\nproxy_protocol = ["127.0.0.1\/32"]/' "$CONFIG" > "$d/facteur-n$i.toml"
        grep -q '^proxy_protocol' "$d/facteur-n$i.toml" || die "cannot write the configuration of node n$i"
        start_node "n$i" "$d/facteur-n$i.toml"
        plain_servers+="    server n$i 127.0.0.1:$NODE_PLAIN send-proxy-v2 check inter 1s"$'\n'
        tls_servers+="    server n$i 127.0.0.1:$NODE_TLS send-proxy-v2 check inter 1s"$'\n'
    done
    start_haproxy "$plain_servers" "$tls_servers"
}

# The server log lines since MARK (from log_mark), each node's prefixed with its name.
log_mark() {
    local log marks=""
    for log in "${NODE_LOGS[@]}"; do marks+="$(( $(wc -l < "$log") + 1 )) "; done
    echo "$marks"
}
log_since() {
    local marks=($1) i
    for i in "${!NODE_LOGS[@]}"; do
        tail -n +"${marks[$i]:-1}" "${NODE_LOGS[$i]}" | sed "s/^/${NODE_NAMES[$i]} /"
    done
}

# ---------------------------------------------------------------------------------------------
# 4. The clients. Each client_X MODE CASE_DIR runs the client, with its output in
# CASE_DIR/client.log, and sets OUT_FORMAT and OUT_PATH to what interop.py check reads.

port_of() { if [ "$1" = pop3s ]; then echo "$TLS_PORT"; else echo "$PLAIN_PORT"; fi; }

supports() {
    case "$1/$2" in
        getmail6/stls) return 1 ;;   # getmail6 has no STLS (only POP3 and POP3-over-SSL)
        openssl/plain) return 1 ;;   # s_client speaks TLS only
        *) return 0 ;;
    esac
}

# curl: LIST, then the three RETRs on one connection, then the three DELEs on one connection.
# In plain mode it picks the SASL mechanism itself (CRAM-MD5, the best it knows of those
# offered); over TLS it is told to use LOGIN (STLS) and PLAIN (POP3S), which no other client
# here picks on its own.
client_curl() {
    local mode=$1 c=$2 port url tls=()
    port=$(port_of "$mode")
    case $mode in
        plain) url="pop3://127.0.0.1:$port" ;;
        stls) url="pop3://127.0.0.1:$port"; tls=(--ssl-reqd --cacert "$CA" --login-options AUTH=LOGIN) ;;
        pop3s) url="pop3s://127.0.0.1:$port"; tls=(--cacert "$CA" --login-options AUTH=PLAIN) ;;
    esac
    local base=(timeout "$CLIENT_TIMEOUT" curl -sS -v --user "$USER_NAME:$PASSWORD" "${tls[@]}")
    mkdir -p "$c/out"
    OUT_FORMAT=files OUT_PATH="$c/out"
    "${base[@]}" "$url/" -o "$c/list.txt" || return 1
    echo "--- LIST:"; cat "$c/list.txt"
    [ "$(grep -c . "$c/list.txt")" -eq 3 ] || { echo "LIST did not give 3 messages"; return 1; }
    "${base[@]}" "$url/1" -o "$c/out/1.eml" "$url/2" -o "$c/out/2.eml" "$url/3" -o "$c/out/3.eml" \
        || return 1
    "${base[@]}" -X DELE -I "$url/1" "$url/2" "$url/3" || return 1
}

client_poplib() {
    local mode=$1 c=$2
    OUT_FORMAT=files OUT_PATH="$c/out"
    timeout "$CLIENT_TIMEOUT" python3 "$HERE/clients/poplib_client.py" "$mode" 127.0.0.1 \
        "$(port_of "$mode")" "$CA" "$USER_NAME" "$PASSWORD_FILE" "$c/out"
}

client_net-pop3() {
    local mode=$1 c=$2
    OUT_FORMAT=files OUT_PATH="$c/out"
    timeout "$CLIENT_TIMEOUT" perl "$HERE/clients/net_pop3.pl" "$mode" 127.0.0.1 \
        "$(port_of "$mode")" "$CA" "$USER_NAME" "$PASSWORD_FILE" "$c/out"
}

# fetchmail hands each message to an MDA that writes it to a file of its own. It checks the
# certificate's names as DNS names only (not the IP address SAN): sslcommonname says which.
client_fetchmail() {
    local mode=$1 c=$2 tls
    case $mode in
        plain) tls="sslproto ''" ;;
        stls) tls="sslproto 'tls1.2+' sslcertck sslcertfile '$CA' sslcommonname localhost" ;;
        pop3s) tls="ssl sslproto 'tls1.2+' sslcertck sslcertfile '$CA' sslcommonname localhost" ;;
    esac
    mkdir -p "$c/out" "$c/home"
    cat > "$c/fetchmailrc" <<EOF
set no syslog
set no bouncemail
poll 127.0.0.1 protocol pop3 port $(port_of "$mode") timeout 30
    user "$USER_NAME" password "$PASSWORD" is "$(id -un)" here
    mda "$HERE/clients/save-message.sh $c/out"
    nokeep fetchall no rewrite
    $tls
EOF
    chmod 600 "$c/fetchmailrc"
    OUT_FORMAT=files OUT_PATH="$c/out"
    # Exit 0: mail was retrieved (1 would mean none was). A lock file of its own: as root,
    # fetchmail's default is /var/run/fetchmail.pid whatever FETCHMAILHOME says, and another
    # fetchmail running on the machine (a benchmark's) would make it exit 8.
    HOME="$c/home" FETCHMAILHOME="$c/home" FETCHMAILUSER="$(id -un)" \
        timeout "$CLIENT_TIMEOUT" fetchmail -v -v --nodetach --pidfile "$c/home/fetchmail.pid" \
        -f "$c/fetchmailrc"
}

# mpop delivers into a Maildir; "auth on" lets it choose the mechanism.
client_mpop() {
    local mode=$1 c=$2 tls
    case $mode in
        plain) tls="tls off" ;;
        stls) tls=$'tls on\ntls_starttls on' ;;
        pop3s) tls=$'tls on\ntls_starttls off' ;;
    esac
    mkdir -p "$c/Maildir/new" "$c/Maildir/cur" "$c/Maildir/tmp"
    cat > "$c/mpoprc" <<EOF
defaults
tls_trust_file $CA
uidls_file $c/mpop-uidls
account interop
host 127.0.0.1
port $(port_of "$mode")
user $USER_NAME
password $PASSWORD
auth on
$tls
delivery maildir $c/Maildir
keep off
only_new off
timeout 30
EOF
    chmod 600 "$c/mpoprc"
    OUT_FORMAT=maildir OUT_PATH="$c/Maildir"
    timeout "$CLIENT_TIMEOUT" mpop --debug -C "$c/mpoprc" interop
}

# getmail6 refuses to deliver as root: as root, it delivers as "nobody" (its `user` option).
client_getmail6() {
    local mode=$1 c=$2 retriever extra="" as_user=""
    case $mode in
        plain) retriever=SimplePOP3Retriever ;;
        pop3s) retriever=SimplePOP3SSLRetriever; extra="ca_certs = $CA" ;;
    esac
    mkdir -p "$c/Maildir/new" "$c/Maildir/cur" "$c/Maildir/tmp" "$c/getmail"
    if [ "$(id -u)" -eq 0 ]; then
        as_user="user = nobody"
        chmod 755 "$WORK" "$WORK/cases" "$c"
        chown -R nobody "$c/Maildir"
    fi
    cat > "$c/getmailrc" <<EOF
[retriever]
type = $retriever
server = 127.0.0.1
port = $(port_of "$mode")
username = $USER_NAME
password = $PASSWORD
$extra

[destination]
type = Maildir
path = $c/Maildir/
$as_user

[options]
verbose = 2
read_all = true
delete = true
EOF
    OUT_FORMAT=maildir OUT_PATH="$c/Maildir"
    timeout "$CLIENT_TIMEOUT" getmail --rcfile="$c/getmailrc" --getmaildir="$c/getmail"
}

# openssl s_client: every command pipelined at once after the TLS handshake (the server offers
# PIPELINING), and the RETR replies cut out of the raw transcript.
client_openssl() {
    local mode=$1 c=$2 starttls=() greeting=1
    if [ "$mode" = stls ]; then starttls=(-starttls pop3); greeting=0; fi
    printf 'USER %s\r\nPASS %s\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\nDELE 1\r\nDELE 2\r\nDELE 3\r\nQUIT\r\n' \
        "$USER_NAME" "$PASSWORD" > "$c/commands"
    OUT_FORMAT=files OUT_PATH="$c/out"
    local rc=0
    timeout "$CLIENT_TIMEOUT" openssl s_client -quiet -nocommands -verify_return_error \
        -CAfile "$CA" -verify_ip 127.0.0.1 -connect "127.0.0.1:$(port_of "$mode")" "${starttls[@]}" \
        < "$c/commands" > "$c/transcript" || rc=$?
    python3 "$HERE/interop.py" transcript "$c/transcript" "$c/out" "$greeting" || return 1
    # s_client fails when the TCP connection ends without a TLS close_notify alert after the
    # QUIT reply (RFC 8446 section 6.1: each party MUST send close_notify before closing).
    if [ "$rc" -ne 0 ] && grep -q 'unexpected eof while reading' "$c/client.log" 2>/dev/null; then
        echo "the server closed the connection without a TLS close_notify" | tee "$c/reason"
    fi
    return "$rc"
}

# s-nail in batch mode: open the POP3 folder, list it, copy every message to an mbox, delete
# them all, quit (which is when a POP3 folder sends DELE and QUIT).
client_s-nail() {
    local mode=$1 c=$2 url tls=()
    case $mode in
        plain) url="pop3://$USER_NAME@127.0.0.1:$(port_of "$mode")" ;;
        stls) url="pop3://$USER_NAME@127.0.0.1:$(port_of "$mode")"; tls=(-S pop3-use-starttls) ;;
        pop3s) url="pop3s://$USER_NAME@127.0.0.1:$(port_of "$mode")" ;;
    esac
    OUT_FORMAT=mbox OUT_PATH="$c/mbox"
    printf 'headers\ncopy * %s\ndelete *\nquit\n' "$c/mbox" |
        HOME="$c" timeout "$CLIENT_TIMEOUT" s-nail -#:/ -S v15-compat -S verbose \
            -S password="$PASSWORD" -S pop3-no-apop \
            -S tls-ca-file="$CA" -S tls-ca-no-defaults "${tls[@]}" -f "$url"
}

# ---------------------------------------------------------------------------------------------
# 5. One case: deliver, run the client, check.

declare -A RESULT REASON LOGIN SERVED

# How the client logged in, from the commands its verbose output shows (curl "> AUTH X", mpop
# "--> AUTH X", fetchmail "> AUTH X", poplib "*cmd* 'USER", Net::POP3 ">>> USER", the openssl
# transcript); getmail6 and s-nail do not show their commands, and send USER/PASS.
login_used() {
    local client=$1 c=$2 mech
    mech=$(grep -h -o -m1 -E "(AUTH [A-Z0-9-]+|[>'] ?USER |^USER |APOP )" "$c/client.log" "$c/commands" 2>/dev/null | head -n 1)
    case $mech in
        *AUTH*) echo "AUTH ${mech##*AUTH }" ;;
        *USER*) echo "USER/PASS" ;;
        *APOP*) echo "APOP" ;;
        *) case $client in getmail6|s-nail) echo "USER/PASS" ;; *) echo "?" ;; esac ;;
    esac
}

maildrop_count() {
    if [ "$BACKEND" = postgresql ]; then
        sql "SELECT count(*) FROM messages m JOIN maildrops d ON d.id = m.maildrop_id WHERE d.name = '$USER_NAME'"
    else
        find "$MAILDIR/new" "$MAILDIR/cur" -type f ! -name '.*' 2>/dev/null | wc -l
    fi
}

maildrop_empty() {
    if [ "$BACKEND" = postgresql ]; then
        sql "DELETE FROM messages WHERE maildrop_id IN (SELECT id FROM maildrops WHERE name = '$USER_NAME')" >/dev/null \
            || die "cannot empty the maildrop"
    else
        rm -f "$MAILDIR"/new/* "$MAILDIR"/cur/* 2>/dev/null
    fi
}

# The server's "session ended" lines of the case (since the log mark $2) must show that the
# mode was really used: no TLS in plain mode, TLS in the others (so a client that silently
# skipped STLS fails), and at least one logged-in session; behind HAProxy, that every session
# came through it (the PROXY header's `proxy=` field).
sessions_match_mode() {
    local mode=$1 from=$2 lines opened ended
    # The server writes "session ended" after the QUIT reply and the TLS shutdown, so it may
    # come a moment after the client exits: wait until each successful login has one.
    for _ in $(seq 100); do
        opened=$(log_since "$from" | grep ' login ' | grep 'outcome=ok' | grep -c "user=\"$USER_NAME\"")
        ended=$(log_since "$from" | grep 'session ended' | grep -c "user=\"$USER_NAME\"")
        [ "$ended" -ge "$opened" ] && break
        sleep 0.1
    done
    lines=$(log_since "$from" | grep 'session ended' | grep "user=\"$USER_NAME\"")
    printf '%s\n' "$lines"
    if [ -z "$lines" ]; then
        echo "no session of $USER_NAME in the server log"
        return 1
    fi
    if [ "$VIA" = haproxy ] && printf '%s\n' "$lines" | grep -v -q 'proxy=127\.0\.0\.1:'; then
        echo "a session did not come through HAProxy"
        return 1
    fi
    if [ "$mode" = plain ]; then
        if printf '%s\n' "$lines" | grep -v -q 'tls="none"'; then
            echo "a session used TLS in plain mode"
            return 1
        fi
    elif printf '%s\n' "$lines" | grep -q 'tls="none"'; then
        echo "a session did not use TLS in $mode mode"
        return 1
    fi
}

run_case() {
    local client=$1 mode=$2
    local c="$WORK/cases/$client-$mode" marker rc
    mkdir -p "$c"
    marker="IOP-$client-$mode-$(openssl rand -hex 4)"
    maildrop_empty
    python3 "$HERE/interop.py" messages "$c/expected" "$marker" || die "cannot write the messages"
    for m in 1 2 3; do
        "$BIN" deliver "$USER_NAME" -c "$CONFIG" < "$c/expected/$m.eml" >>"$c/deliver.log" 2>&1 \
            || die "facteur deliver failed: $(cat "$c/deliver.log")"
    done
    local t0 ms log_from
    log_from=$(log_mark)
    t0=$(date +%s%N)
    OUT_FORMAT="" OUT_PATH=""
    "client_$client" "$mode" "$c" >"$c/client.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    LOGIN[$client/$mode]=$(login_used "$client" "$c")
    if [ "$rc" -ne 0 ]; then
        RESULT[$client/$mode]=FAIL
        if [ -s "$c/reason" ]; then
            REASON[$client/$mode]="$(cat "$c/reason") (client exit status $rc)"
        elif [ "$rc" -eq 124 ]; then
            REASON[$client/$mode]="timed out after ${CLIENT_TIMEOUT}s"
        else
            REASON[$client/$mode]="client exited with status $rc"
        fi
    elif ! python3 "$HERE/interop.py" check "$c/expected" "$OUT_FORMAT" "$OUT_PATH" >"$c/check.log" 2>&1; then
        RESULT[$client/$mode]=FAIL
        REASON[$client/$mode]="retrieved messages differ: $(grep -m1 PROBLEM "$c/check.log" | sed 's/^ *PROBLEM //')"
    elif [ "$(maildrop_count)" -ne 0 ]; then
        RESULT[$client/$mode]=FAIL
        REASON[$client/$mode]="$(maildrop_count) message(s) left in the maildrop"
    elif ! sessions_match_mode "$mode" "$log_from" > "$c/sessions.log"; then
        RESULT[$client/$mode]=FAIL
        REASON[$client/$mode]="$(tail -n 1 "$c/sessions.log")"
    else
        RESULT[$client/$mode]=PASS
    fi
    # Which nodes served the case's sessions.
    SERVED[$client/$mode]=$(grep 'session ended' "$c/sessions.log" 2>/dev/null | cut -d' ' -f1 | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')
    local where=""
    [ "$VIA" = haproxy ] && where="; ${SERVED[$client/$mode]:-no session}"
    printf '  %-10s %-6s %s (%d.%01ds, %s%s)\n' "$client" "$mode" "${RESULT[$client/$mode]}" \
        $((ms / 1000)) $((ms % 1000 / 100)) "${LOGIN[$client/$mode]}" "$where"
    if [ "${RESULT[$client/$mode]}" = FAIL ]; then
        ANY_FAIL=1
        say "    ${REASON[$client/$mode]}"
        say "    case folder: $c"
        say "    --- last lines of the client's output:"
        tail -n 25 "$c/client.log" | sed 's/^/    | /'
        if [ -s "$c/check.log" ]; then
            say "    --- check:"
            sed 's/^/    | /' "$c/check.log"
        fi
    fi
}

# ---------------------------------------------------------------------------------------------
# 6. A first login to a maildrop of messages whose names carry no size (deferred sizes).

UNSIZED_TOTAL=300
UNSIZED_CLIENTS="poplib net-pop3 fetchmail mpop getmail6 s-nail"

run_unsized_case() {
    local client=$1 c="$WORK/cases/$1-unsized" key="$1/unsized" marker rc log_from opened
    mkdir -p "$c"
    marker="IOP-$client-unsized-$(openssl rand -hex 4)"
    rm -f "$MAILDIR"/new/* "$MAILDIR"/cur/* "$MAILDIR/facteur-index" 2>/dev/null
    python3 "$HERE/interop.py" messages "$c/expected" "$marker" || die "cannot write the messages"
    python3 "$HERE/interop.py" unsized "$c/expected" "$MAILDIR/cur" "$UNSIZED_TOTAL" \
        || die "cannot write the maildrop without sizes"
    log_from=$(log_mark)
    OUT_FORMAT="" OUT_PATH=""
    # 300 messages, which some clients (getmail6) fsync and DELE one by one: three times the
    # usual bound, still a bound (a loaded CI machine took over a second per message).
    CLIENT_TIMEOUT=$((CLIENT_TIMEOUT * 3)) "client_$client" plain "$c" >"$c/client.log" 2>&1
    rc=$?
    opened=$(log_since "$log_from" | grep 'maildrop opened' | grep "user=\"$USER_NAME\"" | head -n 1)
    if [ "$rc" -ne 0 ]; then
        RESULT[$key]=FAIL REASON[$key]="client exited with status $rc"
    elif ! python3 "$HERE/interop.py" check "$c/expected" "$OUT_FORMAT" "$OUT_PATH" \
        $((UNSIZED_TOTAL - 3)) >"$c/check.log" 2>&1; then
        RESULT[$key]=FAIL
        REASON[$key]="retrieved messages differ: $(grep -m1 PROBLEM "$c/check.log" | sed 's/^ *PROBLEM //')"
    elif [ "$(maildrop_count)" -ne 0 ]; then
        RESULT[$key]=FAIL REASON[$key]="$(maildrop_count) message(s) left in the maildrop"
    elif ! printf '%s' "$opened" | grep -q "sizes_deferred: $UNSIZED_TOTAL"; then
        RESULT[$key]=FAIL REASON[$key]="the first login did not defer the sizes: ${opened:-no login}"
    else
        RESULT[$key]=PASS
    fi
    printf '  %-10s %-7s %s (%d messages)\n' "$client" unsized "${RESULT[$key]}" "$UNSIZED_TOTAL"
    if [ "${RESULT[$key]}" = FAIL ]; then
        ANY_FAIL=1
        say "    ${REASON[$key]}"
        say "    case folder: $c"
        tail -n 15 "$c/client.log" | sed 's/^/    | /'
    fi
}

# ---------------------------------------------------------------------------------------------
# Main.

say "==== interop: installing the clients"
install_clients
say "==== interop: building facteur"
build_facteur
say "==== interop: starting the server (store: $BACKEND, clients: $VIA)"
make_certificates
start_server
say "==== interop: running the matrix"
for client in $CLIENTS; do
    for mode in $MODES; do
        if supports "$client" "$mode"; then
            run_case "$client" "$mode"
        else
            RESULT[$client/$mode]=N-A
        fi
    done
done

if [ "$BACKEND" = postgresql ]; then
    say "==== interop: the maildrop without sizes is a Maildir case (skipped: PostgreSQL records sizes at delivery)"
elif [ "${INTEROP_UNSIZED:-1}" != 0 ]; then
    say "==== interop: a first login to $UNSIZED_TOTAL messages without sizes (plain POP3)"
    for client in $CLIENTS; do
        case " $UNSIZED_CLIENTS " in *" $client "*) run_unsized_case "$client" ;; esac
    done
fi

for i in "${!NODE_PIDS[@]}"; do
    if ! kill -0 "${NODE_PIDS[$i]}" 2>/dev/null; then
        ANY_FAIL=1
        say "node ${NODE_NAMES[$i]} died during the run; its log: ${NODE_LOGS[$i]}"
    fi
    if grep -q -i 'panicked' "${NODE_LOGS[$i]}"; then
        ANY_FAIL=1
        say "node ${NODE_NAMES[$i]} panicked:"
        grep -i -A3 'panicked' "${NODE_LOGS[$i]}" | head -n 20
    fi
done
if [ "$VIA" = haproxy ]; then
    # Round robin over a whole matrix: each node must have served some of its sessions.
    say "sessions of $USER_NAME per node:"
    for i in "${!NODE_LOGS[@]}"; do
        served=$(grep 'session ended' "${NODE_LOGS[$i]}" | grep -c "user=\"$USER_NAME\"")
        say "  ${NODE_NAMES[$i]}: $served"
        if [ "$served" -eq 0 ]; then
            ANY_FAIL=1
            say "  node ${NODE_NAMES[$i]} served no session: HAProxy did not spread them"
        fi
    done
    if ! kill -0 "$HAPROXY_PID" 2>/dev/null; then
        ANY_FAIL=1
        say "haproxy died during the run; its log: $WORK/server/haproxy.log"
    fi
fi

# A Markdown table: each cell is the result, and how the client logged in.
say ""
say "==== interop: results, store $BACKEND, clients $VIA$( [ "$VIA" = haproxy ] && echo " ($NODES nodes)") (wall time $(( $(date +%s) - STARTED ))s)"
printf '| %-10s |' client
for mode in $MODES; do printf ' %-26s |' "$mode"; done
printf '\n|------------|'
for _ in $MODES; do printf '%s|' "----------------------------"; done
printf '\n'
for client in $CLIENTS; do
    printf '| %-10s |' "$client"
    for mode in $MODES; do
        cell=${RESULT[$client/$mode]:-?}
        [ -n "${LOGIN[$client/$mode]:-}" ] && cell="$cell (${LOGIN[$client/$mode]})"
        printf ' %-26s |' "$cell"
    done
    printf '\n'
done
passed=0 failed=0
for key in "${!RESULT[@]}"; do
    case ${RESULT[$key]} in PASS) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; esac
done
for client in $CLIENTS; do
    for mode in $MODES unsized; do
        key=$client/$mode
        [ "${RESULT[$key]:-}" = FAIL ] && say "FAIL $key: ${REASON[$key]}"
    done
done
say "interop: $passed passed, $failed failed"
[ "$ANY_FAIL" -eq 0 ] || exit 1
