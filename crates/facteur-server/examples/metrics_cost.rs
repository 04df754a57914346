//! What counting costs one POP3 session: the metrics calls a session of compare.sh's workload 1
//! makes (started, login, open and update latency, retrieved, deleted, ended), timed over many
//! sessions on two threads at once (as two cores of a server would). Run it in release:
//!
//!     cargo run --release -p facteur-server --example metrics_cost
//!
//! and compare the figure with the CPU per session that bench/compare.sh prints (about
//! 290 µs on the 2-core VM): the counting's share of a session.

use facteur_server::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn session(m: &Metrics) {
    m.session_started();
    m.store_operation("open", Duration::from_micros(150));
    m.login("USER/PASS", "ok");
    m.store_operation("update", Duration::from_micros(900));
    m.retrieved(3, 12_000);
    m.deleted(3);
    m.session_ended("quit", Duration::from_millis(4));
}

fn main() {
    let metrics = Arc::new(Metrics::new());
    let per_thread = 2_000_000u32;
    for round in 1..=3 {
        let started = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let m = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        session(&m);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a counting thread");
        }
        let elapsed = started.elapsed();
        // Two threads ran in parallel: CPU time is at most twice the wall time (less when the
        // machine is busy and the threads wait for a core: an upper bound).
        let cpu_ns_per_session = elapsed.as_nanos() as f64 * 2.0 / f64::from(2 * per_thread);
        println!("round {round}: {cpu_ns_per_session:.0} ns of CPU per session's counting");
    }
    let text = metrics.render();
    println!(
        "rendered /metrics: {} octets, {} series",
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
}
