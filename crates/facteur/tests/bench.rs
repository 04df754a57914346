//! `facteur-bench`, the load generator, against a facteur server running in this process: the
//! figures it reports must be exactly what the sessions did, and its JSON report must carry
//! them (bench/compare.sh reads it).
//!
//! The bench runs in this process too (`facteur_bench::run`, with the options parsed as its
//! binary parses them); `facteur` depends on it for these tests only, never in its binary.
//! Everything listens on and connects to 127.0.0.1; every wait is bounded.

mod common;

use clap::Parser;
use common::*;
use facteur_bench::Report;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

/// How long a run of the bench may take before the test gives up (a hung bench, not a slow one).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Messages retrieved per session.
const K: usize = 3;
/// Users `bench0`..`bench3`, password `pw0`..`pw3`, each with K + 1 messages.
const USERS: usize = 4;

/// The command line of `facteur-bench`, as its binary parses it.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: facteur_bench::BenchArgs,
}

fn fixture(tls: bool, backend: Backend) -> Fixture {
    let f = if tls {
        Fixture::with_tls()
    } else {
        Fixture::new()
    }
    .on(backend);
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

/// Run `facteur-bench ARGS` in this process, on a thread of its own (bounded by
/// [`RUN_TIMEOUT`]); returns its report.
fn bench(args: &[&str]) -> Report {
    let cli = Cli::try_parse_from(std::iter::once("facteur-bench").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("facteur-bench {args:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(facteur_bench::run(cli.args));
    });
    rx.recv_timeout(RUN_TIMEOUT)
        .unwrap_or_else(|_| panic!("facteur-bench {args:?} did not finish"))
        .unwrap_or_else(|e| panic!("facteur-bench {args:?}: {e}"))
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

/// Checks every run's report, as its JSON says it: all sessions ok, `messages` RETRs, their
/// octets exactly.
fn assert_clean_run(report: &Report, sessions: u64, messages: u64) {
    let json = report.json();
    assert_eq!(count(&json, "sessions"), sessions, "{json}");
    assert_eq!(count(&json, "sessions_ok"), sessions, "{json}");
    assert_eq!(count(&json, "errors"), 0, "{json}");
    assert_eq!(count(&json, "messages"), messages, "{json}");
    assert_eq!(
        count(&json, "octets"),
        messages * message_octets(),
        "{json}"
    );
    let p50: f64 = field(&json, "latency_p50_ms").parse().expect("a p50");
    let p99: f64 = field(&json, "latency_p99_ms").parse().expect("a p99");
    assert!(0.0 < p50 && p50 <= p99, "{json}");
    let cpu: f64 = field(&json, "cpu_secs")
        .parse()
        .expect("the bench's CPU time");
    assert!(cpu >= 0.0, "{json}");
    // The same figures through the report's accessors.
    assert_eq!(
        (report.sessions(), report.ok_sessions(), report.messages()),
        (sessions, sessions, messages)
    );
    assert_eq!(report.octets(), messages * message_octets());
    assert_eq!(report.errors().count(), 0);
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

fn counts_sessions_messages_and_octets_exactly(backend: Backend) {
    let f = fixture(false, backend);
    let server = f.start();
    let base = user_args(server.addr.port());
    let report = bench(&args(
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
    assert_clean_run(&report, 12, 12 * K as u64);
    // Nothing was deleted.
    for i in 0..USERS {
        assert_eq!(f.message_count(&format!("bench{i}")), K + 1);
    }
}

fn pipelined_retr_and_dele_empty_the_maildrops(backend: Backend) {
    let f = fixture(false, backend);
    let server = f.start();
    let base = user_args(server.addr.port());
    let report = bench(&args(
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
    assert_clean_run(&report, 4, 4 * K as u64);
    for i in 0..USERS {
        assert_eq!(f.message_count(&format!("bench{i}")), 1, "bench{i}");
    }
}

fn stls_with_a_ca_file_and_pop3s_insecure(backend: Backend) {
    let f = fixture(true, backend);
    let server = f.start();
    let cert = f.cert().to_string_lossy().into_owned();
    let base = user_args(server.addr.port());
    for flag in ["--cafile", "--ca-file"] {
        let report = bench(&args(
            &base,
            &[
                "--mode",
                "stls",
                flag,
                &cert,
                "--concurrency",
                "2",
                "--sessions",
                "4",
                "--retr",
                "2",
            ],
        ));
        assert_clean_run(&report, 4, 8);
    }

    let base = user_args(server.pop3s().port());
    let report = bench(&args(
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
            "--idle",
            "0.05",
        ],
    ));
    assert_clean_run(&report, 4, 4);
}

fn a_certificate_not_trusted_is_a_tls_error(backend: Backend) {
    let f = fixture(true, backend);
    let server = f.start();
    // Trusting another certificate than the server's.
    let other = tempfile::tempdir().expect("create a temporary folder");
    let files = facteur_tls::write_self_signed(other.path()).expect("write a certificate");
    let port = server.pop3s().port().to_string();
    let report = bench(&[
        "--port",
        &port,
        "--mode",
        "pop3s",
        "--cafile",
        files.certificate.to_str().expect("a UTF-8 path"),
        "--user",
        "bench%d",
        "--password",
        "pw%d",
        "--sessions",
        "2",
    ]);
    let errors: Vec<_> = report.errors().map(|(kind, n, _)| (kind, n)).collect();
    assert_eq!(errors, [("tls", 2)], "{}", report.table());
}

fn refused_logins_are_errors_by_kind(backend: Backend) {
    let f = fixture(false, backend);
    let server = f.start();
    let port = server.addr.port().to_string();
    let report = bench(&[
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
    let table = report.table();
    assert!(table.contains("sessions     2 (0 ok, 2 failed)"), "{table}");
    assert!(table.contains("messages     0 "), "{table}");
    assert!(table.contains("errors       2\n"), "{table}");
    assert!(
        table.contains("    auth         2 (first: PASS: -ERR [AUTH] "),
        "{table}"
    );
    assert!(table.contains("% of one core"), "{table}");
}

#[test]
fn a_broken_reply_is_a_protocol_error() {
    // A "server" that greets, then answers USER with a line that is neither +OK nor -ERR.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut tcp, _)) = listener.accept() else {
                return;
            };
            let _ = tcp.set_read_timeout(Some(READ_TIMEOUT));
            let _ = tcp.write_all(b"+OK ready\r\n");
            let mut line = [0u8; 64];
            let _ = tcp.read(&mut line);
            let _ = tcp.write_all(b"HELLO THERE\r\n");
            let _ = tcp.read(&mut line);
        }
    });
    let port = port.to_string();
    let report = bench(&[
        "--port",
        &port,
        "--user",
        "u",
        "--password",
        "p",
        "--sessions",
        "2",
        "--timeout",
        "10",
    ]);
    let errors: Vec<_> = report.errors().map(|(kind, n, _)| (kind, n)).collect();
    assert_eq!(errors, [("protocol", 2)], "{}", report.table());
}

both_backends!(
    counts_sessions_messages_and_octets_exactly,
    pipelined_retr_and_dele_empty_the_maildrops,
    stls_with_a_ca_file_and_pop3s_insecure,
    a_certificate_not_trusted_is_a_tls_error,
    refused_logins_are_errors_by_kind,
);

/// `facteur-bench retr` and `raw`, parsed as the binary parses them.
#[derive(Parser)]
struct RetrCli {
    #[command(flatten)]
    args: facteur_bench::retr::RetrArgs,
}

#[derive(Parser)]
struct RawCli {
    #[command(flatten)]
    args: facteur_bench::retr::RawArgs,
}

fn on_a_thread<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> Result<T, facteur_bench::BenchError> + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(RUN_TIMEOUT)
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn retr(args: &[&str]) -> facteur_bench::retr::TransferReport {
    let cli = RetrCli::try_parse_from(std::iter::once("retr").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("retr {args:?}: {e}"));
    on_a_thread(format!("retr {args:?}"), move || {
        facteur_bench::retr::retr(cli.args)
    })
}

fn raw(args: &[&str]) -> facteur_bench::retr::TransferReport {
    let cli = RawCli::try_parse_from(std::iter::once("raw").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("raw {args:?}: {e}"));
    on_a_thread(format!("raw {args:?}"), move || {
        facteur_bench::retr::raw(cli.args)
    })
}

/// A message of about 600 KiB (many reads and TLS records), lines starting with a dot
/// included: RETR sends them stuffed.
fn big_message() -> (Vec<u8>, Vec<u8>) {
    let mut m = b"From: a@example.org\nSubject: big\n\n".to_vec();
    for i in 0..12_000 {
        if i % 100 == 0 {
            m.extend_from_slice(b".a line that starts with a dot\n");
        }
        m.extend_from_slice(format!("line {i:05} of the body of a big message\n").as_bytes());
    }
    let mut wire = Vec::new();
    for line in crlf(&m).split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    (m, wire)
}

/// `retr` counts exactly the octets of the answer after its status line (the stuffed message
/// and the terminating line), over plain POP3 and POP3S, each RETR of the session; `raw`
/// counts the same octets from its own sender, plain (sendfile, and read + write) and TLS.
#[test]
fn retr_and_raw_count_the_wire_octets() {
    let f = Fixture::with_tls();
    let (message, wire) = big_message();
    f.deliver(USER, &message);
    let server = f.start();
    let octets = wire.len() as u64;
    let plain = server.addr.port().to_string();
    let pop3s = server.pop3s().port().to_string();
    let common = ["--user", USER, "--password", PASSWORD, "--runs", "3"];
    let r = retr(&[&["--port", &plain, "--warmup", "1"], &common[..]].concat());
    assert_eq!(r.runs.len(), 3);
    assert!(r.runs.iter().all(|run| run.octets == octets), "{r:?}");
    assert!(r.cipher.is_none());
    assert!(r.json().contains("\"median_mb_per_sec\":"), "{}", r.json());
    let cert = f.cert().to_str().expect("a UTF-8 path");
    let r = retr(
        &[
            &["--port", &pop3s, "--mode", "pop3s", "--cafile", cert],
            &common[..],
        ]
        .concat(),
    );
    assert!(r.runs.iter().all(|run| run.octets == octets), "{r:?}");
    let cipher = r.cipher.clone().unwrap_or_default();
    assert!(cipher.contains("TLS13_AES_128_GCM_SHA256"), "{cipher}");
    // A wrong password is an error, not a figure.
    let cli =
        RetrCli::try_parse_from(["retr", "--port", &plain, "--user", USER, "--password", "x"])
            .expect("parse");
    assert!(facteur_bench::retr::retr(cli.args).is_err());

    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("wire");
    std::fs::write(&path, &wire).expect("write the wire file");
    let path = path.to_str().expect("a UTF-8 path");
    let files = f.tls.as_ref().expect("TLS files");
    let key = files.private_key.to_str().expect("a UTF-8 path");
    for extra in [&[][..], &["--copy"][..], &["--tls", cert, key][..]] {
        let r = raw(&[&["--wire", path, "--runs", "2"], extra].concat());
        assert_eq!(r.runs.len(), 2, "{extra:?}");
        assert!(
            r.runs.iter().all(|run| run.octets == octets),
            "{extra:?}: {r:?}"
        );
        assert_eq!(r.cipher.is_some(), extra.len() == 3, "{r:?}");
    }
}
