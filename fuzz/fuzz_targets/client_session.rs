//! A `ClientSession` that sent fuzz-chosen commands (pipelined), fed any server bytes in
//! fuzz-chosen chunk sizes, drained after each feed as the fetcher's driver does. Never panics;
//! the events follow the protocol (a greeting first, one reply per command in the order sent,
//! listing lines of the right kind and body chunks only inside a `+OK` multi-line reply, an end
//! only there, SASL challenges only for AUTH); after each drain nothing fed is left unread and
//! the session's counters agree with a model; a protocol error is final; whole or chunked, the
//! events are the same; and no allocation made while events are drawn exceeds a bound that
//! does not depend on the input.
#![no_main]

use facteur_proto::client::{
    ClientError, ClientEvent, ClientSession, CommandKind, Listing, BODY_CHUNK, MAX_RESPONSE_LINE,
};
use facteur_proto::command::Command;
use facteur_proto::{MsgNum, Secret};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// The system allocator, noting the largest request made while `WATCHING` is set (only during
/// `next_event`, so the harness's own vectors and `feed` are not counted).
struct Watch;
static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to `System` unchanged; only a size is noted on the way.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    if WATCHING.load(Relaxed) {
        LARGEST.fetch_max(size, Relaxed);
    }
}

#[global_allocator]
static ALLOC: Watch = Watch;

/// The most one call of `next_event` may ask the allocator for: a body chunk's buffer grown by
/// doubling, whatever the server sends and however much was fed.
const MOST_ALLOCATED: usize = 2 * BODY_CHUNK;

/// The longest text an event may carry: one line, where each octet that is not UTF-8 becomes a
/// replacement character of three octets (the session reads server text lossily).
const MOST_TEXT: usize = 3 * MAX_RESPONSE_LINE;

fn msg(n: u32) -> MsgNum {
    MsgNum::new(n).expect("not 0")
}

/// The command a byte stands for.
fn command(b: u8) -> Command {
    match b % 19 {
        0 => Command::Capa,
        1 => Command::User("u".into()),
        2 => Command::Pass(Secret::new(b"p".to_vec())),
        3 => Command::Stat,
        4 => Command::List(None),
        5 => Command::List(Some(msg(1))),
        6 => Command::Uidl(None),
        7 => Command::Uidl(Some(msg(2))),
        8 => Command::Retr(msg(1)),
        9 => Command::Top(msg(1), 0),
        10 => Command::Dele(msg(1)),
        11 => Command::Noop,
        12 => Command::Rset,
        13 => Command::Auth {
            mechanism: Some("PLAIN".into()),
            initial_response: None,
        },
        14 => Command::Auth {
            mechanism: None,
            initial_response: None,
        },
        15 => Command::Stls,
        16 => Command::Quit,
        17 => Command::Last,
        _ => Command::Apop {
            name: "u".into(),
            digest: "0123456789abcdef0123456789abcdef".into(),
        },
    }
}

/// An event with its data owned, body chunks to be joined.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Greeting(String),
    Reply(CommandKind, bool, Option<Listing>),
    Listing(Listing),
    Body(Vec<u8>),
    End,
    Continuation(String),
    /// The kind of error: its text may quote what had arrived, which depends on the chunking.
    Error(std::mem::Discriminant<ClientError>),
}

/// What the session should be doing.
#[derive(Default)]
struct Model {
    greeted: bool,
    /// Commands sent and not yet answered: their kind, and whether the reply is multi-line.
    pending: VecDeque<(CommandKind, bool)>,
    /// The multi-line reply in progress.
    open: Option<CommandKind>,
    /// A `+OK` to STLS was seen: the session dropped what followed it in the same feed, so the
    /// events depend on the chunking from there on.
    stls: bool,
}

impl Model {
    /// Check `ev` against the protocol and move on.
    fn check(&mut self, ev: &ClientEvent<'_>) {
        if !self.greeted {
            assert!(
                matches!(ev, ClientEvent::Greeting { .. }),
                "{ev:?} before the greeting"
            );
        }
        match ev {
            ClientEvent::Greeting { status, .. } => {
                assert!(!self.greeted, "two greetings");
                assert!(status.text.len() <= MOST_TEXT);
                self.greeted = true;
            }
            ClientEvent::Reply {
                command,
                status,
                listing,
            } => {
                assert!(self.open.is_none(), "a reply inside a multi-line reply");
                let (kind, multiline) = self.pending.pop_front().expect("a reply to nothing");
                assert_eq!(*command, kind, "replies out of order");
                let single_listing = matches!(kind, CommandKind::Stat)
                    || (matches!(kind, CommandKind::List | CommandKind::Uidl) && !multiline);
                assert_eq!(listing.is_some(), status.ok && single_listing, "{ev:?}");
                match (kind, listing) {
                    (_, None) => {}
                    (CommandKind::Stat, Some(Listing::Drop { .. }))
                    | (CommandKind::List, Some(Listing::Scan { .. }))
                    | (CommandKind::Uidl, Some(Listing::UniqueId { .. })) => {}
                    _ => panic!("{listing:?} for {kind}"),
                }
                if status.ok && multiline {
                    self.open = Some(kind);
                }
                if status.ok && kind == CommandKind::Stls {
                    self.stls = true;
                }
            }
            ClientEvent::Listing(l) => {
                let ok = matches!(
                    (self.open, l),
                    (Some(CommandKind::List), Listing::Scan { .. })
                        | (Some(CommandKind::Uidl), Listing::UniqueId { .. })
                        | (Some(CommandKind::Capa), Listing::Capability(_))
                        | (Some(CommandKind::Auth), Listing::Mechanism(_))
                );
                assert!(ok, "{l:?} in the reply to {:?}", self.open);
                if let Listing::Capability(c) = l {
                    let len = c.params.iter().map(String::len).sum::<usize>() + c.name.len();
                    assert!(len <= MOST_TEXT, "capability of {len} octets");
                }
            }
            ClientEvent::Body(b) => {
                assert!(
                    matches!(self.open, Some(CommandKind::Retr | CommandKind::Top)),
                    "a body chunk in the reply to {:?}",
                    self.open
                );
                assert!(
                    !b.is_empty() && b.len() <= BODY_CHUNK,
                    "chunk of {}",
                    b.len()
                );
            }
            ClientEvent::End => {
                assert!(
                    self.open.take().is_some(),
                    "an end outside a multi-line reply"
                );
            }
            ClientEvent::Continuation(c) => {
                assert!(self.open.is_none());
                assert_eq!(
                    self.pending.front(),
                    Some(&(CommandKind::Auth, false)),
                    "a challenge for no AUTH"
                );
                assert!(c.len() <= MOST_TEXT);
            }
        }
    }
}

fn owned(ev: &ClientEvent<'_>) -> Ev {
    match ev {
        ClientEvent::Greeting { status, .. } => Ev::Greeting(status.text.clone()),
        ClientEvent::Reply {
            command,
            status,
            listing,
        } => Ev::Reply(*command, status.ok, listing.clone()),
        ClientEvent::Listing(l) => Ev::Listing(l.clone()),
        ClientEvent::Body(b) => Ev::Body(b.to_vec()),
        ClientEvent::End => Ev::End,
        ClientEvent::Continuation(c) => Ev::Continuation(c.clone()),
    }
}

/// Send `commands`, feed `chunks`, drain after each; check everything; the events, bodies
/// joined, and whether STLS was answered `+OK`.
fn run<'c>(commands: &[Command], chunks: impl Iterator<Item = &'c [u8]>) -> (Vec<Ev>, bool) {
    let mut session = ClientSession::new();
    let mut model = Model::default();
    let mut out = Vec::new();
    for cmd in commands {
        session.send(cmd.clone(), &mut out);
        model
            .pending
            .push_back((CommandKind::of(cmd), cmd.has_multiline_reply()));
    }
    let mut evs: Vec<Ev> = Vec::new();
    let mut failed: Option<ClientError> = None;
    for chunk in chunks {
        session.feed(chunk);
        if let Some(e) = &failed {
            // A failed session stays failed, whatever comes after.
            assert_eq!(session.next_event().as_ref().err(), Some(e));
            continue;
        }
        loop {
            LARGEST.store(0, Relaxed);
            WATCHING.store(true, Relaxed);
            let next = session.next_event();
            WATCHING.store(false, Relaxed);
            let largest = LARGEST.load(Relaxed);
            assert!(largest <= MOST_ALLOCATED, "next_event allocated {largest}");
            match next {
                Ok(Some(ev)) => {
                    model.check(&ev);
                    let is_challenge = matches!(ev, ClientEvent::Continuation(_));
                    match (owned(&ev), evs.last_mut()) {
                        (Ev::Body(b), Some(Ev::Body(prev))) => prev.extend(b),
                        (e, _) => evs.push(e),
                    }
                    if is_challenge {
                        session
                            .send_sasl_response(b"dGVzdA==", &mut out)
                            .expect("base64 is one line");
                    }
                }
                Ok(None) => {
                    assert_eq!(session.unread(), 0, "fed octets left unread");
                    assert_eq!(session.pending(), model.pending.len());
                    assert_eq!(session.awaiting_greeting(), !model.greeted);
                    assert_eq!(
                        session.is_idle(),
                        model.greeted && model.pending.is_empty() && model.open.is_none()
                    );
                    break;
                }
                Err(e) => {
                    assert_eq!(session.next_event().as_ref().err(), Some(&e), "not final");
                    evs.push(Ev::Error(std::mem::discriminant(&e)));
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    (evs, model.stls)
}

fuzz_target!(|input: &[u8]| {
    // One byte of command count (0..=16), 16 bytes of commands, 3 chunk sizes (1..=256, used
    // in turn), then what the server sends.
    let Some((head, wire)) = input.split_at_checked(20) else {
        return;
    };
    let count = usize::from(head[0] % 17);
    let commands: Vec<Command> = head[1..=count].iter().map(|&b| command(b)).collect();
    let sizes: Vec<usize> = head[17..20].iter().map(|&s| usize::from(s) + 1).collect();
    let mut chunks = Vec::new();
    let mut rest = wire;
    for i in 0.. {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at(sizes[i % 3].min(rest.len()));
        chunks.push(a);
        rest = b;
    }

    let (chunked, stls_chunked) = run(&commands, chunks.iter().copied());
    let (whole, stls_whole) = run(&commands, std::iter::once(wire).filter(|w| !w.is_empty()));
    if !stls_chunked && !stls_whole {
        assert_eq!(
            chunked, whole,
            "the chunking (sizes {sizes:?}) changed the events"
        );
    }
});
