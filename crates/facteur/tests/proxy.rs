//! Behind a load balancer: `[server] proxy_protocol` lists the peers trusted to name the client
//! with a PROXY protocol header (v1 or v2). From them a header is required before the greeting,
//! and the per-address cap, the failed-login penalties, the plaintext policy and the log lines
//! are about the client it names; from anyone else a header is only a bad command. The last
//! test puts a real HAProxy (Debian's package) in front of the server.
//!
//! Every test runs the real binary and reads its stderr for the log lines.

mod common;

use common::haproxy::{haproxy_binary, HaProxy};
use common::*;
use facteur_proto::proxy::{encode_v1, encode_v2};
use facteur_server::config::Config;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// A fixture (as [`Fixture::build`]) whose `[server]` trusts `trusted` (TOML array items).
fn fixture(trusted: &str, limits: &str, auth: &str, tls: bool) -> Fixture {
    let mut fx = Fixture::build(limits, auth, tls);
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let text = text.replacen(
        "[server]\n",
        &format!("[server]\nproxy_protocol = [{trusted}]\n"),
        1,
    );
    assert!(text.contains("proxy_protocol"), "{text}");
    std::fs::write(&fx.config_path, &text).expect("write the configuration");
    fx.config = Config::parse(&text, &fx.config_path).expect("the configuration parses");
    fx
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// The v1 header a proxy would send for `client` reaching `server`.
fn v1(client: &str, server: SocketAddr) -> Vec<u8> {
    encode_v1(addr(client), server).into_bytes()
}

/// The v2 header (PROXY command, TCP) for `client` reaching `server`.
fn v2(client: &str, server: SocketAddr) -> Vec<u8> {
    encode_v2(Some((addr(client), server)), &[])
}

/// The log lines that contain every one of `parts`.
fn lines_with<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

fn v1_and_v2_headers_from_a_trusted_peer_name_the_client_for_the_cap_and_the_logs(
    backend: Backend,
) {
    let fx = fixture(
        "\"127.0.0.1/32\"",
        &format!("{DEFAULT_LIMITS}max_connections_per_ip = 1\n"),
        "",
        false,
    )
    .on(backend);
    fx.deliver(USER, &message(1));
    let server = BinServer::start(&fx.config_path);
    let proxy = "proxy=127.0.0.1:";

    // v1 naming 127.0.0.9 (a loopback client: the plaintext policy lets it log in).
    let mut a = Client::connect_after(server.addr, &v1("127.0.0.9:4000", server.addr));
    assert!(a.greeting.starts_with("+OK"), "{:?}", a.greeting);
    assert!(a.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(a.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    assert_eq!(a.stat().0, 1);

    // v2 naming another client, over the same TCP peer (127.0.0.1): with a cap of one per
    // address it is served, as the cap counts the client named, not the proxy.
    let b = Client::connect_after(server.addr, &v2("127.0.0.10:4001", server.addr));
    assert!(b.greeting.starts_with("+OK"), "{:?}", b.greeting);

    // A second connection for the first client is one too many.
    let mut c = Client::connect_after(server.addr, &v1("127.0.0.9:4002", server.addr));
    assert_eq!(
        c.greeting,
        "-ERR [SYS/TEMP] too many connections from your address\r\n"
    );
    c.expect_closed();
    b.quit();
    a.quit();

    let log = server.wait_for_log("session ended", 2);
    let login = lines_with(
        &log,
        &[" login ", "peer=127.0.0.9:4000 ", proxy, "outcome=ok"],
    );
    assert_eq!(login.len(), 1, "{log}");
    assert_eq!(
        lines_with(&log, &["session ended", "peer=127.0.0.10:4001 ", proxy]).len(),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, &["connection refused", "peer=127.0.0.9:4002 ", proxy]).len(),
        1,
        "{log}"
    );
    // Without the header, the TCP peer would have been the peer of every line.
    assert!(lines_with(&log, &["peer=127.0.0.1:"]).is_empty(), "{log}");
}

fn the_octets_after_the_header_are_the_clients(backend: Backend) {
    // A balancer relays what the client sent right behind the header, often in the same
    // segment: not one octet of it may be lost to the header's reading.
    let fx = fixture("\"127.0.0.1/32\"", DEFAULT_LIMITS, "", false).on(backend);
    fx.deliver(USER, &message(1));
    let server = BinServer::start(&fx.config_path);
    for header in [
        v1("127.0.0.9:4100", server.addr),
        v2("127.0.0.9:4101", server.addr),
        encode_v2(None, &[]),
        b"PROXY UNKNOWN\r\n".to_vec(),
    ] {
        let mut first = header.clone();
        first.extend_from_slice(format!("USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\n").as_bytes());
        let mut c = Client::connect_after(server.addr, &first);
        assert!(c.greeting.starts_with("+OK"), "{:?}", c.greeting);
        assert!(c.line().starts_with("+OK"), "USER");
        assert!(c.line().starts_with("+OK"), "PASS");
        assert!(c.line().starts_with("+OK 1 "), "STAT");
        c.quit();
    }
}

fn the_plaintext_policy_is_about_the_client_the_header_names(backend: Backend) {
    // The proxy is on this host, its clients are not: "loopback" must not let them send
    // passwords in clear (the hop they crossed is theirs, not the proxy's).
    let fx = fixture("\"127.0.0.1/32\"", DEFAULT_LIMITS, "", true).on(backend);
    let server = BinServer::start(&fx.config_path);

    let mut remote = Client::connect_after(server.addr, &v1("203.0.113.7:5000", server.addr));
    assert!(remote.greeting.starts_with("+OK"), "{:?}", remote.greeting);
    let r = remote.cmd(&format!("USER {USER}"));
    assert!(
        r.starts_with("-ERR [AUTH] "),
        "USER in clear from afar: {r:?}"
    );
    // STLS makes it safe, as for a direct client.
    remote.stls(fx.cert());
    assert!(remote.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(remote.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    remote.quit();

    // POP3S through the proxy: the header comes before the TLS handshake.
    let mut tls = Client::connect_tls_after(
        server.pop3s(),
        &encode_v2(
            Some((addr("[2001:db8::7]:5001"), addr("[2001:db8::1]:995"))),
            &[],
        ),
        fx.cert(),
    );
    assert!(tls.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(tls.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    tls.quit();

    // A LOCAL header (a health check) keeps the TCP peer: here loopback, so clear text is fine.
    let mut local = Client::connect_after(server.addr, &encode_v2(None, &[]));
    assert!(local.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(local.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    let local_port = local.local_addr().port();
    local.quit();

    let log = server.wait_for_log("session ended", 3);
    let ok = |peer: &str| lines_with(&log, &[" login ", peer, "outcome=ok", "proxy=127.0.0.1:"]);
    assert_eq!(ok("peer=203.0.113.7:5000 ").len(), 1, "{log}");
    assert_eq!(ok("peer=[2001:db8::7]:5001 ").len(), 1, "{log}");
    assert_eq!(
        ok(&format!("peer=127.0.0.1:{local_port} ")).len(),
        1,
        "{log}"
    );
}

fn failed_login_penalties_follow_the_client_the_header_names(backend: Backend) {
    let fx = fixture("\"127.0.0.1/32\"", DEFAULT_LIMITS, "", false).on(backend);
    let server = BinServer::start(&fx.config_path);
    let fail = |c: &mut Client, user: &str| {
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        let r = c.cmd("PASS wrong");
        assert!(r.starts_with("-ERR [AUTH]"), "{r:?}");
    };
    // Two failures from one client (other user names each time: only the source adds up)...
    let mut a = Client::connect_after(server.addr, &v1("127.0.0.21:6000", server.addr));
    fail(&mut a, "nobody1");
    fail(&mut a, "nobody2");
    // ...and the first from another client, through the same proxy: not slowed by the first.
    let mut b = Client::connect_after(server.addr, &v2("127.0.0.22:6001", server.addr));
    fail(&mut b, "nobody3");

    let log = server.wait_for_log("outcome=failed", 3);
    let delay = |peer: &str, user: &str| {
        let found = lines_with(&log, &[" login ", peer, user, "proxy=127.0.0.1:"]);
        assert_eq!(found.len(), 1, "{peer} {user}: {log}");
        found[0]
            .split_whitespace()
            .find_map(|f| f.strip_prefix("delay_ms="))
            .expect("a delay_ms field")
            .to_string()
    };
    assert_eq!(delay("peer=127.0.0.21:6000 ", "\"nobody1\""), "50");
    assert_eq!(delay("peer=127.0.0.21:6000 ", "\"nobody2\""), "100");
    assert_eq!(delay("peer=127.0.0.22:6001 ", "\"nobody3\""), "50");
}

fn an_untrusted_peers_header_is_only_a_bad_command(backend: Backend) {
    // 127.0.0.1 is not in the list: its header is not honoured.
    let fx = fixture("\"10.0.0.0/8\", \"::1/128\"", DEFAULT_LIMITS, "", false).on(backend);
    let server = BinServer::start(&fx.config_path);
    let mut c = Client::connect(server.addr);
    let header = v1("203.0.113.7:7000", server.addr);
    c.send(&header);
    let r = c.line();
    assert!(r.starts_with("-ERR"), "the header as a command: {r:?}");
    // Still the loopback client it is: clear text allowed.
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    let port = c.local_addr().port();
    c.quit();

    // A v2 header's signature holds a QUIT line (the protocol's own design): a POP3 server
    // that does not expect a header ends the session.
    let mut c = Client::connect(server.addr);
    c.send(&v2("203.0.113.7:7001", server.addr));
    let lines = c.lines_until_closed();
    assert!(
        lines.iter().any(|l| l.starts_with("+OK")),
        "QUIT answered: {lines:?}"
    );

    let log = server.wait_for_log("session ended", 2);
    let login = lines_with(&log, &[" login ", &format!("peer=127.0.0.1:{port} ")]);
    assert_eq!(login.len(), 1, "{log}");
    assert!(!log.contains("203.0.113.7"), "{log}");
    assert!(!log.contains("proxy="), "{log}");
}

fn a_trusted_peer_without_a_valid_header_is_dropped(backend: Backend) {
    let fx = fixture("\"127.0.0.0/8\"", DEFAULT_LIMITS, "", false).on(backend);
    let server = BinServer::start(&fx.config_path);
    // A POP3 command where the header should be: closed without a greeting.
    let mut c = Client::connect_after(server.addr, b"CAPA\r\n");
    assert_eq!(c.greeting, "", "a greeting to a peer without a header");
    assert!(c.lines_until_closed().is_empty());
    // A header with a leading zero in a port.
    let mut c = Client::connect_after(
        server.addr,
        b"PROXY TCP4 192.0.2.1 192.0.2.2 0110 110\r\nCAPA\r\n",
    );
    assert_eq!(c.greeting, "");
    assert!(c.lines_until_closed().is_empty());
    let log = server.wait_for_log("connection dropped", 2);
    let dropped = lines_with(
        &log,
        &[
            "a trusted proxy sent no valid PROXY header",
            "proxy=127.0.0.1:",
        ],
    );
    assert_eq!(dropped.len(), 2, "{log}");
    assert!(dropped[0].contains("not a PROXY protocol header"), "{log}");
    assert!(dropped[1].contains("port"), "{log}");
}

fn a_slow_header_times_out(backend: Backend) {
    let fx = fixture(
        "\"127.0.0.1/32\"",
        &format!("{DEFAULT_LIMITS}proxy_header_timeout_secs = 1\n"),
        "",
        false,
    )
    .on(backend);
    let server = BinServer::start(&fx.config_path);
    let started = Instant::now();
    // Half a header, then nothing.
    let mut c = Client::connect_after(server.addr, b"PROXY TCP4 192.0.2.1 ");
    assert_eq!(c.greeting, "", "served without a whole header");
    c.expect_closed();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let log = server.wait_for_log("connection dropped", 1);
    assert_eq!(
        lines_with(&log, &["within the deadline", "proxy=127.0.0.1:"]).len(),
        1,
        "{log}"
    );
}

fn a_real_haproxy_with_send_proxy_and_send_proxy_v2(backend: Backend) {
    let Some(haproxy) = haproxy_binary() else {
        eprintln!(
            "SKIPPED: haproxy is not installed (Debian: apt-get install haproxy; .ci/run installs it)"
        );
        return;
    };
    let fx = fixture("\"127.0.0.1/32\"", DEFAULT_LIMITS, "", false).on(backend);
    fx.deliver(USER, &message(1));
    let server = BinServer::start(&fx.config_path);
    let (p1, p2) = (free_port(), free_port());
    let front_v1 = addr(&format!("127.0.0.1:{p1}"));
    let front_v2 = addr(&format!("127.0.0.1:{p2}"));
    let _proxy = HaProxy::start(
        &haproxy,
        fx.path(),
        &format!(
            "global\n    maxconn 100\n\n\
             defaults\n    mode tcp\n    timeout connect 10s\n    timeout client 60s\n    \
             timeout server 60s\n\n\
             frontend pop3_v1\n    bind 127.0.0.1:{p1}\n    default_backend facteur_v1\n\n\
             frontend pop3_v2\n    bind 127.0.0.1:{p2}\n    default_backend facteur_v2\n\n\
             backend facteur_v1\n    server facteur {addr} send-proxy check check-send-proxy inter 100ms\n\n\
             backend facteur_v2\n    server facteur {addr} send-proxy-v2 check inter 100ms\n",
            addr = server.addr
        ),
        &[front_v1, front_v2],
    );

    let mut clients = Vec::new();
    for front in [front_v1, front_v2] {
        let mut c = Client::login(front, USER, PASSWORD);
        assert_eq!(c.stat().0, 1);
        let body = c.retrieve("RETR 1");
        assert_eq!(body, crlf(&message(1)));
        clients.push(c.local_addr());
        c.quit();
    }
    // Each login is logged with the port the test's client used, which only the header carries
    // (the server's TCP peer is haproxy's own outgoing socket).
    let log = server.wait_for_log("outcome=ok", 2);
    for client in clients {
        let found = lines_with(
            &log,
            &[
                " login ",
                &format!("peer={client} "),
                "proxy=127.0.0.1:",
                "outcome=ok",
            ],
        );
        assert_eq!(found.len(), 1, "{client}: {log}");
    }
    // HAProxy's health checks send a header too (with `send-proxy-v2`, as the README's example
    // has it, without `check-send-proxy`): a LOCAL command, which names no client, so the
    // session's peer is haproxy itself. None is dropped for a bad header.
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_string)
    };
    let is_check = |line: &str| {
        line.contains("session ended")
            && field(line, "peer=").is_some()
            && field(line, "peer=") == field(line, "proxy=")
    };
    let mut log = server.log();
    for _ in 0..(READ_TIMEOUT.as_millis() / 20) {
        if log.lines().any(is_check) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        log = server.log();
    }
    assert!(log.lines().any(is_check), "no health check seen: {log}");
    assert!(!log.contains("connection dropped"), "{log}");
}

/// `facteur check-config --config FILE`: (exit code, stdout, stderr).
fn check_config(config: &std::path::Path) -> (Option<i32>, String, String) {
    run_with_input(
        facteur().arg("check-config").arg("--config").arg(config),
        b"",
    )
}

#[test]
fn check_config_shows_the_trusted_proxies_and_names_a_bad_block() {
    let fx = fixture("\"10.0.0.0/8\", \"::1/128\"", DEFAULT_LIMITS, "", false);
    let (code, stdout, stderr) = check_config(&fx.config_path);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("PROXY protocol: required from 10.0.0.0/8, ::1/128 (a header within 5s"),
        "{stdout}"
    );
    let fx = Fixture::new();
    let (code, stdout, stderr) = check_config(&fx.config_path);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("PROXY protocol: off"), "{stdout}");

    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let text = text.replacen(
        "[server]\n",
        "[server]\nproxy_protocol = [\"10.1.2.3/8\"]\n",
        1,
    );
    std::fs::write(&fx.config_path, text).expect("write the configuration");
    let (code, _, stderr) = check_config(&fx.config_path);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("proxy_protocol"), "{stderr}");
    assert!(stderr.contains("did you mean 10.0.0.0/8?"), "{stderr}");
}

/// The README's "Behind a load balancer" section: its first block of `kind` (`toml`, `text`).
fn readme_example(kind: &str) -> String {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Behind a load balancer")
        .nth(1)
        .expect("the README has a \"Behind a load balancer\" section");
    section
        .split(&format!("```{kind}\n"))
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("a code block in that section")
        .to_string()
}

#[test]
fn the_readme_examples_are_valid() {
    let toml = readme_example("toml");
    let text = format!(
        "{toml}\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n\
         [auth]\npasswd_file = \"users\"\n[store]\nmaildir = \"/var/mail/%u\"\n"
    );
    let cfg = Config::parse(&text, std::path::Path::new("/etc/facteur/facteur.toml"))
        .expect("the README's configuration parses");
    let shown: Vec<String> = cfg
        .server
        .proxy_protocol
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["10.0.0.0/24", "127.0.0.1/32", "::1/128"]);

    let Some(haproxy) = haproxy_binary() else {
        eprintln!("SKIPPED the HAProxy example: haproxy is not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, readme_example("text")).expect("write haproxy.cfg");
    let out = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&config)
        .output()
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

both_backends!(
    v1_and_v2_headers_from_a_trusted_peer_name_the_client_for_the_cap_and_the_logs,
    the_octets_after_the_header_are_the_clients,
    the_plaintext_policy_is_about_the_client_the_header_names,
    failed_login_penalties_follow_the_client_the_header_names,
    an_untrusted_peers_header_is_only_a_bad_command,
    a_trusted_peer_without_a_valid_header_is_dropped,
    a_slow_header_times_out,
    a_real_haproxy_with_send_proxy_and_send_proxy_v2,
);
