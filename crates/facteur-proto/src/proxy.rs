//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the header a load
//! balancer sends before anything else on a connection it relays, naming the client it relays
//! for.
//!
//! [`parse`] is given the octets received so far and says what they are: the start of a header
//! that needs at least *n* more octets ([`Parse::NeedMore`]), a whole header and its length
//! ([`Parse::Done`]), or something that can never become a header ([`Parse::Invalid`]). It keeps
//! no state: the same octets, however they arrived, give the same answer.
//!
//! What [`Parse::NeedMore`] asks for is never more than the rest of the header, so a reader that
//! reads at most that many octets at a time never takes an octet of what follows (the client's
//! first POP3 command, a TLS ClientHello). A v2 header states its length after 16 octets; a v1
//! line is read in steps of the fewest octets that could complete each of its fields.
//!
//! Strict, as a header is trusted to name the client: one space between v1 fields, addresses in
//! their canonical textual form (no leading zeros in an IPv4 octet), ports 0 to 65535 in
//! decimal without leading zeros, a v1 line of at most [`V1_MAX_LEN`] octets, a v2 header of
//! at most [`V2_MAX_LEN`] octets whose TLVs exactly fill it (their contents are skipped), and
//! only the v2 version, commands and families the specification defines for TCP.
//!
//! A header whose addresses are unknown (v1 `UNKNOWN`, a v2 `LOCAL` command as sent by health
//! checks, a v2 `AF_UNSPEC` family) is valid and names no client: the connection's own
//! endpoints stand.
//!
//! What this module must never do: ask for an octet past the end of a header, accept a header
//! from a prefix of it, hold more than the octets it is given, or panic on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 header: `PROXY TCP6` with two full IPv6 addresses and ports, and CRLF.
pub const V1_MAX_LEN: usize = 107;

/// The fixed part of a v2 header: the signature, version and command, family, length.
pub const V2_FIXED_LEN: usize = 16;

/// The longest v2 header facteur accepts, in octets. The addresses take at most 216 octets
/// (AF_UNIX), and the TLVs HAProxy and the cloud load balancers send (ALPN, the server name,
/// a unique id of at most 128 octets, TLS details, an endpoint id, a CRC) fit well within the
/// rest; a longer header is refused rather than buffered. The protocol allows up to 65,551.
pub const V2_MAX_LEN: usize = 2048;

/// The most octets any header can take: a buffer this long holds any header [`parse`] accepts.
pub const MAX_HEADER_LEN: usize = V2_MAX_LEN;

/// The 12 octets that start a v2 header (and that no v1 header or POP3 command can start with).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

const V1_PREFIX: &[u8] = b"PROXY ";

/// What the octets received so far are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    /// The start of a header, which needs at least this many more octets (always at least 1,
    /// and never more than the rest of the header).
    NeedMore(usize),
    /// A whole header of `header_len` octets: the octets after it are the relayed connection's.
    /// `source` is the client the header names and `destination` the address it connected to;
    /// both are `None` when the header names no addresses (v1 `UNKNOWN`, v2 `LOCAL` or
    /// `AF_UNSPEC`), and then the connection's own endpoints stand.
    Done {
        header_len: usize,
        source: Option<SocketAddr>,
        destination: Option<SocketAddr>,
    },
    /// Not a valid header, whatever octets would follow.
    Invalid(Invalid),
}

/// Why octets are not a valid PROXY protocol header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a PROXY protocol header (neither \"PROXY \" nor the v2 signature)")]
    NotProxy,
    #[error("v1 header without CRLF within {} octets", V1_MAX_LEN)]
    V1TooLong,
    #[error("v1 header with a character out of place (fields are separated by one space, the line ends with CRLF)")]
    V1Syntax,
    #[error("v1 header with an unknown protocol (expected TCP4, TCP6 or UNKNOWN)")]
    V1Protocol,
    #[error("v1 header with a malformed {0}")]
    V1Field(&'static str),
    #[error("v1 header with too many fields")]
    V1ExtraField,
    #[error("v2 header with version {0} (expected 2)")]
    V2Version(u8),
    #[error("v2 header with an unknown command {0:#x} (expected LOCAL or PROXY)")]
    V2Command(u8),
    #[error("v2 header with an unsupported family and transport {0:#04x} (expected TCP over IPv4 or IPv6, or UNSPEC)")]
    V2Family(u8),
    #[error("v2 header longer than {} octets", V2_MAX_LEN)]
    V2TooLong,
    #[error("v2 header too short for its addresses")]
    V2TooShort,
    #[error("v2 header whose TLVs do not fill it exactly")]
    V2Tlv,
}

/// What the octets received so far (`seen`) are; see [`Parse`]. Only the octets of the header
/// are looked at: what follows it may be anything.
pub fn parse(seen: &[u8]) -> Parse {
    match seen.first() {
        // The shortest header of either version: `PROXY UNKNOWN\r\n` (15 octets).
        None => Parse::NeedMore(15),
        Some(b'P') => v1(seen),
        Some(b'\r') => v2(seen),
        Some(_) => Parse::Invalid(Invalid::NotProxy),
    }
}

/// The v1 header naming `source` as the client and `destination` as the address it reached
/// (`PROXY UNKNOWN` when they are not of the same family). For tests, benchmarks and fuzzing.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> String {
    let proto = match (source.ip(), destination.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => return "PROXY UNKNOWN\r\n".to_string(),
    };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
}

/// The v2 header of a PROXY command for `source` and `destination` (both IPv4 or both IPv6,
/// else `AF_UNSPEC`), or of a LOCAL command when `addresses` is `None`; `tlvs` (whole TLVs,
/// type, length and value) go after the addresses. For tests, benchmarks and fuzzing.
pub fn encode_v2(addresses: Option<(SocketAddr, SocketAddr)>, tlvs: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    let mut block = Vec::new();
    let family = match addresses {
        None => {
            out.push(0x20);
            0x00
        }
        Some((s, d)) => {
            out.push(0x21);
            match (s.ip(), d.ip()) {
                (IpAddr::V4(si), IpAddr::V4(di)) => {
                    block.extend_from_slice(&si.octets());
                    block.extend_from_slice(&di.octets());
                    block.extend_from_slice(&s.port().to_be_bytes());
                    block.extend_from_slice(&d.port().to_be_bytes());
                    0x11
                }
                (IpAddr::V6(si), IpAddr::V6(di)) => {
                    block.extend_from_slice(&si.octets());
                    block.extend_from_slice(&di.octets());
                    block.extend_from_slice(&s.port().to_be_bytes());
                    block.extend_from_slice(&d.port().to_be_bytes());
                    0x21
                }
                _ => 0x00,
            }
        }
    };
    out.push(family);
    block.extend_from_slice(tlvs);
    let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&block);
    out
}

// ---- version 1 ----------------------------------------------------------------------------

/// The protocols of a v1 line, and the fewest octets after the protocol name that complete a
/// line of it (without CRLF): `" :: :: 0 0"` for TCP6, `" 0.0.0.0 0.0.0.0 0 0"` for TCP4.
const V1_PROTOCOLS: [(&[u8], usize); 3] = [(b"TCP4", 20), (b"TCP6", 10), (b"UNKNOWN", 0)];

/// A v1 field after the protocol: its name (for errors), the shortest and longest it can be,
/// and the octets it may hold.
struct V1Field {
    name: &'static str,
    min: usize,
    max: usize,
    allowed: fn(u8) -> bool,
}

const V1_IPV4: V1Field = V1Field {
    name: "IPv4 address",
    min: 7,
    max: 15,
    allowed: |b| b.is_ascii_digit() || b == b'.',
};
const V1_IPV6: V1Field = V1Field {
    name: "IPv6 address",
    min: 2,
    max: 45,
    allowed: |b| b.is_ascii_hexdigit() || b == b':' || b == b'.',
};
const V1_PORT: V1Field = V1Field {
    name: "port",
    min: 1,
    max: 5,
    allowed: |b| b.is_ascii_digit(),
};

fn v1(seen: &[u8]) -> Parse {
    let window = &seen[..seen.len().min(V1_MAX_LEN)];
    let prefix = window.len().min(V1_PREFIX.len());
    if window[..prefix] != V1_PREFIX[..prefix] {
        return Parse::Invalid(Invalid::NotProxy);
    }
    // The line ends at the first CR, which must be followed by LF.
    let (content, complete) = match memchr::memchr(b'\r', window) {
        Some(cr) => match window.get(cr + 1) {
            Some(b'\n') => (&window[..cr], true),
            Some(_) => return Parse::Invalid(Invalid::V1Syntax),
            None => (&window[..cr], false),
        },
        None => (window, false),
    };
    let Some(fields) = content.get(V1_PREFIX.len()..) else {
        // Within "PROXY ": a protocol and CRLF at least.
        return need_v1(window.len(), V1_PREFIX.len() + 7 + 2);
    };
    if fields.contains(&b'\n') {
        return Parse::Invalid(Invalid::V1Syntax);
    }
    let line_end = content.len() + 2;
    if complete {
        return match v1_line(fields) {
            Ok((source, destination)) => Parse::Done {
                header_len: line_end,
                source,
                destination,
            },
            Err(e) => Parse::Invalid(e),
        };
    }
    if seen.len() >= V1_MAX_LEN {
        return Parse::Invalid(Invalid::V1TooLong);
    }
    if content.len() < window.len() {
        // A CR arrived: only an LF may follow, so the line must already be whole.
        return match v1_line(fields) {
            Ok(_) => Parse::NeedMore(1),
            Err(e) => Parse::Invalid(e),
        };
    }
    // Incomplete: the fewest more octets of content that could make a valid line, then CRLF.
    match v1_min_rest(fields) {
        Ok(rest) => need_v1(window.len(), content.len() + rest + 2),
        Err(e) => Parse::Invalid(e),
    }
}

/// NeedMore until a line of `total` octets (at most [`V1_MAX_LEN`]), given `have`.
fn need_v1(have: usize, total: usize) -> Parse {
    if total > V1_MAX_LEN {
        return Parse::Invalid(Invalid::V1TooLong);
    }
    Parse::NeedMore(total.saturating_sub(have).max(1))
}

/// The fields of an incomplete v1 line (after `PROXY `, without CR): the fewest more octets of
/// content that could complete a valid line, or why none can.
fn v1_min_rest(fields: &[u8]) -> Result<usize, Invalid> {
    let mut parts = fields.split(|&b| b == b' ');
    let proto = parts.next().unwrap_or_default();
    let Some(rest) = parts.next() else {
        // The protocol name is still arriving: the shortest protocol it can still become.
        return V1_PROTOCOLS
            .iter()
            .filter(|(name, _)| name.starts_with(proto))
            .map(|(name, after)| name.len() - proto.len() + after)
            .min()
            .ok_or(Invalid::V1Protocol);
    };
    let layout = v1_layout(proto)?;
    if layout.is_empty() {
        // UNKNOWN: anything up to CRLF (bar a bare LF, refused above).
        return Ok(0);
    }
    // `rest` and the parts after it are the fields after the protocol; the last is partial.
    let given: Vec<&[u8]> = std::iter::once(rest).chain(parts).collect();
    if given.len() > layout.len() {
        return Err(Invalid::V1ExtraField);
    }
    let mut more = 0;
    for (i, field) in layout.iter().enumerate() {
        match given.get(i) {
            Some(text) => {
                check_v1_chars(field, text)?;
                let last = i + 1 == given.len();
                if !last {
                    // A field followed by a space is whole.
                    v1_value(field, text)?;
                } else {
                    if field.name == "port" {
                        port_prefix(text)?;
                    }
                    more += field.min.saturating_sub(text.len());
                }
            }
            // A field not begun: a space and its shortest form.
            None => more += 1 + field.min,
        }
    }
    Ok(more)
}

/// The fields after each protocol name (none for UNKNOWN).
fn v1_layout(proto: &[u8]) -> Result<&'static [V1Field], Invalid> {
    match proto {
        b"TCP4" => Ok(&[V1_IPV4, V1_IPV4, V1_PORT, V1_PORT]),
        b"TCP6" => Ok(&[V1_IPV6, V1_IPV6, V1_PORT, V1_PORT]),
        b"UNKNOWN" => Ok(&[]),
        _ => Err(Invalid::V1Protocol),
    }
}

fn check_v1_chars(field: &V1Field, text: &[u8]) -> Result<(), Invalid> {
    if text.len() > field.max || !text.iter().all(|&b| (field.allowed)(b)) {
        return Err(Invalid::V1Field(field.name));
    }
    Ok(())
}

/// A port as it arrives: no leading zero, never above 65535.
fn port_prefix(text: &[u8]) -> Result<(), Invalid> {
    if text.len() > 1 && text.first() == Some(&b'0') {
        return Err(Invalid::V1Field("port"));
    }
    if !text.is_empty() && parse_decimal(text).is_none_or(|v| v > u32::from(u16::MAX)) {
        return Err(Invalid::V1Field("port"));
    }
    Ok(())
}

/// A whole v1 field's value.
enum V1Value {
    Ip(IpAddr),
    Port(u16),
}

fn v1_value(field: &V1Field, text: &[u8]) -> Result<V1Value, Invalid> {
    let bad = Invalid::V1Field(field.name);
    check_v1_chars(field, text)?;
    if text.len() < field.min {
        return Err(bad);
    }
    let s = std::str::from_utf8(text).map_err(|_| bad)?;
    match field.name {
        "port" => {
            port_prefix(text)?;
            s.parse::<u16>().map(V1Value::Port).map_err(|_| bad)
        }
        // The standard library's parsers are strict: no leading zero in an IPv4 octet, no
        // octal or hexadecimal forms, no zone index, at most one `::`.
        "IPv4 address" => s
            .parse::<Ipv4Addr>()
            .map(|ip| V1Value::Ip(ip.into()))
            .map_err(|_| bad),
        _ => s
            .parse::<Ipv6Addr>()
            .map(|ip| V1Value::Ip(ip.into()))
            .map_err(|_| bad),
    }
}

/// A whole v1 line after `PROXY ` (without CRLF): the source and destination it names.
fn v1_line(fields: &[u8]) -> Result<(Option<SocketAddr>, Option<SocketAddr>), Invalid> {
    let mut parts = fields.split(|&b| b == b' ');
    let proto = parts.next().unwrap_or_default();
    let layout = v1_layout(proto)?;
    if layout.is_empty() {
        // `PROXY UNKNOWN`, then nothing or a space and anything: ignored, as the spec says.
        return Ok((None, None));
    }
    let mut values = [0u16; 2];
    let mut ips = [IpAddr::V4(Ipv4Addr::UNSPECIFIED); 2];
    let mut count = 0;
    for (i, field) in layout.iter().enumerate() {
        let text = parts.next().ok_or(Invalid::V1Field(field.name))?;
        match v1_value(field, text)? {
            V1Value::Ip(ip) => ips[i] = ip,
            V1Value::Port(p) => values[i - 2] = p,
        }
        count += 1;
    }
    if parts.next().is_some() || count != 4 {
        return Err(Invalid::V1ExtraField);
    }
    Ok((
        Some(SocketAddr::new(ips[0], values[0])),
        Some(SocketAddr::new(ips[1], values[1])),
    ))
}

/// Decimal digits as a number, `None` past u32 or for an empty or non-digit text.
fn parse_decimal(text: &[u8]) -> Option<u32> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit()
            .then(|| acc.checked_mul(10)?.checked_add(u32::from(b - b'0')))
            .flatten()
    })
}

// ---- version 2 ----------------------------------------------------------------------------

fn v2(seen: &[u8]) -> Parse {
    let sig = seen.len().min(V2_SIGNATURE.len());
    if seen[..sig] != V2_SIGNATURE[..sig] {
        return Parse::Invalid(Invalid::NotProxy);
    }
    if let Some(&ver_cmd) = seen.get(12) {
        let version = ver_cmd >> 4;
        if version != 2 {
            return Parse::Invalid(Invalid::V2Version(version));
        }
        if ver_cmd & 0x0f > 1 {
            return Parse::Invalid(Invalid::V2Command(ver_cmd & 0x0f));
        }
    }
    let local = seen.get(12).is_some_and(|&v| v & 0x0f == 0);
    // The length of the address block of a PROXY command, by family and transport; a LOCAL
    // command's block is discarded whatever its family says.
    let address_len = match seen.get(13) {
        None => 0,
        Some(_) if local => 0,
        Some(0x00) => 0,
        Some(0x11) => 12,
        Some(0x21) => 36,
        Some(&other) => return Parse::Invalid(Invalid::V2Family(other)),
    };
    let (Some(&hi), Some(&lo)) = (seen.get(14), seen.get(15)) else {
        return Parse::NeedMore(V2_FIXED_LEN - seen.len());
    };
    let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([hi, lo]));
    if total > V2_MAX_LEN {
        return Parse::Invalid(Invalid::V2TooLong);
    }
    if total - V2_FIXED_LEN < address_len {
        return Parse::Invalid(Invalid::V2TooShort);
    }
    let Some(header) = seen.get(..total) else {
        return Parse::NeedMore(total - seen.len());
    };
    let block = &header[V2_FIXED_LEN..];
    if local {
        return Parse::Done {
            header_len: total,
            source: None,
            destination: None,
        };
    }
    let (addresses, tlvs) = block.split_at(address_len);
    if !tlvs_fit(tlvs) {
        return Parse::Invalid(Invalid::V2Tlv);
    }
    let (source, destination) = match addresses.len() {
        12 => {
            let ip = |at: usize| IpAddr::from(array::<4>(&addresses[at..]));
            let port = |at: usize| u16::from_be_bytes(array::<2>(&addresses[at..]));
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        36 => {
            let ip = |at: usize| IpAddr::from(array::<16>(&addresses[at..]));
            let port = |at: usize| u16::from_be_bytes(array::<2>(&addresses[at..]));
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        _ => (None, None),
    };
    Parse::Done {
        header_len: total,
        source,
        destination,
    }
}

/// The first `N` octets of `from` (zeros where it is shorter, which the callers rule out).
fn array<const N: usize>(from: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(from) {
        *o = *b;
    }
    out
}

/// Whether `tlvs` is a sequence of whole TLVs (type, 16-bit length, value) and nothing else.
fn tlvs_fit(mut tlvs: &[u8]) -> bool {
    while !tlvs.is_empty() {
        let [_, hi, lo, ..] = *tlvs else {
            return false;
        };
        let len = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        match tlvs.get(len..) {
            Some(rest) => tlvs = rest,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(len: usize, source: &str, destination: &str) -> Parse {
        Parse::Done {
            header_len: len,
            source: Some(addr(source)),
            destination: Some(addr(destination)),
        }
    }

    fn unknown(len: usize) -> Parse {
        Parse::Done {
            header_len: len,
            source: None,
            destination: None,
        }
    }

    /// Read `data` as a server would, at most what `NeedMore` asks for and at most `chunks[i]`
    /// octets per read (cycling through `chunks`): the result and how many octets were read.
    fn drive(data: &[u8], chunks: &[usize]) -> (Parse, usize) {
        let mut have = 0;
        for i in 0.. {
            let r = parse(&data[..have]);
            let Parse::NeedMore(n) = r else {
                return (r, have);
            };
            assert!(n >= 1);
            let step = n.min(chunks[i % chunks.len()]).max(1);
            if have + step > data.len() {
                return (r, have);
            }
            have += step;
        }
        unreachable!()
    }

    /// Every way a server could read `header` followed by a POP3 command: the same result,
    /// and never an octet of the command taken.
    fn every_chunking(header: &[u8], expected: Parse) {
        let mut data = header.to_vec();
        data.extend_from_slice(b"USER alice\r\n");
        assert_eq!(
            parse(&data),
            expected,
            "{:?}",
            String::from_utf8_lossy(header)
        );
        assert_eq!(parse(header), expected);
        // Every prefix: an answer never past the header.
        for j in 0..header.len() {
            match parse(&header[..j]) {
                Parse::NeedMore(n) => assert!(
                    n >= 1 && j + n <= header.len(),
                    "prefix {j} of {:?} asks for {n}",
                    String::from_utf8_lossy(header)
                ),
                other => panic!(
                    "prefix {j} of {:?}: {other:?}",
                    String::from_utf8_lossy(header)
                ),
            }
        }
        for size in 1..=data.len() {
            assert_eq!(
                drive(&data, &[size]),
                (expected, header.len()),
                "chunks of {size}"
            );
        }
        // Every cut into two and three reads.
        for a in 1..header.len() {
            for b in 1..header.len() {
                let (r, n) = drive(&data, &[a, b, usize::MAX]);
                assert_eq!((r, n), (expected, header.len()), "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn v1_examples_from_the_specification() {
        let h = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        every_chunking(
            h,
            done(h.len(), "255.255.255.255:65535", "255.255.255.255:65535"),
        );
        let h = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(h.len(), 104);
        every_chunking(
            h,
            done(
                h.len(),
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        );
        every_chunking(b"PROXY UNKNOWN\r\n", unknown(15));
        let h = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        every_chunking(h, unknown(h.len()));
        let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        every_chunking(h, done(h.len(), "192.168.0.1:56324", "192.168.0.11:443"));
        let h = b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n";
        every_chunking(h, done(32, "0.0.0.0:0", "0.0.0.0:0"));
        let h = b"PROXY TCP6 :: ::1 0 110\r\n";
        every_chunking(h, done(h.len(), "[::]:0", "[::1]:110"));
        let h = b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 1 110\r\n";
        every_chunking(
            h,
            done(h.len(), "[::ffff:192.0.2.1]:1", "[2001:db8::1]:110"),
        );
    }

    #[test]
    fn v1_strictness() {
        for bad in [
            "PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 00 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 99999 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 +1 443\r\n",
            "PROXY TCP4 192.168.0.1  192.168.0.11 1 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 1 443 \r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 1 443 7\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 1\r\n",
            "PROXY TCP4 192.168.0.256 192.168.0.11 1 2\r\n",
            "PROXY TCP4 192.168.0 192.168.0.11 1 2\r\n",
            "PROXY TCP4 0x7f.0.0.1 192.168.0.11 1 2\r\n",
            "PROXY TCP4 ::1 ::1 1 2\r\n",
            "PROXY TCP6 192.168.0.1 192.168.0.11 1 2\r\n",
            "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
            "PROXY TCP6 1::2::3 ::1 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            "PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n",
            "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY\r\n",
            "PROXY \r\n",
            "PROXY UNKNOWNX\r\n",
            "PROXY UNKNOWN\rX\n",
            "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "USER alice\r\n",
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Parse::Invalid(_)),
                "{bad:?}: {:?}",
                parse(bad.as_bytes())
            );
        }
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n"),
            Parse::Invalid(Invalid::V1Field("port"))
        );
        assert_eq!(parse(b"QUIT\r\n"), Parse::Invalid(Invalid::NotProxy));
    }

    #[test]
    fn v1_garbage_is_refused_early() {
        // A trusted peer that sends a POP3 command instead is told at its first octet.
        assert_eq!(parse(b"U"), Parse::Invalid(Invalid::NotProxy));
        assert_eq!(parse(b"PROXI"), Parse::Invalid(Invalid::NotProxy));
        assert_eq!(parse(b"PROXY X"), Parse::Invalid(Invalid::V1Protocol));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4a"),
            Parse::Invalid(Invalid::V1Field("IPv4 address"))
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 012"),
            Parse::Invalid(Invalid::V1Field("port"))
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 70000"),
            Parse::Invalid(Invalid::V1Field("port"))
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 "),
            Parse::Invalid(Invalid::V1ExtraField)
        );
        // A whole field that is not an address, before the line ends.
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.999 "),
            Parse::Invalid(Invalid::V1Field("IPv4 address"))
        );
    }

    #[test]
    fn v1_length_is_bounded() {
        // UNKNOWN takes anything, but not past 107 octets.
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(V1_MAX_LEN - 2, b'x');
        h.extend_from_slice(b"\r\n");
        assert_eq!(parse(&h), unknown(V1_MAX_LEN));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN - 2, b'x');
        assert_eq!(parse(&long), Parse::NeedMore(2));
        // One more octet of content and CRLF cannot fit: refused before it arrives.
        long.push(b'x');
        assert_eq!(parse(&long), Parse::Invalid(Invalid::V1TooLong));
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Parse::Invalid(Invalid::V1TooLong));
        // 107 octets with the CR last: the LF would be the 108th.
        let mut cr_last = b"PROXY UNKNOWN ".to_vec();
        cr_last.resize(V1_MAX_LEN - 1, b'x');
        cr_last.push(b'\r');
        assert_eq!(parse(&cr_last), Parse::Invalid(Invalid::V1TooLong));
    }

    #[test]
    fn need_more_asks_for_the_fewest_octets_that_could_end_the_header() {
        assert_eq!(parse(b""), Parse::NeedMore(15));
        assert_eq!(parse(b"PROXY "), Parse::NeedMore(9));
        // "TCP4 " then two addresses of at least 7, two ports of at least 1, CRLF.
        assert_eq!(parse(b"PROXY TCP4 "), Parse::NeedMore(21));
        assert_eq!(parse(b"PROXY TCP6 "), Parse::NeedMore(11));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"), Parse::NeedMore(2));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
            Parse::NeedMore(1)
        );
        assert_eq!(parse(&V2_SIGNATURE[..1]), Parse::NeedMore(15));
        assert_eq!(parse(&V2_SIGNATURE), Parse::NeedMore(4));
    }

    fn v4() -> (SocketAddr, SocketAddr) {
        (addr("203.0.113.7:40000"), addr("192.0.2.1:110"))
    }

    #[test]
    fn v2_tcp4_tcp6_and_local() {
        let (s, d) = v4();
        let h = encode_v2(Some((s, d)), &[]);
        assert_eq!(h.len(), 28);
        every_chunking(&h, done(28, "203.0.113.7:40000", "192.0.2.1:110"));
        let h6 = encode_v2(
            Some((addr("[2001:db8::7]:1"), addr("[2001:db8::1]:995"))),
            &[],
        );
        assert_eq!(h6.len(), 52);
        every_chunking(&h6, done(52, "[2001:db8::7]:1", "[2001:db8::1]:995"));
        let local = encode_v2(None, &[]);
        assert_eq!(local.len(), 16);
        every_chunking(&local, unknown(16));
        // LOCAL discards its block whatever the family says.
        let mut local = h.clone();
        local[12] = 0x20;
        every_chunking(&local, unknown(28));
        local[13] = 0x31;
        every_chunking(&local, unknown(28));
        // PROXY with AF_UNSPEC: no addresses, the connection's own stand.
        let mut unspec = encode_v2(None, &[]);
        unspec[12] = 0x21;
        every_chunking(&unspec, unknown(16));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_must_fit() {
        let (s, d) = v4();
        // PP2_TYPE_ALPN "pop3", PP2_TYPE_AUTHORITY "mail.example", PP2_TYPE_NOOP empty.
        let mut tlvs = vec![0x01, 0, 4];
        tlvs.extend_from_slice(b"pop3");
        tlvs.extend_from_slice(&[0x02, 0, 12]);
        tlvs.extend_from_slice(b"mail.example");
        tlvs.extend_from_slice(&[0x04, 0, 0]);
        let h = encode_v2(Some((s, d)), &tlvs);
        every_chunking(&h, done(h.len(), "203.0.113.7:40000", "192.0.2.1:110"));
        // A TLV that runs past the header, a truncated TLV head.
        for bad in [vec![0x01, 0, 5, b'p', b'o', b'p', b'3'], vec![0x01, 0]] {
            let h = encode_v2(Some((s, d)), &bad);
            assert_eq!(parse(&h), Parse::Invalid(Invalid::V2Tlv));
        }
    }

    #[test]
    fn v2_strictness() {
        let (s, d) = v4();
        let good = encode_v2(Some((s, d)), &[]);
        let with = |at: usize, value: u8| {
            let mut h = good.clone();
            h[at] = value;
            parse(&h)
        };
        assert_eq!(with(12, 0x11), Parse::Invalid(Invalid::V2Version(1)));
        assert_eq!(with(12, 0x31), Parse::Invalid(Invalid::V2Version(3)));
        assert_eq!(with(12, 0x22), Parse::Invalid(Invalid::V2Command(2)));
        assert_eq!(with(12, 0x2f), Parse::Invalid(Invalid::V2Command(15)));
        // UDP, AF_UNIX, and values the spec does not define.
        for family in [0x12, 0x22, 0x31, 0x32, 0x01, 0x10, 0x13, 0x41, 0xff] {
            assert_eq!(with(13, family), Parse::Invalid(Invalid::V2Family(family)));
        }
        // A signature off by one octet, seen as soon as that octet arrives.
        for i in 0..12 {
            let mut h = good.clone();
            h[i] ^= 0x40;
            assert!(matches!(parse(&h[..=i]), Parse::Invalid(_)), "octet {i}");
        }
        // Too short for its addresses.
        let mut short = good.clone();
        short[15] = 11;
        assert_eq!(parse(&short), Parse::Invalid(Invalid::V2TooShort));
        let mut short6 = good.clone();
        short6[13] = 0x21;
        assert_eq!(parse(&short6), Parse::Invalid(Invalid::V2TooShort));
        // The length is bounded, and refused before its octets are read.
        let mut long = good[..16].to_vec();
        long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&long), Parse::Invalid(Invalid::V2TooLong));
        let mut largest = good[..16].to_vec();
        let len = u16::try_from(V2_MAX_LEN - 16).unwrap();
        largest[14..16].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&largest), Parse::NeedMore(V2_MAX_LEN - 16));
        largest[15] += 1;
        assert_eq!(parse(&largest), Parse::Invalid(Invalid::V2TooLong));
    }

    #[test]
    fn encoders_round_trip() {
        let (s, d) = v4();
        let h = encode_v1(s, d);
        assert_eq!(h, "PROXY TCP4 203.0.113.7 192.0.2.1 40000 110\r\n");
        assert_eq!(
            parse(h.as_bytes()),
            done(h.len(), "203.0.113.7:40000", "192.0.2.1:110")
        );
        let h = encode_v1(addr("[::1]:5"), d);
        assert_eq!(parse(h.as_bytes()), unknown(15));
    }

    /// What must hold of `parse` on every prefix of any input: once done or invalid it stays
    /// so, a header is done exactly at its length, and `NeedMore` never asks past it.
    fn prefix_laws(data: &[u8]) {
        let results: Vec<Parse> = (0..=data.len()).map(|j| parse(&data[..j])).collect();
        let end = results.iter().find_map(|r| match r {
            Parse::Done { header_len, .. } => Some(*header_len),
            _ => None,
        });
        for (j, r) in results.iter().enumerate() {
            match *r {
                Parse::NeedMore(n) => {
                    assert!(n >= 1);
                    assert!(end.is_none_or(|end| j + n <= end), "{j} + {n} > {end:?}");
                    assert!(!matches!(
                        results.get(..j).and_then(|r| r.last()),
                        Some(Parse::Invalid(_))
                    ));
                }
                Parse::Done {
                    header_len,
                    source,
                    destination,
                } => {
                    assert!(header_len <= j && header_len <= MAX_HEADER_LEN);
                    assert_eq!(Some(header_len), end);
                    assert_eq!(results[header_len], *r);
                    assert_eq!(source.is_some(), destination.is_some());
                    if let (Some(s), Some(d)) = (source, destination) {
                        assert_eq!(s.is_ipv4(), d.is_ipv4());
                    }
                }
                Parse::Invalid(_) => {
                    assert!(results[j..].iter().all(|r| matches!(r, Parse::Invalid(_))));
                }
            }
        }
        if let Some(end) = end {
            // The first prefix that is done is the header.
            assert!(matches!(results[end], Parse::Done { .. }));
            assert!(results[..end]
                .iter()
                .all(|r| matches!(r, Parse::NeedMore(_))));
        }
    }

    fn socket_pair() -> impl proptest::strategy::Strategy<Value = (SocketAddr, SocketAddr)> {
        use proptest::prelude::*;
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<u16>()
            )
                .prop_map(|(a, p, b, q)| (
                    (Ipv4Addr::from(a), p).into(),
                    (Ipv4Addr::from(b), q).into()
                )),
            (
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u16>()
            )
                .prop_map(|(a, p, b, q)| (
                    (Ipv6Addr::from(a), p).into(),
                    (Ipv6Addr::from(b), q).into()
                )),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_header_followed_by_anything_gives_its_addresses(
            (source, destination) in socket_pair(),
            v2 in proptest::bool::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let header = if v2 {
                encode_v2(Some((source, destination)), &[])
            } else {
                encode_v1(source, destination).into_bytes()
            };
            let mut data = header.clone();
            data.extend_from_slice(&tail);
            let expected = Parse::Done {
                header_len: header.len(),
                source: Some(source),
                destination: Some(destination),
            };
            proptest::prop_assert_eq!(parse(&data), expected);
            prefix_laws(&data);
        }

        #[test]
        fn any_input_keeps_the_prefix_laws(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
            start in 0usize..4,
        ) {
            // Most random inputs fail at the first octet: start some of them like a header.
            let mut input = match start {
                0 => Vec::new(),
                1 => b"PROXY ".to_vec(),
                2 => b"PROXY TCP4 1".to_vec(),
                _ => V2_SIGNATURE.to_vec(),
            };
            input.extend_from_slice(&data);
            prefix_laws(&input);
        }
    }

    #[test]
    fn std_address_parsers_are_as_strict_as_the_header_needs() {
        // Relied on by `v1_value`: no octal, hexadecimal or shortened IPv4 forms.
        for bad in [
            "01.2.3.4",
            "1.2.3",
            "0x1.2.3.4",
            "1.2.3.4.5",
            "256.1.1.1",
            "1..2.3",
        ] {
            assert!(bad.parse::<Ipv4Addr>().is_err(), "{bad}");
        }
        for bad in ["1::2::3", "fe80::1%1", "12345::1", ":::"] {
            assert!(bad.parse::<Ipv6Addr>().is_err(), "{bad}");
        }
    }
}
