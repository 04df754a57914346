//! What a Maildir file name says, and counting a message's wire size.
//!
//! A Maildir file name is `<base>[:2,<flags>]`. The base name is chosen once by the delivery agent
//! and never changes; the flags after `:2,` change whenever a mail reader marks the message (Seen,
//! Replied...). So everything that must be stable (the unique-id, the delivery order) is derived
//! from the base name alone. The base may carry `,S=<size>` and `,W=<wire size>` fields (Dovecot
//! and facteur's own delivery write them).

use std::cmp::Ordering;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use facteur_proto::encoding::hex;
use facteur_proto::types::parse_decimal;
use facteur_proto::Uidl;
use sha2::{Digest, Sha256};

/// The size of the blocks messages are read in (never the whole message at once).
pub(crate) const BLOCK_SIZE: usize = 64 * 1024;

/// The base name: everything before the first ':' (the info separator).
pub(crate) fn base_name(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == b':') {
        Some(colon) => &name[..colon],
        None => name,
    }
}

/// True for a name that may be a message file: not empty, not a dotfile (Maildir++ folders,
/// editors' and other programs' temporary files), and no '/' or NUL (never produced by readdir,
/// but the index file is checked with this too).
pub(crate) fn is_message_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b[0] != b'.' && !b.contains(&b'/') && !b.contains(&0)
}

/// The name a file of `new/` gets in `cur/`: the empty `:2,` info is added, unless the name has
/// an info part already.
pub(crate) fn cur_name_for_new(name: &OsStr) -> OsString {
    let mut b = name.as_bytes().to_vec();
    if !b.contains(&b':') {
        b.extend_from_slice(b":2,");
    }
    OsString::from_vec(b)
}

/// The info part of a name (from the ':' on), or nothing.
pub(crate) fn info_part(name: &[u8]) -> &[u8] {
    &name[base_name(name).len()..]
}

/// The prefix of a hashed unique-id.
const HASHED_PREFIX: &str = "H";
/// How many hex digits of SHA-256 a hashed unique-id keeps (160 bits).
const HASHED_HEX_DIGITS: usize = 40;

/// The unique-id of a message whose base name is `base`.
///
/// A base name that is already a valid unique-id (1 to 70 octets in 0x21..=0x7E, true of every
/// name Postfix, Dovecot and facteur write with a short host name) is used as it is, so a client
/// sees the same unique-id another Maildir POP3 server would show. Any other base name (too long,
/// or holding spaces or non-ASCII octets) is hashed: "H" followed by the first 40 hex digits of
/// SHA-256 of the base name.
///
/// Why the two kinds never collide: Maildir base names start with the decimal delivery time
/// (the Maildir specification and every delivery agent do so), so no conforming name starts with
/// "H" and the hashed ids live in a namespace of their own. Even a hand-made file literally named
/// `H<40 hex digits>` would collide only if those digits were the SHA-256 prefix of another base
/// name in the same maildrop, a 160-bit second preimage. Two long names collide with each other
/// with the same 2^-160 odds. And any collision that does happen is caught when the snapshot is
/// taken (the later file is renamed to a fresh unique name), so a unique-id is never shared.
pub(crate) fn uid_for_base(base: &[u8]) -> Uidl {
    if let Some(uid) = Uidl::from_bytes(base) {
        return uid;
    }
    let digest = Sha256::digest(base);
    let s = format!("{HASHED_PREFIX}{}", hex(&digest[..HASHED_HEX_DIGITS / 2]));
    // ok: 41 characters from [H0-9a-f], always a valid unique-id.
    Uidl::new(s).expect("a hashed unique-id is 41 printable characters")
}

/// The wire size a `,W=<n>` field of the base name records, if there is a well-formed one.
pub(crate) fn wire_size_field(base: &[u8]) -> Option<u64> {
    base.split(|&b| b == b',')
        .skip(1)
        .find_map(|field| field.strip_prefix(b"W="))
        .and_then(parse_decimal)
}

/// The size a `,S=<n>` field of the base name records, if there is a well-formed one.
pub(crate) fn size_field(base: &[u8]) -> Option<u64> {
    base.split(|&b| b == b',')
        .skip(1)
        .find_map(|field| field.strip_prefix(b"S="))
        .and_then(parse_decimal)
}

/// The field facteur's delivery adds to a base name when the file is its own POP3 wire form:
/// every line end CRLF, no line starting with '.', and a line end at the end (see
/// [`crate::LineEnds::Crlf`]). Other Maildir readers ignore fields they do not know.
pub(crate) const WIRE_FORM_FIELD: &str = "P=1";

/// True when the base name carries [`WIRE_FORM_FIELD`].
pub(crate) fn has_wire_form_field(base: &[u8]) -> bool {
    base.split(|&b| b == b',')
        .skip(1)
        .any(|field| field == WIRE_FORM_FIELD.as_bytes())
}

/// Turns a message into the form RETR sends (every LF not preceded by CR gets one) as it
/// streams into a file, and notes whether the result is its own wire form: no line starting
/// with '.' and a line end at the end.
pub(crate) struct CrlfWriter {
    /// The last octet given was a CR (a LF first in the next block is not bare).
    last_was_cr: bool,
    /// The next octet starts a line.
    at_line_start: bool,
    /// Some line starts with '.' (RETR must stuff it).
    dot_line: bool,
    /// Octets given so far.
    given: u64,
    /// Octets written so far.
    written: u64,
    /// The converted block.
    out: Vec<u8>,
}

impl Default for CrlfWriter {
    fn default() -> Self {
        Self {
            last_was_cr: false,
            at_line_start: true,
            dot_line: false,
            given: 0,
            written: 0,
            out: Vec::new(),
        }
    }
}

impl CrlfWriter {
    /// Converts `block`, the next octets of the message, and returns what to write.
    pub(crate) fn convert(&mut self, block: &[u8]) -> &[u8] {
        self.out.clear();
        if block.is_empty() {
            return &self.out;
        }
        if self.at_line_start && block.first() == Some(&b'.') {
            self.dot_line = true;
        }
        let mut start = 0;
        for lf in memchr::memchr_iter(b'\n', block) {
            let after_cr = match lf.checked_sub(1) {
                Some(before) => block.get(before) == Some(&b'\r'),
                None => self.last_was_cr,
            };
            if !after_cr {
                self.out
                    .extend_from_slice(block.get(start..lf).unwrap_or_default());
                self.out.extend_from_slice(b"\r");
                start = lf;
            }
            if block.get(lf + 1) == Some(&b'.') {
                self.dot_line = true;
            }
        }
        self.out
            .extend_from_slice(block.get(start..).unwrap_or_default());
        let last = block.last().copied();
        self.last_was_cr = last == Some(b'\r');
        self.at_line_start = last == Some(b'\n');
        self.given += block.len() as u64;
        self.written += self.out.len() as u64;
        &self.out
    }

    /// Octets written so far: the stored size, and the wire size too.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// True when what was written is its own wire form: no line starts with '.', and it ends
    /// with a line end (or is empty).
    pub(crate) fn is_wire_form(&self) -> bool {
        !self.dot_line && (self.at_line_start || self.given == 0)
    }
}

/// One piece of a name for the delivery-order comparison: runs of digits compare as numbers,
/// other octets as octets. The variant order puts a number between the octets below '0' and
/// those above '9', as a plain octet comparison would.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Token<'a> {
    Below(u8),
    /// A digit run without its leading zeros: the longer run is the larger number.
    Number(usize, &'a [u8]),
    Above(u8),
}

/// The tokens of a base name, produced lazily so that comparing two names allocates nothing.
struct Tokens<'a>(&'a [u8]);

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let rest = self.0;
        let &first = rest.first()?;
        if first.is_ascii_digit() {
            let len = rest
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(len);
            let zeros = run.iter().take_while(|&&b| b == b'0').count();
            let number = &run[zeros..];
            self.0 = tail;
            Some(Token::Number(number.len(), number))
        } else {
            self.0 = &rest[1..];
            Some(if first < b'0' {
                Token::Below(first)
            } else {
                Token::Above(first)
            })
        }
    }
}

/// Compares two message file names in delivery order, oldest first:
/// 1. names that start with a timestamp before those that do not;
/// 2. the base names, digit runs compared as numbers: the timestamp first, then (for the usual
///    `<secs>.M<micros>P<pid>...` names) the microseconds, so deliveries within one second keep
///    their order too; the flags never move a message;
/// 3. the whole names as octets, so that no two different names compare equal.
///
/// Each step is a lexicographic comparison of plain data, so this is a total order, as `sort`
/// requires.
pub(crate) fn compare(a: &[u8], b: &[u8]) -> Ordering {
    compare_bases(base_name(a), base_name(b)).then_with(|| a.cmp(b))
}

/// Steps 1 and 2 of [`compare`], on base names: `Equal` for identical base names, and also for
/// base names that differ only in the leading zeros of a digit run. So in a list sorted with
/// `compare`, the files that share a base name are within one run of names this finds equal.
pub(crate) fn compare_bases(base_a: &[u8], base_b: &[u8]) -> Ordering {
    let no_timestamp = |base: &[u8]| !base.first().is_some_and(u8::is_ascii_digit);
    no_timestamp(base_a)
        .cmp(&no_timestamp(base_b))
        .then_with(|| Tokens(base_a).cmp(Tokens(base_b)))
}

/// A coarse delivery-order key: whether the name lacks a leading timestamp, then the
/// timestamp's value (`u64::MAX` if it does not fit). Where two keys differ, they order the names
/// as [`compare`] does; where they are equal, only `compare` can tell. Sorting 100,000 names by
/// this key first saves most of the token-by-token comparisons.
pub(crate) fn order_key(name: &[u8]) -> (bool, u64) {
    let base = base_name(name);
    let digits = base.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return (true, 0);
    }
    let mut value: u64 = 0;
    for &d in base.iter().take(digits) {
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
        {
            Some(v) => value = v,
            None => return (false, u64::MAX),
        }
    }
    (false, value)
}

/// Counts wire octets while a message streams by: every octet, plus one for each LF not preceded
/// by CR (RETR sends it as CRLF). The CRLF RETR adds after a message without a final newline is
/// not part of the message and not counted.
#[derive(Default)]
pub(crate) struct WireCounter {
    size: u64,
    bare_lf: u64,
    last_was_cr: bool,
}

impl WireCounter {
    pub(crate) fn feed(&mut self, block: &[u8]) {
        let mut last_was_cr = self.last_was_cr;
        let mut bare_lf = 0u64;
        for &b in block {
            if b == b'\n' && !last_was_cr {
                bare_lf += 1;
            }
            last_was_cr = b == b'\r';
        }
        self.last_was_cr = last_was_cr;
        self.bare_lf += bare_lf;
        self.size += block.len() as u64;
    }

    /// The octets as stored.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The octets RETR sends before dot-stuffing.
    pub(crate) fn wire_size(&self) -> u64 {
        self.size + self.bare_lf
    }
}

/// Reads `message` to the end in blocks of `buf` and returns its wire size.
pub(crate) fn count_wire_size(message: &mut impl Read, buf: &mut [u8]) -> io::Result<u64> {
    let mut counter = WireCounter::default();
    loop {
        match message.read(buf) {
            Ok(0) => return Ok(counter.wire_size()),
            Ok(n) => counter.feed(buf.get(..n).unwrap_or(buf)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire(bytes: &[u8]) -> u64 {
        count_wire_size(&mut &bytes[..], &mut [0u8; 3]).unwrap()
    }

    #[test]
    fn wire_form_fields() {
        assert!(has_wire_form_field(b"1.M2P3.h,S=10,W=10,P=1"));
        assert!(!has_wire_form_field(b"1.M2P3.h,S=10,W=10,P=10"));
        assert!(
            !has_wire_form_field(b"P=1"),
            "the unique part is not a field"
        );
        assert_eq!(size_field(b"1.M2P3.h,S=10,W=12"), Some(10));
        assert_eq!(size_field(b"1.M2P3.h,W=12"), None);
    }

    #[test]
    fn base_and_info() {
        assert_eq!(base_name(b"123.abc:2,S"), b"123.abc");
        assert_eq!(base_name(b"123.abc"), b"123.abc");
        assert_eq!(info_part(b"123.abc:2,RS"), b":2,RS");
        assert_eq!(info_part(b"123.abc"), b"");
        assert_eq!(cur_name_for_new(OsStr::new("1.a")), OsStr::new("1.a:2,"));
        assert_eq!(
            cur_name_for_new(OsStr::new("1.a:2,S")),
            OsStr::new("1.a:2,S")
        );
        assert!(is_message_name(OsStr::new("1.a")));
        assert!(!is_message_name(OsStr::new(".x")));
        assert!(!is_message_name(OsStr::new("")));
        assert!(!is_message_name(OsStr::new("a/b")));
    }

    #[test]
    fn natural_base_name_is_the_uid() {
        let uid = uid_for_base(b"1700000000.M1P2.host,S=10,W=12");
        assert_eq!(uid.as_str(), "1700000000.M1P2.host,S=10,W=12");
    }

    #[test]
    fn long_or_odd_base_names_are_hashed() {
        let long = [b'1'; 71];
        let uid = uid_for_base(&long);
        assert_eq!(uid.as_str().len(), 41);
        assert!(uid.as_str().starts_with('H'));
        assert!(Uidl::is_valid(uid.as_str().as_bytes()));
        // Deterministic, and different for a different name.
        assert_eq!(uid, uid_for_base(&long));
        assert_ne!(uid, uid_for_base(&[b'1'; 72]));
        // 70 octets is still natural.
        assert_eq!(uid_for_base(&[b'1'; 70]).as_str().len(), 70);
        // Spaces and non-ASCII are hashed.
        assert!(uid_for_base(b"1 2").as_str().starts_with('H'));
        assert!(uid_for_base(b"1\xff").as_str().starts_with('H'));
        assert!(uid_for_base(b"").as_str().starts_with('H'));
        // SHA-256("a b") is c8687a08aa5d6ed2044328fa6a697ab8e96dc342..., computed elsewhere.
        assert_eq!(
            uid_for_base(b"a b").as_str(),
            "Hc8687a08aa5d6ed2044328fa6a697ab8e96dc342"
        );
    }

    #[test]
    fn w_field() {
        assert_eq!(wire_size_field(b"1.M2P3.host,S=100,W=104"), Some(104));
        assert_eq!(wire_size_field(b"1.M2P3.host,W=0"), Some(0));
        assert_eq!(wire_size_field(b"1.M2P3.host,S=100"), None);
        assert_eq!(wire_size_field(b"1.M2P3.host,W="), None);
        assert_eq!(wire_size_field(b"1.M2P3.host,W=-1"), None);
        assert_eq!(wire_size_field(b"1.M2P3.host,W=99999999999999999999"), None);
        // Only a field after a comma counts, not text in the unique part.
        assert_eq!(wire_size_field(b"W=5"), None);
    }

    #[test]
    fn wire_sizes() {
        assert_eq!(wire(b""), 0);
        assert_eq!(wire(b"a\nb\n"), 6);
        assert_eq!(wire(b"a\r\nb\r\n"), 6);
        // No final newline: the CRLF RETR adds is not counted.
        assert_eq!(wire(b"a\nb"), 4);
        // A lone CR is sent as it is.
        assert_eq!(wire(b"a\rb"), 3);
        // CR and LF split across blocks (the test buffer is 3 octets).
        assert_eq!(wire(b"ab\r\ncd\r\n"), 8);
        assert_eq!(wire(b"\n\n\n\n"), 8);
        assert_eq!(wire(b"\r\r\n"), 3);
    }

    #[test]
    fn delivery_order() {
        let mut names: Vec<&[u8]> = vec![
            b"1700000010.M5P1.h:2,",
            b"zzz",
            b"999999999.M1P1.h:2,S",
            b"1700000000.M100P1.h:2,",
            b"1700000000.M99P1.h:2,",
            b"01700000000.M99P1.h:2,",
        ];
        names.sort_by(|a, b| compare(a, b));
        let expected: Vec<&[u8]> = vec![
            b"999999999.M1P1.h:2,S",
            b"01700000000.M99P1.h:2,",
            b"1700000000.M99P1.h:2,",
            b"1700000000.M100P1.h:2,",
            b"1700000010.M5P1.h:2,",
            b"zzz",
        ];
        assert_eq!(names, expected);
        // The flags do not move a message.
        assert_eq!(compare(b"5.a:2,S", b"5.a:2,"), Ordering::Greater);
        assert_eq!(compare(b"5.a:2,S", b"6.a:2,"), Ordering::Less);
    }

    proptest! {
        #[test]
        fn crlf_writer_gives_the_wire_form(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'x')], 0..64),
            block in 1usize..8) {
            // The wire form, octet by octet: a CR before every bare LF.
            let mut expected = Vec::new();
            let mut dot_line = false;
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
                    expected.push(b'\r');
                }
                if b == b'.' && (i == 0 || bytes[i - 1] == b'\n') {
                    dot_line = true;
                }
                expected.push(b);
            }
            let mut w = CrlfWriter::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(block) {
                got.extend_from_slice(w.convert(chunk));
            }
            prop_assert_eq!(w.written(), got.len() as u64);
            let wire_size = count_wire_size(&mut &bytes[..], &mut [0u8; 16]).unwrap();
            prop_assert_eq!(w.written(), wire_size);
            prop_assert_eq!(&got, &expected);
            let ends_with_lf = bytes.last().is_none_or(|&b| b == b'\n');
            prop_assert_eq!(w.is_wire_form(), !dot_line && ends_with_lf);
        }

        #[test]
        fn wire_size_matches_a_plain_count(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'x')], 0..64), block in 1usize..8) {
            let mut expected = bytes.len() as u64;
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
                    expected += 1;
                }
            }
            let got = count_wire_size(&mut &bytes[..], &mut vec![0u8; block]).unwrap();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn every_uid_is_valid(name in proptest::collection::vec(any::<u8>(), 0..200)) {
            let uid = uid_for_base(&name);
            prop_assert!(Uidl::is_valid(uid.as_str().as_bytes()));
        }

        #[test]
        fn sort_is_total(a in "[0-9a.M]{0,8}", b in "[0-9a.M]{0,8}") {
            let ab = compare(a.as_bytes(), b.as_bytes());
            prop_assert_eq!(ab, compare(b.as_bytes(), a.as_bytes()).reverse());
            prop_assert_eq!(ab == Ordering::Equal, a == b);
        }

        /// Where the keys differ they agree with `compare`, so sorting by key first, then by
        /// `compare`, is sorting by `compare` (timestamps past u64 included).
        #[test]
        fn order_key_refines_into_compare(
            a in "(0{0,3}[0-9]{0,22}|x)[.M0-9a:]{0,8}",
            b in "(0{0,3}[0-9]{0,22}|x)[.M0-9a:]{0,8}",
        ) {
            let (ka, kb) = (order_key(a.as_bytes()), order_key(b.as_bytes()));
            if ka != kb {
                prop_assert_eq!(ka.cmp(&kb), compare(a.as_bytes(), b.as_bytes()));
            }
        }
    }
}
