//! `DotEncoder` then `DotDecoder` on any stored message, each cut at fuzz-chosen points: the
//! client gets the message back with CRLF line ends and stops right after the terminator;
//! `WireSize` is exactly what RETR sends before stuffing; TOP sends a prefix of what RETR sends,
//! whatever the chunking.
#![no_main]

use facteur_proto::dot::{DotDecoder, DotEncoder, WireSize};
use libfuzzer_sys::fuzz_target;

/// Cut `data` at three points given as fractions of its length (0..=255).
fn cut<'a>(data: &'a [u8], at: &[u8]) -> [&'a [u8]; 4] {
    let mut c: Vec<usize> = at
        .iter()
        .map(|&p| usize::from(p) * data.len() / 255)
        .collect();
    c.sort_unstable();
    [
        &data[..c[0]],
        &data[c[0]..c[1]],
        &data[c[1]..c[2]],
        &data[c[2]..],
    ]
}

fn encode(top: Option<u64>, chunks: [&[u8]; 4]) -> Vec<u8> {
    let mut enc = DotEncoder::new(top);
    let mut out = Vec::new();
    for c in chunks {
        enc.encode(c, &mut out);
    }
    enc.finish(&mut out);
    out
}

/// The stored lines: (content before its LF, whether a LF ended it); a last line without LF only
/// if it is not empty.
fn lines(msg: &[u8]) -> Vec<(&[u8], bool)> {
    let mut v: Vec<(&[u8], bool)> = msg.split(|&b| b == b'\n').map(|l| (l, true)).collect();
    if let Some(last) = v.last_mut() {
        last.1 = false;
    }
    v.retain(|&(l, has_lf)| has_lf || !l.is_empty());
    v
}

/// The message as a client must get it: every line ending in CRLF (a CRLF stays one CRLF).
fn crlf_normalised(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (line, has_lf) in lines(msg) {
        out.extend_from_slice(line);
        out.extend_from_slice(if has_lf && line.ends_with(b"\r") {
            b"\n"
        } else {
            b"\r\n"
        });
    }
    out
}

fuzz_target!(|input: &[u8]| {
    // One byte picks TOP's line count (or RETR), three cut the message, three cut the wire.
    let Some((head, msg)) = input.split_at_checked(7) else {
        return;
    };
    let top = (head[0] < 200).then_some(u64::from(head[0] % 8));

    let wire = encode(None, cut(msg, &head[1..4]));
    assert_eq!(
        wire,
        encode(None, [msg, &[], &[], &[]]),
        "chunking changed RETR"
    );

    // WireSize: the RETR bytes less the stuffing dots and the terminator (with the CRLF added
    // before it when the message does not end in a newline).
    let mut size = WireSize::new();
    cut(msg, &head[1..4]).iter().for_each(|c| size.update(c));
    let stuffing = lines(msg)
        .iter()
        .filter(|(l, _)| l.starts_with(b"."))
        .count();
    let terminator = if msg.is_empty() || msg.ends_with(b"\n") {
        3
    } else {
        5
    };
    assert_eq!(
        size.total(),
        (wire.len() - stuffing - terminator) as u64,
        "WireSize"
    );

    // The client side, with the next response pipelined behind the terminator.
    let mut stream = wire.clone();
    stream.extend_from_slice(b"+OK next\r\n");
    let mut dec = DotDecoder::new();
    let (mut got, mut consumed) = (Vec::new(), 0);
    for c in cut(&stream, &head[4..7]) {
        if dec.is_done() {
            break;
        }
        let (n, done) = dec.decode(c, &mut got);
        assert!(
            n == c.len() || (done && n < c.len()),
            "consumed {n} of {}",
            c.len()
        );
        consumed += n;
    }
    assert!(dec.is_done(), "terminator not found");
    assert_eq!(consumed, wire.len(), "decoder ran past the terminator");
    assert_eq!(got, crlf_normalised(msg), "round trip");

    // TOP: chunking does not matter, and its lines are the first lines of RETR.
    let Some(n) = top else { return };
    let top_wire = encode(Some(n), cut(msg, &head[4..7]));
    assert_eq!(
        top_wire,
        encode(Some(n), [msg, &[], &[], &[]]),
        "chunking changed TOP {n}"
    );
    let body = |w: &[u8]| w.len() - 3;
    assert!(
        wire[..body(&wire)].starts_with(&top_wire[..body(&top_wire)]),
        "TOP {n} is not a prefix of RETR"
    );
});
