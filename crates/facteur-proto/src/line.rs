//! Bounded line framing: cuts the bytes a POP3 client sends into command lines.
//!
//! POP3 commands are lines ended by CRLF (RFC 1939 section 3), and RFC 2449 caps a command line
//! at 255 octets including the CRLF. [`LineFramer`] is a push parser: the connection driver hands
//! it whatever bytes arrived, in any chunking, and gets complete lines back one at a time.
//!
//! What this module must never do:
//! - hold more than `max_len` bytes, whatever the client sends: a line that outgrows the cap is
//!   discarded as it arrives, and reported once, as [`Frame::TooLong`], when its LF finally
//!   arrives, so the session can answer `-ERR` and go on with the next line;
//! - consume bytes beyond the end of the line it returns: after `STLS` the bytes that follow the
//!   command line were sent in clear text and must be dropped by the caller, not parsed
//!   (RFC 2595 section 4), so the caller must be able to see where that line ended;
//! - judge the content of a line. NUL octets and lone CRs are passed through untouched; the
//!   command parser rejects what POP3 does not allow.

/// RFC 2449 section 4: a command line is at most 255 octets including the CRLF.
pub const MAX_COMMAND_LINE: usize = 255;

/// The capacity the line buffer starts with once the first byte of a line arrives: enough for
/// every ordinary POP3 command, small enough that thousands of idle sessions cost little.
const FIRST_CAPACITY: usize = 64;

/// One result of [`LineFramer::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its terminator (CRLF, or a bare LF which is also accepted).
    ///
    /// The bytes are not checked: a NUL or a lone CR inside the line is passed through as it
    /// is, and the command parser rejects it.
    Line(&'a [u8]),
    /// A line longer than the cap ended; its bytes were discarded (discard-to-LF after overflow).
    TooLong,
}

/// Cuts a byte stream into lines of at most `max_len` octets, terminator included.
///
/// The length of a line is counted as it was received: its content, the CR if there was one,
/// and the LF. So with the RFC 2449 cap of 255, a line of 253 octets plus CRLF is accepted, and
/// one of 254 octets plus CRLF is [`Frame::TooLong`].
#[derive(Debug, Clone)]
pub struct LineFramer {
    /// The current line so far, without its LF (a CR before the LF is kept until the LF comes,
    /// because until then it may be a lone CR that belongs to the line). Never longer, and never
    /// with a larger capacity, than `max_len`.
    buf: Vec<u8>,
    /// The cap on a line, terminator included.
    max_len: usize,
    /// The current line grew past `max_len`: its bytes are being dropped until its LF.
    overflow: bool,
    /// `buf` holds a line already returned by `push`; the next call starts a new line.
    delivered: bool,
}

impl Default for LineFramer {
    /// A framer for POP3 command lines, capped at [`MAX_COMMAND_LINE`].
    fn default() -> Self {
        Self::new(MAX_COMMAND_LINE)
    }
}

impl LineFramer {
    /// A framer that accepts lines of at most `max_len` octets, counting the CRLF (or bare LF).
    ///
    /// Nothing is allocated until the first byte of a line arrives.
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_len,
            overflow: false,
            delivered: false,
        }
    }

    /// Gives the buffer's memory back when it holds no part of a line (the last one was
    /// delivered, or none has started): for a connection about to wait a long time for its
    /// peer. A line begun is kept.
    pub fn release_idle(&mut self) {
        if self.delivered || self.buf.is_empty() {
            self.buf = Vec::new();
            self.delivered = false;
        }
    }

    /// The current cap on a line, terminator included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Consume bytes from `input` until one frame completes or input ends.
    ///
    /// Returns (bytes consumed, `Some(frame)` if a frame completed). Never consumes past the end
    /// of the frame's LF, so the caller can keep the remaining bytes (needed for STLS: bytes after
    /// the STLS line must be discarded by the caller). When no frame completes, all of `input`
    /// was consumed and is remembered (or, past the cap, dropped) until the line ends.
    pub fn push<'a>(&'a mut self, input: &[u8]) -> (usize, Option<Frame<'a>>) {
        if self.delivered {
            self.buf.clear();
            self.delivered = false;
        }
        let lf = memchr::memchr(b'\n', input);
        let (content, consumed) = match lf {
            Some(i) => (input.get(..i).unwrap_or_default(), i.saturating_add(1)),
            None => (input, input.len()),
        };
        self.take(content);
        if lf.is_none() {
            return (consumed, None);
        }
        // `take` keeps the content within the cap; the one case it cannot see is an empty line
        // under a cap of 0, where the LF alone is already too long.
        if self.overflow || self.buf.len() >= self.max_len {
            self.overflow = false;
            self.buf.clear();
            return (consumed, Some(Frame::TooLong));
        }
        self.delivered = true;
        let line = match self.buf.split_last() {
            Some((b'\r', before_cr)) => before_cr,
            _ => self.buf.as_slice(),
        };
        (consumed, Some(Frame::Line(line)))
    }

    /// Drop any partial line (used after STLS so no half-read line survives the TLS handshake).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.overflow = false;
        self.delivered = false;
    }

    /// True while a partial line (or an overflow being discarded) is pending.
    pub fn has_partial(&self) -> bool {
        self.overflow || (!self.delivered && !self.buf.is_empty())
    }

    /// Change the cap on a line, for example to raise it for SASL continuation lines (RFC 5034
    /// allows longer ones) and lower it again afterwards.
    ///
    /// A partial line already longer than the new cap is treated as an overflow: it is dropped
    /// and reported as [`Frame::TooLong`] when its LF arrives.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
        if self.delivered {
            self.buf.clear();
            self.delivered = false;
        }
        if !self.overflow && self.buf.len().saturating_add(1) > max_len && !self.buf.is_empty() {
            self.overflow = true;
            self.buf.clear();
        }
        if self.buf.capacity() > max_len {
            self.buf.shrink_to(max_len);
        }
    }

    /// Add bytes of the current line (no LF among them) to the buffer, or drop them once the
    /// line is known to be too long.
    fn take(&mut self, content: &[u8]) {
        if self.overflow || content.is_empty() {
            return;
        }
        // The line still needs at least its LF, so it is already too long if its content so far
        // plus one octet passes the cap.
        let needed = self.buf.len().saturating_add(content.len());
        if needed.saturating_add(1) > self.max_len {
            self.overflow = true;
            self.buf.clear();
            return;
        }
        if needed > self.buf.capacity() {
            // Grow by doubling like Vec would, but never past the cap, so the memory a session
            // holds for its input is bounded by `max_len` and not by what the allocator rounds to.
            let target = self
                .buf
                .capacity()
                .saturating_mul(2)
                .max(FIRST_CAPACITY)
                .max(needed)
                .min(self.max_len);
            self.buf
                .reserve_exact(target.saturating_sub(self.buf.len()));
        }
        self.buf.extend_from_slice(content);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_framer_holds_no_buffer_but_keeps_a_line_begun() {
        let mut f = LineFramer::new(64);
        let (_, frame) = f.push(b"NOOP\r\n");
        assert_eq!(frame, Some(Frame::Line(b"NOOP")));
        f.release_idle();
        assert_eq!(f.buf.capacity(), 0);
        assert_eq!(f.push(b"STAT\r\n").1, Some(Frame::Line(b"STAT")));
        assert_eq!(f.push(b"RE").1, None);
        f.release_idle();
        assert_eq!(f.push(b"TR 1\r\n").1, Some(Frame::Line(b"RETR 1")));
    }
    use proptest::prelude::*;

    /// What the tests compare: a frame that owns its bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Line(Vec<u8>),
        TooLong,
    }

    fn own(frame: Frame<'_>) -> Owned {
        match frame {
            Frame::Line(l) => Owned::Line(l.to_vec()),
            Frame::TooLong => Owned::TooLong,
        }
    }

    /// Feed `chunks` one after the other, draining each one completely, and collect the frames.
    fn feed_chunks<'c>(
        framer: &mut LineFramer,
        chunks: impl IntoIterator<Item = &'c [u8]>,
    ) -> Vec<Owned> {
        let mut frames = Vec::new();
        for chunk in chunks {
            let mut rest = chunk;
            loop {
                let (n, frame) = framer.push(rest);
                assert!(n <= rest.len(), "consumed more than it was given");
                let got = frame.map(own);
                assert!(framer.buf.len() <= framer.max_len);
                assert!(framer.buf.capacity() <= framer.max_len);
                rest = &rest[n..];
                match got {
                    Some(f) => frames.push(f),
                    None => {
                        assert!(rest.is_empty(), "stopped early without a frame");
                        break;
                    }
                }
            }
        }
        frames
    }

    fn feed_all(max_len: usize, bytes: &[u8]) -> Vec<Owned> {
        feed_chunks(&mut LineFramer::new(max_len), [bytes])
    }

    fn line(s: &[u8]) -> Owned {
        Owned::Line(s.to_vec())
    }

    #[test]
    fn crlf_line_is_returned_without_terminator() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        let (n, frame) = f.push(b"USER alice\r\n");
        assert_eq!(n, 12);
        assert_eq!(frame, Some(Frame::Line(b"USER alice")));
        assert!(!f.has_partial());
    }

    #[test]
    fn bare_lf_is_accepted() {
        assert_eq!(
            feed_all(255, b"STAT\nNOOP\n"),
            [line(b"STAT"), line(b"NOOP")]
        );
    }

    #[test]
    fn empty_lines_are_lines() {
        assert_eq!(feed_all(255, b"\r\n\n"), [line(b""), line(b"")]);
    }

    #[test]
    fn push_stops_after_the_first_lf() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        let input = b"STLS\r\nUSER mallory\r\n";
        let (n, frame) = f.push(input);
        assert_eq!(frame, Some(Frame::Line(b"STLS")));
        assert_eq!(&input[n..], b"USER mallory\r\n");
        assert!(!f.has_partial());
    }

    #[test]
    fn incomplete_line_consumes_everything_and_waits() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        assert_eq!(f.push(b"RETR "), (5, None));
        assert!(f.has_partial());
        assert_eq!(f.push(b"1\r\n"), (3, Some(Frame::Line(b"RETR 1"))));
        assert!(!f.has_partial());
    }

    #[test]
    fn empty_push_yields_nothing() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        assert_eq!(f.push(b""), (0, None));
        assert!(!f.has_partial());
    }

    #[test]
    fn crlf_split_between_chunks() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        assert_eq!(f.push(b"QUIT\r"), (5, None));
        assert!(f.has_partial());
        assert_eq!(f.push(b"\n"), (1, Some(Frame::Line(b"QUIT"))));
    }

    #[test]
    fn lone_cr_stays_in_the_line() {
        assert_eq!(
            feed_all(255, b"A\rB\r\n\rC\n\r\r\n"),
            [line(b"A\rB"), line(b"\rC"), line(b"\r")]
        );
    }

    #[test]
    fn lone_cr_split_from_following_byte_stays() {
        let frames = feed_chunks(&mut LineFramer::new(255), [&b"A\r"[..], b"B\r", b"\n"]);
        assert_eq!(frames, [line(b"A\rB")]);
    }

    #[test]
    fn nul_is_passed_through() {
        assert_eq!(feed_all(255, b"US\0ER\r\n"), [line(b"US\0ER")]);
    }

    #[test]
    fn exactly_at_the_limit_is_accepted() {
        let mut input = vec![b'A'; MAX_COMMAND_LINE - 2];
        input.extend_from_slice(b"\r\n");
        assert_eq!(input.len(), 255);
        assert_eq!(
            feed_all(MAX_COMMAND_LINE, &input),
            [Owned::Line(vec![b'A'; 253])]
        );
    }

    #[test]
    fn one_past_the_limit_is_too_long() {
        let mut input = vec![b'A'; MAX_COMMAND_LINE - 1];
        input.extend_from_slice(b"\r\n");
        assert_eq!(input.len(), 256);
        assert_eq!(feed_all(MAX_COMMAND_LINE, &input), [Owned::TooLong]);
    }

    #[test]
    fn bare_lf_counts_one_octet_for_its_terminator() {
        let mut ok = vec![b'A'; 254];
        ok.push(b'\n');
        assert_eq!(feed_all(255, &ok), [Owned::Line(vec![b'A'; 254])]);
        let mut long = vec![b'A'; 255];
        long.push(b'\n');
        assert_eq!(feed_all(255, &long), [Owned::TooLong]);
    }

    #[test]
    fn overflow_reports_once_at_the_lf_then_goes_on() {
        let mut f = LineFramer::new(10);
        // Far past the cap, in several pieces: nothing is reported before the LF.
        for _ in 0..100 {
            assert_eq!(f.push(&[b'X'; 1000]), (1000, None));
            assert!(f.has_partial());
            assert!(f.buf.capacity() <= 10);
        }
        let (n, frame) = f.push(b"XX\r\nNOOP\r\n");
        assert_eq!((n, frame), (4, Some(Frame::TooLong)));
        assert!(!f.has_partial());
        assert_eq!(f.push(b"NOOP\r\n"), (6, Some(Frame::Line(b"NOOP"))));
    }

    #[test]
    fn overflow_in_one_chunk_yields_exactly_one_too_long() {
        let mut input = vec![b'B'; 600];
        input.extend_from_slice(b"\r\nSTAT\r\n");
        assert_eq!(feed_all(255, &input), [Owned::TooLong, line(b"STAT")]);
    }

    #[test]
    fn clear_drops_a_partial_line() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        assert_eq!(f.push(b"USER eve"), (8, None));
        assert!(f.has_partial());
        f.clear();
        assert!(!f.has_partial());
        assert_eq!(f.push(b"CAPA\r\n"), (6, Some(Frame::Line(b"CAPA"))));
    }

    #[test]
    fn clear_drops_a_pending_overflow() {
        let mut f = LineFramer::new(8);
        assert_eq!(f.push(b"0123456789"), (10, None));
        assert!(f.has_partial());
        f.clear();
        assert!(!f.has_partial());
        assert_eq!(f.push(b"NOOP\r\n"), (6, Some(Frame::Line(b"NOOP"))));
    }

    #[test]
    fn idle_framer_allocates_nothing() {
        let f = LineFramer::new(MAX_COMMAND_LINE);
        assert_eq!(f.buf.capacity(), 0);
        assert_eq!(LineFramer::default().max_len(), MAX_COMMAND_LINE);
    }

    #[test]
    fn capacity_stays_small_for_short_lines() {
        let mut f = LineFramer::new(10_000);
        assert_eq!(f.push(b"NOOP\r\n").0, 6);
        assert!(f.buf.capacity() <= FIRST_CAPACITY);
    }

    #[test]
    fn raised_limit_accepts_longer_lines() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        f.set_max_len(1000);
        let mut input = vec![b'Z'; 900];
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            feed_chunks(&mut f, [&input[..]]),
            [Owned::Line(vec![b'Z'; 900])]
        );
        f.set_max_len(MAX_COMMAND_LINE);
        assert!(f.buf.capacity() <= MAX_COMMAND_LINE);
        assert_eq!(feed_chunks(&mut f, [&input[..]]), [Owned::TooLong]);
    }

    #[test]
    fn lowered_limit_turns_a_long_partial_into_an_overflow() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        assert_eq!(f.push(b"0123456789").0, 10);
        f.set_max_len(5);
        assert!(f.has_partial());
        assert!(f.buf.capacity() <= 5);
        assert_eq!(f.push(b"\r\nNOOP\r\n"), (2, Some(Frame::TooLong)));
    }

    #[test]
    fn lowered_limit_keeps_a_short_partial() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        assert_eq!(f.push(b"ab").0, 2);
        f.set_max_len(5);
        assert_eq!(f.push(b"\r\n"), (2, Some(Frame::Line(b"ab"))));
    }

    #[test]
    fn zero_limit_rejects_every_line() {
        assert_eq!(feed_all(0, b"\nA\r\n"), [Owned::TooLong, Owned::TooLong]);
    }

    #[test]
    fn delivered_line_is_not_a_partial() {
        let mut f = LineFramer::new(MAX_COMMAND_LINE);
        assert!(f.push(b"NOOP\r\n").1.is_some());
        assert!(!f.has_partial());
        f.set_max_len(2);
        assert!(!f.has_partial());
    }

    /// A session's worth of commands, some pipelined, one too long, with odd line ends.
    fn script() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(b"CAPA\r\nUSER alice\r\nPASS s3cr\0t\r\nSTAT\nLIST\r\nLIST 1\r\n");
        s.extend_from_slice(b"UIDL\r\nRETR 1\r\nTOP 1 0\r\n\r\nDELE 2\r\nNOOP \r \r\n");
        s.extend_from_slice(b"XTND ");
        s.extend(std::iter::repeat_n(b'Q', 700));
        s.extend_from_slice(b"\r\n");
        let mut exact = vec![b'E'; MAX_COMMAND_LINE - 2];
        exact.extend_from_slice(b"\r\n");
        s.extend_from_slice(&exact);
        s.extend_from_slice(b"RSET\r\nQUIT\r\nHALF");
        s
    }

    #[test]
    fn script_in_every_chunk_size_gives_the_same_frames() {
        let script = script();
        let whole = feed_all(MAX_COMMAND_LINE, &script);
        assert_eq!(whole.len(), 16);
        assert_eq!(whole[2], line(b"PASS s3cr\0t"));
        assert_eq!(whole[9], line(b""));
        assert_eq!(whole[11], line(b"NOOP \r "));
        assert_eq!(whole[12], Owned::TooLong);
        assert_eq!(whole[13], Owned::Line(vec![b'E'; MAX_COMMAND_LINE - 2]));
        assert_eq!(whole[15], line(b"QUIT"));
        for size in 1..=512 {
            let mut f = LineFramer::new(MAX_COMMAND_LINE);
            let frames = feed_chunks(&mut f, script.chunks(size));
            assert_eq!(frames, whole, "chunk size {size}");
            assert!(f.has_partial(), "chunk size {size}: HALF should be pending");
        }
    }

    fn small_alphabet() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(b'A'), Just(b' '), Just(b'\r'), Just(b'\n'), Just(0u8)],
            0..400,
        )
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

    /// The rules of this module written the slow, obvious way, to check the framer against.
    fn model(max_len: usize, bytes: &[u8]) -> Vec<Owned> {
        let mut frames = Vec::new();
        let mut pieces = bytes.split(|&b| b == b'\n').peekable();
        while let Some(piece) = pieces.next() {
            if pieces.peek().is_none() {
                break; // no LF after it: still a partial line
            }
            if piece.len() + 1 > max_len {
                frames.push(Owned::TooLong);
            } else {
                frames.push(Owned::Line(
                    piece.strip_suffix(b"\r").unwrap_or(piece).to_vec(),
                ));
            }
        }
        frames
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_frames(
            bytes in small_alphabet(),
            points in proptest::collection::vec(any::<usize>(), 0..20),
            max_len in 0usize..40,
        ) {
            let whole = feed_all(max_len, &bytes);
            let chunks = split_at_points(&bytes, &points);
            let mut f = LineFramer::new(max_len);
            let chunked = feed_chunks(&mut f, chunks.iter().map(Vec::as_slice));
            prop_assert_eq!(&chunked, &whole);
            prop_assert_eq!(&whole, &model(max_len, &bytes));
            let ends_mid_line = bytes.last().is_some_and(|&b| b != b'\n');
            prop_assert_eq!(f.has_partial(), ends_mid_line);
        }

        #[test]
        fn never_panics_and_stays_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            max_len in 0usize..300,
            size in 1usize..64,
        ) {
            let mut f = LineFramer::new(max_len);
            let frames = feed_chunks(&mut f, bytes.chunks(size));
            prop_assert_eq!(frames, model(max_len, &bytes));
        }
    }
}
