//! What the server logs for an administrator: one line per login naming the peer, the user
//! (escaped), the method and the outcome with its reason, while the client's answers stay the
//! same whatever the reason; and refused connections summed up instead of one line each.
//!
//! Each test runs the real binary and reads its stderr.

mod common;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::*;
use std::time::Duration;

/// A fixture whose `[log]` section also has these lines (it is the last section of the file).
fn fixture_with_log(limits: &str, auth: &str, log: &str) -> Fixture {
    let fx = Fixture::build(limits, auth, false);
    let mut text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    assert!(text.trim_end().ends_with("level = \"info\""), "{text}");
    text.push_str(log);
    std::fs::write(&fx.config_path, text).expect("write the configuration");
    fx
}

/// The log lines of logins (`... login peer=...`).
fn login_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" login peer=")).collect()
}

/// The one login line that has every one of `parts`; panics with the log otherwise.
fn login_line<'a>(log: &'a str, parts: &[&str]) -> &'a str {
    let found: Vec<&str> = login_lines(log)
        .into_iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect();
    assert_eq!(found.len(), 1, "one login line with {parts:?}; log:\n{log}");
    found[0]
}

/// USER/PASS on a new connection: the answer to PASS.
fn user_pass(addr: std::net::SocketAddr, user: &str, password: &str) -> String {
    let mut c = Client::connect(addr);
    assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
    c.cmd(&format!("PASS {password}"))
}

fn login_lines_name_the_method_and_the_reason_the_client_is_not_told(backend: Backend) {
    // Penalties capped low: the seven failures of this test cost little time.
    let fx = Fixture::build(
        &format!("{DEFAULT_LIMITS}max_failed_login_delay_ms = 100\n"),
        "sasl = [\"CRAM-MD5\", \"PLAIN\"]\napop = true\n",
        false,
    )
    .on(backend);
    let server = BinServer::start(&fx.config_path);

    // A wrong password and an unknown user: the same answer.
    let wrong = user_pass(server.addr, USER, "not-the-password");
    let unknown = user_pass(server.addr, "nobody", "whatever");
    assert_eq!(wrong, "-ERR [AUTH] invalid user name or password\r\n");
    assert_eq!(unknown, wrong);

    // CRAM-MD5 for a user stored as SHA512-CRYPT: no password could succeed, the client is
    // answered as for a wrong one.
    let mut c = Client::connect(server.addr);
    let challenge = c.cmd("AUTH CRAM-MD5");
    assert!(challenge.starts_with("+ "), "{challenge:?}");
    let answer = BASE64.encode(format!("{CRYPT_USER} {}", "0".repeat(32)));
    let impossible = c.cmd(&answer);
    assert_eq!(impossible, wrong);
    // The same exchange for the {PLAIN} user with a wrong digest: the same answer again.
    let mut c = Client::connect(server.addr);
    assert!(c.cmd("AUTH CRAM-MD5").starts_with("+ "));
    let answer = BASE64.encode(format!("{USER} {}", "0".repeat(32)));
    assert_eq!(c.cmd(&answer), wrong);

    // A user name with a terminal escape, a line break and a long tail (SASL PLAIN takes any
    // UTF-8 but NUL).
    let hostile = format!("evil\x1b[31m\r\n{}", "x".repeat(100));
    let plain = BASE64.encode(format!("\0{hostile}\0whatever"));
    let mut c = Client::connect(server.addr);
    assert_eq!(c.cmd(&format!("AUTH PLAIN {plain}")), wrong);

    // APOP for the SHA512-CRYPT user: impossible too, and answered as a wrong password.
    let mut c = Client::connect(server.addr);
    assert!(
        c.greeting.contains('<'),
        "APOP is offered: {:?}",
        c.greeting
    );
    assert_eq!(
        c.cmd(&format!("APOP {CRYPT_USER} {}", "0".repeat(32))),
        wrong
    );

    // A success, then a second login while the first holds the maildrop.
    let ok = server.login(USER, PASSWORD);
    let in_use = user_pass(server.addr, USER, PASSWORD);
    assert!(in_use.starts_with("-ERR [IN-USE]"), "{in_use:?}");
    ok.quit();

    let log = server.wait_for_log(" login peer=", 8);
    let line = login_line(
        &log,
        &[
            "user=\"alice\"",
            "method=USER/PASS",
            "outcome=failed",
            "reason=\"wrong password\"",
        ],
    );
    assert!(line.contains("delay_ms="), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(!line.contains("not-the-password"), "{line}");

    let line = login_line(
        &log,
        &[
            "user=\"nobody\"",
            "method=USER/PASS",
            "reason=\"unknown user\"",
        ],
    );
    assert!(
        line.contains("outcome=failed") && line.contains("delay_ms="),
        "{line}"
    );

    let line = login_line(&log, &["user=\"carol\"", "method=SASL/CRAM-MD5"]);
    assert!(line.contains("outcome=failed"), "{line}");
    assert!(line.contains("method impossible"), "{line}");
    assert!(line.contains("SHA512-CRYPT"), "{line}");

    login_line(
        &log,
        &[
            "user=\"alice\"",
            "method=SASL/CRAM-MD5",
            "reason=\"wrong password\"",
        ],
    );

    let line = login_line(&log, &["user=\"evil"]);
    assert!(
        !line.contains('\x1b'),
        "the escape reached the log: {line:?}"
    );
    assert!(
        line.contains(&format!(
            "user=\"evil\\x1b[31m\\x0d\\x0a{}\"...",
            "x".repeat(53)
        )),
        "{line}"
    );
    assert!(line.contains("method=SASL/PLAIN"), "{line}");
    assert!(line.contains("reason=\"unknown user\""), "{line}");

    let line = login_line(&log, &["user=\"carol\"", "method=APOP"]);
    assert!(line.contains("method impossible"), "{line}");
    assert!(line.contains("SHA512-CRYPT"), "{line}");

    let line = login_line(&log, &["user=\"alice\"", "outcome=ok"]);
    assert!(line.contains("method=USER/PASS"), "{line}");
    assert!(!line.contains("reason="), "{line}");

    let line = login_line(&log, &["user=\"alice\"", "reason=\"maildrop in use\""]);
    assert!(line.contains("outcome=failed"), "{line}");
}

/// Open `n` connections while the only one allowed from 127.0.0.1 is held: each is refused.
fn refuse(addr: std::net::SocketAddr, n: usize) {
    for _ in 0..n {
        let c = Client::connect_unchecked(addr);
        assert_eq!(
            c.greeting,
            "-ERR [SYS/TEMP] too many connections from your address\r\n"
        );
    }
}

/// The refusals a log counts: one per `connection refused` line, plus the count of each
/// `refused N connections ...` summary.
fn refusals_counted(log: &str) -> (usize, u64) {
    let mut lines = 0;
    let mut counted = 0;
    for line in log.lines() {
        if line.contains("connection refused") {
            lines += 1;
            counted += 1;
        } else if let Some(rest) = line.split("refused ").nth(1) {
            if line.contains("connections in the last") || line.contains("connection in the last") {
                lines += 1;
                counted += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("a count in {line:?}"));
            }
        }
    }
    (lines, counted)
}

fn refused_connections_are_summed_up_by_the_timer(backend: Backend) {
    let fx = fixture_with_log(
        &format!("{DEFAULT_LIMITS}max_connections_per_ip = 1\n"),
        "",
        "refusal_summary_secs = 1\n",
    )
    .on(backend);
    let server = BinServer::start(&fx.config_path);
    let held = Client::connect(server.addr);
    refuse(server.addr, 300);
    // The timer flushes the window (1 s) without any further refusal.
    let mut counted = 0;
    for _ in 0..1500 {
        counted = refusals_counted(&server.log()).1;
        if counted >= 300 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = server.log();
    let (lines, counted_now) = refusals_counted(&log);
    assert_eq!(counted_now, 300, "every refusal counted once; log:\n{log}");
    assert_eq!(counted, 300);
    // One line at the start, then one per second at most while they last (well under a
    // second here, a few on a loaded machine).
    assert!(lines <= 20, "{lines} lines for 300 refusals; log:\n{log}");
    assert!(
        log.contains("too many connections from 127.0.0.1 ("),
        "the summary names the address: {log}"
    );
    drop(held);
}

fn refused_connections_are_summed_up_at_shutdown(backend: Backend) {
    let fx = fixture_with_log(
        &format!("{DEFAULT_LIMITS}max_connections_per_ip = 1\n"),
        "",
        "",
    )
    .on(backend);
    let mut server = BinServer::start(&fx.config_path);
    let held = Client::connect(server.addr);
    refuse(server.addr, 300);
    drop(held);
    server.signal("TERM");
    assert!(server.wait_exit().success());
    let log = server.log();
    // The default window is 10 s, far longer than 300 refusals take: the first is logged at
    // once, the other 299 in one line when the server stops.
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("connection refused"))
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("too many connections from 127.0.0.1 (299)"),
        "{log}"
    );
    assert_eq!(refusals_counted(&log), (2, 300), "{log}");
}

/// `[log] format = "json"`: every line one JSON object with the timestamp, the level, the
/// message and the event's fields at the top level, the same fields as the text format; a
/// hostile user name stays a string value and cannot break the line.
fn json_lines_carry_the_same_fields(backend: Backend) {
    let fx = fixture_with_log(DEFAULT_LIMITS, "", "format = \"json\"\n").on(backend);
    let server = BinServer::start(&fx.config_path);
    let c = server.login(USER, PASSWORD);
    c.quit();
    let forged = "bob\"}{\"level\":\"ERROR";
    assert!(user_pass(server.addr, forged, "x").starts_with("-ERR"));
    let log = server.wait_for_log("\"reason\"", 1);
    let mut logins = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}\n{log}"));
        let o = v.as_object().expect("an object per line");
        for key in ["timestamp", "level", "message"] {
            assert!(o.contains_key(key), "{key} in {line}");
        }
        if o["message"] == "login" {
            logins.push(o.clone());
        }
    }
    assert_eq!(logins.len(), 2, "{log}");
    let ok = &logins[0];
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["user"], format!("\"{USER}\""));
    assert_eq!(ok["method"], "USER/PASS");
    assert!(
        ok["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{ok:?}"
    );
    let failed = &logins[1];
    // The name as the text format escapes it, inside one string value.
    assert_eq!(failed["user"], "\"bob\\\"}{\\\"level\\\":\\\"ERROR\"");
    assert!(failed.contains_key("reason"), "{failed:?}");
}

both_backends!(
    json_lines_carry_the_same_fields,
    login_lines_name_the_method_and_the_reason_the_client_is_not_told,
    refused_connections_are_summed_up_by_the_timer,
    refused_connections_are_summed_up_at_shutdown,
);
