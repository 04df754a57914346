//! Every wait on the peer has a deadline: a client that stops reading is cut at the write
//! deadline (its lock released, its deletions not applied), a client that trickles bytes before
//! login is cut at the login deadline, and the shutdown cut reaches a session blocked in a write.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A message of about `mib` MiB, in CRLF lines of 100 octets.
fn big_message(mib: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
    let line = [b'x'; 98];
    while m.len() < mib << 20 {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// A connection whose receive buffer is as small as the kernel allows, so that a server
/// writing to it fills both sides' buffers quickly once it stops reading.
fn small_window_connect(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect to the server");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("a read timeout");
    stream
}

/// Read one line (up to LF) byte by byte, so nothing past it is consumed.
fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).expect("read from the server") == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Log in on a raw connection, mark message 2 deleted, then ask for message 1 sixteen times and
/// never read the answers.
fn stall_in_a_retr(addr: SocketAddr) -> TcpStream {
    let mut s = small_window_connect(addr);
    assert!(read_line(&mut s).starts_with("+OK"));
    s.write_all(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .expect("send");
    assert!(read_line(&mut s).starts_with("+OK"));
    assert!(read_line(&mut s).starts_with("+OK"), "login");
    s.write_all(b"DELE 2\r\n").expect("send");
    assert!(read_line(&mut s).starts_with("+OK"), "DELE");
    s.write_all("RETR 1\r\n".repeat(16).as_bytes())
        .expect("send");
    s
}

fn a_client_that_stops_reading_is_cut_and_its_lock_released_without_update(backend: Backend) {
    let fx = Fixture::with_limits(&format!("{DEFAULT_LIMITS}write_timeout_secs = 2\n")).on(backend);
    fx.deliver(USER, &big_message(4));
    fx.deliver(USER, &message(2));
    let server = fx.start();
    let stalled = stall_in_a_retr(server.addr);
    let started = Instant::now();

    // The owner's next login is refused [IN-USE] while the stalled session holds the lock, then
    // works once the write deadline has cut it: bounded, and well before the idle timeout.
    let mut c = loop {
        let mut c = server.connect();
        assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
        let r = c.cmd(&format!("PASS {PASSWORD}"));
        if r.starts_with("+OK") {
            break c;
        }
        assert!(r.starts_with("-ERR [IN-USE]"), "PASS: {r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the maildrop stayed locked by a client that does not read"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "the lock was free after {waited:?}: was the stalled session really stalled?"
    );
    // DELE 2 was never committed by a QUIT: both messages are still there.
    assert_eq!(
        c.stat().0,
        2,
        "a session cut by the write deadline applied its deletions"
    );
    assert!(c.quit().starts_with("+OK"));
    drop(stalled);
}

fn bytes_trickled_before_login_do_not_extend_the_login_deadline(backend: Backend) {
    let fx = Fixture::with_limits(&format!("{DEFAULT_LIMITS}login_timeout_secs = 2\n")).on(backend);
    let server = fx.start();
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .expect("a read timeout");
    let started = Instant::now();
    let mut received = Vec::new();
    // One byte every 250 ms of an endless run of CAPA commands, each of which resets an idle
    // timer; the connection must be closed at the login deadline all the same.
    let mut closed = false;
    for byte in b"CAPA\r\n".iter().cycle().take(40) {
        if s.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&received);
    assert!(
        closed,
        "still connected after {took:?} of trickled bytes:\n{text}"
    );
    assert!(
        took < Duration::from_secs(5),
        "cut only after {took:?} (login deadline 2 s)"
    );
    assert!(text.contains("-ERR login took too long"), "{text}");
    // The server goes on serving.
    assert!(server.login(USER, PASSWORD).quit().starts_with("+OK"));
}

fn the_login_deadline_covers_the_tls_handshake(backend: Backend) {
    let fx = Fixture::build(
        &format!("{DEFAULT_LIMITS}login_timeout_secs = 1\n"),
        "",
        true,
    )
    .on(backend);
    let server = fx.start();
    // A POP3S connection that never says a word of TLS.
    let mut s = TcpStream::connect(server.pop3s()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server answered a silent client");
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn the_shutdown_cut_reaches_a_session_blocked_in_a_write(backend: Backend) {
    let fx = Fixture::with_limits(
        "failed_login_delay_ms = 50\nshutdown_grace_secs = 1\nwrite_timeout_secs = 600\n",
    )
    .on(backend);
    fx.deliver(USER, &big_message(4));
    fx.deliver(USER, &message(2));
    let mut server = BinServer::start(&fx.config_path);
    let stalled = stall_in_a_retr(server.addr);
    // Let the server fill the socket buffers and block in its write.
    std::thread::sleep(Duration::from_millis(500));
    server.signal("TERM");
    // The session is cut at the end of the grace period, while its write waits on a peer that
    // does not read (write deadline: 10 minutes), and says how it ended.
    let log = server.wait_for_log("session ended", 1);
    let line = log
        .lines()
        .find(|l| l.contains("session ended"))
        .unwrap_or_default();
    assert!(line.contains("end=Shutdown"), "{line}");
    assert!(server.wait_exit().success(), "{}", server.log());
    drop(stalled);
    // No deletion without QUIT.
    assert_eq!(fx.message_count(USER), 2);
}

#[test]
fn sessions_have_keepalive_and_a_user_timeout() {
    // facteur sets its TCP options on the listening socket; every connection accepted from it
    // must have them, read back from the kernel.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    facteur_server::connection::tune_socket(
        socket2::SockRef::from(&listener),
        Duration::from_secs(42),
    );
    let addr = listener.local_addr().expect("address");
    let _client = TcpStream::connect(addr).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    let sock = socket2::SockRef::from(&accepted);
    assert!(sock.tcp_nodelay().expect("TCP_NODELAY"));
    assert!(sock.keepalive().expect("SO_KEEPALIVE"));
    assert_eq!(
        sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
        Some(Duration::from_secs(42))
    );
    assert_eq!(
        sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
        Duration::from_secs(60)
    );
}

both_backends!(
    a_client_that_stops_reading_is_cut_and_its_lock_released_without_update,
    bytes_trickled_before_login_do_not_extend_the_login_deadline,
    the_login_deadline_covers_the_tls_handshake,
    the_shutdown_cut_reaches_a_session_blocked_in_a_write,
);
