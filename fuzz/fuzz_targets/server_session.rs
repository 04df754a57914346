//! A `ServerSession` driven as the real driver does (bytes through a `LineFramer`, every event
//! answered), by any byte stream. Never panics; every command gets an answer; every reply line is
//! a status line, a line of a listing or the "." ending one, and ends in CRLF; and once logged in,
//! the session agrees with a simple model of the maildrop: a message is there until DELE, back
//! after RSET, and a deleted one vanishes from STAT, LIST, UIDL, RETR, TOP and DELE. Under
//! EXPIRE 0 the messages RETR sent are deleted at QUIT too; under EXPIRE 7 they are reported as
//! retrieved (TOP never counts).
#![no_main]

use facteur_proto::command::{self, Command};
use facteur_proto::line::{Frame, LineFramer};
use facteur_proto::policy::{Expire, Policy};
use facteur_proto::server::{AuthResult, Event, ServerConfig, ServerSession, State};
use facteur_proto::{Lang, MessageMeta, MsgNum, Uidl};
use libfuzzer_sys::fuzz_target;

fn size(i: usize) -> u64 {
    i as u64 * 100 + 17
}

fn maildrop(count: usize) -> Vec<MessageMeta> {
    (0..count)
        .map(|i| MessageMeta {
            size: size(i),
            uid: Uidl::new(format!("uid-{i}")).expect("valid"),
        })
        .collect()
}

/// What the session should believe once logged in: which messages are not deleted.
struct Model {
    live: Vec<bool>,
    /// Sent whole by RETR in this session (RSET does not undo it).
    retrieved: Vec<bool>,
}

impl Model {
    fn is_live(&self, n: MsgNum) -> bool {
        self.live.get(n.index()).copied().unwrap_or(false)
    }
    fn stat(&self) -> String {
        let live = (0..self.live.len()).filter(|&i| self.live[i]);
        format!(
            "+OK {} {}",
            live.clone().count(),
            live.map(size).sum::<u64>()
        )
    }
}

/// Check one reply's shape; `listing` is the kind of multi-line block a `+OK` opens, if any.
fn check_shape(out: &[u8], listing: Option<Listing>, model: Option<&Model>) {
    assert!(
        out.ends_with(b"\r\n"),
        "reply does not end in CRLF: {out:?}"
    );
    let mut lines = out.split_inclusive(|&b| b == b'\n').map(|l| {
        let l = l
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("bare LF in {out:?}"));
        assert!(!l.contains(&b'\r'), "bare CR in {out:?}");
        l
    });
    while let Some(status) = lines.next() {
        let ok = status == b"+OK" || status.starts_with(b"+OK ");
        assert!(
            ok || status == b"-ERR" || status.starts_with(b"-ERR "),
            "not a status: {out:?}"
        );
        let Some(kind) = listing.filter(|_| ok) else {
            continue;
        };
        let mut next_live = 0;
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("listing without '.': {out:?}"));
            if line == b"." {
                break;
            }
            assert!(
                !line.is_empty() && !line.starts_with(b"."),
                "listing line {line:?}"
            );
            if let Listing::Languages = kind {
                // "tag description", the description in UTF-8 (RFC 6856 section 3).
                let text = std::str::from_utf8(line).expect("a LANG line is UTF-8");
                let (tag, description) = text.split_once(' ').expect("a tag and a description");
                assert!(Lang::from_tag(tag).is_some(), "LANG line {text:?}");
                assert!(!description.chars().any(char::is_control), "LANG line {text:?}");
                continue;
            }
            assert!(
                line.iter().all(|&b| (0x20..0x7f).contains(&b)),
                "listing line {line:?}"
            );
            if let (Listing::Messages, Some(m)) = (kind, model) {
                // Exactly the live messages, in order, as "n size" or "n uid".
                let i = (next_live..m.live.len())
                    .find(|&i| m.live[i])
                    .expect("extra line");
                let text = String::from_utf8_lossy(line);
                assert!(
                    text == format!("{} {}", i + 1, size(i))
                        || text == format!("{} uid-{i}", i + 1),
                    "listing line {text:?}, expected message {}",
                    i + 1
                );
                next_live = i + 1;
            }
        }
        if let (Listing::Messages, Some(m)) = (kind, model) {
            assert!(
                !m.live[next_live..].contains(&true),
                "listing misses a message: {out:?}"
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Listing {
    /// CAPA, or AUTH without a mechanism.
    Names,
    /// LIST or UIDL without an argument.
    Messages,
    /// LANG without an argument.
    Languages,
}

fuzz_target!(|input: &[u8]| {
    // Four bytes of setup, then what the client sends.
    let Some((head, mut stream)) = input.split_at_checked(4) else {
        return;
    };
    let config = ServerConfig {
        implementation: "facteur-fuzz".into(),
        apop_timestamp: (head[0] & 1 != 0).then(|| "<1.2@fuzz>".into()),
        user_pass_allowed: head[0] & 2 == 0,
        stls_available: head[0] & 4 != 0,
        sasl_mechanisms: match head[0] & 8 {
            0 => Vec::new().into(),
            _ => vec!["PLAIN".into(), "LOGIN".into()].into(),
        },
        enable_last: head[0] & 16 != 0,
        max_bad_commands: u32::from(head[1] & 31),
        language: if head[1] & 128 != 0 { Lang::Fr } else { Lang::En },
        ..ServerConfig::default()
    };
    let count = usize::from(head[0] >> 5);
    let update_ok = head[1] & 32 == 0;
    // The store deferred the sizes: the session gets zeros, then the real sizes when it asks.
    let sizes_deferred = head[1] & 64 != 0;
    let budget = usize::from(head[3]) + 1;
    // The user's EXPIRE, given at login.
    let expire = match (head[1] & 128 != 0, count % 2) {
        (true, _) => Expire::Days(0),
        (false, 1) => Expire::Days(7),
        _ => Expire::Never,
    };

    let mut session = ServerSession::new(config);
    let mut framer = LineFramer::default();
    let mut out = Vec::new();
    session.greeting(&mut out);
    check_shape(&out, None, None);
    let mut model: Option<Model> = None;
    let mut logins = 0u32;

    while !stream.is_empty() {
        let (n, frame) = framer.push(stream);
        stream = &stream[n..];
        out.clear();
        let before = session.state();
        let (cmd, mut event) = match frame {
            None => break,
            Some(Frame::TooLong) => (None, session.handle_too_long(&mut out)),
            Some(Frame::Line(line)) => {
                let line = line.to_vec();
                (
                    command::parse(&line).ok(),
                    session.handle_line(&line, &mut out),
                )
            }
        };
        let mut listing = match cmd {
            Some(
                Command::Capa
                | Command::Auth {
                    mechanism: None, ..
                },
            ) => Some(Listing::Names),
            Some(Command::Lang(None)) => Some(Listing::Languages),
            _ => None,
        };
        let mut closed = false;
        while let Some(ev) = event.take() {
            event = match ev {
                Event::Authenticate { .. } | Event::Apop { .. } | Event::Sasl { .. } => {
                    let result = match (head[2] >> (2 * (logins % 4))) & 3 {
                        0 => AuthResult::Failed,
                        1 => AuthResult::InUse,
                        2 => AuthResult::SystemError {
                            permanent: logins % 2 == 1,
                        },
                        _ => AuthResult::Success {
                            user: "fuzz".into(),
                            messages: if sizes_deferred {
                                maildrop(count)
                                    .into_iter()
                                    .map(|m| MessageMeta { size: 0, ..m })
                                    .collect::<Vec<_>>()
                                    .into()
                            } else {
                                maildrop(count).into()
                            },
                            sizes_known: !sizes_deferred,
                        },
                    };
                    if matches!(result, AuthResult::Success { .. }) {
                        model = Some(Model {
                            live: vec![true; count],
                            retrieved: vec![false; count],
                        });
                        session.set_policy(Policy {
                            login_delay: 0,
                            expire,
                        });
                    }
                    logins += 1;
                    session.auth_result(result, &mut out)
                }
                Event::MessageSizes => {
                    assert!(sizes_deferred, "sizes asked for though they were given");
                    session.sizes_result(Some(maildrop(count).iter().map(|m| m.size).collect()), &mut out)
                }
                Event::Listing => {
                    listing = Some(Listing::Messages);
                    while !session.fill_listing(&mut out, budget) {}
                    None
                }
                Event::Retrieve { index, top_lines } => {
                    let m = model.as_mut().expect("RETR before login");
                    assert!(
                        m.live.get(index) == Some(&true),
                        "RETR/TOP of message index {index}"
                    );
                    // The driver sent it whole.
                    session.retrieval_complete();
                    if top_lines.is_none() {
                        m.retrieved[index] = true;
                    }
                    None
                }
                Event::Update {
                    deletions,
                    retrieved,
                } => {
                    let m = model.as_ref().expect("UPDATE before login");
                    let expire0 = expire == Expire::Days(0);
                    let dead: Vec<usize> = (0..m.live.len())
                        .filter(|&i| !m.live[i] || (expire0 && m.retrieved[i]))
                        .collect();
                    assert_eq!(deletions, dead, "UPDATE deletes the wrong messages");
                    let kept_retrieved: Vec<usize> = (0..m.live.len())
                        .filter(|&i| expire == Expire::Days(7) && m.live[i] && m.retrieved[i])
                        .collect();
                    assert_eq!(
                        retrieved, kept_retrieved,
                        "UPDATE reports the wrong retrievals"
                    );
                    session.update_result(if update_ok { Ok(()) } else { Err(()) }, &mut out)
                }
                Event::StartTls => {
                    // The driver drops what was buffered; what follows stands for the bytes the
                    // client sends once TLS is up.
                    framer.clear();
                    session.set_tls_active(true, vec!["PLAIN".into()].into());
                    None
                }
                Event::Close => {
                    closed = true;
                    None
                }
            };
        }
        assert!(!session.is_awaiting(), "every event was answered");
        check_shape(&out, listing, model.as_ref());

        // Once logged in, the session agrees with the model of the maildrop.
        if let (State::Transaction, Some(m), Some(cmd)) = (before, model.as_mut(), cmd) {
            let ok = out.starts_with(b"+OK");
            match cmd {
                Command::Dele(n) => {
                    assert_eq!(ok, m.is_live(n), "DELE {n}");
                    if ok {
                        m.live[n.index()] = false;
                    }
                }
                Command::Retr(n)
                | Command::Top(n, _)
                | Command::List(Some(n))
                | Command::Uidl(Some(n)) => {
                    assert_eq!(ok, m.is_live(n), "{cmd}")
                }
                Command::Rset => m.live.fill(true),
                Command::Stat => assert_eq!(String::from_utf8_lossy(&out).trim_end(), m.stat()),
                _ => {}
            }
        }
        if closed {
            assert_eq!(session.state(), State::Closed);
            break;
        }
    }
});
