//! `[metrics]`: a scrape of `/metrics` during and after a short load matches what the load did
//! (sessions, logins by method and outcome, penalties, TLS handshakes, messages and octets
//! retrieved, deletions, the lock refused, the store's latency); `/health` answers; other paths
//! and oversized requests are refused. On both stores.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The fixture's configuration with `[metrics] listen` on a free port: (config, address).
fn with_metrics(fx: &Fixture) -> SocketAddr {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let mut text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    text.push_str(&format!("\n[metrics]\nlisten = \"{addr}\"\n"));
    std::fs::write(&fx.config_path, text).expect("write the configuration");
    addr
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send the request");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, as rendered), 0 if absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn scrape_until(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scrapes_match_the_load(backend: Backend) {
    let fx = Fixture::build(
        &format!("{DEFAULT_LIMITS}max_failed_login_delay_ms = 100\n"),
        "",
        true,
    )
    .on(backend);
    let metrics = with_metrics(&fx);
    let stored: Vec<u64> = (1..=3)
        .map(|n| fx.deliver(USER, &message(n)).size)
        .collect();
    let server = BinServer::start(&fx.config_path);
    assert!(
        server.log().contains("serving /metrics"),
        "{}",
        server.log()
    );

    let (status, body) = http_get(metrics, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // A session open: the gauge shows it, and a second login meets the lock.
    let mut held = server.login(USER, PASSWORD);
    let text = scrape_until(metrics, |t| sample(t, "facteur_sessions_open") >= 1.0);
    assert_eq!(sample(&text, "facteur_sessions_open"), 1.0, "{text}");
    let mut c = Client::connect(server.addr);
    c.cmd(&format!("USER {USER}"));
    assert!(c
        .cmd(&format!("PASS {PASSWORD}"))
        .starts_with("-ERR [IN-USE]"));
    c.quit();
    // RETR of two messages and DELE of one, applied at QUIT.
    let first = held.retrieve("RETR 1");
    let second = held.retrieve("RETR 2");
    assert!(held.cmd("DELE 1").starts_with("+OK"));
    held.quit();
    // Two wrong passwords: failed logins, each with its penalty.
    for _ in 0..2 {
        let mut c = Client::connect(server.addr);
        c.cmd(&format!("USER {USER}"));
        assert!(c.cmd("PASS wrong").starts_with("-ERR"));
        c.quit();
    }
    // One STLS session and one POP3S session.
    let mut c = Client::connect(server.addr);
    c.stls(fx.cert());
    c.cmd(&format!("USER {USER}"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();
    let mut c = Client::connect_tls(server.pop3s(), fx.cert());
    c.cmd("QUIT");

    let sessions = 6.0;
    let text = scrape_until(metrics, |t| {
        sample(t, "facteur_sessions_open") == 0.0
            && sample(t, "facteur_session_duration_seconds_count") >= sessions
    });
    let expect = |name: &str, value: f64| {
        assert_eq!(sample(&text, name), value, "{name} in\n{text}");
    };
    expect("facteur_sessions_open", 0.0);
    expect("facteur_session_duration_seconds_count", sessions);
    expect("facteur_sessions_ended_total{end=\"quit\"}", sessions);
    expect(
        "facteur_logins_total{method=\"USER/PASS\",outcome=\"ok\"}",
        2.0,
    );
    expect(
        "facteur_logins_total{method=\"USER/PASS\",outcome=\"in_use\"}",
        1.0,
    );
    expect("facteur_maildrop_in_use_total", 1.0);
    expect(
        "facteur_logins_total{method=\"USER/PASS\",outcome=\"failed\"}",
        2.0,
    );
    expect("facteur_login_penalties_total", 2.0);
    expect(
        "facteur_tls_handshakes_total{kind=\"stls\",outcome=\"ok\"}",
        1.0,
    );
    expect(
        "facteur_tls_handshakes_total{kind=\"pop3s\",outcome=\"ok\"}",
        1.0,
    );
    expect("facteur_messages_retrieved_total", 2.0);
    // The octets read from the store for them, as the session's log line counts them.
    assert!(!first.is_empty() && !second.is_empty());
    let octets = (stored[0] + stored[1]) as f64;
    expect("facteur_retrieved_octets_total", octets);
    expect("facteur_deletions_applied_total", 1.0);
    expect("facteur_store_operation_seconds_count{op=\"open\"}", 3.0);
    // The UPDATE with a deletion; on PostgreSQL the other logged-in QUIT too, whose lease
    // release is a database write (a Maildir lock goes with its descriptor, off the store).
    let updates = match backend {
        Backend::Maildir => 1.0,
        Backend::Postgresql => 2.0,
    };
    expect(
        "facteur_store_operation_seconds_count{op=\"update\"}",
        updates,
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Nothing but the two paths; a request head without end is cut at its cap.
    assert_eq!(http_get(metrics, "/").0, 404);
    let mut s = TcpStream::connect(metrics).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX: ");
    let _ = s.write_all(&vec![b'a'; 64 * 1024]);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

both_backends!(scrapes_match_the_load);
