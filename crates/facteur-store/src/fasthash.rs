//! A fast, non-cryptographic hash for the sets an open builds and for the index checksum.
//!
//! An open of a 100,000-message maildrop builds sets of 100,000 file names and unique-ids;
//! SipHash (std's default, made to resist hash flooding from untrusted keys) would cost more than
//! the rest of the open. The names come from the maildrop's own directory, written by the
//! delivery agent, not from the network, so flooding is not a concern here.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// An odd constant with well-mixed bits (the golden ratio's fraction, 2^64 / phi).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Folds one 8-octet word into the state with a full 64 x 64 -> 128-bit multiplication whose
/// halves are xored together (as wyhash and foldhash do): every input bit reaches every output
/// bit, low and high, which a plain multiplication would not give a bucket index.
fn fold(h: u64, w: u64) -> u64 {
    let p = u128::from(h ^ w) * u128::from(K);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Hashes `bytes` into the state `h`.
fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    h ^= bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = fold(h, u64::from_le_bytes(word));
    }
    let rest = chunks.remainder();
    let mut word = [0u8; 8];
    if let Some(head) = word.get_mut(..rest.len()) {
        head.copy_from_slice(rest);
    }
    fold(h, u64::from_le_bytes(word) ^ 0xff)
}

#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FastSet<T> = HashSet<T, BuildHasherDefault<FastHasher>>;

/// A 64-bit checksum of `bytes`: catches a damaged or hand-edited file, not a forgery.
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    hash_bytes(K, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_and_the_length_count() {
        let base = b"1700000000.M123456P4242.mail.example.org:2,S".to_vec();
        let sum = checksum(&base);
        for i in 0..base.len() {
            for bit in 0..8 {
                let mut changed = base.clone();
                changed[i] ^= 1 << bit;
                assert_ne!(checksum(&changed), sum, "byte {i} bit {bit}");
            }
        }
        assert_ne!(checksum(&base[..base.len() - 1]), sum);
        assert_ne!(checksum(b""), checksum(b"\0"));
    }

    #[test]
    fn spreads_similar_names_over_the_low_bits() {
        // Names that differ only in a few digits in the middle must not pile up in few buckets.
        let mut buckets = HashSet::new();
        for i in 0..4096 {
            let name = format!("1600000000.M{i}P4242.bench");
            let mut h = FastHasher::default();
            h.write(name.as_bytes());
            buckets.insert(h.finish() & 4095);
        }
        assert!(
            buckets.len() > 2400,
            "{} of 4096 buckets used",
            buckets.len()
        );
    }
}
