//! `facteur fetch` against a hostile POP3 server: one that sends a message that never ends,
//! lies about a message's size, trickles a message one octet at a time, never ends a listing,
//! or never finishes its greeting. Each must be cut at a bound: the message left on the server
//! (no DELE), nothing half-delivered on the local disk, the run failing with a clear error.
//!
//! The server is written here, on threads of the test, on 127.0.0.1; every loop of it stops by
//! itself (a write fails, or [`SERVER_LIFETIME`] passes).
//!
//! No facteur server here, so no store: the fetcher's side only.

use facteur_fetch::auth::AuthMethod;
use facteur_fetch::config::{Account, DeletePolicy, DestinationSpec, Limits, PasswordSource};
use facteur_fetch::fetch::{
    fetch_account, run_accounts, FetchError, Report, RunOptions, EXIT_SERVER,
};
use facteur_fetch::{Pop3Error, Security, Target};
use facteur_proto::Secret;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// No thread of the fake server lives longer than this.
const SERVER_LIFETIME: Duration = Duration::from_secs(20);

/// What the fake server does for one message's RETR.
#[derive(Clone)]
enum Body {
    /// These octets, dot-stuffed and ended as POP3 wants.
    Exact(Vec<u8>),
    /// Lines of 1000 octets, never a final `.`.
    Endless,
    /// `+OK`, then one octet every 50 ms, never a final `.`.
    Trickle,
}

/// A listing that never ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endless {
    Nothing,
    Capa,
    List,
    Uidl,
    /// The greeting, one octet every 50 ms.
    Greeting,
    /// Not a listing: a server without UIDL (`-ERR` to it, not in CAPA).
    NoUidl,
}

#[derive(Clone)]
struct Message {
    /// The size LIST claims.
    listed: u64,
    uid: &'static str,
    body: Body,
}

/// The fake server and what it saw.
struct Fake {
    addr: SocketAddr,
    /// Every command line received, on every connection.
    commands: Arc<Mutex<Vec<String>>>,
    /// Octets written for RETR, on every connection.
    retr_octets: Arc<AtomicU64>,
}

impl Fake {
    fn commands(&self) -> Vec<String> {
        self.commands.lock().expect("the test works").clone()
    }

    fn count(&self, command: &str) -> usize {
        self.commands().iter().filter(|c| *c == command).count()
    }
}

/// Write `chunk` again and again until the client goes away or the server's time is up;
/// returns the octets written.
fn endless(tcp: &mut TcpStream, chunk: &[u8], pause: Option<Duration>, started: Instant) -> u64 {
    let mut sent = 0u64;
    while started.elapsed() < SERVER_LIFETIME {
        if tcp.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
    }
    sent
}

/// A POP3 server with `messages` (USER/PASS, UIDL, PIPELINING if `pipelining`), misbehaving as
/// `endless` says. It serves up to 8 connections, one after the other.
fn serve(messages: Vec<Message>, endless_part: Endless, pipelining: bool) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").expect("the test works");
    let addr = listener.local_addr().expect("the test works");
    let commands = Arc::new(Mutex::new(Vec::new()));
    let retr_octets = Arc::new(AtomicU64::new(0));
    let fake = Fake {
        addr,
        commands: commands.clone(),
        retr_octets: retr_octets.clone(),
    };
    std::thread::spawn(move || {
        let started = Instant::now();
        for _ in 0..8 {
            let Ok((tcp, _)) = listener.accept() else {
                return;
            };
            connection(
                tcp,
                &messages,
                endless_part,
                pipelining,
                &commands,
                &retr_octets,
                started,
            );
        }
    });
    fake
}

fn connection(
    mut tcp: TcpStream,
    messages: &[Message],
    endless_part: Endless,
    pipelining: bool,
    commands: &Mutex<Vec<String>>,
    retr_octets: &AtomicU64,
    started: Instant,
) {
    tcp.set_read_timeout(Some(SERVER_LIFETIME))
        .expect("the test works");
    if endless_part == Endless::Greeting {
        endless(&mut tcp, b"+", Some(Duration::from_millis(50)), started);
        return;
    }
    let _ = tcp.write_all(b"+OK hostile server ready\r\n");
    let mut reader = BufReader::new(tcp.try_clone().expect("the test works"));
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        let command = line.trim_end().to_string();
        line.clear();
        commands
            .lock()
            .expect("the test works")
            .push(command.clone());
        let mut words = command.split(' ');
        let verb = words.next().unwrap_or_default().to_ascii_uppercase();
        let arg: Option<usize> = words.next().and_then(|w| w.parse().ok());
        let reply: Vec<u8> = match verb.as_str() {
            "CAPA" if endless_part == Endless::Capa => {
                let _ = tcp.write_all(b"+OK\r\n");
                endless(&mut tcp, b"X-NONSENSE\r\n", None, started);
                return;
            }
            "CAPA" => {
                let pipe = if pipelining { "PIPELINING\r\n" } else { "" };
                let uidl = if endless_part == Endless::NoUidl {
                    ""
                } else {
                    "UIDL\r\n"
                };
                format!("+OK\r\nUSER\r\n{uidl}{pipe}.\r\n").into_bytes()
            }
            "UIDL" if endless_part == Endless::NoUidl => b"-ERR unknown command\r\n".to_vec(),
            "LIST" if endless_part == Endless::List => {
                let _ = tcp.write_all(b"+OK\r\n");
                endless(&mut tcp, b"1 100\r\n", None, started);
                return;
            }
            "UIDL" if endless_part == Endless::Uidl => {
                let _ = tcp.write_all(b"+OK\r\n");
                endless(&mut tcp, b"1 same-again\r\n", None, started);
                return;
            }
            "LIST" => {
                let mut r = b"+OK\r\n".to_vec();
                for (i, m) in messages.iter().enumerate() {
                    r.extend(format!("{} {}\r\n", i + 1, m.listed).into_bytes());
                }
                r.extend(b".\r\n");
                r
            }
            "UIDL" => {
                let mut r = b"+OK\r\n".to_vec();
                for (i, m) in messages.iter().enumerate() {
                    r.extend(format!("{} {}\r\n", i + 1, m.uid).into_bytes());
                }
                r.extend(b".\r\n");
                r
            }
            "RETR" => match arg.and_then(|n| messages.get(n.wrapping_sub(1))) {
                None => b"-ERR no such message\r\n".to_vec(),
                Some(m) => match &m.body {
                    Body::Exact(b) => {
                        let mut r = b"+OK\r\n".to_vec();
                        for l in b.split_inclusive(|&c| c == b'\n') {
                            if l.starts_with(b".") {
                                r.push(b'.');
                            }
                            r.extend_from_slice(l);
                        }
                        r.extend(b".\r\n");
                        retr_octets.fetch_add(r.len() as u64, Ordering::Relaxed);
                        r
                    }
                    Body::Endless => {
                        let _ = tcp.write_all(b"+OK\r\n");
                        let mut chunk = vec![b'x'; 998];
                        chunk.extend(b"\r\n");
                        let n = endless(&mut tcp, &chunk, None, started);
                        retr_octets.fetch_add(n, Ordering::Relaxed);
                        return;
                    }
                    Body::Trickle => {
                        let _ = tcp.write_all(b"+OK\r\n");
                        let n = endless(&mut tcp, b"y", Some(Duration::from_millis(50)), started);
                        retr_octets.fetch_add(n, Ordering::Relaxed);
                        return;
                    }
                },
            },
            "QUIT" => {
                let _ = tcp.write_all(b"+OK bye\r\n");
                return;
            }
            _ => b"+OK\r\n".to_vec(),
        };
        if tcp.write_all(&reply).is_err() {
            return;
        }
    }
}

fn account(fake: &Fake, dir: &Path) -> Account {
    Account {
        identity: None,
        name: "hostile".into(),
        target: Target {
            host: fake.addr.ip().to_string(),
            port: fake.addr.port(),
            security: Security::Plaintext,
            ca_file: None,
        },
        user: "u".into(),
        auth: AuthMethod::User,
        password: PasswordSource::Inline(Secret::new("p".into())),
        destination: DestinationSpec::Maildir(dir.join("Maildir")),
        policy: DeletePolicy::Delete,
        limits: Limits {
            message_timeout: Duration::from_secs(10),
            run_timeout: Duration::from_secs(15),
            ..Limits::default()
        },
        timeout: Duration::from_secs(10),
        maildir_sync: Default::default(),
    }
}

fn opts(dir: &Path) -> RunOptions {
    RunOptions {
        trace: None,
        state_dir: dir.join("state"),
        dry_run: false,
        now: None,
        fault: None,
    }
}

fn fetch(account: &Account, dir: &Path) -> Result<Report, FetchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the test works")
        .block_on(fetch_account(
            account,
            &Secret::new("p".into()),
            &opts(dir),
            &indicatif::ProgressBar::hidden(),
        ))
}

/// The files of `Maildir/sub`, with their contents.
fn files(dir: &Path, sub: &str) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir.join("Maildir").join(sub))
        .expect("the test works")
        .map(|e| std::fs::read(e.expect("the test works").path()).expect("the test works"))
        .collect()
}

fn message(text: &str) -> Message {
    Message {
        listed: text.len() as u64,
        uid: "good",
        body: Body::Exact(text.as_bytes().to_vec()),
    }
}

const GOOD: &str = "Subject: good\r\n\r\nfine\r\n";

#[test]
fn an_endless_retr_is_cut_at_its_bound_and_left_on_the_server() {
    for pipelining in [true, false] {
        let dir = tempfile::tempdir().expect("the test works");
        let fake = serve(
            vec![
                Message {
                    listed: 100,
                    uid: "endless",
                    body: Body::Endless,
                },
                message(GOOD),
            ],
            Endless::Nothing,
            pipelining,
        );
        let a = account(&fake, dir.path());
        let started = Instant::now();
        // Through run_accounts, for the exit status.
        let code = run_accounts(
            &[(a.clone(), Secret::new("p".into()))],
            &opts(dir.path()),
            true,
        );
        assert_eq!(code, EXIT_SERVER, "pipelining {pipelining}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let commands = fake.commands();
        // Message 1 is never deleted; the run went on without it on a new connection, and
        // fetched and deleted message 2.
        assert_eq!(fake.count("DELE 1"), 0, "{commands:?}");
        assert_eq!(fake.count("DELE 2"), 1, "{commands:?}");
        assert_eq!(fake.count("RETR 1"), 1, "{commands:?}");
        assert_eq!(fake.count("USER u"), 2, "{commands:?}");
        assert_eq!(
            files(dir.path(), "new"),
            vec![b"Subject: good\n\nfine\n".to_vec()]
        );
        assert!(files(dir.path(), "tmp").is_empty());
        // The server could write only what the client's and the kernel's buffers take past
        // the bound (100 + 4096 octets), not gigabytes.
        let sent = fake.retr_octets.load(Ordering::Relaxed);
        assert!(sent < 64 << 20, "{sent} octets");
    }
}

#[test]
fn the_reported_error_says_why() {
    let dir = tempfile::tempdir().expect("the test works");
    let fake = serve(
        vec![Message {
            listed: 100,
            uid: "endless",
            body: Body::Endless,
        }],
        Endless::Nothing,
        true,
    );
    let r = fetch(&account(&fake, dir.path()), dir.path()).expect("the test works");
    assert_eq!(r.fetched, 0);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    let e = &r.errors[0];
    assert!(
        e.contains("message 1") && e.contains("4196") && e.contains("LIST said 100"),
        "{e}"
    );
    assert!(e.contains("left on the server"), "{e}");
    assert_eq!(fake.count("DELE 1"), 0);
    assert!(files(dir.path(), "new").is_empty() && files(dir.path(), "tmp").is_empty());
}

#[test]
fn max_message_size_bounds_a_retr_below_its_list_slack() {
    let dir = tempfile::tempdir().expect("the test works");
    // LIST says 1000; the configured maximum is 2000, tighter than 1000 + 4096.
    let fake = serve(
        vec![Message {
            listed: 1000,
            uid: "big",
            body: Body::Exact(vec![b'z'; 3000]),
        }],
        Endless::Nothing,
        true,
    );
    let mut a = account(&fake, dir.path());
    a.limits.max_message_size = Some(2000);
    let r = fetch(&a, dir.path()).expect("the test works");
    assert_eq!((r.fetched, r.errors.len()), (0, 1), "{:?}", r.errors);
    assert!(r.errors[0].contains("2000"), "{:?}", r.errors);
    assert_eq!(fake.count("DELE 1"), 0);
    assert!(files(dir.path(), "new").is_empty() && files(dir.path(), "tmp").is_empty());
}

#[test]
fn a_lying_list_size_aborts_that_message_only() {
    let dir = tempfile::tempdir().expect("the test works");
    // LIST claims 100 octets; the message is 100 000.
    let mut big = b"Subject: liar\r\n\r\n".to_vec();
    while big.len() < 100_000 {
        big.extend(b"0123456789012345678901234567890123456789012345678\r\n");
    }
    let fake = serve(
        vec![
            Message {
                listed: 100,
                uid: "liar",
                body: Body::Exact(big),
            },
            Message {
                uid: "honest",
                ..message(GOOD)
            },
        ],
        Endless::Nothing,
        true,
    );
    let a = account(&fake, dir.path());
    let r = fetch(&a, dir.path()).expect("the test works");
    assert_eq!((r.fetched, r.errors.len()), (1, 1), "{:?}", r.errors);
    assert_eq!(fake.count("DELE 1"), 0);
    assert_eq!(fake.count("DELE 2"), 1);
    assert_eq!(
        files(dir.path(), "new"),
        vec![b"Subject: good\n\nfine\n".to_vec()]
    );
    assert!(files(dir.path(), "tmp").is_empty());
    // The next run (the same server, which applies no deletion) tries the liar again and cuts
    // it again: it is never deleted.
    let r = fetch(&a, dir.path()).expect("the test works");
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(fake.count("RETR 1"), 2);
    assert_eq!(fake.count("DELE 1"), 0);
    assert!(files(dir.path(), "tmp").is_empty());
}

#[test]
fn a_server_that_counts_lf_line_ends_is_not_taken_for_a_liar() {
    let dir = tempfile::tempdir().expect("the test works");
    // 3000 lines of 40 octets: LIST counts them with LF ends, 3000 octets (2.5%) fewer than
    // sent; a slack of 1% (at least 1 KiB) would cut this honest message off.
    let mut text = String::from("Subject: lf\r\n\r\n");
    for i in 0..3000 {
        text.push_str(&format!("{i:038}\r\n"));
    }
    let lf_size = text.replace("\r\n", "\n").len() as u64;
    let fake = serve(
        vec![Message {
            listed: lf_size,
            uid: "lf",
            body: Body::Exact(text.into_bytes()),
        }],
        Endless::Nothing,
        true,
    );
    let r = fetch(&account(&fake, dir.path()), dir.path()).expect("the test works");
    assert_eq!((r.fetched, r.errors.len()), (1, 0), "{:?}", r.errors);
    assert_eq!(fake.count("DELE 1"), 1);
}

#[test]
fn a_trickling_retr_is_cut_at_the_message_deadline() {
    let dir = tempfile::tempdir().expect("the test works");
    let fake = serve(
        vec![
            Message {
                listed: 1_000_000,
                uid: "slow",
                body: Body::Trickle,
            },
            message(GOOD),
        ],
        Endless::Nothing,
        true,
    );
    let mut a = account(&fake, dir.path());
    a.limits.message_timeout = Duration::from_secs(1);
    // The silence timeout alone would never trip: an octet comes every 50 ms.
    a.timeout = Duration::from_secs(5);
    let started = Instant::now();
    let r = fetch(&a, dir.path()).expect("the test works");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        r.errors[0].contains("message_timeout_secs"),
        "{:?}",
        r.errors
    );
    assert_eq!(r.fetched, 1);
    assert_eq!(fake.count("DELE 1"), 0);
    assert!(files(dir.path(), "tmp").is_empty());
    assert_eq!(files(dir.path(), "new").len(), 1);
}

#[test]
fn a_trickling_greeting_is_cut_at_the_run_deadline() {
    let dir = tempfile::tempdir().expect("the test works");
    let fake = serve(vec![message(GOOD)], Endless::Greeting, true);
    let mut a = account(&fake, dir.path());
    a.limits.run_timeout = Duration::from_secs(1);
    a.timeout = Duration::from_secs(5);
    let started = Instant::now();
    let e = fetch(&a, dir.path()).expect_err("an error");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        matches!(e, FetchError::Pop3(Pop3Error::RunDeadline(1))),
        "{e}"
    );
    assert!(e.to_string().contains("run_timeout_secs"), "{e}");
    assert_eq!(e.exit_code(), EXIT_SERVER);
}

#[test]
fn endless_listings_are_cut_at_the_cap() {
    for part in [Endless::List, Endless::Uidl, Endless::Capa] {
        let dir = tempfile::tempdir().expect("the test works");
        let fake = serve(vec![message(GOOD)], part, true);
        let mut a = account(&fake, dir.path());
        a.limits.max_listing_lines = 500;
        let started = Instant::now();
        let e = fetch(&a, dir.path()).expect_err("an error");
        assert!(started.elapsed() < Duration::from_secs(5));
        let max = if part == Endless::Capa {
            facteur_fetch::config::MAX_CAPA_LINES
        } else {
            500
        };
        assert!(
            matches!(e, FetchError::Pop3(Pop3Error::TooManyLines { max: m, .. }) if m == max),
            "{e}"
        );
        assert_eq!(e.exit_code(), EXIT_SERVER);
        assert_eq!(fake.count("DELE 1"), 0);
    }
}

#[test]
fn without_uidl_a_cut_message_ends_the_run_without_a_second_connection() {
    // Without unique-ids, a new connection could not tell the messages this run committed
    // from new ones: the run stops at the cut, and deletes nothing.
    let dir = tempfile::tempdir().expect("the test works");
    let fake = serve(
        vec![
            message(GOOD),
            Message {
                listed: 100,
                uid: "-",
                body: Body::Endless,
            },
            message(GOOD),
        ],
        Endless::NoUidl,
        true,
    );
    let r = fetch(&account(&fake, dir.path()), dir.path()).expect("the test works");
    assert_eq!((r.fetched, r.errors.len()), (1, 1), "{:?}", r.errors);
    let commands = fake.commands();
    assert_eq!(fake.count("USER u"), 1, "{commands:?}");
    assert!(
        !commands.iter().any(|c| c.starts_with("DELE")),
        "{commands:?}"
    );
    assert!(!commands.iter().any(|c| c == "QUIT"), "{commands:?}");
    assert_eq!(files(dir.path(), "new").len(), 1);
    assert!(files(dir.path(), "tmp").is_empty());
}
