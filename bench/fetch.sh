#!/usr/bin/env bash
# bench/fetch.sh: `facteur fetch` against fetchmail and mpop, fetching 10,000 messages from
# Dovecot's POP3 server on loopback, in the same run.
#
#   sudo bash bench/fetch.sh
#
# Installs what is missing from Debian's packages (Dovecot's POP3 server, fetchmail, mpop,
# safecat, time), builds facteur in release mode, starts Dovecot in a scratch folder (POP3S on
# a free port of 127.0.0.1, the CA-signed ECDSA P-256 certificate and the configuration of
# tests/dovecot/lib.sh, one {PLAIN} user per client so each logs in the way it likes best),
# then, for each client in turn, seeds the client's maildrop with the same 10,000 messages of
# about 4 KB, empties the page cache's dirty pages (sync), and times the client fetching all of
# them over POP3S into a fresh local Maildir and deleting them on the server. Three rounds,
# the order of the clients rotating each round (ABC, BCA, CAB). After each run (not timed):
# every message must be in the Maildir exactly once and identical (header fields a client adds
# aside), and Dovecot's maildrop empty.
#
# Prints a table of medians and writes bench/results/fetch.json. Needs root (Dovecot's master
# process, apt-get). Takes about 3 minutes on 2 cores, after the build.
#
# How each client delivers to the Maildir:
#   facteur fetch   --maildir (its own: tmp/; per batch of 64, one syncfs of the file system
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
#   FETCH_BENCH_KEEP         1: keep the seeded template and Dovecot's maildrops in the scratch
#                            folder; the logs, configurations and runs.tsv are always kept

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
CLIENT_TIMEOUT=900
COMMAND="sudo bash bench/fetch.sh"
PW_VAR=FACTEUR_FETCH_BENCH_PW

say() { printf '\n== %s\n' "$*" >&2; }
die() {
    printf 'fetch.sh: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (Dovecot's master starts as root): $COMMAND"
case "$SCRATCH" in /*) ;; *) die "FACTEUR_FETCH_BENCH_DIR must be an absolute path" ;; esac

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
chmod 755 "$DOVECOT_DIR"
RUNS_TSV=$SCRATCH/runs.tsv
: >"$RUNS_TSV"

cleanup() { dovecot_stop; }
trap cleanup EXIT
trap 'echo "fetch.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM

dovecot_mail_user facteurbench || die "cannot create the user facteurbench"
dovecot_certificates || die "cannot make the certificates"
declare -A PASSWORD
for c in "${CLIENTS[@]}"; do
    PASSWORD[$c]=$(openssl rand -hex 12)
    dovecot_add_user "bench-$c" PLAIN "${PASSWORD[$c]}"
done
dovecot_start || die "Dovecot did not start"
say "Dovecot $(dovecot --version): pid $DOVECOT_PID, POP3S on 127.0.0.1:$POP3S_PORT"

say "seeding the template: $MESSAGES messages of about $SIZE octets"
TEMPLATE=$SCRATCH/template/Maildir
python3 "$REPO/tests/dovecot/mail.py" seed "$TEMPLATE" "$SCRATCH/manifest" bench "$MESSAGES" \
    --size "$SIZE"
chown -R "$MAIL_UID:$MAIL_GID" "$SCRATCH/template"

# --- the clients: each client_X DIR writes DIR/run.sh, which runs X fetching into DIR/Maildir --
# (a script with every value in it, run under /usr/bin/time; its shell exec()s the client.)

client_facteur() { facteur_client "$1" facteur "$FACTEUR"; }

facteur_client() { # DIR CLIENT BINARY
    local d=$1 c=$2 bin=$3
    cat >"$d/run.sh" <<EOF
exec env $PW_VAR='${PASSWORD[$c]}' '$bin' fetch \\
    'pop3s://bench-$c@127.0.0.1:$POP3S_PORT' --ca-file '$CA' --maildir '$d/Maildir' \\
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
        eval "client_$c() { facteur_client \"\$1\" '$c' '$SCRATCH/$c'; }"
        ;;
    esac
done

# fetchmail checks the certificate's names as DNS names only, not the IP address SAN:
# sslcommonname says which name to expect.
client_fetchmail() {
    local d=$1
    mkdir -p "$d/home"
    cat >"$d/fetchmailrc" <<EOF
set no syslog
set no bouncemail
poll 127.0.0.1 protocol pop3 port $POP3S_PORT timeout 60
    user "bench-fetchmail" password "${PASSWORD[fetchmail]}" is "$(id -un)" here
    mda "safecat $d/Maildir/tmp $d/Maildir/new"
    nokeep fetchall no rewrite
    ssl sslproto 'tls1.2+' sslcertck sslcertfile '$CA' sslcommonname localhost
EOF
    chmod 600 "$d/fetchmailrc"
    cat >"$d/run.sh" <<EOF
HOME='$d/home' FETCHMAILHOME='$d/home' FETCHMAILUSER='$(id -un)' \\
    exec fetchmail --nodetach -f '$d/fetchmailrc'
EOF
}

client_mpop() {
    local d=$1
    cat >"$d/mpoprc" <<EOF
defaults
tls_trust_file $CA
uidls_file $d/mpop-uidls
account bench
host 127.0.0.1
port $POP3S_PORT
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

one_run() { # round client
    local round=$1 client=$2 user="bench-$2" d="$SCRATCH/runs/r$1-$2" md rc t0 t1 wall
    local cpu0 cpu1 login check logins0 load
    md=$DOVECOT_DIR/mail/$user/Maildir
    mkdir -p "$d/Maildir/tmp" "$d/Maildir/new" "$d/Maildir/cur"
    "client_$client" "$d"
    chmod 600 "$d/run.sh"
    # The maildrop: the same 10,000 files each time, Dovecot's index files gone with the old
    # copy, every file in the page cache.
    rm -rf "$DOVECOT_DIR/mail/$user"
    mkdir -p "$DOVECOT_DIR/mail/$user"
    cp -a "$TEMPLATE" "$md"
    chown -R "$MAIL_UID:$MAIL_GID" "$DOVECOT_DIR/mail/$user"
    find "$md" -type f -print0 | xargs -0 cat >/dev/null
    sync
    logins0=$(grep -c "Login: user=<$user>" "$DOVECOT_DIR/dovecot.log" || true)
    cpu0=$(python3 "$HERE/fetch_report.py" cpu "$DOVECOT_PID")
    # The machine's load as the run starts (1-minute average): printed beside the figures.
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(date +%s%N)
    rc=0
    /usr/bin/time -f '%U %S %M' -o "$d/time.txt" timeout "$CLIENT_TIMEOUT" bash "$d/run.sh" \
        >"$d/client.log" 2>&1 </dev/null || rc=$?
    t1=$(date +%s%N)
    # Dovecot's pop3 process ends right after QUIT; give the master a moment to reap it.
    sleep 0.5
    cpu1=$(python3 "$HERE/fetch_report.py" cpu "$DOVECOT_PID")
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    login=$(grep "Login: user=<$user>" "$DOVECOT_DIR/dovecot.log" | tail -n +$((logins0 + 1)) |
        grep -o 'method=[A-Z0-9-]*' | sed 's/method=//' | sort -u | paste -sd+ -) || true
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
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$client" "$wall" "$user_s" \
        "$sys_s" "$rss" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')" \
        "$rc" "${login:-?}" "$check" "$load" >>"$RUNS_TSV"
    printf '  round %s %-9s %7.2f s wall, %s s user, %s s sys, login %s, load %s: %s\n' "$round" \
        "$client" "$wall" "$user_s" "$sys_s" "${login:-?}" "$load" "$check" >&2
    if [ "$check" != ok ]; then
        tail -n 20 "$d/client.log" | sed 's/^/    | /' >&2
    else
        # 40 MB a run: keep the disk small and the next run's writeback out of the way.
        rm -rf "$d/Maildir"
    fi
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
say "$ROUNDS rounds of ${CLIENTS[*]}, $MESSAGES messages each, POP3S, fetch and delete"
n=${#CLIENTS[@]}
for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
        one_run "$round" "${CLIENTS[$(((i + round - 1) % n))]}"
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
dovecot_stop
if [ "${FETCH_BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$SCRATCH/template" "$DOVECOT_DIR/mail"
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
