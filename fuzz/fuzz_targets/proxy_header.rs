//! `facteur_proto::proxy::parse` on any octets, looked at prefix by prefix as a server reading
//! them would: a header is recognised exactly at its length and never from less, `NeedMore`
//! never asks past the header, an invalid start stays invalid, and the addresses of a header
//! encode (v1 and v2) to headers that parse back to the same addresses.
#![no_main]

use facteur_proto::proxy::{encode_v1, encode_v2, parse, Parse, MAX_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Past the longest header, more octets change nothing but the run time.
    let data = &data[..data.len().min(MAX_HEADER_LEN + 64)];
    let results: Vec<Parse> = (0..=data.len()).map(|j| parse(&data[..j])).collect();
    let end = results.iter().find_map(|r| match r {
        Parse::Done { header_len, .. } => Some(*header_len),
        _ => None,
    });
    let mut invalid_since = None;
    for (j, r) in results.iter().enumerate() {
        match *r {
            Parse::NeedMore(n) => {
                assert!(n >= 1, "NeedMore(0) at {j}");
                assert!(invalid_since.is_none(), "valid again at {j}");
                if let Some(end) = end {
                    assert!(j + n <= end, "at {j}, asks for {n}: past the header's {end}");
                }
            }
            Parse::Done {
                header_len,
                source,
                destination,
            } => {
                assert!(invalid_since.is_none(), "valid again at {j}");
                assert_eq!(Some(header_len), end);
                assert!(header_len <= j && header_len <= MAX_HEADER_LEN);
                assert_eq!(results[header_len], *r, "the same header at {j}");
                assert_eq!(source.is_some(), destination.is_some());
                if let (Some(s), Some(d)) = (source, destination) {
                    assert_eq!(s.is_ipv4(), d.is_ipv4());
                    let v1 = encode_v1(s, d);
                    let v2 = encode_v2(Some((s, d)), &[]);
                    for header in [v1.as_bytes(), &v2[..]] {
                        assert_eq!(
                            parse(header),
                            Parse::Done {
                                header_len: header.len(),
                                source,
                                destination
                            }
                        );
                    }
                }
            }
            Parse::Invalid(_) => {
                invalid_since.get_or_insert(j);
            }
        }
    }
    if let Some(end) = end {
        assert!(results[..end].iter().all(|r| matches!(r, Parse::NeedMore(_))));
    }
});
