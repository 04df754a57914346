use super::*;
use crate::line::LineFramer;
use proptest::prelude::*;

fn config() -> LmtpConfig {
    LmtpConfig {
        hostname: "mx.example.org".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_bad_commands: 10,
    }
}

fn text(r: &Reply) -> String {
    let mut out = Vec::new();
    r.encode(&mut out);
    String::from_utf8(out).unwrap()
}

fn step_text(s: &Step) -> String {
    match s {
        Step::Reply(r) | Step::Close(r) | Step::ReceiveData(r) => text(r),
        Step::CheckRecipient(a) => format!("check {a}"),
    }
}

fn cmd(s: &mut LmtpSession, line: &str) -> Step {
    s.command(Frame::Line(line.as_bytes()))
}

fn addr(local: &str, domain: &str) -> Address {
    Address {
        local: local.into(),
        domain: Some(domain.into()),
    }
}

#[test]
fn replies_are_encoded_with_enhanced_codes_and_never_split() {
    let r = Reply::new(550, Enhanced(5, 1, 1), "no\r\nsuch user");
    assert_eq!(text(&r), "550 5.1.1 no  such user\r\n");
    let multi = Reply {
        code: 250,
        status: None,
        lines: vec!["a".into(), "b".into(), "c".into()],
    };
    assert_eq!(text(&multi), "250-a\r\n250-b\r\n250 c\r\n");
}

#[test]
fn commands_parse_strictly() {
    assert_eq!(
        parse_command(b"lhlo client.example.org"),
        Ok(Command::Lhlo("client.example.org".into()))
    );
    assert_eq!(
        parse_command(b"MAIL FROM:<a@b.example> SIZE=42 BODY=8BITMIME"),
        Ok(Command::Mail {
            from: Some(addr("a", "b.example")),
            size: Some(42),
            body: Body::EightBitMime
        })
    );
    assert_eq!(
        parse_command(b"mail from: <>"),
        Ok(Command::Mail {
            from: None,
            size: None,
            body: Body::SevenBit
        })
    );
    assert_eq!(
        parse_command(b"RCPT TO:<@relay.example:bob@example.org>"),
        Ok(Command::Rcpt(addr("bob", "example.org")))
    );
    assert_eq!(
        parse_command(b"RCPT TO:<\"a b>\\\"c\"@example.org>"),
        Ok(Command::Rcpt(addr("a b>\"c", "example.org")))
    );
    assert_eq!(
        parse_command(b"RCPT TO:<Postmaster>"),
        Ok(Command::Rcpt(Address {
            local: "Postmaster".into(),
            domain: None
        }))
    );
    assert_eq!(
        parse_command(b"RCPT TO:<x@[192.0.2.1]>"),
        Ok(Command::Rcpt(addr("x", "[192.0.2.1]")))
    );
    assert_eq!(parse_command(b"DATA"), Ok(Command::Data));
    assert_eq!(parse_command(b"noop anything"), Ok(Command::Noop));
    assert_eq!(parse_command(b"EHLO x"), Ok(Command::Helo));
    for bad in [
        &b"MAIL FROM:a@b"[..],
        b"MAIL FROM:<a@b",
        b"MAIL FROM:<a@b> SIZE=",
        b"MAIL FROM:<a@b> SIZE=+5",
        b"MAIL FROM:<a@b> SIZE=1 SIZE=2",
        b"MAIL FROM:<a@b> BODY=BINARYMIME",
        b"MAIL FROM:<a@b> AUTH=<>",
        b"MAIL TO:<a@b>",
        b"RCPT TO:<>",
        b"RCPT TO:<alice>",
        b"RCPT TO:<a..b@example.org>",
        b"RCPT TO:<a@-x.org>",
        b"RCPT TO:<a@>",
        b"RCPT TO:<a@b> NOTIFY=NEVER",
        b"RCPT TO:<\"unterminated@b>",
        b"RCPT TO:<a@b\x00>",
        b"DATA now",
        b"LHLO",
        b"LHLO a b",
        b"\xff\xfe",
        b"",
        b"XYZZY",
    ] {
        assert!(
            parse_command(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long_local = format!("RCPT TO:<{}@example.org>", "a".repeat(65));
    assert!(parse_command(long_local.as_bytes()).is_err());
    let long_path = format!("RCPT TO:<a@{}.org>", "b.".repeat(130));
    assert_eq!(
        parse_command(long_path.as_bytes()),
        Err(CommandError::Syntax("path too long"))
    );
    // 21 digits is refused; 20 digits that overflow u64 is merely too large.
    assert!(parse_command(format!("MAIL FROM:<> SIZE={}", "9".repeat(21)).as_bytes()).is_err());
    assert_eq!(
        parse_command(format!("MAIL FROM:<> SIZE={}", "9".repeat(20)).as_bytes()),
        Ok(Command::Mail {
            from: None,
            size: Some(u64::MAX),
            body: Body::SevenBit
        })
    );
}

#[test]
fn addresses_display_quoted_when_needed() {
    assert_eq!(addr("a.b", "x.org").to_string(), "a.b@x.org");
    assert_eq!(addr("a b\"", "x.org").to_string(), "\"a b\\\"\"@x.org");
}

#[test]
fn a_transaction_with_a_known_and_an_unknown_recipient() {
    let mut s = LmtpSession::new(config());
    assert_eq!(
        text(&s.greeting()),
        "220 mx.example.org LMTP facteur ready\r\n"
    );
    assert!(step_text(&cmd(&mut s, "MAIL FROM:<a@b.org>")).starts_with("503 5.5.1"));
    let lhlo = step_text(&cmd(&mut s, "LHLO client"));
    assert_eq!(
        lhlo,
        "250-mx.example.org\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE 1000\r\n"
    );
    assert!(step_text(&cmd(&mut s, "RCPT TO:<x@y.org>")).starts_with("503 5.5.1"));
    assert!(step_text(&cmd(&mut s, "MAIL FROM:<a@b.org> SIZE=1001")).starts_with("552 5.3.4"));
    assert!(step_text(&cmd(&mut s, "MAIL FROM:<a@b.org> SIZE=1000")).starts_with("250 2.1.0"));
    assert!(step_text(&cmd(&mut s, "MAIL FROM:<a@b.org>")).starts_with("503 5.5.1"));
    assert!(step_text(&cmd(&mut s, "DATA")).starts_with("503 5.5.1"));
    assert_eq!(
        cmd(&mut s, "RCPT TO:<alice@example.org>"),
        Step::CheckRecipient(addr("alice", "example.org"))
    );
    // While the lookup runs, no other command is taken.
    assert!(step_text(&cmd(&mut s, "NOOP")).starts_with("503"));
    assert!(text(&s.recipient_checked(Verdict::Accepted)).starts_with("250 2.1.5"));
    assert!(matches!(
        cmd(&mut s, "RCPT TO:<nobody@example.org>"),
        Step::CheckRecipient(_)
    ));
    assert!(text(&s.recipient_checked(Verdict::Unknown)).starts_with("550 5.1.1"));
    assert!(matches!(
        cmd(&mut s, "RCPT TO:<x@elsewhere.org>"),
        Step::CheckRecipient(_)
    ));
    assert!(text(&s.recipient_checked(Verdict::OtherDomain)).starts_with("550 5.1.2"));
    assert!(matches!(
        cmd(&mut s, "RCPT TO:<bob@example.org>"),
        Step::CheckRecipient(_)
    ));
    assert!(text(&s.recipient_checked(Verdict::TempFail)).starts_with("451 4.3.0"));
    assert!(matches!(
        cmd(&mut s, "RCPT TO:<bob@example.org>"),
        Step::CheckRecipient(_)
    ));
    assert!(text(&s.recipient_checked(Verdict::Accepted)).starts_with("250"));
    assert_eq!(s.recipients().len(), 2);
    assert_eq!(s.sender(), Some(&addr("a", "b.org")));
    assert!(step_text(&cmd(&mut s, "DATA")).starts_with("354"));
    let (mut body, mut replies) = (Vec::new(), Vec::new());
    let wire = b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
    let (n, progress) = s.data(wire, &mut body, &mut replies);
    assert_eq!(progress, DataProgress::Deliver { size: 21 });
    assert_eq!(&wire[n..], b"QUIT\r\n");
    assert_eq!(body, b"Subject: hi\n\n.dot\n");
    assert_eq!(s.state(), State::Delivering);
    assert_eq!(
        text(&s.delivered(Delivery::Stored)),
        "250 2.0.0 <alice@example.org> delivered\r\n"
    );
    assert_eq!(s.state(), State::Delivering);
    assert!(text(&s.delivered(Delivery::TempFail)).starts_with("451 4.3.0 <bob@example.org>"));
    assert_eq!(s.state(), State::Ready);
    assert!(s.recipients().is_empty());
    assert!(matches!(cmd(&mut s, "QUIT"), Step::Close(r) if r.code == 221));
    assert!(matches!(cmd(&mut s, "NOOP"), Step::Close(r) if r.code == 421));
}

#[test]
fn recipients_are_capped() {
    let mut s = LmtpSession::new(config());
    cmd(&mut s, "LHLO c");
    cmd(&mut s, "MAIL FROM:<>");
    for _ in 0..3 {
        assert!(matches!(
            cmd(&mut s, "RCPT TO:<a@b.org>"),
            Step::CheckRecipient(_)
        ));
        s.recipient_checked(Verdict::Accepted);
    }
    assert!(step_text(&cmd(&mut s, "RCPT TO:<a@b.org>")).starts_with("452 4.5.3"));
    // RSET ends the transaction; the count starts again.
    assert!(step_text(&cmd(&mut s, "RSET")).starts_with("250 2.0.0"));
    assert!(step_text(&cmd(&mut s, "RCPT TO:<a@b.org>")).starts_with("503"));
    cmd(&mut s, "MAIL FROM:<>");
    assert!(matches!(
        cmd(&mut s, "RCPT TO:<a@b.org>"),
        Step::CheckRecipient(_)
    ));
}

#[test]
fn a_body_over_the_cap_is_refused_for_every_recipient() {
    let mut s = LmtpSession::new(config());
    cmd(&mut s, "LHLO c");
    cmd(&mut s, "MAIL FROM:<>");
    for _ in 0..2 {
        cmd(&mut s, "RCPT TO:<a@b.org>");
        s.recipient_checked(Verdict::Accepted);
    }
    cmd(&mut s, "DATA");
    let line = [b'x'; 98];
    let (mut body, mut replies) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let mut chunk = line.to_vec();
        chunk.extend_from_slice(b"\r\n");
        let (n, p) = s.data(&chunk, &mut body, &mut replies);
        assert_eq!((n, p), (100, DataProgress::More));
    }
    assert!(body.len() <= 1000, "{}", body.len());
    let (_, p) = s.data(b".\r\n", &mut body, &mut replies);
    assert_eq!(p, DataProgress::Refused);
    assert_eq!(replies.len(), 2);
    assert!(replies.iter().all(|r| text(r).starts_with("552 5.3.4")));
    assert_eq!(s.state(), State::Ready);
    assert!(s.recipients().is_empty());
}

#[test]
fn a_body_of_exactly_the_cap_is_taken() {
    let mut d = DataDecoder::new(10);
    let mut out = Vec::new();
    assert_eq!(
        d.feed(b"12345678\r\n.\r\n", &mut out),
        (13, Some(DataEnd::Complete { size: 10 }))
    );
    assert_eq!(out, b"12345678\n");
    let mut d = DataDecoder::new(9);
    out.clear();
    assert_eq!(
        d.feed(b"12345678\r\n.\r\n", &mut out),
        (13, Some(DataEnd::TooBig))
    );
}

#[test]
fn bad_commands_close_the_session() {
    let mut s = LmtpSession::new(config());
    for _ in 0..9 {
        assert!(matches!(cmd(&mut s, "HELO x"), Step::Reply(r) if r.code == 500));
    }
    assert!(matches!(s.command(Frame::TooLong), Step::Close(r) if r.code == 421));
    assert_eq!(s.state(), State::Closed);
}

#[test]
fn overlong_lines_are_refused_by_the_framer_cap() {
    let mut framer = LineFramer::new(MAX_LMTP_LINE);
    let mut s = LmtpSession::new(config());
    let line = format!("NOOP {}\r\n", "x".repeat(MAX_LMTP_LINE));
    let (_, frame) = framer.push(line.as_bytes());
    let step = s.command(frame.unwrap());
    assert!(step_text(&step).starts_with("500 5.5.6"));
}

/// Decode `wire` cut into chunks of `size`.
fn decode_in_chunks(wire: &[u8], size: usize, max: u64) -> (Vec<u8>, usize, Option<DataEnd>) {
    let mut d = DataDecoder::new(max);
    let (mut out, mut used) = (Vec::new(), 0);
    for chunk in wire.chunks(size) {
        let (n, end) = d.feed(chunk, &mut out);
        used += n;
        assert!(out.len() <= used + 1, "output grew faster than input");
        if end.is_some() {
            return (out, used, end);
        }
        assert_eq!(n, chunk.len());
    }
    (out, used, None)
}

#[test]
fn any_chunking_gives_the_same_body() {
    let wire = b"a\r\n.b\r\n..c\r\nlone\rcr\r\n\r\n.\r\nNOOP\r\n";
    let want = b"a\nb\n.c\nlone\rcr\n\n".to_vec();
    for size in 1..=wire.len() {
        let (out, used, end) = decode_in_chunks(wire, size, 1000);
        assert_eq!(out, want, "chunk size {size}");
        assert_eq!(used, wire.len() - 6);
        assert!(matches!(end, Some(DataEnd::Complete { .. })));
    }
}

proptest! {
    /// Stuffing then decoding gives the message back (with LF line ends), whatever the
    /// chunking, and the decoder stops right after the terminator.
    #[test]
    fn stuffed_bodies_round_trip(lines in prop::collection::vec("[.a-z\r ]{0,12}", 0..12), size in 1usize..40) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for l in &lines {
            // A CR at the end of a line would merge with its CRLF; keep the content CR-free
            // at its end, as a message's lines are.
            let l = l.trim_end_matches('\r');
            if l.starts_with('.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(l.as_bytes());
            wire.extend_from_slice(b"\r\n");
            want.extend_from_slice(l.as_bytes());
            want.push(b'\n');
        }
        wire.extend_from_slice(b".\r\nRSET\r\n");
        let (out, used, end) = decode_in_chunks(&wire, size, u64::MAX);
        prop_assert_eq!(out, want);
        prop_assert_eq!(used, wire.len() - 6);
        prop_assert!(matches!(end, Some(DataEnd::Complete { .. })), "no end");
    }

    /// No command line panics the session, and its replies are single, well-formed lines.
    #[test]
    fn no_line_panics(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut s = LmtpSession::new(config());
        cmd(&mut s, "LHLO c");
        let step = s.command(Frame::Line(&line));
        let t = step_text(&step);
        prop_assert!(t.ends_with("\r\n"));
    }
}

/// Drives a whole conversation through the framer and the session, `wire` cut in chunks of
/// `size`: what the server sends, and the bodies it was given.
fn converse(wire: &[u8], size: usize) -> (String, Vec<u8>) {
    let mut s = LmtpSession::new(config());
    let mut framer = LineFramer::new(MAX_LMTP_LINE);
    let (mut sent, mut bodies, mut replies) = (Vec::new(), Vec::new(), Vec::new());
    s.greeting().encode(&mut sent);
    for mut chunk in wire.chunks(size) {
        while !chunk.is_empty() {
            if s.state() == State::Data {
                let (n, progress) = s.data(chunk, &mut bodies, &mut replies);
                chunk = &chunk[n..];
                if let DataProgress::Deliver { .. } = progress {
                    for _ in 0..s.recipients().len() {
                        s.delivered(Delivery::Stored).encode(&mut sent);
                    }
                }
                continue;
            }
            let (n, frame) = framer.push(chunk);
            chunk = &chunk[n..];
            let Some(frame) = frame else { continue };
            match s.command(frame) {
                Step::Reply(r) | Step::ReceiveData(r) => r.encode(&mut sent),
                Step::Close(r) => {
                    r.encode(&mut sent);
                    return (String::from_utf8(sent).unwrap(), bodies);
                }
                Step::CheckRecipient(a) => {
                    let v = if a.local == "nobody" {
                        Verdict::Unknown
                    } else {
                        Verdict::Accepted
                    };
                    s.recipient_checked(v).encode(&mut sent);
                }
            }
        }
    }
    (String::from_utf8(sent).unwrap(), bodies)
}

/// The same conversation, pipelined, gives the same replies and bodies whatever the chunking.
#[test]
fn any_chunking_gives_the_same_conversation() {
    let wire = b"LHLO c\r\nMAIL FROM:<a@b.org> BODY=8BITMIME\r\nRCPT TO:<x@y.org>\r\n\
RCPT TO:<nobody@y.org>\r\nRCPT TO:<z@y.org>\r\nDATA\r\nSubject: s\r\n\r\n..x\r\n.\r\n\
NOOP\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.org>\r\nDATA\r\nb\r\n.\r\nRSET\r\nQUIT\r\nNOOP\r\n";
    let (replies, bodies) = converse(wire, wire.len());
    let codes: Vec<&str> = replies.lines().map(|l| &l[..4]).collect();
    assert_eq!(
        codes,
        [
            "220 ", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "550 ", "250 ", "354 ",
            "250 ", "250 ", "250 ", "250 ", "250 ", "354 ", "250 ", "250 ", "221 "
        ],
        "{replies}"
    );
    assert_eq!(bodies, b"Subject: s\n\n.x\nb\n");
    for size in 1..wire.len() {
        assert_eq!(
            converse(wire, size),
            (replies.clone(), bodies.clone()),
            "{size}"
        );
    }
}

/// Only CRLF . CRLF ends a body (SMTP smuggling): a '.' after a bare LF or CR is content, and
/// so is a bare line end.
#[test]
fn only_crlf_dot_crlf_ends_a_body() {
    for (wire, want) in [
        (
            &b"a\n.\nMAIL FROM:<>\r\n.\r\n"[..],
            &b"a\n.\nMAIL FROM:<>\n"[..],
        ),
        (b"a\n.\r\nb\r\n.\r\n", b"a\n.\nb\n"),
        (b"a\r\n.\nb\r\n.\r\n", b"a\n\nb\n"),
        (b"a\r.\r\nb\r\n.\r\n", b"a\r.\nb\n"),
        (b"a\r\n.\r.\r\n.\r\n", b"a\n\r.\n"),
        (b"\n.\n\r\n.\r\n", b"\n.\n\n"),
        (b".\r\n", b""),
    ] {
        for size in 1..=wire.len() {
            let (out, used, end) = decode_in_chunks(wire, size, 1000);
            assert_eq!(
                (out.as_slice(), used, end.is_some()),
                (want, wire.len(), true),
                "{:?} in chunks of {size}",
                String::from_utf8_lossy(wire)
            );
        }
    }
    // A bare LF terminator is no terminator: everything after it is still body.
    let (_, _, end) = decode_in_chunks(b"a\n.\nQUIT\r\n", 3, 1000);
    assert_eq!(end, None);
}
