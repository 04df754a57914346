//! The mbox reader of facteur-store fed arbitrary bytes (anyone who can send mail writes into
//! an mbox): no input may panic; the messages are in order and within the file; a message's
//! content is never longer than its region; and any block size gives the same messages as
//! reading the whole file at once. The first input byte picks the block size.
#![no_main]

use facteur_store::mbox_format::scan_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&pick, data)) = input.split_first() else {
        return;
    };
    let whole = scan_bytes(data, data.len().max(1));
    let len = data.len() as u64;
    let mut previous_next = 0u64;
    for (i, m) in whole.iter().enumerate() {
        assert!(m.start <= m.body && m.body <= m.end && m.end <= m.next && m.next <= len);
        if i > 0 {
            assert_eq!(m.start, previous_next, "regions are contiguous");
        }
        previous_next = m.next;
        assert!(m.content.len() as u64 <= m.end - m.body);
        assert_eq!(&data[m.start as usize..m.start as usize + 5], b"From ");
    }
    if let Some(last) = whole.last() {
        assert_eq!(last.next, len);
    }
    let block = usize::from(pick % 64) + 1;
    assert_eq!(scan_bytes(data, block), whole, "block size {block}");
});
