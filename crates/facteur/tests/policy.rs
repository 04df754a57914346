//! RFC 2449's LOGIN-DELAY and EXPIRE, end to end with Python's poplib, on both stores: what
//! CAPA announces before and after login, a login refused too soon after the last one (and only
//! once the password is right), and EXPIRE 0 deleting what a session retrieved, at its QUIT
//! only. Time-based expiry (days) is tested in the stores' own tests, with a short duration.

mod common;

use common::*;
use std::process::Command;

/// Runs `script` (Python 3) with the server's port as `port`, `user` and `password` defined,
/// and `login(user, password)` that retries while the maildrop is still locked by a session
/// that just ended; returns what it printed. Panics if it fails.
fn poplib(server: &Server, script: &str) -> String {
    let prelude = r#"
import poplib, sys, time
port = int(sys.argv[1])
def connect():
    return poplib.POP3("127.0.0.1", port, timeout=30)
def login(user, password):
    deadline = time.monotonic() + 20
    while True:
        p = connect()
        p.user(user)
        try:
            p.pass_(password)
            return p
        except poplib.error_proto as e:
            p.close()
            if b"[IN-USE]" not in e.args[0] or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
def err(f):
    try:
        f()
        return "+OK"
    except poplib.error_proto as e:
        return e.args[0].decode()
def caps(p):
    c = p.capa()
    return " ".join(k + "=" + ",".join(v) for k, v in sorted(c.items())
                    if k in ("LOGIN-DELAY", "EXPIRE")) or "-"
"#;
    let (code, stdout, stderr) = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}\n{script}"))
            .arg(server.addr.port().to_string()),
        b"",
    );
    assert_eq!(code, Some(0), "python3 poplib failed:\n{stdout}\n{stderr}");
    stdout
}

/// CAPA: nothing by default; the server's values with `USER` before login when some user has
/// their own; each user's own values after login.
fn capa_announces_the_policy_before_and_after_login(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let server = fx.start();
    let out = poplib(
        &server,
        r#"
p = connect()
print("before", caps(p))
p.quit()
p = login("alice", "secret")
print("alice", caps(p))
p.quit()
"#,
    );
    assert_eq!(out, "before -\nalice -\n");
    drop(server);

    let fx = Fixture::with_policy(
        "login_delay_secs = 1\nexpire = 30\n",
        "dave:{PLAIN}secret::::::quota=1G expire=0 login_delay=0\n",
    )
    .on(backend);
    let server = fx.start();
    let out = poplib(
        &server,
        r#"
p = connect()
print("before", caps(p))
p.quit()
p = login("alice", "secret")
print("alice", caps(p))
p.quit()
p = login("dave", "secret")
print("dave", caps(p))
p.quit()
"#,
    );
    assert_eq!(
        out,
        "before EXPIRE=30,USER LOGIN-DELAY=1,USER\n\
         alice EXPIRE=30 LOGIN-DELAY=1\n\
         dave EXPIRE=0\n"
    );
}

/// LOGIN-DELAY: a login sooner than the delay after the last one is refused with
/// `[LOGIN-DELAY]`, but only once the password is right (a wrong one gets `[AUTH]` and tells
/// nothing), and the refusals do not push the next allowed login further away.
fn a_login_too_soon_is_refused_then_accepted(backend: Backend) {
    let fx = Fixture::with_policy("login_delay_secs = 2\n", "").on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let out = poplib(
        &server,
        r#"
p = login("alice", "secret")
first = time.monotonic()
print("first", p.stat()[0])
p.quit()
p = connect(); p.user("alice")
print("again", err(lambda: p.pass_("secret")))
p.user("alice")
print("wrong", err(lambda: p.pass_("wrong")))
p.close()
p = connect(); p.user("carol")
print("carol", err(lambda: p.pass_("secret")))
p.quit()
time.sleep(max(0, first + 2.2 - time.monotonic()))
p = login("alice", "secret")
print("later", p.stat()[0])
p.quit()
"#,
    );
    assert_eq!(
        out,
        "first 1\n\
         again -ERR [LOGIN-DELAY] logged in too recently, try again later\n\
         wrong -ERR [AUTH] invalid user name or password\n\
         carol +OK\n\
         later 1\n"
    );
}

/// EXPIRE 0: what RETR sent whole is deleted at QUIT, and only at a QUIT: a session that ends
/// without one deletes nothing; TOP does not count.
fn expire_0_deletes_the_retrieved_messages_at_quit_only(backend: Backend) {
    let fx = Fixture::with_policy("expire = 0\n", "").on(backend);
    let delivered: Vec<_> = (1..=3).map(|i| fx.deliver(USER, &message(i))).collect();
    let server = fx.start();
    let out = poplib(
        &server,
        r#"
p = login("alice", "secret")
print("capa", caps(p))
p.retr(1)
p.retr(2)
p.close()
"#,
    );
    assert_eq!(out, "capa EXPIRE=0\n");
    assert_eq!(fx.message_count(USER), 3, "deleted without a QUIT");

    let out = poplib(
        &server,
        r#"
p = login("alice", "secret")
print("stat", p.stat()[0])
p.retr(1)
p.top(2, 0)
p.retr(3)
print("before quit", p.stat()[0])
print("quit", p.quit().decode())
p = login("alice", "secret")
print("after", p.stat()[0], p.uidl()[1][0].decode().split()[1])
p.quit()
"#,
    );
    let uid = delivered_base(&delivered[1]);
    assert_eq!(
        out,
        format!(
            "stat 3\nbefore quit 3\nquit +OK signing off (2 messages deleted, 1 left)\nafter 1 {uid}\n"
        )
    );
    assert_eq!(fx.message_count(USER), 1);
}

both_backends!(
    capa_announces_the_policy_before_and_after_login,
    a_login_too_soon_is_refused_then_accepted,
    expire_0_deletes_the_retrieved_messages_at_quit_only,
);
