#!/usr/bin/env bash
# `facteur fetch` against Dovecot's POP3 server: a real server that nobody here wrote, installed
# from Debian's packages (dovecot-core, dovecot-pop3d) when missing, configured in a scratch
# folder (POP3 with STLS and POP3S on free ports of 127.0.0.1, a CA-signed certificate made with
# openssl, a passwd-file with {PLAIN} and {SHA512-CRYPT} users, Maildir).
#
# The cases (each with its own Dovecot user, messages seeded straight into Dovecot's Maildir):
#   pop3s-maildir   POP3S with --ca-file into a Maildir, fetch and delete: every message there
#                   once and identical (SHA-256 after CRLF -> LF), Dovecot's maildrop empty,
#                   the login SCRAM-SHA-256 (chosen by facteur; Dovecot's log says so) over TLS
#   stls-mbox       STLS into an mbox (mboxrd): the same checks, TLS in Dovecot's log
#   keep            --keep twice: the second run fetches nothing (Dovecot's unique-ids);
#                   new messages: only they are fetched; then a run without --keep deletes
#                   everything on the server without fetching anything again
#   auth-methods    each --auth method against Dovecot: scram-sha-256, cram-md5, apop, plain,
#                   user, and Dovecot's log shows the method it saw
#   kill-9          3000 messages, fetch and delete into a Maildir, `kill -9` once about half
#                   are there, run again: every message there exactly once, the maildrop empty
#   crypt-user      a {SHA512-CRYPT} user: auto picks SCRAM-SHA-256, which Dovecot cannot serve
#                   for that user: refused (exit 5), not retried with a weaker method, nothing
#                   deleted; --auth plain then works
#
# Every connection goes to 127.0.0.1; every facteur call is bounded by `timeout`. Needs root
# (Dovecot's master process, apt-get, the system user facteurtest that owns Dovecot's mail).
#
#   bash tests/dovecot/run.sh
#
# Environment:
#   DOVECOT_CASES   the cases to run (default: all), e.g. "keep kill-9"
#   FACTEUR_BIN     a facteur binary to use instead of building one
#   DOVECOT_KEEP=1  keep the work folder even when everything passed
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tests/dovecot"
# shellcheck source=lib.sh
. "$HERE/lib.sh"
STARTED=$(date +%s)
FETCH_TIMEOUT=120
# crypt-user last: its refused login makes Dovecot slow down the next logins from 127.0.0.1
# (its auth penalty), by about 4 s.
ALL_CASES="pop3s-maildir stls-mbox keep auth-methods kill-9 crypt-user"
CASES=${DOVECOT_CASES:-$ALL_CASES}
PW_VAR=FACTEUR_DOVECOT_TEST_PW

say() { printf '%s\n' "$*"; }
die() {
    printf 'dovecot: %s\n' "$*" >&2
    ANY_FAIL=1
    exit 2
}

[ "$(id -u)" -eq 0 ] || die "run as root (Dovecot's master process starts as root)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/facteur-dovecot.XXXXXX")
# Dovecot's login and auth processes, which are not root, must traverse it.
chmod 755 "$WORK"
DOVECOT_DIR=$WORK/dovecot
mkdir -p "$DOVECOT_DIR"
chmod 755 "$DOVECOT_DIR"
ANY_FAIL=0
FETCH_PID=""

cleanup() {
    if [ -n "$FETCH_PID" ]; then
        kill -KILL "$FETCH_PID" 2>/dev/null
        wait "$FETCH_PID" 2>/dev/null
    fi
    dovecot_stop
    if [ "$ANY_FAIL" -eq 0 ] && [ "${DOVECOT_KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        say "work folder kept: $WORK (Dovecot's log: $DOVECOT_DIR/dovecot.log)"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Helpers of the cases. Each case runs with its output in its folder's log; a check that fails
# prints "FAIL: why" and returns 1, which ends the case.

declare -A PASSWORD

# fetch CASE-DIR ARGS...: `facteur fetch ARGS --password-env ... --state-dir CASE-DIR/state`,
# bounded by timeout; sets RC and OUT (its standard output and error).
fetch() {
    local c=$1 user
    shift
    user=$(printf '%s\n' "$1" | sed -n 's|^pop3s\{0,1\}://\([^@]*\)@.*|\1|p')
    printf '$ facteur fetch %s\n' "$*"
    RC=0
    OUT=$(env "$PW_VAR=${PASSWORD[$user]}" timeout "$FETCH_TIMEOUT" "$BIN" fetch "$@" \
        --password-env "$PW_VAR" --state-dir "$c/state" 2>&1) || RC=$?
    printf '%s\n(exit status %s)\n' "$OUT" "$RC"
}

pop3s() { echo "pop3s://$1@127.0.0.1:$POP3S_PORT"; }
stls() { echo "pop3://$1@127.0.0.1:$POP3_PORT"; }

ok() { printf 'ok: %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*"
    return 1
}

expect_rc() { # want what
    if [ "$RC" -eq "$1" ]; then ok "$2: exit status $RC"; else fail "$2: exit status $RC, expected $1"; fi
}
expect_out() { # text what
    if printf '%s' "$OUT" | grep -q -F -- "$1"; then ok "$2: says \"$1\""; else fail "$2: the output lacks \"$1\""; fi
}

add_user() { # name [scheme]
    PASSWORD[$1]=$(openssl rand -hex 12)
    dovecot_add_user "$1" "${2:-PLAIN}" "${PASSWORD[$1]}"
}

# seed USER MANIFEST PREFIX COUNT [mail.py options]: messages into the user's Dovecot Maildir,
# written as the mail user (chown: the files must be Dovecot's to rename and delete).
seed() {
    local user=$1 md
    shift
    md=$(dovecot_maildir "$user")
    python3 "$HERE/mail.py" seed "$md" "$@" || return 1
    chown -R "$MAIL_UID:$MAIL_GID" "$md"
}

on_server() { python3 "$HERE/mail.py" count "$DOVECOT_DIR/mail/$1/Maildir"; }

expect_on_server() { # user count
    local n
    n=$(on_server "$1")
    if [ "$n" -eq "$2" ]; then ok "$2 messages in Dovecot's maildrop of $1"; else fail "$n messages in Dovecot's maildrop of $1, expected $2"; fi
}

expect_stored() { # format path manifest
    local r
    if r=$(python3 "$HERE/mail.py" check "$@"); then ok "$2: $r"; else
        printf '%s\n' "$r"
        fail "$2: $(printf '%s\n' "$r" | head -n 1)"
    fi
}

# The last "Login:" line of USER in Dovecot's log, once there are more than FROM of them (the
# log process writes it a moment after the login).
LOGIN_LINE=""
logins_of() { grep -c "Login: user=<$1>" "$DOVECOT_DIR/dovecot.log" 2>/dev/null; }
expect_login() { # user from method tls|any
    local user=$1 from=$2 method=$3 tls=$4 _
    for _ in $(seq 50); do
        [ "$(logins_of "$user")" -gt "$from" ] && break
        sleep 0.1
    done
    LOGIN_LINE=$(grep "Login: user=<$user>" "$DOVECOT_DIR/dovecot.log" | tail -n 1)
    [ -n "$LOGIN_LINE" ] && [ "$(logins_of "$user")" -gt "$from" ] ||
        fail "no new login of $user in Dovecot's log" || return 1
    printf 'dovecot: %s\n' "$LOGIN_LINE"
    case $LOGIN_LINE in
    *"method=$method,"*) ok "Dovecot saw method=$method" ;;
    *) fail "Dovecot saw $(printf '%s' "$LOGIN_LINE" | grep -o 'method=[A-Z0-9-]*'), expected method=$method" || return 1 ;;
    esac
    if [ "$tls" = tls ]; then
        case $LOGIN_LINE in
        *", TLS,"* | *", TLS" | *", TLS handshaking"*) ok "Dovecot saw TLS" ;;
        *) fail "Dovecot did not see TLS for this session" ;;
        esac
    fi
}

# ---------------------------------------------------------------------------------------------
# The cases.

case_pop3s-maildir() {
    local c=$1 u=alice from
    seed $u "$c/manifest" pop3s 40 --big || fail "seeding" || return 1
    from=$(logins_of $u)
    fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir"
    expect_rc 0 "fetch" || return 1
    expect_out "40 messages fetched" "fetch" || return 1
    expect_out "SCRAM-SHA-256" "the summary names the login method" || return 1
    expect_stored maildir "$c/Maildir" "$c/manifest" || return 1
    expect_on_server $u 0 || return 1
    expect_login $u "$from" SCRAM-SHA-256 tls
}

case_stls-mbox() {
    local c=$1 u=bob from
    seed $u "$c/manifest" stls 40 || fail "seeding" || return 1
    from=$(logins_of $u)
    fetch "$c" "$(stls $u)" --ca-file "$CA" --mbox "$c/mbox"
    expect_rc 0 "fetch over STLS" || return 1
    expect_out "40 messages fetched" "fetch" || return 1
    expect_stored mbox "$c/mbox" "$c/manifest" || return 1
    expect_on_server $u 0 || return 1
    expect_login $u "$from" SCRAM-SHA-256 tls
}

case_keep() {
    local c=$1 u=carol
    seed $u "$c/manifest" keep 30 || fail "seeding" || return 1
    fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir" --keep
    expect_rc 0 "first run with --keep" || return 1
    expect_out "30 messages fetched" "first run" || return 1
    expect_on_server $u 30 || return 1
    fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir" --keep
    expect_rc 1 "second run with --keep (nothing new)" || return 1
    expect_out "no new messages (30 on the server" "second run" || return 1
    expect_stored maildir "$c/Maildir" "$c/manifest" || return 1
    expect_on_server $u 30 || return 1
    # New mail arrives: only it is fetched.
    seed $u "$c/manifest" keep 5 --start 30 || fail "seeding" || return 1
    fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir" --keep
    expect_rc 0 "third run with --keep, after 5 new messages" || return 1
    expect_out "5 messages fetched" "third run" || return 1
    expect_stored maildir "$c/Maildir" "$c/manifest" || return 1
    # Without --keep: the 35 are deleted on the server, none fetched again.
    fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir"
    expect_rc 1 "a run without --keep (nothing new to fetch)" || return 1
    expect_out "35 deleted on the server" "that run" || return 1
    expect_on_server $u 0 || return 1
    expect_stored maildir "$c/Maildir" "$c/manifest"
}

case_auth-methods() {
    local c=$1 u=dave m from want
    for m in scram-sha-256 cram-md5 apop plain user; do
        case $m in
        scram-sha-256) want=SCRAM-SHA-256 ;;
        cram-md5) want=CRAM-MD5 ;;
        apop) want=APOP ;;
        # Dovecot logs USER/PASS as the PLAIN mechanism.
        plain | user) want=PLAIN ;;
        esac
        seed $u "$c/manifest-$m" "auth-$m" 2 || fail "seeding" || return 1
        from=$(logins_of $u)
        fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir-$m" --auth "$m"
        expect_rc 0 "--auth $m" || return 1
        expect_stored maildir "$c/Maildir-$m" "$c/manifest-$m" || return 1
        expect_on_server $u 0 || return 1
        expect_login $u "$from" "$want" tls || return 1
    done
}

case_crypt-user() {
    local c=$1 u=erin from _
    seed $u "$c/manifest" crypt 3 || fail "seeding" || return 1
    from=$(logins_of $u)
    fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir"
    expect_rc 5 "auto login of a {SHA512-CRYPT} user (SCRAM-SHA-256 offered, cannot work)" || return 1
    expect_out "SCRAM-SHA-256" "the error names the method" || return 1
    expect_on_server $u 3 || return 1
    if [ "$(logins_of $u)" -ne "$from" ]; then fail "facteur logged in after the refusal (a weaker method tried?)" || return 1; fi
    # Dovecot counts the attempts of the connection: one, SCRAM-SHA-256, and no other after it.
    for _ in $(seq 50); do
        grep -q "Disconnected.*auth failed.*user=<$u>" "$DOVECOT_DIR/dovecot.log" && break
        sleep 0.1
    done
    grep "user=<$u>" "$DOVECOT_DIR/dovecot.log" | tail -n 3
    grep "Disconnected.*auth failed.*user=<$u>" "$DOVECOT_DIR/dovecot.log" | tail -n 1 |
        grep -q "auth failed, 1 attempts.*method=SCRAM-SHA-256" ||
        fail "Dovecot's log does not show one failed SCRAM-SHA-256 attempt and no other" || return 1
    ok "Dovecot saw one attempt, SCRAM-SHA-256, and no weaker one after it"
    fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir" --auth plain
    expect_rc 0 "--auth plain" || return 1
    expect_stored maildir "$c/Maildir" "$c/manifest" || return 1
    expect_on_server $u 0 || return 1
    expect_login $u "$from" PLAIN tls
}

case_kill-9() {
    local c=$1 u=kim n=3000 count=0 killed_at _
    seed $u "$c/manifest" kill $n || fail "seeding" || return 1
    mkdir -p "$c/Maildir/new"
    printf '$ facteur fetch %s --ca-file %s --maildir %s (in the background)\n' "$(pop3s $u)" \
        "$CA" "$c/Maildir"
    env "$PW_VAR=${PASSWORD[$u]}" "$BIN" fetch "$(pop3s $u)" --ca-file "$CA" \
        --maildir "$c/Maildir" --password-env "$PW_VAR" --state-dir "$c/state" \
        >"$c/killed-run.out" 2>&1 &
    FETCH_PID=$!
    # About half there, then kill -9 (bounded: 60 s at most).
    for _ in $(seq 3000); do
        kill -0 "$FETCH_PID" 2>/dev/null || break
        count=$(find "$c/Maildir/new" -maxdepth 1 -type f | wc -l)
        [ "$count" -ge $((n / 2)) ] && break
        sleep 0.02
    done
    kill -KILL "$FETCH_PID" 2>/dev/null
    wait "$FETCH_PID" 2>/dev/null
    killed_at=$?
    FETCH_PID=""
    count=$(find "$c/Maildir/new" -maxdepth 1 -type f | wc -l)
    printf 'killed (wait status %s) with %s messages in new/, %s in tmp/; %s on the server\n' \
        "$killed_at" "$count" "$(find "$c/Maildir/tmp" -type f 2>/dev/null | wc -l)" "$(on_server $u)"
    [ "$killed_at" -eq 137 ] || fail "the fetch ended before it could be killed (status $killed_at; $count of $n there): not a kill in the middle" || return 1
    [ "$count" -lt "$n" ] || fail "all $n messages were there before the kill: not a kill in the middle" || return 1
    fetch "$c" "$(pop3s $u)" --ca-file "$CA" --maildir "$c/Maildir"
    expect_rc 0 "the run after kill -9" || return 1
    expect_stored maildir "$c/Maildir" "$c/manifest" || return 1
    # Not a failure: Maildir readers clean tmp/ of files older than 36 hours.
    printf 'after the rerun: %s files in tmp/\n' "$(find "$c/Maildir/tmp" -type f | wc -l)"
    expect_on_server $u 0
}

# ---------------------------------------------------------------------------------------------
# Main.

declare -A RESULT REASON
say "==== dovecot: installing Dovecot if missing"
dovecot_install || die "cannot install Dovecot"
dovecot_mail_user facteurtest || die "cannot create the user facteurtest"
say "  $(dovecot --version | sed 's/^/Dovecot /')"
say "==== dovecot: building facteur"
if [ -n "${FACTEUR_BIN:-}" ]; then
    BIN=$FACTEUR_BIN
else
    # The dev profile: CI's test run builds the same artifacts.
    (cd "$ROOT" && cargo build -q -p facteur --bin facteur) || die "cargo build failed"
    BIN="$ROOT/target/debug/facteur"
fi
[ -x "$BIN" ] || die "no facteur binary at $BIN"
say "  facteur: $BIN ($("$BIN" --version))"
say "==== dovecot: starting Dovecot"
dovecot_certificates || die "cannot make the certificates"
for c in $CASES; do
    case $c in
    pop3s-maildir | stls-mbox | keep | auth-methods | crypt-user | kill-9) ;;
    *) die "unknown case $c (the cases: $ALL_CASES)" ;;
    esac
done
# Every case's user is in the passwd-file before Dovecot starts: Dovecot rereads the file
# when its modification time changes, which a line added in the same second does not.
for u in alice bob carol dave kim; do add_user $u; done
add_user erin SHA512-CRYPT
dovecot_start || die "Dovecot did not start"
say "  Dovecot: pid $DOVECOT_PID, POP3+STLS on 127.0.0.1:$POP3_PORT, POP3S on 127.0.0.1:$POP3S_PORT"

say "==== dovecot: the cases"
for c in $CASES; do
    dir="$WORK/cases/$c"
    mkdir -p "$dir"
    t0=$(date +%s%N)
    "case_$c" "$dir" >"$dir/log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    if [ "$rc" -eq 0 ]; then
        RESULT[$c]=PASS
    else
        RESULT[$c]=FAIL
        ANY_FAIL=1
        REASON[$c]=$(grep '^FAIL: ' "$dir/log" | tail -n 1 | sed 's/^FAIL: //')
        [ -n "${REASON[$c]}" ] || REASON[$c]="the case ended with status $rc"
    fi
    printf '  %-14s %s (%d.%01ds)\n' "$c" "${RESULT[$c]}" $((ms / 1000)) $((ms % 1000 / 100))
    if [ "${RESULT[$c]}" = FAIL ]; then
        say "    ${REASON[$c]}"
        say "    case folder: $dir"
        tail -n 30 "$dir/log" | sed 's/^/    | /'
    fi
done

if ! kill -0 "$DOVECOT_PID" 2>/dev/null; then
    ANY_FAIL=1
    say "Dovecot died during the run; its log: $DOVECOT_DIR/dovecot.log"
fi
if grep -E -q 'Panic|Fatal' "$DOVECOT_DIR/dovecot.log" 2>/dev/null; then
    say "Dovecot logged errors:"
    grep -E 'Panic|Fatal' "$DOVECOT_DIR/dovecot.log" | head -n 10
fi

passed=0 failed=0
for c in $CASES; do
    case ${RESULT[$c]} in PASS) passed=$((passed + 1)) ;; *) failed=$((failed + 1)) ;; esac
done
say ""
say "==== dovecot: results (wall time $(($(date +%s) - STARTED))s)"
for c in $CASES; do
    [ "${RESULT[$c]}" = FAIL ] && say "FAIL $c: ${REASON[$c]}"
done
say "dovecot: $passed passed, $failed failed"
[ "$ANY_FAIL" -eq 0 ] || exit 1
