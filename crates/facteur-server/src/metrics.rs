//! `[metrics]`: what the server counts, in Prometheus's text format on `/metrics`, and whether it
//! is ready on `/health`, over a small HTTP listener of its own.
//!
//! Counting costs an atomic add per event (a per-label counter is looked up under a read lock
//! once per session or login, never per octet). The families' label values are fixed words
//! chosen by the server, never text from a client, so their number is bounded.
//!
//! The HTTP side answers `GET /metrics` and `GET /health` only, one request per connection: a
//! request head over [`MAX_REQUEST_HEAD`] octets, or slower than [`REQUEST_DEADLINE`], is
//! dropped; at most [`MAX_HTTP_CONNECTIONS`] are served at once. It is meant for a scraper on a
//! private address, and serves no other path.
//!
//! What this module must never do: take a label value from the network, wait on a scraper
//! without a deadline, or hold a lock while writing to a socket.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head read (request line and headers).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The time a scraper has to send its request and read the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// HTTP connections served at once; more wait in the listen queue.
pub const MAX_HTTP_CONNECTIONS: usize = 16;

/// A label value chosen by the server (`"quit"`, `"USER/PASS"`, ...), never by a client.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Word(pub &'static str);

impl EncodeLabelValue for Word {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    end: Word,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    method: Word,
    outcome: Word,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Word,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    kind: Word,
    outcome: Word,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    via: Word,
    result: Word,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: Word,
}

/// Store operation latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];
/// Session duration buckets, in seconds: 10 ms to an hour.
const DURATION_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0];

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    sessions_open: Gauge,
    sessions_ended: Family<EndLabel, Counter>,
    logins: Family<LoginLabels, Counter>,
    penalties: Counter,
    refused: Family<ReasonLabel, Counter>,
    tls_handshakes: Family<TlsLabels, Counter>,
    retrieved: Counter,
    retrieved_octets: Counter,
    deleted: Counter,
    deliveries: Family<DeliveryLabels, Counter>,
    in_use: Counter,
    store_latency: Family<OpLabel, Histogram>,
    session_duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("facteur");
        let sessions_open = Gauge::default();
        registry.register(
            "sessions_open",
            "POP3 sessions open now",
            sessions_open.clone(),
        );
        let sessions_ended = Family::<EndLabel, Counter>::default();
        registry.register(
            "sessions_ended",
            "POP3 sessions ended, by how they ended",
            sessions_ended.clone(),
        );
        let logins = Family::<LoginLabels, Counter>::default();
        registry.register("logins", "Logins, by method and outcome", logins.clone());
        let penalties = Counter::default();
        registry.register(
            "login_penalties",
            "Failed logins answered after a penalty delay",
            penalties.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused by a cap (server_full, address_full)",
            refused.clone(),
        );
        let tls_handshakes = Family::<TlsLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes (pop3s, stls), by outcome",
            tls_handshakes.clone(),
        );
        let retrieved = Counter::default();
        registry.register(
            "messages_retrieved",
            "Messages sent by RETR",
            retrieved.clone(),
        );
        let retrieved_octets = Counter::default();
        registry.register(
            "retrieved_octets",
            "Octets of the messages sent by RETR, as stored (before CRLF and dot-stuffing)",
            retrieved_octets.clone(),
        );
        let deleted = Counter::default();
        registry.register(
            "deletions_applied",
            "Messages deleted in the UPDATE state (after a committed QUIT)",
            deleted.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Deliveries into the store, by way in and result",
            deliveries.clone(),
        );
        let in_use = Counter::default();
        registry.register(
            "maildrop_in_use",
            "Logins refused because another session holds the maildrop ([IN-USE])",
            in_use.clone(),
        );
        let store_latency = Family::<OpLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "store_operation_seconds",
            "Time the store took, by operation (open, update, deliver)",
            store_latency.clone(),
        );
        let session_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "session_duration_seconds",
            "Duration of POP3 sessions, from the accept to the end",
            session_duration.clone(),
        );
        Self {
            registry,
            sessions_open,
            sessions_ended,
            logins,
            penalties,
            refused,
            tls_handshakes,
            retrieved,
            retrieved_octets,
            deleted,
            deliveries,
            in_use,
            store_latency,
            session_duration,
        }
    }

    /// A session starts (after the caps let it in).
    pub fn session_started(&self) {
        self.sessions_open.inc();
    }

    /// A session ended, how and after how long.
    pub fn session_ended(&self, end: &'static str, duration: Duration) {
        self.sessions_open.dec();
        self.sessions_ended
            .get_or_create(&EndLabel { end: Word(end) })
            .inc();
        self.session_duration.observe(duration.as_secs_f64());
    }

    /// A login attempt's outcome (`ok`, `failed`, `in_use`, `unavailable`).
    pub fn login(&self, method: &'static str, outcome: &'static str) {
        self.logins
            .get_or_create(&LoginLabels {
                method: Word(method),
                outcome: Word(outcome),
            })
            .inc();
        if outcome == "in_use" {
            self.in_use.inc();
        }
    }

    /// A failed login was answered after a penalty delay.
    pub fn penalty(&self) {
        self.penalties.inc();
    }

    /// A connection refused by a cap.
    pub fn refused(&self, reason: &'static str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: Word(reason),
            })
            .inc();
    }

    /// A TLS handshake (`pop3s` or `stls`) and whether it completed.
    pub fn tls_handshake(&self, kind: &'static str, ok: bool) {
        self.tls_handshakes
            .get_or_create(&TlsLabels {
                kind: Word(kind),
                outcome: Word(if ok { "ok" } else { "failed" }),
            })
            .inc();
    }

    /// `count` messages sent by RETR, of `octets` in all.
    pub fn retrieved(&self, count: u64, octets: u64) {
        self.retrieved.inc_by(count);
        self.retrieved_octets.inc_by(octets);
    }

    /// Messages deleted by a committed UPDATE.
    pub fn deleted(&self, count: u64) {
        self.deleted.inc_by(count);
    }

    /// A delivery (`lmtp`, `deliver`) and its result (`ok`, `unknown_user`, `temporary`).
    pub fn delivery(&self, via: &'static str, result: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                via: Word(via),
                result: Word(result),
            })
            .inc();
    }

    /// The time a store operation (`open`, `update`, `deliver`) took.
    pub fn store_operation(&self, op: &'static str, took: Duration) {
        self.store_latency
            .get_or_create(&OpLabel { op: Word(op) })
            .observe(took.as_secs_f64());
    }

    /// Everything, in the OpenMetrics text format (which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Whether the server is ready: `Ok` or why not. Called for each `/health`.
pub type HealthCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Serves `/metrics` and `/health` on `listener` until `stop` resolves.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: HealthCheck,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_DEADLINE, answer(stream, &metrics, &health)).await;
            drop(permit);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    Health,
    NotFound,
    BadMethod,
    Bad,
}

/// The request line of a request head (up to its first CRLF).
fn parse_request(head: &[u8]) -> Request {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(b"");
    let mut words = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Request::Bad;
    };
    if words.next().is_some() || !version.starts_with(b"HTTP/1.") {
        return Request::Bad;
    }
    if method != b"GET" && method != b"HEAD" {
        return Request::BadMethod;
    }
    // A query string is allowed and ignored, as Prometheus may add one.
    let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
    match path {
        b"/metrics" => Request::Metrics,
        b"/health" => Request::Health,
        _ => Request::NotFound,
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, health: &HealthCheck) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // Read up to the end of the head (an empty line), within the cap.
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() >= MAX_REQUEST_HEAD {
            let _ = respond(&mut stream, 431, "text/plain", b"request head too large\n").await;
            return;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n.min(buf.len())]),
        }
    }
    let head_only = head.starts_with(b"HEAD ");
    let (status, kind, body) = match parse_request(&head) {
        Request::Metrics => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render().into_bytes(),
        ),
        Request::Health => match health().await {
            Ok(()) => (200, "text/plain", b"ok\n".to_vec()),
            Err(why) => (
                503,
                "text/plain",
                format!("not ready: {why}\n").into_bytes(),
            ),
        },
        Request::NotFound => (404, "text/plain", b"only /metrics and /health\n".to_vec()),
        Request::BadMethod => (405, "text/plain", b"GET only\n".to_vec()),
        Request::Bad => (400, "text/plain", b"bad request\n".to_vec()),
    };
    let body = if head_only { &[][..] } else { &body[..] };
    let _ = respond(&mut stream, status, kind, body).await;
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_rendered_with_their_labels() {
        let m = Metrics::new();
        m.session_started();
        m.session_started();
        m.session_ended("quit", Duration::from_millis(30));
        m.login("USER/PASS", "ok");
        m.login("USER/PASS", "failed");
        m.login("SASL/PLAIN", "in_use");
        m.penalty();
        m.refused("address_full");
        m.tls_handshake("stls", true);
        m.retrieved(1, 1200);
        m.retrieved(1, 800);
        m.deleted(3);
        m.delivery("lmtp", "ok");
        m.store_operation("open", Duration::from_micros(300));
        let text = m.render();
        for line in [
            "facteur_sessions_open 1",
            "facteur_sessions_ended_total{end=\"quit\"} 1",
            "facteur_logins_total{method=\"USER/PASS\",outcome=\"ok\"} 1",
            "facteur_logins_total{method=\"USER/PASS\",outcome=\"failed\"} 1",
            "facteur_logins_total{method=\"SASL/PLAIN\",outcome=\"in_use\"} 1",
            "facteur_maildrop_in_use_total 1",
            "facteur_login_penalties_total 1",
            "facteur_connections_refused_total{reason=\"address_full\"} 1",
            "facteur_tls_handshakes_total{kind=\"stls\",outcome=\"ok\"} 1",
            "facteur_messages_retrieved_total 2",
            "facteur_retrieved_octets_total 2000",
            "facteur_deletions_applied_total 3",
            "facteur_deliveries_total{via=\"lmtp\",result=\"ok\"} 1",
            "facteur_store_operation_seconds_count{op=\"open\"} 1",
            "facteur_store_operation_seconds_bucket{le=\"0.0005\",op=\"open\"} 1",
            "facteur_session_duration_seconds_count 1",
            "facteur_session_duration_seconds_bucket{le=\"0.05\"} 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    /// Every series contrib/grafana/facteur.json queries is one the server exports: the
    /// dashboard cannot drift from the names here.
    #[test]
    fn the_grafana_dashboard_queries_only_exported_series() {
        let dashboard = include_str!("../../../contrib/grafana/facteur.json");
        let m = Metrics::new();
        // Touch every family so that each one is rendered with a sample.
        m.session_ended("quit", Duration::ZERO);
        m.login("APOP", "ok");
        m.refused("server_full");
        m.tls_handshake("pop3s", true);
        m.delivery("lmtp", "ok");
        m.store_operation("open", Duration::ZERO);
        let rendered = m.render();
        // The series as rendered: counters with `_total`, histograms' `_bucket` and the rest.
        let exported: std::collections::HashSet<&str> = rendered
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut queried = Vec::new();
        let bytes = dashboard.as_bytes();
        let mut i = 0;
        while let Some(at) = dashboard[i..].find("facteur_") {
            let start = i + at;
            let end = start
                + bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_lowercase() || **b == b'_' || b.is_ascii_digit())
                    .count();
            queried.push(&dashboard[start..end]);
            i = end;
        }
        // The dashboard's uid and tags say "facteur-pop3" and "facteur": no underscore there.
        assert!(queried.len() >= 15, "{queried:?}");
        for name in queried {
            assert!(
                exported.contains(name),
                "the dashboard queries {name}, which /metrics does not export:\n{rendered}"
            );
        }
    }

    #[test]
    fn requests_are_parsed_strictly() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"HEAD /health HTTP/1.1\r\n\r\n"),
            Request::Health
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(parse_request(b"GET /metrics SMTP/1.0\r\n"), Request::Bad);
        assert_eq!(parse_request(b"\xff\xfe"), Request::Bad);
    }

    fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn the_listener_serves_metrics_health_and_refuses_the_rest() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.login("APOP", "ok");
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = ready.clone();
        let health: HealthCheck = Arc::new(move || {
            let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("the store does not answer".into())
                }
            })
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(serve_http(listener, metrics, health, async {
            let _ = stop_rx.await;
        }));
        let r = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("application/openmetrics-text"), "{r}");
        assert!(
            r.contains("facteur_logins_total{method=\"APOP\",outcome=\"ok\"} 1"),
            "{r}"
        );
        let r = get(addr, b"GET /health HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("ok\n"),
            "{r}"
        );
        ready.store(false, std::sync::atomic::Ordering::SeqCst);
        let r = get(addr, b"GET /health HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("the store does not answer"), "{r}");
        let r = get(addr, b"GET /etc/passwd HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        // A head that never ends is cut at the cap.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEAD + 10));
        let r = get(addr, &huge);
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        let _ = stop_tx.send(());
        rt.block_on(server).unwrap();
    }
}
