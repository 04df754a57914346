//! Reading and writing the mbox format: where messages begin and end, `From ` quoting, the
//! unique-id of a message, and the `From ` line a delivery writes.
//!
//! ## The format, as read
//! A message begins with a line that starts with `From ` (five octets, case-sensitive) at the
//! start of the file or right after an empty line (`\n`, or `\r\n` in a CRLF mbox). It runs to
//! the next such line or to the end of the file. Its content, as POP3 serves it, is what follows
//! its `From ` line, minus the one empty line that separates it from the next message (or that
//! ends the file): that line belongs to the format, not to the message. A last message without a
//! final newline is served as it is (RETR then adds the CRLF that ends every multi-line reply).
//! Octets before the first `From ` line (a damaged file) belong to no message: they are never
//! served, and UPDATE keeps them.
//!
//! ## Unquoting: one rule for mboxo and mboxrd
//! A content line that starts with one or more `>` followed by `From ` loses one `>`. On an
//! mboxrd file (facteur's deliveries, the fetcher, mutt with `mbox_type=mboxrd`) this gives back
//! the message exactly. On an mboxo file (Postfix's `local`, procmail) it gives back every
//! `From ` line that the MTA quoted; a line that the sender wrote as `>From ` is served as
//! `From `: mboxo cannot tell the two apart, and the line is in the body, where the change is
//! harmless (it is what mail readers show anyway). Nothing else is changed: no `Content-Length:`
//! is honoured (Solaris' format is not read), no `Status:` header is added or removed.
//!
//! ## What this module must never do
//! - Hold a whole message in memory: everything here is fed blocks and keeps a bounded tail.

use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// The start of a separator line.
const FROM: &[u8] = b"From ";

/// The longest run of `>` at the start of a line that the quoting rules look through; a longer
/// one is left alone (bounded memory; no MTA writes such a line).
pub(crate) const MAX_QUOTE_PREFIX: usize = 1024;

/// Trailing CR and LF octets held back from the unique-id hash at most; beyond it they are hashed
/// (a message ending in 64 KiB of empty lines keeps a stable id anyway, unless a writer changes
/// its final newlines).
const MAX_HELD_NEWLINES: usize = 64 * 1024;

/// One message of the file, as offsets into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// The first octet of its `From ` line.
    pub start: u64,
    /// The first octet after its `From ` line: the content starts here.
    pub body: u64,
    /// The end of its content (the separating empty line excluded).
    pub end: u64,
    /// The end of its region: the next message's `start`, or the end of the file.
    pub next: u64,
}

/// Finds the messages of an mbox fed to it block by block, from offset 0.
#[derive(Debug)]
pub(crate) struct Scanner {
    /// Offset of the next octet fed.
    pos: u64,
    /// Offset of the current line's first octet.
    line_start: u64,
    /// The current line's first octets (up to 5), to compare with `From `.
    head: [u8; 5],
    head_len: usize,
    /// The current line holds only `\r` so far (or nothing).
    line_blank: bool,
    /// The previous complete line was empty, and where it started.
    prev_empty: bool,
    prev_start: u64,
    /// A message whose `From ` line is not complete yet: its start.
    in_from_line: Option<u64>,
    /// The message being read: its start and body.
    current: Option<(u64, u64)>,
    spans: Vec<Span>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            pos: 0,
            line_start: 0,
            head: [0; 5],
            head_len: 0,
            line_blank: true,
            // The start of the file counts as "after an empty line".
            prev_empty: true,
            prev_start: 0,
            in_from_line: None,
            current: None,
            spans: Vec::new(),
        }
    }
}

impl Scanner {
    /// Messages found so far (complete ones only).
    pub(crate) fn count(&self) -> usize {
        self.spans.len()
    }

    pub(crate) fn feed(&mut self, block: &[u8]) {
        let mut rest = block;
        while !rest.is_empty() {
            // Take what the head still needs.
            while self.head_len < 5 {
                let Some((&b, tail)) = rest.split_first() else {
                    return;
                };
                if b == b'\n' {
                    break;
                }
                if let Some(slot) = self.head.get_mut(self.head_len) {
                    *slot = b;
                }
                self.head_len += 1;
                self.line_blank = self.line_blank && b == b'\r' && self.head_len == 1;
                self.pos += 1;
                rest = tail;
                if self.head_len == 5 {
                    self.head_complete();
                }
            }
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    if i > 0 {
                        self.line_blank = false;
                    }
                    self.pos += i as u64 + 1;
                    rest = rest.get(i + 1..).unwrap_or_default();
                    self.line_end();
                }
                None => {
                    if !rest.is_empty() {
                        self.line_blank = false;
                    }
                    self.pos += rest.len() as u64;
                    return;
                }
            }
        }
    }

    /// The first five octets of a line are known.
    fn head_complete(&mut self) {
        if self.head == FROM && self.prev_empty {
            let start = self.line_start;
            self.close_before(start);
            self.in_from_line = Some(start);
        }
    }

    /// Ends the current message (if any) before a separator line at `next`: the empty line
    /// before that line separates, it is not content.
    fn close_before(&mut self, next: u64) {
        if let Some((start, body)) = self.current.take() {
            self.spans.push(Span {
                start,
                body,
                end: self.prev_start.max(body),
                next,
            });
        }
    }

    fn line_end(&mut self) {
        if let Some(start) = self.in_from_line.take() {
            self.current = Some((start, self.pos));
            self.prev_empty = false;
        } else {
            self.prev_empty = self.line_blank;
            self.prev_start = self.line_start;
        }
        self.line_start = self.pos;
        self.head_len = 0;
        self.line_blank = true;
    }

    /// The end of the file: the messages, in order, and where the first one starts (the octets
    /// before it belong to no message).
    pub(crate) fn finish(mut self) -> Vec<Span> {
        let eof = self.pos;
        if let Some(start) = self.in_from_line.take() {
            // A `From ` line without a newline, last in the file: an empty message.
            self.close_before(start);
            self.spans.push(Span {
                start,
                body: eof,
                end: eof,
                next: eof,
            });
            return self.spans;
        }
        if let Some((s, body)) = self.current.take() {
            // A final empty line (complete, nothing after it) separates; anything else is content.
            let end = if self.line_start == eof && self.prev_empty && self.prev_start >= body {
                self.prev_start
            } else {
                eof
            };
            self.spans.push(Span {
                start: s,
                body,
                end,
                next: eof,
            });
        }
        self.spans
    }
}

/// Whether the octets held at the start of a line (a run of `>` then part of `From `) decide
/// anything yet.
enum Held {
    /// They may still become a quoted `From ` line.
    Maybe,
    /// `>`s then `From `, with this many `>`.
    Quoted(usize),
    /// Not a quoted line.
    No,
}

fn classify(held: &[u8]) -> Held {
    let gts = held.iter().take_while(|&&b| b == b'>').count();
    let rest = held.get(gts..).unwrap_or_default();
    if rest == FROM {
        Held::Quoted(gts)
    } else if FROM.starts_with(rest) && gts <= MAX_QUOTE_PREFIX {
        Held::Maybe
    } else {
        Held::No
    }
}

/// Writes a quoted line head: the number of `>`, the held octets, the output.
type WriteHead = fn(usize, &[u8], &mut dyn FnMut(&[u8]));

/// The line-start state shared by the quoter and the unquoter.
#[derive(Debug)]
struct LineHead {
    at_start: bool,
    held: Vec<u8>,
}

impl Default for LineHead {
    fn default() -> Self {
        Self {
            at_start: true,
            held: Vec::new(),
        }
    }
}

impl LineHead {
    /// Feeds `data`; `quoted(gts, held, out)` writes a line head of `gts` `>` and `From `.
    fn push(&mut self, mut data: &[u8], out: &mut dyn FnMut(&[u8]), quoted: WriteHead) {
        while !data.is_empty() {
            if !self.at_start {
                match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        let (line, rest) = data.split_at(i + 1);
                        out(line);
                        data = rest;
                        self.at_start = true;
                    }
                    None => {
                        out(data);
                        return;
                    }
                }
                continue;
            }
            let Some((&b, rest)) = data.split_first() else {
                break;
            };
            data = rest;
            self.held.push(b);
            match classify(&self.held) {
                Held::Maybe => {}
                Held::Quoted(gts) => {
                    quoted(gts, &self.held, out);
                    self.held.clear();
                    self.at_start = false;
                }
                Held::No => {
                    out(&self.held);
                    self.held.clear();
                    self.at_start = b == b'\n';
                }
            }
        }
    }

    fn finish(&mut self, out: &mut dyn FnMut(&[u8])) {
        if !self.held.is_empty() {
            out(&self.held);
            self.held.clear();
        }
    }
}

/// Undoes `From ` quoting as a message streams by (see "Unquoting" above).
#[derive(Debug, Default)]
pub(crate) struct Unquoter(LineHead);

impl Unquoter {
    pub(crate) fn push(&mut self, data: &[u8], out: &mut dyn FnMut(&[u8])) {
        self.0.push(data, out, |gts, held, out| {
            if gts == 0 {
                out(held)
            } else {
                out(held.get(1..).unwrap_or_default())
            }
        });
    }

    pub(crate) fn finish(&mut self, out: &mut dyn FnMut(&[u8])) {
        self.0.finish(out);
    }
}

/// mboxrd quoting as a message is delivered: a line matching `^>*From ` gets one more `>`.
#[derive(Debug, Default)]
pub struct Quoter(LineHead);

impl Quoter {
    /// Feeds the next octets of the message; the quoted octets go to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut dyn FnMut(&[u8])) {
        self.0.push(data, out, |_, held, out| {
            out(b">");
            out(held);
        });
    }

    /// The end of the message: what is still held goes to `out`.
    pub fn finish(&mut self, out: &mut dyn FnMut(&[u8])) {
        self.0.finish(out);
    }
}

/// SHA-256 of a message's region (its `From ` line and content) without its trailing CR and LF
/// octets, so that a writer that adds or drops final newlines (a message without one, to which a
/// delivery after it adds the separator) does not change the id.
#[derive(Default)]
pub(crate) struct IdHasher {
    sha: Sha256,
    held: Vec<u8>,
}

impl IdHasher {
    pub(crate) fn feed(&mut self, block: &[u8]) {
        match block.iter().rposition(|&b| b != b'\n' && b != b'\r') {
            Some(i) => {
                self.sha.update(&self.held);
                self.held.clear();
                let (body, tail) = block.split_at(i + 1);
                self.sha.update(body);
                self.held.extend_from_slice(tail);
            }
            None => self.held.extend_from_slice(block),
        }
        if self.held.len() > MAX_HELD_NEWLINES {
            self.sha.update(&self.held);
            self.held.clear();
        }
    }

    /// 32 hex digits (128 bits of the digest).
    pub(crate) fn finish(self) -> String {
        let digest = self.sha.finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

/// The unique-id of the `occurrence`-th (1-based) message of the file with this hash: the hash
/// alone for the first, `HASH-N` for the next ones.
pub(crate) fn unique_id(hash: &str, occurrence: u32) -> String {
    if occurrence <= 1 {
        hash.to_owned()
    } else {
        format!("{hash}-{occurrence}")
    }
}

/// The `From ` line of a delivered message: `From MAILER-DAEMON <asctime, UTC>` (the store is not
/// told the envelope sender; the line is the format's, never served).
pub(crate) fn from_line(now: SystemTime) -> String {
    format!("From MAILER-DAEMON {}\n", asctime(now))
}

/// `Mon Jan  2 15:04:05 2006` in UTC.
pub fn asctime(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS.get((days % 7) as usize).unwrap_or(&"Thu"),
        MONTHS
            .get(usize::try_from(month.saturating_sub(1)).unwrap_or(0))
            .unwrap_or(&"Jan"),
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// The UTC calendar date of day `days` counted from 1970-01-01: (year, month 1 to 12, day 1 to
/// 31). Howard Hinnant's `civil_from_days`, for days that are never negative. The one copy of
/// this arithmetic (the fetcher's dates use it too); no time-zone database.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days.saturating_add(719_468);
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scan(bytes: &[u8], chunk: usize) -> Vec<Span> {
        let mut s = Scanner::default();
        for c in bytes.chunks(chunk.max(1)) {
            s.feed(c);
        }
        s.finish()
    }

    /// The content of each message, unquoted.
    fn contents(bytes: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let spans = scan(bytes, chunk);
        for n in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(scan(bytes, n), spans, "chunk {n}");
        }
        spans
            .iter()
            .map(|s| {
                let raw = &bytes[s.body as usize..s.end as usize];
                let mut out = Vec::new();
                let mut u = Unquoter::default();
                for c in raw.chunks(chunk.max(1)) {
                    u.push(c, &mut |d| out.extend_from_slice(d));
                }
                u.finish(&mut |d| out.extend_from_slice(d));
                out
            })
            .collect()
    }

    #[test]
    fn postfix_mboxo() {
        let mbox = b"From a@x Thu Jan  1 00:00:00 1970\nSubject: one\n\n>From the body\n>>From kept\nFrom: not a separator\n\nFrom b@x Thu Jan  1 00:00:01 1970\nSubject: two\n\nbody\n\n";
        let got = contents(mbox, 1);
        assert_eq!(
            got,
            vec![
                b"Subject: one\n\nFrom the body\n>From kept\nFrom: not a separator\n".to_vec(),
                b"Subject: two\n\nbody\n".to_vec(),
            ]
        );
    }

    #[test]
    fn a_from_line_needs_an_empty_line_before_it() {
        let mbox = b"From a Thu\nx\nFrom b is text\n\nFrom c Fri\ny\n";
        let got = contents(mbox, 3);
        assert_eq!(got, vec![b"x\nFrom b is text\n".to_vec(), b"y\n".to_vec()]);
    }

    #[test]
    fn mboxrd_round_trip() {
        let msg = b"S: x\n\nFrom a\n>From b\n>>From c\n>Fro\nFrom\n";
        let mut quoted = Vec::new();
        let mut q = Quoter::default();
        for c in msg.chunks(2) {
            q.push(c, &mut |d| quoted.extend_from_slice(d));
        }
        q.finish(&mut |d| quoted.extend_from_slice(d));
        assert_eq!(
            quoted,
            b"S: x\n\n>From a\n>>From b\n>>>From c\n>Fro\nFrom\n".to_vec()
        );
        let mut mbox = b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n".to_vec();
        mbox.extend_from_slice(&quoted);
        mbox.extend_from_slice(b"\n");
        assert_eq!(contents(&mbox, 1), vec![msg.to_vec()]);
    }

    #[test]
    fn empty_and_odd_files() {
        assert!(scan(b"", 1).is_empty());
        assert!(contents(b"no separator at all\n", 1).is_empty());
        // Octets before the first separator belong to no message.
        assert_eq!(contents(b"junk\n\nFrom a\nx\n", 1), vec![b"x\n".to_vec()]);
        // No final newline.
        assert_eq!(
            contents(b"From a\nx\n\nFrom b\nlast", 1),
            vec![b"x\n".to_vec(), b"last".to_vec()]
        );
        // A message that is only its From line, with and without a newline.
        assert_eq!(contents(b"From a", 1), vec![Vec::new()]);
        assert_eq!(contents(b"From a\n", 1), vec![Vec::new()]);
        assert_eq!(contents(b"From a\n\n", 1), vec![Vec::new()]);
        // Content ending with empty lines keeps all but the separating one.
        assert_eq!(contents(b"From a\nx\n\n\n", 1), vec![b"x\n\n".to_vec()]);
        // Two separators in a row: an empty message.
        assert_eq!(
            contents(b"From a\n\nFrom b\ny\n", 2),
            vec![Vec::new(), b"y\n".to_vec()]
        );
    }

    #[test]
    fn crlf_mbox() {
        let mbox = b"From a Thu\r\nS: 1\r\n\r\n>From x\r\n\r\nFrom b Fri\r\nS: 2\r\n\r\n";
        assert_eq!(
            contents(mbox, 1),
            vec![b"S: 1\r\n\r\nFrom x\r\n".to_vec(), b"S: 2\r\n".to_vec()]
        );
    }

    #[test]
    fn ids_ignore_final_newlines_only() {
        let id = |parts: &[&[u8]]| {
            let mut h = IdHasher::default();
            for p in parts {
                h.feed(p);
            }
            h.finish()
        };
        assert_eq!(id(&[b"From a\nx"]), id(&[b"From a\nx\n"]));
        assert_eq!(id(&[b"From a\nx"]), id(&[b"From a\n", b"x\r\n", b"\n"]));
        assert_ne!(id(&[b"From a\nx"]), id(&[b"From a\ny"]));
        assert_ne!(id(&[b"From a\nx\n\ny"]), id(&[b"From a\nx\ny"]));
        assert_eq!(id(&[b"x"]).len(), 32);
        assert_eq!(unique_id("ab", 1), "ab");
        assert_eq!(unique_id("ab", 3), "ab-3");
    }

    /// A message made of the pieces that matter to the format.
    fn message() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            &b"From "[..],
            b">",
            b">>From ",
            b"\n",
            b"\r\n",
            b"\n\n",
            b"\r",
            b"x",
            b"From x\n",
        ]);
        prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        /// Whatever the messages and however the file is read in blocks: delivered the mboxrd
        /// way (as `facteur deliver` writes), each is found again, unquoted, octet for octet
        /// (with the final newline a delivery adds).
        #[test]
        fn delivered_messages_come_back_whole(
            messages in proptest::collection::vec(message(), 0..5),
            chunk in 1usize..40,
        ) {
            let mut mbox = Vec::new();
            let mut want = Vec::new();
            for m in &messages {
                mbox.extend_from_slice(b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n");
                let mut q = Quoter::default();
                q.push(m, &mut |d| mbox.extend_from_slice(d));
                q.finish(&mut |d| mbox.extend_from_slice(d));
                let mut w = m.clone();
                if m.last().is_some_and(|&b| b != b'\n') {
                    mbox.push(b'\n');
                    w.push(b'\n');
                }
                mbox.push(b'\n');
                want.push(w);
            }
            proptest::prop_assert_eq!(contents(&mbox, chunk), want);
        }
    }

    #[test]
    fn asctime_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_136_214_245);
        assert_eq!(asctime(t), "Mon Jan  2 15:04:05 2006");
        assert_eq!(asctime(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        assert!(from_line(UNIX_EPOCH).starts_with("From MAILER-DAEMON Thu Jan  1"));
    }
}

/// One message of [`scan_bytes`]: its offsets and its content, unquoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedMessage {
    pub start: u64,
    pub body: u64,
    pub end: u64,
    pub next: u64,
    pub content: Vec<u8>,
}

/// The messages of the mbox `data`, read `block` octets at a time (at least 1) as the store
/// reads a file: for the fuzz target, which checks that any bytes give the same messages
/// whatever the block size, within bounds and in order.
pub fn scan_bytes(data: &[u8], block: usize) -> Vec<ScannedMessage> {
    let block = block.max(1);
    let mut scanner = Scanner::default();
    for piece in data.chunks(block) {
        scanner.feed(piece);
    }
    scanner
        .finish()
        .into_iter()
        .map(|span| {
            let body = usize::try_from(span.body).unwrap_or(usize::MAX);
            let end = usize::try_from(span.end).unwrap_or(usize::MAX);
            let mut content = Vec::new();
            let mut unquote = Unquoter::default();
            for piece in data.get(body..end).unwrap_or_default().chunks(block) {
                unquote.push(piece, &mut |o| content.extend_from_slice(o));
            }
            unquote.finish(&mut |o| content.extend_from_slice(o));
            ScannedMessage {
                start: span.start,
                body: span.body,
                end: span.end,
                next: span.next,
                content,
            }
        })
        .collect()
}
