//! The cluster: three `facteur serve` nodes (the real binary, each with its own configuration)
//! on one PostgreSQL (the harness's: `FACTEUR_TEST_DATABASE_URL`, or a throwaway cluster),
//! behind a real HAProxy (Debian's package) that sends them PROXY v2 headers and checks their
//! health. While `facteur deliver` keeps delivering to the users, a session on one node makes
//! a login on every other node answer `[IN-USE]`; that node dies by `kill -9` mid-session,
//! after DELE and without QUIT; HAProxy marks it down; once its lease expires another node
//! serves the maildrop, without the dead session's deletions; a session that QUITs there
//! applies its deletions for everyone; and every message delivered is there exactly once.
//!
//! Every connection goes to 127.0.0.1; every loop is bounded in count and time.

mod common;
use common::pg;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::haproxy::{haproxy_binary, HaProxy};
use common::*;
use facteur_proto::proxy::encode_v2;

/// `[store] lease_secs` of the nodes (the shortest allowed).
const LEASE: Duration = Duration::from_secs(5);
/// The nodes' names, as HAProxy's configuration and the messages of the test say them.
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Three nodes on one database, behind one HAProxy frontend.
/// Dropped in this order: the proxy, the nodes, their folder, the database.
struct Cluster {
    haproxy: HaProxy,
    front: SocketAddr,
    /// `None` once killed.
    nodes: Vec<Option<BinServer>>,
    /// The configuration `facteur deliver` uses (the nodes' own are copies of it).
    config: PathBuf,
    _fx: Fixture,
    _db: pg::TestDb,
}

impl Cluster {
    /// Starts it, or `None` (the test is skipped, saying so) when haproxy is not installed.
    fn start() -> Option<Self> {
        let Some(haproxy) = haproxy_binary() else {
            eprintln!(
                "SKIPPED: haproxy is not installed (Debian: apt-get install haproxy; .ci/run installs it)"
            );
            return None;
        };
        let db = pg::fresh_database();
        let fx = Fixture::new();
        let config = postgres_config(&fx, &db.url, "cluster.toml");
        let text = std::fs::read_to_string(&config).expect("read the configuration");
        let text = text.replacen(
            "[server]\n",
            "[server]\nproxy_protocol = [\"127.0.0.1/32\"]\n",
            1,
        );
        assert!(text.contains("proxy_protocol"), "{text}");
        std::fs::write(&config, &text).expect("write the configuration");
        db_migrate(&config);

        // Each node its own configuration file and kernel-chosen port.
        let nodes: Vec<BinServer> = NODES
            .iter()
            .map(|name| {
                let path = fx.path().join(format!("{name}.toml"));
                std::fs::write(&path, &text).expect("write a node's configuration");
                BinServer::start(&path)
            })
            .collect();
        let port = free_port();
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
        // Round robin: consecutive connections go to different nodes. Health checks every
        // 100 ms (each a PROXY v2 LOCAL header, then a close), two failures mark a node down;
        // a connection to a node that died before its checks noticed is sent to another.
        let servers: String = NODES
            .iter()
            .zip(&nodes)
            .map(|(name, node)| {
                let addr = node.addr;
                format!("    server {name} {addr} send-proxy-v2 check inter 100ms fall 2 rise 2\n")
            })
            .collect();
        let haproxy = HaProxy::start(
            &haproxy,
            fx.path(),
            &format!(
                "global\n    maxconn 200\n\n\
                 defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
                 timeout server 60s\n    retries 3\n    option redispatch 1\n\n\
                 frontend pop3\n    bind {front}\n    default_backend facteur\n\n\
                 backend facteur\n    balance roundrobin\n{servers}"
            ),
            &[front],
        );
        Some(Self {
            haproxy,
            front,
            nodes: nodes.into_iter().map(Some).collect(),
            config,
            _fx: fx,
            _db: db,
        })
    }

    fn node(&self, i: usize) -> &BinServer {
        self.nodes[i].as_ref().expect("a live node")
    }

    /// `kill -9` node `i`.
    fn kill(&mut self, i: usize) {
        self.nodes[i].take().expect("a live node").kill();
    }

    /// The node whose log has a login line for the client at `client` (the address the PROXY
    /// header names): waits for it, bounded, and checks that no other node has one.
    fn node_of(&self, client: SocketAddr) -> usize {
        let peer = format!("peer={client} ");
        let has = |n: &BinServer| {
            n.log()
                .lines()
                .any(|l| l.contains(" login ") && l.contains(&peer))
        };
        for _ in 0..(READ_TIMEOUT.as_millis() / 10) {
            let found: Vec<usize> = (0..NODES.len())
                .filter(|&i| self.nodes[i].as_ref().is_some_and(has))
                .collect();
            match found[..] {
                [i] => return i,
                [] => std::thread::sleep(Duration::from_millis(10)),
                _ => panic!("several nodes logged a login of {client}: {found:?}"),
            }
        }
        panic!("no node logged a login of {client}");
    }

    /// USER and PASS through HAProxy: the answer to PASS, the node that answered, the client.
    fn try_login(&self, user: &str) -> (String, usize, Client) {
        let mut c = Client::connect(self.front);
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        let r = c.cmd(&format!("PASS {}", password(user)));
        let node = self.node_of(c.local_addr());
        (r, node, c)
    }

    /// A session straight to node `i`, with the PROXY v2 header it requires from 127.0.0.1.
    fn login_direct(&self, i: usize, user: &str) -> Client {
        let addr = self.node(i).addr;
        let mut c = Client::connect_after(addr, &encode_v2(None, &[]));
        assert!(c.greeting.starts_with("+OK"), "{:?}", c.greeting);
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        let r = c.cmd(&format!("PASS {}", password(user)));
        assert!(r.starts_with("+OK"), "{} on {}: {r}", user, NODES[i]);
        c
    }
}

fn password(user: &str) -> &'static str {
    match user {
        USER => PASSWORD,
        CRYPT_USER => CRYPT_PASSWORD,
        _ => panic!("no such test user: {user}"),
    }
}

/// Every message of the session, by unique-id, as RETR sends it (un-stuffed); checks that no
/// unique-id and no message appears twice.
fn maildrop_contents(c: &mut Client) -> BTreeMap<String, Vec<u8>> {
    let uids = c.uidl();
    let mut by_uid = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (n, uid) in uids {
        let body = c.retrieve(&format!("RETR {n}"));
        assert!(
            seen.insert(body.clone()),
            "message {n} ({uid}) is there twice"
        );
        assert!(
            by_uid.insert(uid.clone(), body).is_none(),
            "unique-id {uid} listed twice"
        );
    }
    by_uid
}

/// The messages the delivery loop sends: each unique, half of them several chunks long.
fn delivery(i: usize, user: &str) -> Vec<u8> {
    let mut m = format!(
        "From: loop@example.org\nTo: {user}@example.org\nSubject: delivery {i}\n\n\
         Delivery {i} for {user}.\n.a dot line\n"
    )
    .into_bytes();
    if i % 2 == 1 {
        for line in 0..2000 {
            m.extend_from_slice(
                format!("line {line} of delivery {i}, padding padding\n").as_bytes(),
            );
        }
    }
    m
}

/// One message the loop delivered: the user, and the message as `facteur deliver` read it.
type Delivered = (String, Vec<u8>);

/// A bounded loop of `facteur deliver` runs, for `users` in turn, until told to stop (or after
/// `max` deliveries, or 45 s): what it delivered, in order, and what failed.
struct Deliveries {
    users: &'static [&'static str],
    max: usize,
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Delivered>>>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Deliveries {
    fn start(config: &Path, users: &'static [&'static str], max: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (config, s, d) = (config.to_path_buf(), Arc::clone(&stop), Arc::clone(&done));
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut failures = Vec::new();
            for i in 0..max {
                if s.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(45) {
                    break;
                }
                let user = users[i % users.len()];
                let m = delivery(i, user);
                match deliver_cli(&config, user, &m) {
                    (Some(0), _) => d.lock().expect("the list").push((user.to_string(), m)),
                    (code, stderr) => failures.push(format!("delivery {i}: {code:?} {stderr}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            failures
        });
        Self {
            users,
            max,
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// Every message the loop may deliver to `user`, in wire form: a bound on what a maildrop
    /// can hold, whatever deliveries have not reported back yet.
    fn possible_for(&self, user: &str) -> Vec<Vec<u8>> {
        (0..self.max)
            .filter(|i| self.users[i % self.users.len()] == user)
            .map(|i| crlf(&delivery(i, user)))
            .collect()
    }

    /// How many were delivered so far: each of them committed before it was counted.
    fn count(&self) -> usize {
        self.done.lock().expect("the list").len()
    }

    /// The messages delivered to `user` among the first `n` deliveries, in wire form.
    fn wire_for(&self, user: &str, n: usize) -> Vec<Vec<u8>> {
        let done = self.done.lock().expect("the list");
        done[..n]
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, m)| crlf(m))
            .collect()
    }

    /// Stops the loop and waits for its end; every delivery must have succeeded. Returns how
    /// many there were.
    fn finish(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("a running loop");
        let failures = thread.join().expect("the delivery loop");
        assert!(failures.is_empty(), "deliveries failed: {failures:#?}");
        self.count()
    }
}

/// The contents of `got`, each of which must be in `allowed`, and every one of `required` among
/// them.
fn assert_contents(got: &BTreeMap<String, Vec<u8>>, required: &[Vec<u8>], allowed: &[Vec<u8>]) {
    let have: BTreeSet<&Vec<u8>> = got.values().collect();
    for m in required {
        assert!(
            have.contains(m),
            "missing: {}",
            String::from_utf8_lossy(&m[..m.len().min(120)])
        );
    }
    let allowed: BTreeSet<&Vec<u8>> = allowed.iter().collect();
    for m in have {
        assert!(
            allowed.contains(m),
            "never delivered: {}",
            String::from_utf8_lossy(&m[..m.len().min(120)])
        );
    }
}

#[test]
fn three_nodes_behind_haproxy_survive_a_node_killed_mid_session() {
    let started = Instant::now();
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let initial: Vec<Vec<u8>> = (1..=6).map(message).collect();
    for m in &initial {
        let (code, stderr) = deliver_cli(&cluster.config, USER, m);
        assert_eq!(code, Some(0), "{stderr}");
    }
    let initial: Vec<Vec<u8>> = initial.iter().map(|m| crlf(m)).collect();
    // Deliveries to the user of the sessions and to another, all along.
    let mut deliveries = Deliveries::start(&cluster.config, &[USER, CRYPT_USER], 400);

    let possible = [&initial[..], &deliveries.possible_for(USER)].concat();

    // A session through HAProxy, on node A: it has all that was delivered before it began.
    let before_a = deliveries.count();
    let (r, a, mut session_a) = cluster.try_login(USER);
    assert!(r.starts_with("+OK"), "{r}");
    let seen_by_a = maildrop_contents(&mut session_a);
    assert_contents(
        &seen_by_a,
        &[&initial[..], &deliveries.wire_for(USER, before_a)].concat(),
        &possible,
    );

    // Every other node answers [IN-USE] (round robin reaches each within a few logins).
    let mut refused_by = BTreeSet::new();
    for _ in 0..12 {
        let (r, node, _) = cluster.try_login(USER);
        assert!(r.starts_with("-ERR [IN-USE]"), "{}: {r}", NODES[node]);
        refused_by.insert(node);
        if refused_by.len() == NODES.len() {
            break;
        }
    }
    let others: Vec<usize> = (0..NODES.len()).filter(|&i| i != a).collect();
    for &o in &others {
        assert!(
            refused_by.contains(&o),
            "{} never answered (round robin): {refused_by:?}",
            NODES[o]
        );
    }
    // The other user is not locked by it.
    let (r, _, c) = cluster.try_login(CRYPT_USER);
    assert!(r.starts_with("+OK"), "{r}");
    c.quit();

    // DELE two messages, then node A dies without QUIT.
    let n_a = seen_by_a.len();
    let deleted_by_a: Vec<String> = session_a
        .uidl()
        .into_iter()
        .take(2)
        .map(|(n, uid)| {
            assert!(session_a.cmd(&format!("DELE {n}")).starts_with("+OK"));
            uid
        })
        .collect();
    assert_eq!(session_a.stat().0, n_a - 2);
    let killed = Instant::now();
    cluster.kill(a);

    // Until the lease expires the other nodes answer [IN-USE]; then one serves the maildrop.
    // HAProxy never hands a client the dead node: every greeting is +OK.
    let (mut session_b, b, before_b) = loop {
        let before = deliveries.count();
        let (r, node, c) = cluster.try_login(USER);
        assert_ne!(node, a, "the dead node answered");
        if r.starts_with("+OK") {
            break (c, node, before);
        }
        assert!(r.starts_with("-ERR [IN-USE]"), "{}: {r}", NODES[node]);
        assert!(
            killed.elapsed() < LEASE * 3,
            "the dead node's lease never expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let waited = killed.elapsed();
    // The lease was renewed a third of its length before the kill, or a little more on a busy
    // machine: it cannot have been free at once.
    assert!(
        waited >= Duration::from_secs(2),
        "the maildrop was free {waited:?} after the kill, before the lease expired"
    );
    drop(session_a);
    let down = format!("facteur/{} is DOWN", NODES[a]);
    for _ in 0..100 {
        if cluster.haproxy.log().contains(&down) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cluster.haproxy.log().contains(&down),
        "HAProxy did not mark the dead node down: {}",
        cluster.haproxy.log()
    );

    // The dead session's deletions were not applied: all it saw is there, once.
    let seen_by_b = maildrop_contents(&mut session_b);
    for (uid, body) in &seen_by_a {
        assert_eq!(
            seen_by_b.get(uid),
            Some(body),
            "message {uid} changed or went with the dead session"
        );
    }
    for uid in &deleted_by_a {
        assert!(
            seen_by_b.contains_key(uid),
            "{uid}: a dead session's DELE applied"
        );
    }
    assert_contents(
        &seen_by_b,
        &[&initial[..], &deliveries.wire_for(USER, before_b)].concat(),
        &possible,
    );

    // A session that QUITs applies its deletions: the first three messages and the last.
    let listing = session_b.uidl();
    let mut deleted_by_b: Vec<&(u32, String)> = listing.iter().take(3).collect();
    deleted_by_b.push(listing.last().expect("a message"));
    for (n, _) in &deleted_by_b {
        assert!(session_b.cmd(&format!("DELE {n}")).starts_with("+OK"));
    }
    let deleted_by_b: BTreeSet<String> = deleted_by_b.iter().map(|(_, u)| u.clone()).collect();
    session_b.quit();
    // At once, through HAProxy (round robin: the next node): the maildrop is free, without them.
    let (r, node, mut c) = cluster.try_login(USER);
    assert!(
        r.starts_with("+OK"),
        "{} right after QUIT on {}: {r}",
        NODES[node],
        NODES[b]
    );
    let listed: BTreeSet<String> = c.uidl().into_iter().map(|(_, uid)| uid).collect();
    assert!(
        listed.is_disjoint(&deleted_by_b),
        "{}: {listed:?}",
        NODES[node]
    );
    c.quit();

    // Some more deliveries land after that QUIT, then the loop stops.
    let after_quit = deliveries.count();
    for _ in 0..300 {
        if deliveries.count() >= after_quit + 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        deliveries.count() >= after_quit + 2,
        "the deliveries stalled"
    );
    let delivered = deliveries.finish();
    let wire_alice = deliveries.wire_for(USER, delivered);
    let wire_carol = deliveries.wire_for(CRYPT_USER, delivered);

    // On every node still alive: the same listing, without what B deleted, with everything else
    // exactly once, including every delivery.
    let expected_alice: Vec<Vec<u8>> = [&initial[..], &wire_alice[..]]
        .concat()
        .into_iter()
        .filter(|m| {
            !seen_by_b
                .iter()
                .any(|(uid, body)| body == m && deleted_by_b.contains(uid))
        })
        .collect();
    let mut listings = Vec::new();
    for &i in &others {
        let mut c = cluster.login_direct(i, USER);
        let got = maildrop_contents(&mut c);
        for uid in &deleted_by_b {
            assert!(
                !got.contains_key(uid),
                "{uid} deleted on {} is still on {}",
                NODES[b],
                NODES[i]
            );
        }
        assert_contents(&got, &expected_alice, &expected_alice);
        assert_eq!(got.len(), expected_alice.len());
        listings.push(c.uidl());
        c.quit();

        let mut c = cluster.login_direct(i, CRYPT_USER);
        let got = maildrop_contents(&mut c);
        assert_contents(&got, &wire_carol, &wire_carol);
        assert_eq!(got.len(), wire_carol.len());
        c.quit();
    }
    assert_eq!(
        listings[0], listings[1],
        "two nodes list the maildrop differently"
    );

    // No node panicked or lost its lease to another session.
    for &i in &others {
        let log = cluster.node(i).log();
        assert!(!log.contains("panicked"), "{}: {log}", NODES[i]);
        assert!(!log.contains("lease was taken"), "{}: {log}", NODES[i]);
    }
    eprintln!(
        "cluster test: {delivered} deliveries, node {} killed, maildrop served by {} after {waited:?}, {:?} in all",
        NODES[a],
        NODES[b],
        started.elapsed()
    );
}
