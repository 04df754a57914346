//! An LMTP session fed arbitrary bytes, cut at a fuzz-chosen point: commands through the line
//! framer, recipients accepted or refused by a fuzz bit, bodies through the DATA decoder. No
//! input may panic; every reply is well formed; the body given out never exceeds the input nor
//! the size cap; DATA answers once per accepted recipient.
#![no_main]

use facteur_proto::line::LineFramer;
use facteur_proto::lmtp::{
    DataProgress, Delivery, LmtpConfig, LmtpSession, Reply, Step, Verdict, MAX_LMTP_LINE,
};
use libfuzzer_sys::fuzz_target;

fn check(r: &Reply) {
    let mut out = Vec::new();
    r.encode(&mut out);
    assert!((200..600).contains(&r.code));
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"));
        assert!(!line[..line.len() - 2].contains(&b'\r'));
        assert!(!line[..line.len() - 2].contains(&b'\n'));
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((head, wire)) = input.split_first_chunk::<2>() else {
        return;
    };
    let max = 64 + u64::from(head[0]) * 4;
    let mut s = LmtpSession::new(LmtpConfig {
        hostname: "h".into(),
        max_message_size: max,
        max_recipients: 4,
        max_bad_commands: 50,
    });
    let mut framer = LineFramer::new(MAX_LMTP_LINE);
    let cut = usize::from(head[1]).min(wire.len());
    let (mut body, mut replies) = (Vec::new(), Vec::new());
    let mut verdict_bit = 0u32;
    for mut chunk in [&wire[..cut], &wire[cut..]] {
        while !chunk.is_empty() {
            if s.state() == facteur_proto::lmtp::State::Data {
                body.clear();
                replies.clear();
                let (n, progress) = s.data(chunk, &mut body, &mut replies);
                assert!(n <= chunk.len());
                // A CR held back from the previous chunk may come out with this one.
                assert!(body.len() <= n + 1);
                chunk = &chunk[n..];
                match progress {
                    DataProgress::More => assert!(chunk.is_empty()),
                    DataProgress::Refused => replies.iter().for_each(check),
                    DataProgress::Deliver { size } => {
                        assert!(size <= max);
                        let n = s.recipients().len();
                        assert!(n >= 1);
                        for i in 0..n {
                            let r = s.delivered(if i % 2 == 0 {
                                Delivery::Stored
                            } else {
                                Delivery::TempFail
                            });
                            check(&r);
                        }
                        assert!(s.recipients().is_empty());
                    }
                }
                continue;
            }
            let (n, frame) = framer.push(chunk);
            chunk = &chunk[n..];
            let Some(frame) = frame else { continue };
            match s.command(frame) {
                Step::Reply(r) | Step::ReceiveData(r) => check(&r),
                Step::Close(r) => {
                    check(&r);
                    return;
                }
                Step::CheckRecipient(a) => {
                    assert!(!a.local.is_empty());
                    verdict_bit = verdict_bit.wrapping_add(1);
                    let v = if verdict_bit % 3 == 0 {
                        Verdict::Unknown
                    } else {
                        Verdict::Accepted
                    };
                    check(&s.recipient_checked(v));
                    assert!(s.recipients().len() <= 4);
                }
            }
        }
    }
});
