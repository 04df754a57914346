use super::*;
use crate::dot::WireSize;
use crate::types::Uidl;
use proptest::prelude::*;

fn meta(size: u64, uid: &str) -> MessageMeta {
    MessageMeta {
        size,
        uid: Uidl::new(uid).unwrap(),
    }
}

/// The maildrop of these tests: three messages; the second is empty (sizes as the store
/// counts them: LF as CRLF).
fn maildrop() -> Vec<MessageMeta> {
    vec![meta(537, "a"), meta(0, "b"), meta(128, "c")]
}

fn session() -> Pop2Session {
    Pop2Session::new(Pop2Config::default())
}

/// Feed one line; the events it needs are answered as a driver would: the password
/// "secret" opens [`maildrop`] (the user "busy" finds it locked), any other fails; a
/// retrieval is noted in the output as `<message i, n octets>`; an update succeeds.
fn line(s: &mut Pop2Session, text: &str) -> String {
    let mut out = Vec::new();
    feed(s, format!("{text}\r\n").as_bytes(), usize::MAX, &mut out);
    String::from_utf8(out).unwrap()
}

/// Feed `input` in chunks of `chunk` octets, answering events as [`line`] says; stops at
/// the end of the session. Returns the events seen.
fn feed(s: &mut Pop2Session, input: &[u8], chunk: usize, out: &mut Vec<u8>) -> Vec<Event> {
    let mut events = Vec::new();
    for mut piece in input.chunks(chunk.max(1)) {
        while !piece.is_empty() && s.state() != State::Done {
            let (used, event) = s.handle_input(piece, out);
            piece = &piece[used..];
            let mut next = event;
            while let Some(event) = next.take() {
                next = match &event {
                    Event::Authenticate { user, password } => {
                        let result = if user == "busy" {
                            LoginResult::InUse
                        } else if password.expose() == b"secret" {
                            LoginResult::Success {
                                user: user.clone(),
                                // The RFC's example user has two messages.
                                messages: if user == "JSmith" {
                                    vec![meta(537, "a"), meta(128, "c")]
                                } else {
                                    maildrop()
                                },
                            }
                        } else {
                            LoginResult::Failed
                        };
                        s.login_result(result, out)
                    }
                    Event::Retrieve { index, size } => {
                        out.extend_from_slice(
                            format!("<message {index}, {size} octets>").as_bytes(),
                        );
                        None
                    }
                    Event::Update { .. } => s.update_result(Ok(()), out),
                    Event::Close => None,
                };
                events.push(event);
            }
            if used == 0 {
                break;
            }
        }
    }
    events
}

fn logged_in() -> Pop2Session {
    let mut s = session();
    assert_eq!(line(&mut s, "HELO alice secret"), "#3 messages\r\n");
    s
}

/// RFC 937's example session: HELO, READ, RETR, ACKS, RETR, ACKD, QUIT; the message that was
/// deleted is the one acknowledged with ACKD, and only at QUIT.
#[test]
fn rfc937_example_session() {
    let mut s = session();
    let mut out = Vec::new();
    s.greeting(&mut out);
    assert_eq!(out, b"+ POP2 server ready\r\n");
    assert_eq!(line(&mut s, "HELO JSmith secret"), "#2 messages\r\n");
    assert_eq!(s.state(), State::Mbox);
    assert_eq!(line(&mut s, "READ"), "=537 octets\r\n");
    assert_eq!(s.state(), State::Item);
    assert_eq!(line(&mut s, "RETR"), "<message 0, 537 octets>");
    assert_eq!(s.state(), State::Next);
    assert_eq!(line(&mut s, "ACKS"), "=128 octets\r\n");
    assert_eq!(s.current(), 2);
    assert_eq!(line(&mut s, "RETR"), "<message 1, 128 octets>");
    assert_eq!(line(&mut s, "ACKD"), "=0 no more messages\r\n");
    assert_eq!(s.deleted_count(), 1);
    let mut out = Vec::new();
    let events = feed(&mut s, b"QUIT\r\n", 100, &mut out);
    assert_eq!(
        events,
        vec![Event::Update { deletions: vec![1] }, Event::Close]
    );
    assert_eq!(out, b"+ bye, 1 message deleted\r\n");
    assert_eq!(s.state(), State::Done);
}

/// An empty message cannot be sent (POP2 cannot tell it from none): `=0`, and RETR refused.
#[test]
fn an_empty_message_reads_as_none() {
    let mut s = logged_in();
    assert_eq!(line(&mut s, "READ 2"), "=0 no more messages\r\n");
    assert_eq!(line(&mut s, "RETR"), "- no message to retrieve\r\n");
    assert_eq!(line(&mut s, "READ 3"), "=128 octets\r\n");
}

#[test]
fn nack_stays_and_acks_moves_on() {
    let mut s = logged_in();
    assert_eq!(line(&mut s, "READ 1"), "=537 octets\r\n");
    assert_eq!(line(&mut s, "RETR"), "<message 0, 537 octets>");
    assert_eq!(line(&mut s, "NACK"), "=537 octets\r\n");
    assert_eq!(s.current(), 1);
    assert_eq!(line(&mut s, "RETR"), "<message 0, 537 octets>");
    assert_eq!(line(&mut s, "ACKD"), "=0 no more messages\r\n");
    assert_eq!(s.current(), 2);
    // The deleted message is gone for the rest of the session, and cannot be sent again.
    assert_eq!(line(&mut s, "READ 1"), "=0 no more messages\r\n");
    assert_eq!(line(&mut s, "RETR"), "- no message to retrieve\r\n");
    // ACKD again is out of turn: nothing more is deleted.
    assert_eq!(
        line(&mut s, "ACKD"),
        "- no message was sent: READ and RETR first\r\n"
    );
    assert_eq!(s.deleted_count(), 1);
    // FOLD keeps the numbering: still 3 messages, the first of them deleted.
    assert_eq!(line(&mut s, "FOLD INBOX"), "#3 messages\r\n");
    assert_eq!(line(&mut s, "READ"), "=0 no more messages\r\n");
    assert_eq!(line(&mut s, "READ 4"), "=0 no more messages\r\n");
    assert_eq!(line(&mut s, "READ 4294967295"), "=0 no more messages\r\n");
    assert_eq!(line(&mut s, "RETR"), "- no message to retrieve\r\n");
}

#[test]
fn quit_while_a_message_awaits_its_acknowledgement_deletes_only_what_was_acked() {
    let mut s = logged_in();
    line(&mut s, "READ 1");
    line(&mut s, "RETR");
    line(&mut s, "ACKD");
    line(&mut s, "READ 3");
    line(&mut s, "RETR");
    let mut out = Vec::new();
    let events = feed(&mut s, b"QUIT\r\n", 100, &mut out);
    assert_eq!(events[0], Event::Update { deletions: vec![0] });
    assert_eq!(out, b"+ bye, 1 message deleted\r\n");
}

#[test]
fn a_failed_update_is_a_minus() {
    let mut s = logged_in();
    let mut out = Vec::new();
    let (_, event) = s.handle_input(b"QUIT\r\n", &mut out);
    assert_eq!(event, Some(Event::Update { deletions: vec![] }));
    assert!(s.is_awaiting());
    // Nothing is taken while the update runs.
    assert_eq!(s.handle_input(b"READ\r\n", &mut out), (0, None));
    assert_eq!(s.update_result(Err(()), &mut out), Some(Event::Close));
    assert_eq!(out, b"- some deletions could not be applied\r\n");
    // A result nobody asked for is ignored.
    assert_eq!(s.update_result(Ok(()), &mut out), None);
    assert_eq!(s.login_result(LoginResult::Failed, &mut out), None);
}

/// Every command in every state: the reply, and the state after it.
#[test]
fn every_command_in_every_state() {
    // How to reach each state (Done is reached by QUIT).
    let reach: [(State, &[&str]); 4] = [
        (State::Auth, &[]),
        (State::Mbox, &["HELO alice secret"]),
        (State::Item, &["HELO alice secret", "READ"]),
        (State::Next, &["HELO alice secret", "READ", "RETR"]),
    ];
    // (state, command, the reply's start, the state after)
    let cases: &[(State, &str, &str, State)] = &[
        (State::Auth, "HELO alice secret", "#3", State::Mbox),
        (
            State::Auth,
            "HELO alice wrong",
            "- invalid user name",
            State::Done,
        ),
        (
            State::Auth,
            "HELO busy secret",
            "- maildrop is locked",
            State::Done,
        ),
        (State::Auth, "FOLD INBOX", "- send HELO", State::Auth),
        (State::Auth, "READ", "- send HELO", State::Auth),
        (State::Auth, "READ 1", "- send HELO", State::Auth),
        (State::Auth, "RETR", "- send HELO", State::Auth),
        (State::Auth, "ACKS", "- send HELO", State::Auth),
        (State::Auth, "ACKD", "- send HELO", State::Auth),
        (State::Auth, "NACK", "- send HELO", State::Auth),
        (State::Auth, "QUIT", "+ bye", State::Done),
        (
            State::Mbox,
            "HELO alice secret",
            "- already logged in",
            State::Mbox,
        ),
        (State::Mbox, "FOLD inbox", "#3", State::Mbox),
        (State::Mbox, "FOLD alice", "#3", State::Mbox),
        (State::Mbox, "FOLD bob", "- no such folder", State::Mbox),
        (
            State::Mbox,
            "FOLD /usr/spool/mail/alice",
            "- no such folder",
            State::Mbox,
        ),
        (State::Mbox, "READ", "=537", State::Item),
        (State::Mbox, "READ 3", "=128", State::Item),
        (State::Mbox, "READ 9", "=0", State::Item),
        (State::Mbox, "RETR", "- READ a message first", State::Mbox),
        (State::Mbox, "ACKS", "- no message was sent", State::Mbox),
        (State::Mbox, "ACKD", "- no message was sent", State::Mbox),
        (State::Mbox, "NACK", "- no message was sent", State::Mbox),
        (State::Mbox, "QUIT", "+ bye", State::Done),
        (
            State::Item,
            "HELO alice secret",
            "- already logged in",
            State::Item,
        ),
        (State::Item, "FOLD INBOX", "#3", State::Mbox),
        (State::Item, "FOLD Drafts", "- no such folder", State::Item),
        (State::Item, "READ", "=537", State::Item),
        (State::Item, "READ 2", "=0", State::Item),
        (State::Item, "RETR", "<message 0, 537 octets>", State::Next),
        (State::Item, "ACKS", "- no message was sent", State::Item),
        (State::Item, "ACKD", "- no message was sent", State::Item),
        (State::Item, "NACK", "- no message was sent", State::Item),
        (State::Item, "QUIT", "+ bye", State::Done),
        (
            State::Next,
            "HELO alice secret",
            "- already logged in",
            State::Next,
        ),
        (
            State::Next,
            "FOLD INBOX",
            "- ACKS, ACKD or NACK expected",
            State::Next,
        ),
        (
            State::Next,
            "READ",
            "- ACKS, ACKD or NACK expected",
            State::Next,
        ),
        (
            State::Next,
            "READ 1",
            "- ACKS, ACKD or NACK expected",
            State::Next,
        ),
        (
            State::Next,
            "RETR",
            "- ACKS, ACKD or NACK expected",
            State::Next,
        ),
        (State::Next, "ACKS", "=0", State::Item),
        (State::Next, "ACKD", "=0", State::Item),
        (State::Next, "NACK", "=537", State::Item),
        (State::Next, "QUIT", "+ bye", State::Done),
    ];
    for &(state, command, reply, after) in cases {
        let (_, setup) = reach.iter().find(|(s, _)| *s == state).unwrap();
        let mut s = session();
        for l in setup.iter() {
            line(&mut s, l);
        }
        assert_eq!(s.state(), state, "setup of {state:?}");
        let got = line(&mut s, command);
        assert!(
            got.starts_with(reply),
            "{command} in {state:?}: {got:?}, expected {reply:?}"
        );
        assert_eq!(s.state(), after, "{command} in {state:?}");
        if after == State::Done {
            // Nothing more is taken after the end.
            let mut out = Vec::new();
            assert_eq!(s.handle_input(b"QUIT\r\n", &mut out), (0, None));
            assert!(out.is_empty());
        }
    }
}

#[test]
fn bad_lines_are_answered_and_the_session_goes_on() {
    let mut s = logged_in();
    for (bad, reply) in [
        ("NOOP", "- unknown command"),
        ("", "- unknown command"),
        ("READ 0", "- invalid message number"),
        ("READ 4294967296", "- invalid message number"),
        ("READ 18446744073709551617", "- invalid message number"),
        ("READ -1", "- invalid message number"),
        ("READ +1", "- invalid message number"),
        ("READ 1x", "- invalid message number"),
        ("READ 1 2", "- READ takes at most one"),
        ("RETR 1", "- this command takes no argument"),
        ("ACKS now", "- this command takes no argument"),
        ("QUIT now", "- this command takes no argument"),
        ("FOLD", "- FOLD needs exactly one"),
        ("FOLD a b", "- FOLD needs exactly one"),
        ("FOLD IN\u{1}BOX", "- the folder name must be printable"),
        ("READ\t1", "- unknown command"),
    ] {
        let got = line(&mut s, bad);
        assert!(got.starts_with(reply), "{bad:?}: {got:?}");
        assert_eq!(s.state(), State::Mbox, "{bad:?}");
    }
    // A line over the cap is one bad command, and the next line is read as usual.
    let mut out = Vec::new();
    let mut long = vec![b'X'; MAX_POP2_LINE + 10];
    long.extend_from_slice(b"\r\nREAD\r\n");
    feed(&mut s, &long, 7, &mut out);
    assert_eq!(out, b"- line too long\r\n=537 octets\r\n");
    // Verbs in any case; runs of spaces between arguments.
    assert_eq!(line(&mut s, "read   3"), "=128 octets\r\n");
}

#[test]
fn helo_shapes() {
    assert_eq!(
        parse_command(b"helo  alice  pass word "),
        Ok(Command::Helo {
            user: "alice".into(),
            password: Secret::new(b"pass word ".to_vec()),
        })
    );
    for bad in [&b"HELO"[..], b"HELO alice", b"HELO alice ", b"HELO  "] {
        assert_eq!(
            parse_command(bad),
            Err(ParseError::Syntax("HELO needs a user name and a password")),
            "{bad:?}"
        );
    }
    assert!(parse_command(b"HELO al\xffice secret").is_err());
    assert!(parse_command(b"HELO alice sec\x00ret").is_err());
    // Before login, a bad HELO is a bad command, not a login: the session goes on.
    let mut s = session();
    assert!(line(&mut s, "HELO alice").starts_with("- HELO needs"));
    assert_eq!(s.state(), State::Auth);
    assert_eq!(line(&mut s, "HELO alice secret"), "#3 messages\r\n");
}

#[test]
fn plaintext_refused_ends_the_session_before_any_check() {
    let mut s = Pop2Session::new(Pop2Config {
        plaintext_allowed: false,
        ..Pop2Config::default()
    });
    let mut out = Vec::new();
    let events = feed(&mut s, b"HELO alice secret\r\nREAD\r\n", 3, &mut out);
    // No Authenticate: the password is not even looked at.
    assert_eq!(events, vec![Event::Close]);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("- plaintext login is not allowed from this address"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
    assert_eq!(s.state(), State::Done);
}

#[test]
fn too_many_bad_commands_close() {
    let mut s = Pop2Session::new(Pop2Config {
        max_bad_commands: 3,
        ..Pop2Config::default()
    });
    let mut out = Vec::new();
    let events = feed(&mut s, b"A\r\nB\r\nC\r\nD\r\n", 100, &mut out);
    assert_eq!(events, vec![Event::Close]);
    assert!(s.closed_for_errors());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "- unknown command\r\n- unknown command\r\n- unknown command\r\n\
         - too many bad commands, closing connection\r\n"
    );
}

#[test]
fn login_failures_end_the_session() {
    for (result, text) in [
        (LoginResult::Failed, "- invalid user name or password\r\n"),
        (LoginResult::SystemError, "- cannot open the maildrop now"),
        (
            LoginResult::Refused("user name too long"),
            "- user name too long\r\n",
        ),
    ] {
        let mut s = session();
        let mut out = Vec::new();
        let (_, event) = s.handle_input(b"HELO a b\r\n", &mut out);
        assert!(matches!(event, Some(Event::Authenticate { .. })));
        assert_eq!(s.login_result(result, &mut out), Some(Event::Close));
        assert!(String::from_utf8(out).unwrap().starts_with(text));
        assert_eq!(s.state(), State::Done);
    }
}

#[test]
fn replies_never_split() {
    let mut out = Vec::new();
    Reply::Err("a\r\nb".into()).encode(&mut out);
    assert_eq!(out, b"- a  b\r\n");
    assert_eq!(Reply::Count(1).to_string(), "#1 message");
    assert_eq!(Reply::Size(5).to_string(), "=5 octets");
}

/// A whole session replayed in every chunk size from 1 to its length gives the same output
/// and the same events.
#[test]
fn chunked_input_gives_the_same_session() {
    let script: &[u8] = b"FOLD INBOX\r\nHELO alice wrong-first\r\n";
    let mut reference = None;
    // A session with every kind of line, including one too long and a bare LF end.
    let mut input =
        b"READ\r\nHELO  alice secret\r\nREAD 3\nRETR\r\nNACK\r\nRETR\r\nACKD\r\n".to_vec();
    input.extend_from_slice(&[b'Z'; 600]);
    input.extend_from_slice(b"\r\nFOLD alice\r\nREAD 1\r\nRETR\r\nACKS\r\nQUIT\r\nREAD\r\n");
    for chunk in 1..=input.len() {
        let mut s = session();
        let mut out = Vec::new();
        let events = feed(&mut s, &input, chunk, &mut out);
        let got = (out, events);
        match &reference {
            None => reference = Some(got),
            Some(r) => assert_eq!(&got, r, "chunk size {chunk}"),
        }
    }
    let (out, events) = reference.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "- send HELO user password first\r\n#3 messages\r\n=128 octets\r\n\
         <message 2, 128 octets>=128 octets\r\n<message 2, 128 octets>=0 no more messages\r\n\
         - line too long\r\n#3 messages\r\n=537 octets\r\n<message 0, 537 octets>\
         =0 no more messages\r\n+ bye, 1 message deleted\r\n"
    );
    assert_eq!(events.last(), Some(&Event::Close));
    assert!(events.contains(&Event::Update { deletions: vec![2] }));
    // A failed HELO ends it whatever the chunking.
    for chunk in 1..=script.len() {
        let mut s = session();
        let mut out = Vec::new();
        feed(&mut s, script, chunk, &mut out);
        assert_eq!(
            out,
            b"- send HELO user password first\r\n- invalid user name or password\r\n"
        );
    }
}

#[test]
fn body_encoder_sends_crlf_and_nothing_else() {
    let stored = b"Subject: x\n\n.dot\r\nlone\rcr\nend";
    let mut size = WireSize::new();
    size.update(stored);
    let size = size.total();
    let mut out = Vec::new();
    let mut e = BodyEncoder::new(size);
    e.encode(stored, &mut out).unwrap();
    e.finish().unwrap();
    assert_eq!(out, b"Subject: x\r\n\r\n.dot\r\nlone\rcr\r\nend");
    assert_eq!(out.len() as u64, size);
}

#[test]
fn body_encoder_refuses_a_wrong_count() {
    let mut out = Vec::new();
    let mut e = BodyEncoder::new(5);
    assert_eq!(e.encode(b"abc\nde", &mut out), Err(SizeMismatch::Longer));
    // Never more than the count on the wire.
    assert_eq!(out, b"abc\r\n");
    let mut e = BodyEncoder::new(10);
    e.encode(b"abc\n", &mut out).unwrap();
    assert_eq!(e.left(), 5);
    assert_eq!(e.finish(), Err(SizeMismatch::Shorter { missing: 5 }));
}

proptest! {
    /// In any chunking, the encoder sends the stored message with CRLF ends, exactly as many
    /// octets as the store's count says, and the same octets as in one piece.
    #[test]
    fn body_encoder_matches_the_wire_size(
        stored in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'.'), any::<u8>()], 0..300),
        cuts in proptest::collection::vec(0usize..300, 0..6),
    ) {
        let mut size = WireSize::new();
        size.update(&stored);
        let size = size.total();
        let mut whole = Vec::new();
        let mut e = BodyEncoder::new(size);
        e.encode(&stored, &mut whole).unwrap();
        e.finish().unwrap();
        prop_assert_eq!(whole.len() as u64, size);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stored.len())).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut e = BodyEncoder::new(size);
        let mut from = 0;
        for c in cuts.into_iter().chain([stored.len()]) {
            e.encode(&stored[from..c], &mut pieces).unwrap();
            from = c;
        }
        e.finish().unwrap();
        prop_assert_eq!(&pieces, &whole);
        // Every LF is preceded by a CR.
        for (i, &b) in whole.iter().enumerate() {
            if b == b'\n' {
                prop_assert!(i > 0 && whole[i - 1] == b'\r');
            }
        }
    }

    /// Any bytes, in any chunking: no panic, every reply a line of its own kind.
    #[test]
    fn any_input_gives_well_formed_replies(
        input in proptest::collection::vec(any::<u8>(), 0..400),
        chunk in 1usize..50,
    ) {
        let mut s = session();
        let mut out = Vec::new();
        feed(&mut s, &input, chunk, &mut out);
        let text = String::from_utf8_lossy(&out).replace("<message", "\r\n<message");
        for l in text.split("\r\n").filter(|l| !l.is_empty() && !l.starts_with("<message")) {
            prop_assert!(
                l.starts_with("+ ") || l.starts_with("- ") || l.starts_with('#') || l.starts_with('='),
                "{:?}", l
            );
        }
    }
}
