//! Multi-line responses (RFC 1939 section 3): the body of RETR and TOP, in both directions.
//!
//! On the wire every line of a multi-line response ends in CRLF, a line that begins with the
//! termination octet '.' gets a second '.' in front ("byte-stuffing"), and the response ends with
//! the line ".". Stored messages (Maildir files) may use LF or CRLF line ends.
//!
//! - [`DotEncoder`] (server side) turns stored message bytes into that form as they are read, in
//!   chunks, and stops after the line limit of `TOP msg n`.
//! - [`WireSize`] counts the octets RETR will send for a message, for the sizes in STAT and
//!   LIST, which RFC 1939 counts as the message would be sent, with CRLF line ends.
//! - [`DotDecoder`] (client side) undoes the stuffing and finds the terminating line.
//!
//! What this module must never do: hold a message in memory. Each type keeps a few flags and
//! counters between chunks, so a RETR of any size costs the same memory as a NOOP.

/// The line that ends every multi-line response, after a body that ends with CRLF (a body
/// already in its wire form, sent as it is, is followed by this alone).
pub const TERMINATOR: &[u8] = b".\r\n";

/// Where the encoder is within the current line of the stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineSoFar {
    /// Nothing of the line yet: a '.' here is the termination octet and must be doubled.
    Start,
    /// The line so far is a single CR: if a LF follows, the line is empty (a CRLF alone), which
    /// for TOP ends the header.
    LoneCr,
    /// The line has content; `ends_cr` says whether its last octet was a CR, so that a CRLF split
    /// across two chunks is still recognised as one line end.
    Text { ends_cr: bool },
}

impl LineSoFar {
    /// The state after `bytes` (none of them a LF) were added to the line.
    fn after(self, bytes: &[u8]) -> Self {
        match (self, bytes) {
            (state, []) => state,
            (Self::Start, b"\r") => Self::LoneCr,
            (_, _) => Self::Text {
                ends_cr: bytes.last() == Some(&b'\r'),
            },
        }
    }

    /// True if the last octet of the line so far is a CR.
    fn ends_cr(self) -> bool {
        matches!(self, Self::LoneCr | Self::Text { ends_cr: true })
    }
}

/// Server side: turns stored message bytes into the body of a RETR or TOP response.
///
/// Feed the message with [`encode`](Self::encode) in chunks of any size, then call
/// [`finish`](Self::finish) for the terminating line. The encoder keeps no message data, only
/// where it is in the current line and, for TOP, how many body lines are still to be sent.
#[derive(Debug, Clone)]
pub struct DotEncoder {
    line: LineSoFar,
    /// Still in the header (only tracked for TOP): the header ends at the first empty line.
    in_header: bool,
    /// For TOP, the number of body lines still to be sent; `None` for RETR.
    body_lines_left: Option<u64>,
    /// The TOP limit was reached: everything else is ignored.
    done: bool,
}

impl DotEncoder {
    /// `top_lines`: None for RETR (whole message); Some(n) for TOP n: the header, the blank line
    /// that ends it, and at most n lines of the body. TOP n 0 sends the header and the blank line
    /// only. A message without an empty line is all header, and is sent whole.
    pub fn new(top_lines: Option<u64>) -> Self {
        Self {
            line: LineSoFar::Start,
            in_header: true,
            body_lines_left: top_lines,
            done: false,
        }
    }

    /// Encode a chunk of stored bytes, appending wire bytes to `out`.
    ///
    /// A bare LF becomes CRLF and a CRLF stays CRLF, even when the CR ends one chunk and the LF
    /// starts the next. A CR not followed by LF is content and is sent as it is. Every line
    /// beginning with '.' gets an extra '.', the first line too.
    ///
    /// Returns true when no more input is wanted (TOP limit reached); further input is then
    /// ignored, so the caller can stop reading the message file.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        if self.body_lines_left.is_none() {
            self.encode_whole(input, out);
            return false;
        }
        let mut rest = input;
        while !self.done && !rest.is_empty() {
            if self.line == LineSoFar::Start && rest.first() == Some(&b'.') {
                out.push(b'.');
            }
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                out.extend_from_slice(rest);
                self.line = self.line.after(rest);
                break;
            };
            let content = rest.get(..lf).unwrap_or_default();
            out.extend_from_slice(content);
            let line = self.line.after(content);
            if !line.ends_cr() {
                out.push(b'\r');
            }
            out.push(b'\n');
            self.line = LineSoFar::Start;
            self.end_of_line(matches!(line, LineSoFar::Start | LineSoFar::LoneCr));
            rest = rest.get(lf.saturating_add(1)..).unwrap_or_default();
        }
        self.done
    }

    /// RETR: no line limit, so lines need not be told apart, only the octets that change. The
    /// bytes between two insertions (a CR before a bare LF, a '.' after a line end) are copied
    /// in one run: a CRLF message without leading dots is one copy per chunk, an LF message one
    /// copy per line, found by one pass of memchr over the chunk.
    fn encode_whole(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // Room for the chunk and a CR every 32 octets; `extend` grows it if lines are shorter.
        out.reserve(input.len() + input.len() / 32 + 2);
        if self.line == LineSoFar::Start && input.first() == Some(&b'.') {
            out.push(b'.');
        }
        let mut run = 0; // the first octet of `input` not copied yet
        let mut saw_lf = false;
        for lf in memchr::memchr_iter(b'\n', input) {
            let cr_before = match lf.checked_sub(1).and_then(|i| input.get(i)) {
                Some(&b) => b == b'\r',
                // The LF opens the chunk: the line so far came with the previous chunk.
                None => self.line.ends_cr(),
            };
            if !cr_before {
                out.extend_from_slice(input.get(run..lf).unwrap_or_default());
                out.push(b'\r');
                run = lf;
            }
            saw_lf = true;
            if input.get(lf + 1) == Some(&b'.') {
                out.extend_from_slice(input.get(run..=lf).unwrap_or_default());
                out.push(b'.');
                run = lf + 1;
            }
        }
        let tail = input.get(run..).unwrap_or_default();
        out.extend_from_slice(tail);
        // What the last, unfinished line holds so far: the octets after the last LF.
        let last_line = match memchr::memrchr(b'\n', input) {
            Some(lf) => input.get(lf + 1..).unwrap_or_default(),
            None => input,
        };
        let before = if saw_lf { LineSoFar::Start } else { self.line };
        self.line = before.after(last_line);
    }

    /// Count a finished line against the TOP limit.
    fn end_of_line(&mut self, empty: bool) {
        let Some(left) = self.body_lines_left else {
            return;
        };
        if self.in_header {
            if empty {
                self.in_header = false;
                self.done = left == 0;
            }
        } else {
            let left = left.saturating_sub(1);
            self.body_lines_left = Some(left);
            self.done = left == 0;
        }
    }

    /// Finish the response: if the last line did not end in a newline, append CRLF; then append
    /// [`TERMINATOR`], the line that ends every multi-line response.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.line != LineSoFar::Start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(TERMINATOR);
    }
}

/// The exact octets RETR sends for a stored message, before dot-stuffing: bytes + one per bare
/// LF (a LF not preceded by CR).
///
/// This is the size STAT and LIST report (RFC 1939 counts a message as it would be sent, with
/// CRLF line ends). The CRLF added before the terminator for a message without a final newline
/// is NOT counted: it belongs to the terminator (this matches Dovecot's W= maildir size).
#[derive(Debug, Clone, Default)]
pub struct WireSize {
    total: u64,
    /// The last octet seen was a CR, so a LF at the start of the next chunk is not bare.
    prev_cr: bool,
}

impl WireSize {
    /// A count of zero octets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count the next chunk of the stored message.
    pub fn update(&mut self, chunk: &[u8]) {
        // usize is at most 64 bits on every target facteur supports, so this cast is lossless.
        let mut added = chunk.len() as u64;
        for &b in chunk {
            if b == b'\n' && !self.prev_cr {
                added = added.saturating_add(1);
            }
            self.prev_cr = b == b'\r';
        }
        self.total = self.total.saturating_add(added);
    }

    /// The wire size of everything counted so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Where the decoder is within the current line of a multi-line response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// At the start of a line: a '.' here is either stuffing or the terminator.
    LineStart,
    /// The line began with '.': a line end now means the terminator, anything else means the
    /// '.' was stuffing and is dropped.
    AfterDot,
    /// The line is ".\r": a LF now means the terminator; anything else means the CR is content.
    AfterDotCr,
    /// Inside a line: copy up to and including its LF.
    InLine,
    /// The terminating line has been read.
    Done,
}

/// Client side: un-stuffs a multi-line response body and finds the terminator line ".".
///
/// Feed it the bytes that follow the `+OK` line of a RETR or TOP response, in any chunking.
#[derive(Debug, Clone)]
pub struct DotDecoder {
    state: DecodeState,
}

impl Default for DotDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DotDecoder {
    /// A decoder at the start of a response body.
    pub fn new() -> Self {
        Self {
            state: DecodeState::LineStart,
        }
    }

    /// True once the terminating line has been read.
    pub fn is_done(&self) -> bool {
        self.state == DecodeState::Done
    }

    /// Decode bytes as received; appends the message bytes to `out`, with the line ends as the
    /// server sent them (CRLF, or a bare LF from a sloppy server, which is accepted too) and the
    /// leading '.' of stuffed lines removed.
    ///
    /// Returns (bytes consumed, done). When done, the consumed count stops right after the
    /// terminator's LF so the caller keeps what follows (pipelined responses). Until then all
    /// of `input` is consumed. Once done, nothing more is consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut consumed = 0;
        while self.state != DecodeState::Done {
            let Some(rest) = input.get(consumed..).filter(|r| !r.is_empty()) else {
                break;
            };
            match self.state {
                DecodeState::InLine => {
                    // Copy the rest of the line in one go: most of a message is here.
                    let (take, next) = match memchr::memchr(b'\n', rest) {
                        Some(lf) => (lf.saturating_add(1), DecodeState::LineStart),
                        None => (rest.len(), DecodeState::InLine),
                    };
                    out.extend_from_slice(rest.get(..take).unwrap_or_default());
                    consumed = consumed.saturating_add(take);
                    self.state = next;
                }
                state => {
                    let Some(&b) = rest.first() else { break };
                    consumed = consumed.saturating_add(1);
                    self.state = Self::step(state, b, out);
                }
            }
        }
        (consumed, self.state == DecodeState::Done)
    }

    /// One octet at the start of a line, where the termination octet matters.
    fn step(state: DecodeState, b: u8, out: &mut Vec<u8>) -> DecodeState {
        match (state, b) {
            (DecodeState::LineStart, b'.') => DecodeState::AfterDot,
            (DecodeState::AfterDot | DecodeState::AfterDotCr, b'\n') => DecodeState::Done,
            (DecodeState::AfterDot, b'\r') => DecodeState::AfterDotCr,
            (DecodeState::AfterDotCr, _) => {
                // ".\r" then something else: the '.' was stuffing, the CR is content.
                out.push(b'\r');
                Self::content(b, out)
            }
            (_, _) => Self::content(b, out),
        }
    }

    /// Copy one octet of a line's content (or its LF) and say where that leaves the line.
    fn content(b: u8, out: &mut Vec<u8>) -> DecodeState {
        out.push(b);
        if b == b'\n' {
            DecodeState::LineStart
        } else {
            DecodeState::InLine
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_chunks<'c>(top: Option<u64>, chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<u8> {
        let mut enc = DotEncoder::new(top);
        let mut out = Vec::new();
        for chunk in chunks {
            enc.encode(chunk, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    fn retr(msg: &[u8]) -> Vec<u8> {
        encode_chunks(None, [msg])
    }

    fn top(msg: &[u8], n: u64) -> Vec<u8> {
        encode_chunks(Some(n), [msg])
    }

    fn wire_size(msg: &[u8]) -> u64 {
        let mut w = WireSize::new();
        w.update(msg);
        w.total()
    }

    /// Decode `wire` in one go; returns (message, bytes consumed, done).
    fn decode(wire: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut dec = DotDecoder::new();
        let mut out = Vec::new();
        let (n, done) = dec.decode(wire, &mut out);
        (out, n, done)
    }

    /// The lines of a stored message: (content up to its LF, whether a LF ended it).
    fn stored_lines(msg: &[u8]) -> Vec<(&[u8], bool)> {
        let mut lines = Vec::new();
        let mut pieces = msg.split(|&b| b == b'\n').peekable();
        while let Some(piece) = pieces.next() {
            let has_lf = pieces.peek().is_some();
            if has_lf || !piece.is_empty() {
                lines.push((piece, has_lf));
            }
        }
        lines
    }

    /// One stored line as it goes on the wire, before stuffing: always ending in CRLF.
    fn wire_line(content: &[u8], has_lf: bool) -> Vec<u8> {
        let mut line = content.to_vec();
        if has_lf && content.last() == Some(&b'\r') {
            line.push(b'\n');
        } else {
            line.extend_from_slice(b"\r\n");
        }
        line
    }

    /// The rules of RFC 1939 for RETR and TOP written line by line, to check the encoder against.
    fn model_encode(msg: &[u8], top: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut in_header = true;
        let mut left = top;
        for (content, has_lf) in stored_lines(msg) {
            if top.is_some() && !in_header && left == Some(0) {
                break;
            }
            if content.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(&wire_line(content, has_lf));
            if has_lf && top.is_some() {
                if in_header {
                    in_header = !(content.is_empty() || content == b"\r");
                } else {
                    left = left.map(|n| n - 1);
                }
            }
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// The message as a client should get it back: every line ending in CRLF.
    fn crlf_normalised(msg: &[u8]) -> Vec<u8> {
        stored_lines(msg)
            .into_iter()
            .flat_map(|(content, has_lf)| wire_line(content, has_lf))
            .collect()
    }

    fn stuffing_dots(msg: &[u8]) -> usize {
        stored_lines(msg)
            .iter()
            .filter(|(content, _)| content.first() == Some(&b'.'))
            .count()
    }

    // ---- DotEncoder ----

    #[test]
    fn bare_lf_becomes_crlf() {
        assert_eq!(retr(b"a\nb\n"), b"a\r\nb\r\n.\r\n");
    }

    #[test]
    fn crlf_stays_crlf_and_mixed_line_ends_are_normalised() {
        assert_eq!(retr(b"a\r\nb\nc\r\n\n"), b"a\r\nb\r\nc\r\n\r\n.\r\n");
    }

    #[test]
    fn cr_split_from_its_lf_across_chunks() {
        let out = encode_chunks(None, [&b"a\r"[..], b"\nb\r", b"\n"]);
        assert_eq!(out, b"a\r\nb\r\n.\r\n");
    }

    #[test]
    fn lone_cr_is_content() {
        assert_eq!(retr(b"a\rb\n"), b"a\rb\r\n.\r\n");
        assert_eq!(encode_chunks(None, [&b"a\r"[..], b"b\n"]), b"a\rb\r\n.\r\n");
    }

    #[test]
    fn first_line_is_dot_stuffed() {
        assert_eq!(retr(b".hidden\n"), b"..hidden\r\n.\r\n");
    }

    #[test]
    fn later_lines_are_dot_stuffed() {
        assert_eq!(retr(b"a\n.b\r\n..c\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
    }

    #[test]
    fn dot_inside_a_line_is_not_stuffed() {
        assert_eq!(retr(b"a.b\n \n.\n"), b"a.b\r\n \r\n..\r\n.\r\n");
    }

    #[test]
    fn dot_alone_line_cannot_end_the_response_early() {
        let wire = retr(b"before\n.\nafter\n");
        assert_eq!(wire, b"before\r\n..\r\nafter\r\n.\r\n");
        let (msg, n, done) = decode(&wire);
        assert!(done);
        assert_eq!(n, wire.len());
        assert_eq!(msg, b"before\r\n.\r\nafter\r\n");
    }

    #[test]
    fn dot_at_start_of_next_chunk_is_stuffed() {
        let out = encode_chunks(None, [&b"a\n"[..], b".b\n"]);
        assert_eq!(out, b"a\r\n..b\r\n.\r\n");
    }

    #[test]
    fn message_without_final_newline_gets_crlf_before_terminator() {
        assert_eq!(retr(b"a\nlast"), b"a\r\nlast\r\n.\r\n");
        assert_eq!(retr(b"a\n."), b"a\r\n..\r\n.\r\n");
        assert_eq!(retr(b"a\r"), b"a\r\r\n.\r\n");
    }

    #[test]
    fn empty_message_is_just_the_terminator() {
        assert_eq!(retr(b""), b".\r\n");
        assert_eq!(top(b"", 5), b".\r\n");
        assert_eq!(encode_chunks(None, [&b""[..], b""]), b".\r\n");
    }

    const MSG: &[u8] = b"From: a\nSubject: s\n\nline 1\n.line 2\nline 3\n";

    #[test]
    fn retr_sends_everything() {
        assert_eq!(
            retr(MSG),
            b"From: a\r\nSubject: s\r\n\r\nline 1\r\n..line 2\r\nline 3\r\n.\r\n"
        );
    }

    #[test]
    fn top_zero_sends_header_and_blank_line_only() {
        assert_eq!(top(MSG, 0), b"From: a\r\nSubject: s\r\n\r\n.\r\n");
        assert_eq!(top(b"From: a\r\n\r\nbody\r\n", 0), b"From: a\r\n\r\n.\r\n");
    }

    #[test]
    fn top_counts_body_lines_only() {
        assert_eq!(top(MSG, 1), b"From: a\r\nSubject: s\r\n\r\nline 1\r\n.\r\n");
        assert_eq!(
            top(MSG, 2),
            b"From: a\r\nSubject: s\r\n\r\nline 1\r\n..line 2\r\n.\r\n"
        );
    }

    #[test]
    fn top_more_lines_than_the_body_sends_everything() {
        assert_eq!(top(MSG, 1000), retr(MSG));
        assert_eq!(top(MSG, u64::MAX), retr(MSG));
    }

    #[test]
    fn top_on_message_without_blank_line_sends_it_all_as_header() {
        let msg = b"From: a\nSubject: s\nno blank line here\n";
        assert_eq!(top(msg, 0), retr(msg));
        assert_eq!(top(b"From: a", 0), b"From: a\r\n.\r\n");
    }

    #[test]
    fn top_blank_line_may_be_crlf_split_across_chunks() {
        let out = encode_chunks(Some(0), [&b"H: v\r\n\r"[..], b"\nbody\r\n"]);
        assert_eq!(out, b"H: v\r\n\r\n.\r\n");
    }

    #[test]
    fn top_line_of_whitespace_does_not_end_the_header() {
        assert_eq!(top(b"H: v\n \nx\n", 0), b"H: v\r\n \r\nx\r\n.\r\n");
        assert_eq!(top(b"H: v\n\r\r\nx\n", 0), b"H: v\r\n\r\r\nx\r\n.\r\n");
    }

    #[test]
    fn top_body_line_without_final_newline_is_sent() {
        assert_eq!(top(b"H: v\n\nlast", 1), b"H: v\r\n\r\nlast\r\n.\r\n");
    }

    #[test]
    fn encode_reports_when_top_limit_is_reached_and_ignores_the_rest() {
        let mut enc = DotEncoder::new(Some(1));
        let mut out = Vec::new();
        assert!(!enc.encode(b"H: v\n", &mut out));
        assert!(!enc.encode(b"\n", &mut out));
        assert!(enc.encode(b"one\ntwo\n", &mut out));
        assert!(enc.encode(b"three\n", &mut out));
        enc.finish(&mut out);
        assert_eq!(out, b"H: v\r\n\r\none\r\n.\r\n");
    }

    #[test]
    fn retr_never_reports_done() {
        let mut enc = DotEncoder::new(None);
        let mut out = Vec::new();
        assert!(!enc.encode(b"H: v\n\nbody\n", &mut out));
    }

    // ---- WireSize ----

    #[test]
    fn wire_size_counts_one_extra_octet_per_bare_lf() {
        assert_eq!(wire_size(b""), 0);
        assert_eq!(wire_size(b"a\n"), 3);
        assert_eq!(wire_size(b"a\r\n"), 3);
        assert_eq!(wire_size(b"a\nb\r\n\n"), 8);
        assert_eq!(wire_size(b"a\rb"), 3);
    }

    #[test]
    fn wire_size_does_not_count_the_crlf_added_before_the_terminator() {
        assert_eq!(wire_size(b"a\nlast"), 7);
        assert_eq!(retr(b"a\nlast").len(), 7 + b"\r\n.\r\n".len());
    }

    #[test]
    fn wire_size_sees_crlf_split_across_chunks() {
        let mut w = WireSize::new();
        w.update(b"a\r");
        w.update(b"\n");
        w.update(b"\n");
        assert_eq!(w.total(), 5);
        assert_eq!(WireSize::default().total(), 0);
    }

    // ---- DotDecoder ----

    #[test]
    fn decoder_unstuffs_and_stops_after_terminator() {
        let wire = b"..a\r\nb\r\n...\r\n.\r\n+OK next\r\n";
        let (msg, n, done) = decode(wire);
        assert!(done);
        assert_eq!(msg, b".a\r\nb\r\n..\r\n");
        assert_eq!(&wire[n..], b"+OK next\r\n");
    }

    #[test]
    fn decoder_accepts_bare_lf() {
        let (msg, n, done) = decode(b"a\n..b\n.\nrest");
        assert!(done);
        assert_eq!(n, 8);
        assert_eq!(msg, b"a\n.b\n");
    }

    #[test]
    fn decoder_empty_body() {
        assert_eq!(decode(b".\r\n"), (Vec::new(), 3, true));
        assert_eq!(decode(b""), (Vec::new(), 0, false));
    }

    #[test]
    fn decoder_dot_cr_not_followed_by_lf_is_content() {
        let (msg, _, done) = decode(b".\rx\r\n.\r\n");
        assert!(done);
        assert_eq!(msg, b"\rx\r\n");
        let (msg, _, done) = decode(b".\r\r\n.\r\n");
        assert!(done);
        assert_eq!(msg, b"\r\r\n");
    }

    #[test]
    fn decoder_dot_in_mid_line_is_content() {
        let (msg, _, done) = decode(b"a.\r\n.b.\r\n.\r\n");
        assert!(done);
        assert_eq!(msg, b"a.\r\nb.\r\n");
    }

    #[test]
    fn decoder_terminator_split_across_chunks() {
        let mut dec = DotDecoder::new();
        let mut out = Vec::new();
        assert_eq!(dec.decode(b"x\r\n.", &mut out), (4, false));
        assert_eq!(dec.decode(b"\r", &mut out), (1, false));
        assert!(!dec.is_done());
        assert_eq!(dec.decode(b"\n+OK", &mut out), (1, true));
        assert!(dec.is_done());
        assert_eq!(out, b"x\r\n");
        // Once done, nothing more is consumed.
        assert_eq!(dec.decode(b"+OK", &mut out), (0, true));
        assert_eq!(out, b"x\r\n");
    }

    // ---- Properties ----

    fn message() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                4 => Just(b'a'),
                1 => Just(b' '),
                3 => Just(b'\n'),
                2 => Just(b'\r'),
                2 => Just(b'.'),
                1 => Just(0u8),
            ],
            0..300,
        )
    }

    fn top_lines() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![Just(None), (0u64..6).prop_map(Some)]
    }

    /// Cut `bytes` at the given points (taken modulo its length, sorted, repeats allowed).
    fn split_at_points(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts {
            chunks.push(bytes[start..cut].to_vec());
            start = cut;
        }
        chunks.push(bytes[start..].to_vec());
        chunks
    }

    fn points() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(any::<usize>(), 0..20)
    }

    proptest! {
        #[test]
        fn encoder_matches_the_line_by_line_model(msg in message(), top in top_lines()) {
            prop_assert_eq!(encode_chunks(top, [&msg[..]]), model_encode(&msg, top));
        }

        #[test]
        fn encoder_output_does_not_depend_on_chunking(
            msg in message(),
            top in top_lines(),
            points in points(),
        ) {
            let whole = encode_chunks(top, [&msg[..]]);
            let chunks = split_at_points(&msg, &points);
            prop_assert_eq!(encode_chunks(top, chunks.iter().map(Vec::as_slice)), whole);
        }

        #[test]
        fn wire_size_is_what_retr_sends_without_stuffing_and_terminator(
            msg in message(),
            points in points(),
        ) {
            let chunks = split_at_points(&msg, &points);
            let mut size = WireSize::new();
            for chunk in &chunks {
                size.update(chunk);
            }
            let wire = encode_chunks(None, chunks.iter().map(Vec::as_slice));
            let ends_in_newline = msg.is_empty() || msg.last() == Some(&b'\n');
            let terminator = if ends_in_newline { 3 } else { 5 };
            let expected = wire.len() - stuffing_dots(&msg) - terminator;
            prop_assert_eq!(size.total(), expected as u64);
        }

        #[test]
        fn encode_then_decode_gives_the_crlf_normalised_message(
            msg in message(),
            points in points(),
            trailer in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut wire = retr(&msg);
            let body_len = wire.len();
            wire.extend_from_slice(&trailer);
            let mut dec = DotDecoder::new();
            let mut out = Vec::new();
            let mut consumed = 0;
            let mut done = false;
            for chunk in split_at_points(&wire, &points) {
                if done {
                    break;
                }
                let (n, d) = dec.decode(&chunk, &mut out);
                prop_assert!(n <= chunk.len());
                prop_assert!(d || n == chunk.len());
                consumed += n;
                done = d;
            }
            prop_assert!(done);
            prop_assert_eq!(consumed, body_len);
            prop_assert_eq!(out, crlf_normalised(&msg));
        }

        #[test]
        fn decoder_never_panics_and_chunking_does_not_matter(
            wire in proptest::collection::vec(
                prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'x')],
                0..200,
            ),
            points in points(),
        ) {
            let (whole, whole_n, whole_done) = decode(&wire);
            let mut dec = DotDecoder::new();
            let mut out = Vec::new();
            let mut consumed = 0;
            for chunk in split_at_points(&wire, &points) {
                let (n, _) = dec.decode(&chunk, &mut out);
                consumed += n;
                if dec.is_done() {
                    break;
                }
            }
            prop_assert_eq!(out, whole);
            prop_assert_eq!(consumed, whole_n);
            prop_assert_eq!(dec.is_done(), whole_done);
        }
    }
}
