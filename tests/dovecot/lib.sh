# shellcheck shell=bash disable=SC2153 # DOVECOT_DIR is set by the caller
# Dovecot's POP3 server in a scratch folder, for tests/dovecot/run.sh and bench/fetch.sh (which
# source this file). Nothing outside the folder changes but the Debian packages (dovecot-core,
# dovecot-pop3d, installed when missing) and one system user that owns the mail (Dovecot
# refuses to give mail to root). Everything listens on 127.0.0.1 only.
#
# Needs root: Dovecot's master process starts as root to switch users, and apt-get.
#
# The caller sets DOVECOT_DIR (an absolute path, traversable by Dovecot's unprivileged login
# and auth processes) and calls, in this order:
#   dovecot_install                  apt-get install the packages if missing
#   dovecot_mail_user NAME           create the system user NAME if missing; sets MAIL_UID/GID
#   dovecot_certificates             a CA and a certificate it signs for 127.0.0.1 and
#                                    localhost; sets CA, CERT, KEY
#   dovecot_add_user NAME SCHEME PW  a line of the passwd-file (SCHEME: PLAIN or SHA512-CRYPT)
#   dovecot_start                    picks two free ports, writes the configuration, starts
#                                    Dovecot; sets POP3_PORT (STLS), POP3S_PORT, DOVECOT_PID
#   dovecot_maildir NAME             the Maildir of a user (created, owned by the mail user)
#   dovecot_stop                     stops it (also safe when it is not running)

DOVECOT_PID=""

dovecot_say() { printf '%s\n' "$*"; }

dovecot_install() {
    if command -v dovecot >/dev/null 2>&1 && [ -x /usr/lib/dovecot/pop3 ] &&
        command -v openssl >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1 &&
        command -v ss >/dev/null 2>&1; then
        return 0
    fi
    dovecot_say "installing dovecot-core dovecot-pop3d (and openssl, python3, iproute2)"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq || return 1
    # The package starts the system's own instance, on 110 and 995: it is left as the package
    # manager set it up; ours uses other ports and its own folders.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        dovecot-core dovecot-pop3d openssl python3 iproute2 >/dev/null
}

dovecot_mail_user() {
    local name=$1
    if ! id "$name" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            "$name" || return 1
    fi
    MAIL_UID=$(id -u "$name")
    MAIL_GID=$(id -g "$name")
}

# A CA and a server certificate it signs (ECDSA P-256): clients check the server against the
# CA, as they would in real use. rustls refuses a self-signed CA certificate as a server's.
dovecot_certificates() {
    local d="$DOVECOT_DIR/tls"
    mkdir -p "$d"
    (
        cd "$d" &&
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -keyout ca.key -out ca.pem -days 2 -subj "/CN=facteur Dovecot test CA" \
                -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign,cRLSign" &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -keyout key.pem -out server.csr -subj "/CN=localhost" &&
            printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
                "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext &&
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key \
                -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile server.ext -out cert.pem
    ) >"$d/openssl.log" 2>&1 || {
        cat "$d/openssl.log"
        return 1
    }
    # shellcheck disable=SC2034 # for the caller
    CA=$d/ca.pem CERT=$d/cert.pem KEY=$d/key.pem
}

dovecot_add_user() {
    local name=$1 scheme=$2 pw=$3 hash
    case $scheme in
    PLAIN) hash="{PLAIN}$pw" ;;
    SHA512-CRYPT) hash="{SHA512-CRYPT}$(printf '%s\n' "$pw" | openssl passwd -6 -stdin)" ;;
    *) return 1 ;;
    esac
    printf '%s:%s\n' "$name" "$hash" >>"$DOVECOT_DIR/users"
    chmod 644 "$DOVECOT_DIR/users"
}

# Two ports the kernel says are free now (bound to port 0, then released).
free_ports() {
    python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}

dovecot_write_config() {
    cat >"$DOVECOT_DIR/dovecot.conf" <<EOF
# Dovecot for facteur's tests: loopback only, everything in $DOVECOT_DIR.
instance_name = facteur-$(basename "$DOVECOT_DIR")
base_dir = $DOVECOT_DIR/run
state_dir = $DOVECOT_DIR/state
log_path = $DOVECOT_DIR/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <$CERT
ssl_key = <$KEY
ssl_min_protocol = TLSv1.2
# The default: PLAIN, LOGIN and USER/PASS only under TLS.
disable_plaintext_auth = yes
# Every mechanism a {PLAIN} password can serve, so that a client picks the strongest itself.
auth_mechanisms = plain login cram-md5 scram-sha-256 apop
passdb {
  driver = passwd-file
  args = $DOVECOT_DIR/users
}
userdb {
  driver = static
  args = uid=$MAIL_UID gid=$MAIL_GID home=$DOVECOT_DIR/mail/%u
}
mail_location = maildir:$DOVECOT_DIR/mail/%u/Maildir
first_valid_uid = $MAIL_UID
first_valid_gid = $MAIL_GID
# The default unique-id format, spelled out.
pop3_uidl_format = %08Xu%08Xv
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $POP3_PORT
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $POP3S_PORT
    ssl = yes
  }
}
${DOVECOT_EXTRA_CONFIG:-}
EOF
}

dovecot_start() {
    local ports _
    mkdir -p "$DOVECOT_DIR/mail"
    chown "$MAIL_UID:$MAIL_GID" "$DOVECOT_DIR/mail"
    touch "$DOVECOT_DIR/users"
    chmod 644 "$DOVECOT_DIR/users"
    ports=$(free_ports) || return 1
    POP3_PORT=${ports% *} POP3S_PORT=${ports#* }
    dovecot_write_config
    doveconf -n -c "$DOVECOT_DIR/dovecot.conf" >"$DOVECOT_DIR/doveconf-n.txt" 2>&1 || {
        cat "$DOVECOT_DIR/doveconf-n.txt"
        return 1
    }
    dovecot -F -c "$DOVECOT_DIR/dovecot.conf" >>"$DOVECOT_DIR/dovecot.out" 2>&1 &
    DOVECOT_PID=$!
    # Asked of the kernel, not by connecting: a probe would be a session in the log.
    for _ in $(seq 100); do
        if [ -n "$(ss -Hltn "sport = :$POP3_PORT")" ] && [ -n "$(ss -Hltn "sport = :$POP3S_PORT")" ]; then
            return 0
        fi
        kill -0 "$DOVECOT_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$DOVECOT_DIR/dovecot.out" "$DOVECOT_DIR/dovecot.log" 2>/dev/null | tail -n 20
    return 1
}

dovecot_maildir() {
    local md="$DOVECOT_DIR/mail/$1/Maildir"
    if [ ! -d "$md" ]; then
        mkdir -p "$md/tmp" "$md/new" "$md/cur"
        chown -R "$MAIL_UID:$MAIL_GID" "$DOVECOT_DIR/mail/$1"
    fi
    printf '%s\n' "$md"
}

# The master stops its children (login, auth, pop3 processes) on TERM. (Like every function
# here, safe under set -e.)
dovecot_stop() {
    local _
    [ -n "$DOVECOT_PID" ] || return 0
    if kill -TERM "$DOVECOT_PID" 2>/dev/null; then
        for _ in $(seq 100); do
            kill -0 "$DOVECOT_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DOVECOT_PID" 2>/dev/null || true
    fi
    wait "$DOVECOT_PID" 2>/dev/null || true
    DOVECOT_PID=""
}
