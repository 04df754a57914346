//! `LineFramer` on any byte stream, cut at fuzz-chosen points: the frames do not depend on the
//! chunking, they are what the RFC rules give when written the slow way, and the framer never
//! asks the allocator for more than its cap, whatever the client sends.
#![no_main]

use facteur_proto::line::{Frame, LineFramer};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// The system allocator, noting the largest request made while `WATCHING` is set (only during
/// `LineFramer::push` and `set_max_len`, so the harness's own vectors are not counted).
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

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Line(Vec<u8>),
    TooLong,
}

/// Push every chunk through `framer` until it is consumed; check the cap and the consumed counts.
fn frames<'c>(framer: &mut LineFramer, chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<Owned> {
    let mut got = Vec::new();
    for chunk in chunks {
        let mut rest = chunk;
        loop {
            WATCHING.store(true, Relaxed);
            let (n, frame) = framer.push(rest);
            WATCHING.store(false, Relaxed);
            let frame = frame.map(|f| match f {
                Frame::Line(l) => Owned::Line(l.to_vec()),
                Frame::TooLong => Owned::TooLong,
            });
            let largest = LARGEST.swap(0, Relaxed); // also what `set_max_len` asked for before
            assert!(
                largest <= framer.max_len(),
                "buffered {largest} > cap {}",
                framer.max_len()
            );
            assert!(n <= rest.len(), "consumed {n} of {}", rest.len());
            rest = &rest[n..];
            match frame {
                Some(f) => got.push(f),
                None => {
                    assert!(
                        rest.is_empty(),
                        "stopped without a frame, {} left",
                        rest.len()
                    );
                    break;
                }
            }
        }
    }
    got
}

/// The framing rules the slow way: lines end at LF, a CR before it is dropped, and a line whose
/// content plus terminator passes the cap is one `TooLong`.
fn model(max_len: usize, data: &[u8]) -> Vec<Owned> {
    let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    pieces.pop(); // after the last LF: a partial line, no frame yet
    pieces
        .into_iter()
        .map(|p| match p.len() + 1 > max_len {
            true => Owned::TooLong,
            false => Owned::Line(p.strip_suffix(b"\r").unwrap_or(p).to_vec()),
        })
        .collect()
}

fuzz_target!(|input: &[u8]| {
    // Two bytes of cap (0..=599, around the RFC 2449 255), three cut points, three caps to switch
    // to at the cuts (0..=510), then the stream.
    let Some((head, data)) = input.split_at_checked(8) else {
        return;
    };
    LARGEST.store(0, Relaxed);
    let max_len = usize::from(u16::from_le_bytes([head[0], head[1]])) % 600;
    let mut cuts: Vec<usize> = head[2..5]
        .iter()
        .map(|&c| usize::from(c) * data.len() / 255)
        .collect();
    cuts.sort_unstable();
    let chunks = [
        &data[..cuts[0]],
        &data[cuts[0]..cuts[1]],
        &data[cuts[1]..cuts[2]],
        &data[cuts[2]..],
    ];

    let whole = frames(&mut LineFramer::new(max_len), [data]);
    let mut framer = LineFramer::new(max_len);
    let chunked = frames(&mut framer, chunks);
    assert_eq!(
        chunked, whole,
        "chunking changed the frames (cuts {cuts:?})"
    );
    assert_eq!(whole, model(max_len, data));
    assert_eq!(
        framer.has_partial(),
        data.last().is_some_and(|&b| b != b'\n')
    );

    // The cap raised and lowered between chunks, as for SASL lines: still bounded, and no line
    // delivered is longer than the cap in force when it ended.
    let mut framer = LineFramer::new(max_len);
    for (i, chunk) in chunks.into_iter().enumerate() {
        if let Some(&cap) = head[5..].get(i) {
            WATCHING.store(true, Relaxed);
            framer.set_max_len(usize::from(cap) * 2);
            WATCHING.store(false, Relaxed);
        }
        for frame in frames(&mut framer, [chunk]) {
            if let Owned::Line(line) = frame {
                assert!(
                    line.len() < framer.max_len(),
                    "{} octets under a cap of {}",
                    line.len(),
                    framer.max_len()
                );
            }
        }
    }
});
