//! `facteur bench`, the binary, against a facteur server running in this process: the figures
//! it prints must be exactly what the sessions did.

mod common;

use common::*;

/// Messages retrieved per session.
const K: usize = 3;
/// Users `bench0`..`bench3`, password `pw0`..`pw3`, each with K + 1 messages.
const USERS: usize = 4;

fn fixture(tls: bool) -> Fixture {
    let f = if tls {
        Fixture::with_tls()
    } else {
        Fixture::new()
    };
    let path = f.path().join("users");
    let mut users = std::fs::read_to_string(&path).expect("read the users file");
    for i in 0..USERS {
        users.push_str(&format!("bench{i}:{{PLAIN}}pw{i}\n"));
    }
    std::fs::write(&path, users).expect("write the users file");
    for i in 0..USERS {
        for n in 0..=K {
            f.deliver(&format!("bench{i}"), &message(n));
        }
    }
    f
}

/// The octets RETR gives for each of the fixture's messages (all the same length).
fn message_octets() -> u64 {
    let len = crlf(&message(0)).len();
    assert!((0..=K).all(|n| crlf(&message(n)).len() == len));
    len as u64
}

/// Run `facteur bench ARGS`; returns its standard output.
fn bench(args: &[&str]) -> String {
    let (code, stdout, stderr) = run_with_input(facteur().arg("bench").args(args), b"");
    assert_eq!(code, Some(0), "facteur bench {args:?}: {stderr}");
    stdout
}

/// The raw value of `key` in the bench's one-line JSON report.
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

fn count(json: &str, key: &str) -> u64 {
    field(json, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a count in {json}"))
}

/// Checks every run's report: all sessions ok, `messages` RETRs, their octets exactly.
fn assert_clean_run(json: &str, sessions: u64, messages: u64) {
    assert_eq!(count(json, "sessions"), sessions, "{json}");
    assert_eq!(count(json, "sessions_ok"), sessions, "{json}");
    assert_eq!(count(json, "errors"), 0, "{json}");
    assert_eq!(count(json, "messages"), messages, "{json}");
    assert_eq!(count(json, "octets"), messages * message_octets(), "{json}");
    let p50: f64 = field(json, "latency_p50_ms").parse().expect("a p50");
    let p99: f64 = field(json, "latency_p99_ms").parse().expect("a p99");
    assert!(0.0 < p50 && p50 <= p99, "{json}");
    let cpu: f64 = field(json, "cpu_secs")
        .parse()
        .expect("the bench's CPU time");
    assert!(cpu >= 0.0, "{json}");
}

fn user_args(port: u16) -> Vec<String> {
    [
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--user",
        "bench%d",
        "--password",
        "pw%d",
        "--user-count",
        &USERS.to_string(),
        "--json",
    ]
    .map(String::from)
    .to_vec()
}

fn args<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect()
}

#[test]
fn counts_sessions_messages_and_octets_exactly() {
    let f = fixture(false);
    let server = f.start();
    let base = user_args(server.addr.port());
    let json = bench(&args(
        &base,
        &[
            "--concurrency",
            "4",
            "--sessions",
            "12",
            "--retr",
            "3",
            "--uidl",
        ],
    ));
    assert_clean_run(&json, 12, 12 * K as u64);
    // Nothing was deleted.
    for i in 0..USERS {
        assert_eq!(f.message_files(&format!("bench{i}")).len(), K + 1);
    }
}

#[test]
fn pipelined_retr_and_dele_empty_the_maildrops() {
    let f = fixture(false);
    let server = f.start();
    let base = user_args(server.addr.port());
    let json = bench(&args(
        &base,
        &[
            "--concurrency",
            "4",
            "--sessions",
            "4",
            "--retr",
            "3",
            "--pipelining",
            "--dele",
        ],
    ));
    assert_clean_run(&json, 4, 4 * K as u64);
    for i in 0..USERS {
        assert_eq!(f.message_files(&format!("bench{i}")).len(), 1, "bench{i}");
    }
}

#[test]
fn stls_with_a_ca_file_and_pop3s_insecure() {
    let f = fixture(true);
    let server = f.start();
    let cert = f.cert().to_string_lossy().into_owned();
    let base = user_args(server.addr.port());
    let json = bench(&args(
        &base,
        &[
            "--mode",
            "stls",
            "--cafile",
            &cert,
            "--concurrency",
            "2",
            "--sessions",
            "4",
            "--retr",
            "2",
        ],
    ));
    assert_clean_run(&json, 4, 8);

    let base = user_args(server.pop3s().port());
    let json = bench(&args(
        &base,
        &[
            "--mode",
            "pop3s",
            "--insecure",
            "--concurrency",
            "2",
            "--sessions",
            "4",
            "--retr",
            "1",
        ],
    ));
    assert_clean_run(&json, 4, 4);
}

#[test]
fn refused_logins_are_errors_by_kind() {
    let f = fixture(false);
    let server = f.start();
    let port = server.addr.port().to_string();
    let table = bench(&[
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--user",
        USER,
        "--password",
        "wrong",
        "--sessions",
        "2",
        "--retr",
        "1",
    ]);
    assert!(table.contains("sessions     2 (0 ok, 2 failed)"), "{table}");
    assert!(table.contains("messages     0 "), "{table}");
    assert!(table.contains("errors       2\n"), "{table}");
    assert!(
        table.contains("    auth         2 (first: PASS: -ERR [AUTH] "),
        "{table}"
    );
    assert!(table.contains("% of one core"), "{table}");
}
