//! A POP2 session fed arbitrary bytes, cut at a fuzz-chosen point, its logins and updates
//! answered by fuzz bits, each message sent through the body encoder. No input may panic;
//! every reply is one well-formed line; a retrieval names a message of the snapshot with its
//! size, and the encoder sends exactly that many octets; deletions are only asked for at QUIT,
//! ascending, and only of messages that were sent.
#![no_main]

use facteur_proto::pop2::{BodyEncoder, Event, LoginResult, Pop2Config, Pop2Session, State};
use facteur_proto::{MessageMeta, Uidl};
use libfuzzer_sys::fuzz_target;

/// Each reply line starts with one of POP2's four marks and holds no CR or LF inside.
fn check(out: &[u8]) {
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"));
        let inner = &line[..line.len() - 2];
        assert!(!inner.contains(&b'\r') && !inner.contains(&b'\n'));
        assert!(matches!(inner.first(), Some(b'+' | b'-' | b'#' | b'=')));
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((head, wire)) = input.split_first_chunk::<3>() else {
        return;
    };
    let messages: Vec<MessageMeta> = (0..usize::from(head[0] % 5))
        .map(|i| MessageMeta {
            size: (i as u64) * 3,
            uid: Uidl::new(format!("u{i}")).unwrap(),
        })
        .collect();
    let mut s = Pop2Session::new(Pop2Config {
        greeting: "g".into(),
        plaintext_allowed: head[1] & 1 == 0,
        max_bad_commands: 30,
    });
    let cut = usize::from(head[2]).min(wire.len());
    let mut sent = Vec::new();
    let mut bit = 0u32;
    for mut chunk in [&wire[..cut], &wire[cut..]] {
        while !chunk.is_empty() {
            let mut out = Vec::new();
            let (n, event) = s.handle_input(chunk, &mut out);
            assert!(n <= chunk.len());
            chunk = &chunk[n..];
            let mut next = event;
            while let Some(event) = next.take() {
                bit = bit.wrapping_add(1);
                next = match event {
                    Event::Authenticate { user, .. } => {
                        assert_eq!(s.state(), State::Auth);
                        let result = match bit % 3 {
                            0 => LoginResult::Failed,
                            1 => LoginResult::InUse,
                            _ => LoginResult::Success {
                                user,
                                messages: messages.clone(),
                            },
                        };
                        s.login_result(result, &mut out)
                    }
                    Event::Retrieve { index, size } => {
                        assert_eq!(messages[index].size, size);
                        assert!(size > 0);
                        let body = vec![b'x'; size as usize];
                        let mut wire = Vec::new();
                        let mut e = BodyEncoder::new(size);
                        e.encode(&body, &mut wire).unwrap();
                        e.finish().unwrap();
                        assert_eq!(wire.len() as u64, size);
                        sent.push(index);
                        None
                    }
                    Event::Update { deletions } => {
                        assert!(deletions.windows(2).all(|w| w[0] < w[1]));
                        assert!(deletions.iter().all(|d| sent.contains(d)));
                        assert_eq!(deletions.len(), s.deleted_count());
                        s.update_result(if bit % 2 == 0 { Ok(()) } else { Err(()) }, &mut out)
                    }
                    Event::Close => {
                        check(&out);
                        assert_eq!(s.state(), State::Done);
                        return;
                    }
                };
            }
            check(&out);
            if n == 0 {
                break;
            }
        }
    }
});
