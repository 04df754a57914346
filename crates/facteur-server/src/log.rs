//! What the server writes to its log about logins and refused connections, in a shape an
//! administrator can act on and an attacker cannot abuse.
//!
//! - [`Sanitized`]: a user name as the client sent it, quoted, with every control character,
//!   non-ASCII character, quote and backslash escaped, and cut after
//!   [`LOGGED_USER_MAX_CHARS`] characters: a client cannot forge log lines, hide text with
//!   terminal escapes or bidirectional marks, or make one line huge.
//! - [`RefusalLog`]: refused connections (the global and the per-address caps). The first of a
//!   burst is logged at once; the rest are counted and summed up in one line per interval, in
//!   memory bounded by [`MAX_LISTED_ADDRESSES`], with no task per refusal (one timer at most per
//!   interval).
//!
//! What this module must never do: write a password; write a byte the client chose without
//! escaping it; grow with the number of refusals or of refusing addresses.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The most characters of a user name written to a log line; a longer one ends with `...`.
/// User names in a passwd-file are short; a longer one is someone probing.
pub const LOGGED_USER_MAX_CHARS: usize = 64;

/// The most refusing addresses named in one summary; the others are counted together.
pub const MAX_LISTED_ADDRESSES: usize = 8;

/// A client-supplied name for a log line: `"alice"`, with `\"`, `\\`, `\xHH` for ASCII control
/// characters and DEL, `\u{HHHH}` for every non-ASCII character, and `...` after the closing
/// quote when it was cut.
pub struct Sanitized<'a>(pub &'a str);

impl fmt::Display for Sanitized<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(LOGGED_USER_MAX_CHARS) {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                ' '..='~' => write!(f, "{c}")?,
                c if c.is_ascii() => write!(f, "\\x{:02x}", c as u32)?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
        }
        f.write_str("\"")?;
        if chars.next().is_some() {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` sessions are open.
    ServerFull,
    /// `limits.max_connections_per_ip` sessions from this address are open.
    AddressFull(IpAddr),
}

impl Refusal {
    /// The text the refused client is sent (after `-ERR [SYS/TEMP] `).
    pub fn answer(self) -> facteur_proto::Msg {
        match self {
            Refusal::ServerFull => facteur_proto::Msg::TooManyConnections,
            Refusal::AddressFull(_) => facteur_proto::Msg::TooManyConnectionsFromAddress,
        }
    }
}

/// The refusals counted since the last line, bounded whatever their number.
#[derive(Default, Debug)]
struct Counts {
    total: u64,
    server_full: u64,
    /// At most [`MAX_LISTED_ADDRESSES`] addresses, in the order they were first refused.
    addresses: Vec<(IpAddr, u64)>,
    /// Refusals from addresses past the first [`MAX_LISTED_ADDRESSES`].
    other_addresses: u64,
}

impl Counts {
    fn add(&mut self, refusal: Refusal) {
        self.total += 1;
        match refusal {
            Refusal::ServerFull => self.server_full += 1,
            Refusal::AddressFull(ip) => {
                if let Some((_, n)) = self.addresses.iter_mut().find(|(a, _)| *a == ip) {
                    *n += 1;
                } else if self.addresses.len() < MAX_LISTED_ADDRESSES {
                    self.addresses.push((ip, 1));
                } else {
                    self.other_addresses += 1;
                }
            }
        }
    }

    /// `refused 949 connections in the last 10 s: too many connections (3), too many
    /// connections from 127.0.0.1 (946)`: whole seconds, at least 1.
    fn summary(&self, elapsed: Duration) -> String {
        let mut parts = Vec::new();
        if self.server_full > 0 {
            parts.push(format!("too many connections ({})", self.server_full));
        }
        for (ip, n) in &self.addresses {
            parts.push(format!("too many connections from {ip} ({n})"));
        }
        if self.other_addresses > 0 {
            parts.push(format!(
                "too many connections from other addresses ({})",
                self.other_addresses
            ));
        }
        format!(
            "refused {} connection{} in the last {} s: {}",
            self.total,
            if self.total == 1 { "" } else { "s" },
            (elapsed.as_secs_f64().round() as u64).max(1),
            parts.join(", ")
        )
    }
}

/// The summing-up state with no clock and no I/O of its own: the times come in, the lines to
/// log come out.
#[derive(Debug)]
struct Window {
    /// Since when the refusals in `counts` are counted.
    since: Instant,
    counts: Counts,
    /// A timer is waiting to flush this window.
    timer_armed: bool,
}

/// What to do about one refusal.
#[derive(Debug, Default, PartialEq, Eq)]
struct Noted {
    /// A summary of the window that just ended, to log first.
    summary: Option<String>,
    /// Log this refusal on its own line: the first of a burst.
    log_now: bool,
    /// Flush the window at this time unless a refusal does it first.
    timer: Option<Instant>,
}

/// Counts refusals and says what to log; see [`RefusalLog`].
#[derive(Debug)]
struct Summarizer {
    interval: Duration,
    window: Option<Window>,
}

impl Summarizer {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            window: None,
        }
    }

    fn refused(&mut self, now: Instant, refusal: Refusal) -> Noted {
        let mut noted = Noted::default();
        if self.interval.is_zero() {
            noted.log_now = true;
            return noted;
        }
        if let Some(window) = &self.window {
            if now >= window.since + self.interval {
                noted.summary = self.close(now);
            }
        }
        match &mut self.window {
            None => {
                // The first refusal of a burst: logged as it happens.
                self.window = Some(Window {
                    since: now,
                    counts: Counts::default(),
                    timer_armed: false,
                });
                noted.log_now = true;
            }
            Some(window) => {
                window.counts.add(refusal);
                if !window.timer_armed {
                    window.timer_armed = true;
                    noted.timer = Some(window.since + self.interval);
                }
            }
        }
        noted
    }

    /// Ends the window (at its end, or at shutdown): its summary if it counted any refusal.
    /// A burst still going on keeps counting in a new window; a quiet one is over, and the
    /// next refusal will be logged at once.
    fn close(&mut self, now: Instant) -> Option<String> {
        let window = self.window.take()?;
        if window.counts.total == 0 {
            return None;
        }
        self.window = Some(Window {
            since: now,
            counts: Counts::default(),
            timer_armed: false,
        });
        Some(
            window
                .counts
                .summary(now.saturating_duration_since(window.since)),
        )
    }

    /// The timer of a window fired: its summary, if the window is due.
    fn tick(&mut self, now: Instant) -> Option<String> {
        match &self.window {
            Some(window) if now >= window.since + self.interval => self.close(now),
            _ => None,
        }
    }
}

/// The log of refused connections, shared by every listener.
pub struct RefusalLog {
    state: Mutex<Summarizer>,
}

impl RefusalLog {
    /// Sums refusals up over `interval`; a zero interval logs each one.
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(Summarizer::new(interval)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Summarizer> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Note one refused connection. Must run inside the tokio runtime (it may start the
    /// window's one timer).
    pub fn refused(self: &Arc<Self>, peer: crate::connection::Peer, refusal: Refusal) {
        let noted = self.lock().refused(Instant::now(), refusal);
        if let Some(summary) = noted.summary {
            tracing::info!("{summary}");
        }
        if noted.log_now {
            tracing::info!(
                peer = %peer.client,
                proxy = peer.proxy.map(tracing::field::display),
                why = %refusal.answer(),
                "connection refused"
            );
        }
        if let Some(at) = noted.timer {
            // The log is only borrowed by the timer: a server that stopped does not wait on it.
            let log = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                if let Some(log) = log.upgrade() {
                    let summary = log.lock().tick(Instant::now());
                    if let Some(summary) = summary {
                        tracing::info!("{summary}");
                    }
                }
            });
        }
    }

    /// Log what is counted and not yet logged (at shutdown).
    pub fn flush(&self) {
        let summary = self.lock().close(Instant::now());
        if let Some(summary) = summary {
            tracing::info!("{summary}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_name_is_quoted() {
        assert_eq!(Sanitized("alice").to_string(), "\"alice\"");
        assert_eq!(Sanitized("").to_string(), "\"\"");
        assert_eq!(Sanitized("a b@c.d").to_string(), "\"a b@c.d\"");
    }

    #[test]
    fn control_and_non_ascii_characters_are_escaped() {
        assert_eq!(
            Sanitized("a\r\nINFO login ok\x1b[2J\x7f").to_string(),
            "\"a\\x0d\\x0aINFO login ok\\x1b[2J\\x7f\""
        );
        assert_eq!(
            Sanitized("quote\"back\\slash").to_string(),
            "\"quote\\\"back\\\\slash\""
        );
        // Right-to-left override and a non-breaking space: never written as they are.
        assert_eq!(
            Sanitized("ab\u{202e}cd\u{a0}é").to_string(),
            "\"ab\\u{202e}cd\\u{a0}\\u{e9}\""
        );
        assert_eq!(Sanitized("\0").to_string(), "\"\\x00\"");
    }

    #[test]
    fn a_long_name_is_cut_with_an_ellipsis() {
        let exact = "x".repeat(LOGGED_USER_MAX_CHARS);
        assert_eq!(Sanitized(&exact).to_string(), format!("\"{exact}\""));
        let long = "y".repeat(5000);
        let logged = Sanitized(&long).to_string();
        assert_eq!(
            logged,
            format!("\"{}\"...", "y".repeat(LOGGED_USER_MAX_CHARS))
        );
        // Counted in characters, never cut inside one.
        let wide = "é".repeat(LOGGED_USER_MAX_CHARS + 1);
        let logged = Sanitized(&wide).to_string();
        assert!(logged.ends_with("\\u{e9}\"..."), "{logged}");
        assert_eq!(logged.matches("\\u{e9}").count(), LOGGED_USER_MAX_CHARS);
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_first_refusal_is_logged_and_the_rest_summed_up() {
        let t0 = Instant::now();
        let mut s = Summarizer::new(secs(10));
        let first = s.refused(t0, Refusal::AddressFull(LOCAL));
        assert_eq!(
            first,
            Noted {
                summary: None,
                log_now: true,
                timer: None
            }
        );
        // The second arms the one timer of the window; the others arm nothing.
        let second = s.refused(t0 + Duration::from_millis(1), Refusal::AddressFull(LOCAL));
        assert_eq!(second.timer, Some(t0 + secs(10)));
        assert!(!second.log_now && second.summary.is_none());
        for i in 0..947 {
            let n = s.refused(
                t0 + Duration::from_millis(2 + i),
                Refusal::AddressFull(LOCAL),
            );
            assert_eq!(n, Noted::default());
        }
        // Not due yet.
        assert_eq!(s.tick(t0 + secs(9)), None);
        assert_eq!(
            s.tick(t0 + secs(10)).as_deref(),
            Some("refused 948 connections in the last 10 s: too many connections from 127.0.0.1 (948)")
        );
        // A quiet interval ends the burst: the next refusal is logged at once again.
        assert_eq!(s.tick(t0 + secs(20)), None);
        let again = s.refused(t0 + secs(25), Refusal::ServerFull);
        assert!(again.log_now && again.summary.is_none());
    }

    #[test]
    fn a_refusal_after_the_interval_flushes_the_window() {
        let t0 = Instant::now();
        let mut s = Summarizer::new(secs(10));
        s.refused(t0, Refusal::ServerFull);
        s.refused(t0 + secs(1), Refusal::ServerFull);
        s.refused(t0 + secs(2), Refusal::AddressFull(LOCAL));
        let late = s.refused(t0 + secs(12), Refusal::ServerFull);
        assert_eq!(
            late.summary.as_deref(),
            Some(
                "refused 2 connections in the last 12 s: too many connections (1), \
                 too many connections from 127.0.0.1 (1)"
            )
        );
        // The burst goes on: this one is counted in the new window, with a new timer.
        assert!(!late.log_now);
        assert_eq!(late.timer, Some(t0 + secs(22)));
        assert_eq!(
            s.close(t0 + secs(13)).as_deref(),
            Some("refused 1 connection in the last 1 s: too many connections (1)")
        );
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_addresses() {
        let t0 = Instant::now();
        let mut s = Summarizer::new(secs(10));
        s.refused(t0, Refusal::ServerFull);
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            s.refused(t0 + secs(1), Refusal::AddressFull(ip));
        }
        let window = s.window.as_ref().unwrap();
        assert_eq!(window.counts.addresses.len(), MAX_LISTED_ADDRESSES);
        let summary = s.close(t0 + secs(10)).unwrap();
        assert!(
            summary.starts_with("refused 10000 connections in the last 10 s:"),
            "{summary}"
        );
        assert!(
            summary.ends_with(&format!(
                "too many connections from other addresses ({})",
                10_000 - MAX_LISTED_ADDRESSES
            )),
            "{summary}"
        );
    }

    #[test]
    fn shutdown_flushes_and_a_zero_interval_logs_everything() {
        let t0 = Instant::now();
        let mut s = Summarizer::new(secs(10));
        assert_eq!(s.close(t0), None);
        s.refused(t0, Refusal::ServerFull);
        // Only the first, already logged: nothing to sum up.
        assert_eq!(s.close(t0 + secs(1)), None);

        let mut every = Summarizer::new(Duration::ZERO);
        for _ in 0..3 {
            assert!(every.refused(t0, Refusal::ServerFull).log_now);
        }
        assert_eq!(every.close(t0), None);
    }
}
