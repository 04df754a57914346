#!/usr/bin/env bash
# bench/fetch.sh: `facteur fetch` against fetchmail and mpop, fetching 10,000 messages from
# Dovecot's POP3 server and from `facteur serve` on loopback, in the same run.
#
#   sudo bash bench/fetch.sh
#
# Installs what is missing from Debian's packages (Dovecot's POP3 server, fetchmail, mpop,
# safecat, time), builds facteur in release mode, starts the servers in a scratch folder:
# Dovecot (POP3S on a free port of 127.0.0.1, the CA-signed ECDSA P-256 certificate and the
# configuration of tests/dovecot/lib.sh, one {PLAIN} user per client so each logs in the way it
# likes best) and `facteur serve` (POP3S on another free port, the same certificate, the same
# passwd-file, Maildir maildrops seeded the same way); then, for each server and each client in
# turn, seeds the client's maildrop with the same 10,000 messages of about 4 KB, empties the
# page cache's dirty pages (sync), and times the client fetching all of them over POP3S into a
# fresh local Maildir and deleting them on the server. Three rounds, the order of the clients
# rotating each round (ABC, BCA, CAB), both servers in each round. After each run (not timed):
# every message must be in the Maildir exactly once and identical (header fields a client adds
# aside), and the server's maildrop empty.
#
# Why two servers: on 2 cores, Dovecot's pop3 process (one per session, single-threaded) is
# the limit of the fastest client, and the ratio between two fast clients then measures the
# server. `facteur serve` is the fastest server at hand: against it, the fetchers themselves
# are measured.
#
# Prints a table of medians per server and writes bench/results/fetch.json. Needs root
# (Dovecot's master process, apt-get). Takes about 6 minutes on 2 cores after the build (3 with
# FETCH_BENCH_SERVER=facteur or dovecot), half of it fetchmail's.
#
# How each client delivers to the Maildir:
#   facteur fetch   --maildir (its own: tmp/; per batch of 256, one syncfs of the file system
#                   (files and names in tmp/), then the journal's fsync, then the DELEs;
#                   rename into new/, durable at the next syncfs or by the end of the session)
#   mpop            `delivery maildir` (its own: tmp/, fsync of each file, link into new/)
#   fetchmail       cannot write a Maildir itself (it forwards by SMTP or hands each message to
#                   an MDA): `mda "safecat DIR/tmp DIR/new"`, safecat being the smallest Maildir
#                   writer in Debian (tmp/, fsync, link into new/); fetchmail runs it through
#                   `sh -c`, so each message costs it two exec()s, counted in its CPU time.
#
# Environment (all optional):
#   FACTEUR_FETCH_BENCH_DIR  the scratch folder [/tmp/facteur-fetch-bench]; emptied first
#   FACTEUR_BIN              a facteur binary to use instead of building target/release/facteur
#   FETCH_BENCH_MESSAGES     messages per run [10000]
#   FETCH_BENCH_SIZE         octets per message, about [4096]
#   FETCH_BENCH_ROUNDS       runs per client [3]
#   FETCH_BENCH_CLIENTS      [facteur fetchmail mpop]; also facteur-NAME, a second facteur
#                            binary given as FACTEUR_BIN_NAME (to compare two builds in one run)
#   FETCH_BENCH_SERVER       dovecot, facteur (`facteur serve`) or [both]: the servers fetched
#                            from
#   FETCH_BENCH_SERVER_MAIL  where the servers' maildrops and the seeded template live
#                            [/dev/shm/facteur-fetch-bench, memory]; emptied first
#   FETCH_BENCH_KEEP         1: keep the seeded template and the servers' maildrops in the
#                            scratch folder; the logs, configurations and runs.tsv are always kept

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=../tests/dovecot/lib.sh
. "$REPO/tests/dovecot/lib.sh"
SCRATCH=${FACTEUR_FETCH_BENCH_DIR:-/tmp/facteur-fetch-bench}
MESSAGES=${FETCH_BENCH_MESSAGES:-10000}
SIZE=${FETCH_BENCH_SIZE:-4096}
ROUNDS=${FETCH_BENCH_ROUNDS:-3}
# shellcheck disable=SC2206 # a list of words on purpose
CLIENTS=(${FETCH_BENCH_CLIENTS:-facteur fetchmail mpop})
case ${FETCH_BENCH_SERVER:-both} in
dovecot | facteur) SERVERS=("$FETCH_BENCH_SERVER") ;;
both) SERVERS=(dovecot facteur) ;;
*) SERVERS=() ;;
esac
CLIENT_TIMEOUT=900
COMMAND="sudo bash bench/fetch.sh"
# The servers' maildrops in memory, not on the disk the clients write to: what is measured is
# the fetchers. On this project's test machines (ext4 mounted with `discard` and no journal),
# each file a server deletes at QUIT costs a synchronous discard (1 to 3 ms: 10 to 30 s for
# 10,000 messages, the same for every client), and each inode freed there makes the next file
# creations on that file system scan past it (see bench/README.md).
SERVER_MAIL=${FETCH_BENCH_SERVER_MAIL:-/dev/shm/facteur-fetch-bench}
PW_VAR=FACTEUR_FETCH_BENCH_PW

say() { printf '\n== %s\n' "$*" >&2; }
die() {
    printf 'fetch.sh: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (Dovecot's master starts as root): $COMMAND"
[ "${#SERVERS[@]}" -gt 0 ] || die "FETCH_BENCH_SERVER must be dovecot, facteur or both"
case "$SCRATCH" in /*) ;; *) die "FACTEUR_FETCH_BENCH_DIR must be an absolute path" ;; esac
case "$SERVER_MAIL" in /?*) ;; *) die "FETCH_BENCH_SERVER_MAIL must be an absolute path" ;; esac

# --- the software ------------------------------------------------------------------------------

dovecot_install || die "cannot install Dovecot"
need=()
command -v fetchmail >/dev/null || need+=(fetchmail)
command -v mpop >/dev/null || need+=(mpop)
command -v safecat >/dev/null || need+=(safecat)
[ -x /usr/bin/time ] || need+=(time)
if [ "${#need[@]}" -gt 0 ]; then
    say "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        ca-certificates "${need[@]}" >/dev/null
fi

if [ -n "${FACTEUR_BIN:-}" ]; then
    BUILT=$FACTEUR_BIN
    FACTEUR_REV="given as FACTEUR_BIN=$FACTEUR_BIN"
else
    say "building facteur (release)"
    (cd "$REPO" && cargo build --release -p facteur --bin facteur --quiet) >&2
    BUILT=$REPO/target/release/facteur
    FACTEUR_REV=$(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo unknown)
fi

say "preparing $SCRATCH"
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
chmod 755 "$SCRATCH"
# A copy, so that a rebuild during the run cannot swap the binary under the benchmark.
FACTEUR=$SCRATCH/facteur
cp "$BUILT" "$FACTEUR"
DOVECOT_DIR=$SCRATCH/dovecot
mkdir -p "$DOVECOT_DIR"
rm -rf "$SERVER_MAIL"
mkdir -p "$SERVER_MAIL/dovecot" "$SERVER_MAIL/facteur"
chmod 755 "$SERVER_MAIL"
# Dovecot's and facteur serve's mail folders are links into SERVER_MAIL.
ln -s "$SERVER_MAIL/dovecot" "$DOVECOT_DIR/mail"
chmod 755 "$DOVECOT_DIR"
RUNS_TSV=$SCRATCH/runs.tsv
: >"$RUNS_TSV"

# `facteur serve`: its scratch folder, its POP3S port, its pid.
FSERVE_DIR=$SCRATCH/facteur-serve
FSERVE_PID=""
FSERVE_PORT=""

facteur_serve_start() {
    local ports _
    mkdir -p "$FSERVE_DIR"
    ln -sfn "$SERVER_MAIL/facteur" "$FSERVE_DIR/mail"
    chmod 755 "$FSERVE_DIR"
    chown "$MAIL_UID:$MAIL_GID" "$FSERVE_DIR/mail"
    ports=$(free_ports) || return 1
    FSERVE_PORT=${ports#* }
    # The plain POP3 listener is there because the configuration wants one; no client uses it.
    cat >"$FSERVE_DIR/facteur.toml" <<EOF
# facteur serve for bench/fetch.sh: loopback only, everything in $SCRATCH.
[server]
listen = ["127.0.0.1:${ports% *}"]
listen_tls = ["127.0.0.1:$FSERVE_PORT"]
hostname = "localhost"
# As Dovecot's mail processes: bind as root, then serve as the mail user.
user = "$MAIL_USER"

[limits]
shutdown_grace_secs = 2

[auth]
# Dovecot's passwd-file: the same {PLAIN} user and password per client.
passwd_file = "$DOVECOT_DIR/users"

[tls]
certificate = "$CERT"
private_key = "$KEY"

[store]
maildir = "$FSERVE_DIR/mail/%u/Maildir"

[log]
level = "info"
EOF
    "$FACTEUR" check-config -c "$FSERVE_DIR/facteur.toml" >"$FSERVE_DIR/check-config.txt" 2>&1 || {
        cat "$FSERVE_DIR/check-config.txt" >&2
        return 1
    }
    "$FACTEUR" serve -c "$FSERVE_DIR/facteur.toml" >>"$FSERVE_DIR/facteur.log" 2>&1 &
    FSERVE_PID=$!
    # Asked of the kernel, not by connecting: a probe would be a session in the log.
    for _ in $(seq 100); do
        if [ -n "$(ss -Hltn "sport = :$FSERVE_PORT")" ]; then
            return 0
        fi
        kill -0 "$FSERVE_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$FSERVE_DIR/facteur.log" >&2
    return 1
}

facteur_serve_stop() {
    local _
    [ -n "$FSERVE_PID" ] || return 0
    if kill -TERM "$FSERVE_PID" 2>/dev/null; then
        for _ in $(seq 100); do
            kill -0 "$FSERVE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$FSERVE_PID" 2>/dev/null || true
    fi
    wait "$FSERVE_PID" 2>/dev/null || true
    FSERVE_PID=""
}

cleanup() {
    facteur_serve_stop
    dovecot_stop
}
trap cleanup EXIT
trap 'echo "fetch.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM

MAIL_USER=facteurbench
dovecot_mail_user "$MAIL_USER" || die "cannot create the user $MAIL_USER"
dovecot_certificates || die "cannot make the certificates"
declare -A PASSWORD
for c in "${CLIENTS[@]}"; do
    PASSWORD[$c]=$(openssl rand -hex 12)
    dovecot_add_user "bench-$c" PLAIN "${PASSWORD[$c]}"
done
# Both servers run through the whole benchmark, the one not fetched from idle.
dovecot_start || die "Dovecot did not start"
say "Dovecot $(dovecot --version): pid $DOVECOT_PID, POP3S on 127.0.0.1:$POP3S_PORT"
facteur_serve_start || die "facteur serve did not start (see $FSERVE_DIR/facteur.log)"
say "facteur serve: pid $FSERVE_PID, POP3S on 127.0.0.1:$FSERVE_PORT"

say "seeding the template: $MESSAGES messages of about $SIZE octets"
TEMPLATE=$SERVER_MAIL/template/Maildir
python3 "$REPO/tests/dovecot/mail.py" seed "$TEMPLATE" "$SCRATCH/manifest" bench "$MESSAGES" \
    --size "$SIZE"
chown -R "$MAIL_UID:$MAIL_GID" "$SERVER_MAIL/template"

# --- the clients: each client_X DIR writes DIR/run.sh, which runs X fetching into DIR/Maildir --
# (a script with every value in it, run under /usr/bin/time; its shell exec()s the client.)

client_facteur() { facteur_client "$1" "$2" facteur "$FACTEUR"; }

facteur_client() { # DIR PORT CLIENT BINARY
    local d=$1 port=$2 c=$3 bin=$4
    cat >"$d/run.sh" <<EOF
exec env $PW_VAR='${PASSWORD[$c]}' '$bin' fetch \\
    'pop3s://bench-$c@127.0.0.1:$port' --ca-file '$CA' --maildir '$d/Maildir' \\
    --password-env $PW_VAR --state-dir '$d/state'
EOF
}

# facteur-NAME: the binary of FACTEUR_BIN_NAME, copied like the main one.
for c in "${CLIENTS[@]}"; do
    case $c in
    facteur-*)
        var=FACTEUR_BIN_${c#facteur-}
        [ -n "${!var:-}" ] || die "client $c needs $var"
        cp "${!var}" "$SCRATCH/$c"
        eval "client_$c() { facteur_client \"\$1\" \"\$2\" '$c' '$SCRATCH/$c'; }"
        ;;
    esac
done

# fetchmail checks the certificate's names as DNS names only, not the IP address SAN:
# sslcommonname says which name to expect.
client_fetchmail() { # DIR PORT
    local d=$1 port=$2
    mkdir -p "$d/home"
    cat >"$d/fetchmailrc" <<EOF
set no syslog
set no bouncemail
poll 127.0.0.1 protocol pop3 port $port timeout 60
    user "bench-fetchmail" password "${PASSWORD[fetchmail]}" is "$(id -un)" here
    mda "safecat $d/Maildir/tmp $d/Maildir/new"
    nokeep fetchall no rewrite
    ssl sslproto 'tls1.2+' sslcertck sslcertfile '$CA' sslcommonname localhost
EOF
    chmod 600 "$d/fetchmailrc"
    cat >"$d/run.sh" <<EOF
# A lock file of its own: as root, fetchmail locks /var/run/fetchmail.pid otherwise.
HOME='$d/home' FETCHMAILHOME='$d/home' FETCHMAILUSER='$(id -un)' \\
    exec fetchmail --nodetach --pidfile '$d/home/fetchmail.pid' -f '$d/fetchmailrc'
EOF
}

client_mpop() { # DIR PORT
    local d=$1 port=$2
    cat >"$d/mpoprc" <<EOF
defaults
tls_trust_file $CA
uidls_file $d/mpop-uidls
account bench
host 127.0.0.1
port $port
user bench-mpop
password ${PASSWORD[mpop]}
auth on
tls on
tls_starttls off
delivery maildir $d/Maildir
keep off
only_new off
timeout 60
EOF
    chmod 600 "$d/mpoprc"
    cat >"$d/run.sh" <<EOF
exec mpop -q -C '$d/mpoprc' bench
EOF
}

version_of() {
    case $1 in
    facteur) "$FACTEUR" --version | awk '{print $2}' ;;
    facteur-*) "$SCRATCH/$1" --version | awk '{print $2}' ;;
    fetchmail) fetchmail --version 2>/dev/null | sed -n 's/^This is fetchmail release \([^+ ]*\).*/\1/p' | head -n 1 ;;
    mpop) mpop --version | sed -n '1s/^mpop version //p' ;;
    esac
}

# --- one run --------------------------------------------------------------------------------

# The login lines of USER in SERVER's log (none is no error), and the methods they name.
logins_of() { # server user
    case $1 in
    dovecot) grep -F "Login: user=<$2>" "$DOVECOT_DIR/dovecot.log" || true ;;
    facteur) { grep -F " user=\"$2\" " "$FSERVE_DIR/facteur.log" || true; } | grep -F 'outcome=ok' || true ;;
    esac
}
methods_of() { grep -o 'method=[A-Za-z0-9/-]*' | sed 's/method=//; s/^SASL\///' | sort -u | paste -sd+ -; }

one_run() { # round server client
    local round=$1 server=$2 client=$3 user="bench-$3" d="$SCRATCH/runs/r$1-$2-$3"
    local md root pid port rc t0 t1 wall cpu0 cpu1 login check logins0 load
    case $server in
    dovecot) root=$DOVECOT_DIR/mail pid=$DOVECOT_PID port=$POP3S_PORT ;;
    facteur) root=$FSERVE_DIR/mail pid=$FSERVE_PID port=$FSERVE_PORT ;;
    esac
    md=$root/$user/Maildir
    mkdir -p "$d/Maildir/tmp" "$d/Maildir/new" "$d/Maildir/cur"
    "client_$client" "$d" "$port"
    chmod 600 "$d/run.sh"
    # The maildrop: the same 10,000 files each time, the server's index files (Dovecot's) gone
    # with the old copy, every file in the page cache.
    rm -rf "${root:?}/$user"
    mkdir -p "$root/$user"
    cp -a "$TEMPLATE" "$md"
    chown -R "$MAIL_UID:$MAIL_GID" "$root/$user"
    find "$md" -type f -print0 | xargs -0 cat >/dev/null
    sync
    logins0=$(logins_of "$server" "$user" | wc -l)
    cpu0=$(python3 "$HERE/fetch_report.py" cpu "$pid")
    # The machine's load as the run starts (1-minute average): printed beside the figures.
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(date +%s%N)
    rc=0
    /usr/bin/time -f '%U %S %M' -o "$d/time.txt" timeout "$CLIENT_TIMEOUT" bash "$d/run.sh" \
        >"$d/client.log" 2>&1 </dev/null || rc=$?
    t1=$(date +%s%N)
    # Dovecot's pop3 process ends right after QUIT; give the master a moment to reap it (and
    # facteur serve a moment to finish the session's work after it).
    sleep 0.5
    cpu1=$(python3 "$HERE/fetch_report.py" cpu "$pid")
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    login=$(logins_of "$server" "$user" | tail -n +$((logins0 + 1)) | methods_of) || true
    if [ "$rc" -ne 0 ]; then
        check="client exit status $rc"
    elif ! check=$(python3 "$REPO/tests/dovecot/mail.py" check maildir "$d/Maildir" \
        "$SCRATCH/manifest" --added-fields-ok 2>&1); then
        check="PROBLEM: $(printf '%s' "$check" | head -n 1)"
    elif [ "$(python3 "$REPO/tests/dovecot/mail.py" count "$md")" -ne 0 ]; then
        check="PROBLEM: $(python3 "$REPO/tests/dovecot/mail.py" count "$md") messages left on the server"
    else
        check="ok"
    fi
    read -r user_s sys_s rss <"$d/time.txt" || { user_s=0 sys_s=0 rss=0; }
    # The server last: runs.tsv files from before it had the first 11 columns only.
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$client" "$wall" "$user_s" \
        "$sys_s" "$rss" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')" \
        "$rc" "${login:-?}" "$check" "$load" "$server" >>"$RUNS_TSV"
    printf '  round %s %-7s %-9s %7.2f s wall, %s s user, %s s sys, login %s, load %s: %s\n' \
        "$round" "$server" "$client" "$wall" "$user_s" "$sys_s" "${login:-?}" "$load" "$check" >&2
    if [ "$check" != ok ]; then
        tail -n 20 "$d/client.log" | sed 's/^/    | /' >&2
    else
        # Removed at the end of the benchmark, not now: on ext4 without a journal, 10,000
        # inodes freed now would make the next client's file creations scan past them (the
        # `sync` before each run keeps this run's writeback out of the next one's way).
        DONE_MAILDIRS+=("$d/Maildir")
    fi
}

DONE_MAILDIRS=()
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
say "$ROUNDS rounds of ${CLIENTS[*]} from ${SERVERS[*]}, $MESSAGES messages each, POP3S, fetch and delete"
n=${#CLIENTS[@]}
# One untimed warm-up run first (the first client, from the first server), checked like the
# others but left out of the figures: the first run of a benchmark was the slowest, by up to
# 2.5x (3 s more of system time creating files, when the file system had just freed many
# inodes: see bench/README.md); its creations use those inodes up.
one_run 0 "${SERVERS[0]}" "${CLIENTS[0]}"
sed -i '/^0\t/d' "$RUNS_TSV"
for round in $(seq "$ROUNDS"); do
    # The servers take turns too (dovecot first in odd rounds), so that neither always runs
    # right after the other's writeback.
    servers=("${SERVERS[@]}")
    if [ "${#servers[@]}" -eq 2 ] && [ $((round % 2)) -eq 0 ]; then
        servers=("${SERVERS[1]}" "${SERVERS[0]}")
    fi
    for server in "${servers[@]}"; do
        for i in $(seq 0 $((n - 1))); do
            one_run "$round" "$server" "${CLIENTS[$(((i + round - 1) % n))]}"
        done
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
facteur_serve_stop
dovecot_stop
if [ "${FETCH_BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$SERVER_MAIL"
fi

mkdir -p "$HERE/results"
facts=(
    "command=$COMMAND"
    "messages=$MESSAGES"
    "message_octets=$SIZE"
    "rounds=$ROUNDS"
    "mode=POP3S (TLS from the first byte), fetch and delete, into a Maildir"
    "facteur_version=$(version_of facteur) ($FACTEUR_REV)"
    "fetchmail_version=$(version_of fetchmail)"
    "mpop_version=$(version_of mpop)"
    "dovecot_version=$(dovecot --version)"
    "servers=${SERVERS[*]}"
    "fetchmail_delivery=mda \"safecat DIR/tmp DIR/new\" (safecat $(dpkg-query -W -f '${Version}' safecat 2>/dev/null || echo '?'))"
    "load_start=$LOAD_START"
    "load_end=$LOAD_END"
)
for c in "${CLIENTS[@]}"; do
    case $c in
    facteur-*)
        var=FACTEUR_BIN_${c#facteur-}
        facts+=("${c}_version=$(version_of "$c") (given as $var=${!var})")
        ;;
    esac
done
say "results (bench/results/fetch.json)"
python3 "$HERE/fetch_report.py" report "$RUNS_TSV" "$HERE/results/fetch.json" "${facts[@]}"
printf '\nMachine: %s CPUs, load average %s at the start, %s at the end.\n' "$(nproc)" \
    "$LOAD_START" "$LOAD_END"
# After the report: on a file system mounted with discard, 10,000 unlinks take 5 to 30 s.
say "removing the clients' Maildirs (${#DONE_MAILDIRS[@]})"
rm -rf "${DONE_MAILDIRS[@]}"
