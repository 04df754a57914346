//! CRAM-MD5 (RFC 2195): HMAC-MD5 of the server's challenge keyed with the shared secret, and
//! Dovecot's `{CRAM-MD5}` stored form of that secret.
//!
//! HMAC-MD5 (RFC 2104) hashes `key ^ opad` then `key ^ ipad` as a first 64-byte block of two MD5
//! computations. Those two blocks depend on the key alone, so Dovecot stores the MD5 state after
//! each of them (the "HMAC-MD5 context"): 32 bytes, the outer state's four words then the inner
//! state's, each word little-endian, written as 64 hex digits. Anyone who reads it can answer
//! any CRAM-MD5 challenge, so it is as sensitive as the password, but it does not show the
//! password itself.
//!
//! To continue an MD5 computation from a stored state we need MD5's block function, which the
//! md-5 crate does not expose: it is written here from RFC 1321 and tested against md-5.
//!
//! This module never panics; every index below is into a fixed-size array with a bound the
//! compiler can see.

use facteur_proto::encoding::{decode_hex, hex};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// MD5's block size in bytes, which is also HMAC-MD5's key block size.
const BLOCK: usize = 64;

/// MD5's initial state (RFC 1321 section 3.3).
const MD5_IV: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The left rotation of each of the 64 steps (RFC 1321 section 3.4).
const ROTATE: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, //
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, //
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, //
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// The additive constant of each step: the integer part of 2^32 * |sin(i + 1)|, i in radians
/// (RFC 1321 section 3.4; a test recomputes them).
const SINE: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// MD5's block function: mixes one 64-byte block into `state` (RFC 1321 section 3.4).
fn md5_compress(state: &mut [u32; 4], block: &[u8; BLOCK]) {
    let mut words = [0u32; 16];
    for (word, bytes) in words.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]); // ok: chunks of 4
    }
    let [mut a, mut b, mut c, mut d] = *state;
    for (step, (&rotate, &sine)) in ROTATE.iter().zip(SINE.iter()).enumerate() {
        // Each round of 16 steps has its own function and its own order of the words.
        let (f, word) = match step / 16 {
            0 => ((b & c) | (!b & d), step),
            1 => ((d & b) | (!d & c), (5 * step + 1) % 16),
            2 => (b ^ c ^ d, (3 * step + 5) % 16),
            _ => (c ^ (b | !d), (7 * step) % 16),
        };
        let sum = f
            .wrapping_add(a)
            .wrapping_add(sine)
            .wrapping_add(words[word]); // ok: word < 16 in every arm
        a = d;
        d = c;
        c = b;
        b = b.wrapping_add(sum.rotate_left(rotate));
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d]) {
        *s = s.wrapping_add(v);
    }
}

/// Finishes an MD5 computation that has already hashed `prefix_len` bytes (a multiple of 64)
/// into `state`: hashes `data`, then the padding and the total length (RFC 1321 sections 3.1
/// and 3.2), and returns the digest.
fn md5_finish(mut state: [u32; 4], prefix_len: u64, data: &[u8]) -> [u8; 16] {
    let mut blocks = data.chunks_exact(BLOCK);
    for block in &mut blocks {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(block);
        md5_compress(&mut state, &b);
    }
    let rest = blocks.remainder();
    let bits = prefix_len
        .wrapping_add(data.len() as u64)
        .wrapping_mul(8)
        .to_le_bytes();
    // The rest, 0x80, zeros, then the 8-byte length: one block, or two if the rest is 56 bytes
    // or more.
    let mut tail = [0u8; 2 * BLOCK];
    let tail_len = if rest.len() < BLOCK - 8 {
        BLOCK
    } else {
        2 * BLOCK
    };
    for (t, &r) in tail.iter_mut().zip(rest) {
        *t = r;
    }
    if let Some(marker) = tail.get_mut(rest.len()) {
        *marker = 0x80;
    }
    if let Some(length) = tail.get_mut(tail_len - 8..tail_len) {
        length.copy_from_slice(&bits);
    }
    for block in tail.chunks_exact(BLOCK).take(tail_len / BLOCK) {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(block);
        md5_compress(&mut state, &b);
    }
    let mut digest = [0u8; 16];
    for (out, word) in digest.chunks_exact_mut(4).zip(state) {
        out.copy_from_slice(&word.to_le_bytes());
    }
    digest
}

/// The HMAC-MD5 context of a secret: MD5's state after the first block of the outer and of the
/// inner hash. Deliberately not `Debug`, nor `PartialEq`: compare with [`Self::ct_eq`].
#[derive(Clone)]
pub(crate) struct CramMd5Context {
    outer: [u32; 4],
    inner: [u32; 4],
}

impl zeroize::Zeroize for CramMd5Context {
    fn zeroize(&mut self) {
        self.outer.zeroize();
        self.inner.zeroize();
    }
}

impl CramMd5Context {
    /// The context of the secret `key`, as HMAC (RFC 2104 section 2) prepares it: a key longer
    /// than a block is replaced by its MD5, then the key is padded with zeros to a block.
    pub(crate) fn from_secret(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            for (b, k) in block.iter_mut().zip(Md5::digest(key)) {
                *b = k;
            }
        } else {
            for (b, &k) in block.iter_mut().zip(key) {
                *b = k;
            }
        }
        let mut outer = MD5_IV;
        md5_compress(&mut outer, &block.map(|b| b ^ 0x5c));
        let mut inner = MD5_IV;
        md5_compress(&mut inner, &block.map(|b| b ^ 0x36));
        Self { outer, inner }
    }

    /// Parses Dovecot's form: 64 hex digits (either case).
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        let bytes = decode_hex::<32>(hex)?;
        let mut words = [0u32; 8];
        for (w, b) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]); // ok: chunks of 4
        }
        let [o0, o1, o2, o3, i0, i1, i2, i3] = words;
        Some(Self {
            outer: [o0, o1, o2, o3],
            inner: [i0, i1, i2, i3],
        })
    }

    /// Dovecot's form: 64 lowercase hex digits.
    pub(crate) fn to_hex(&self) -> String {
        let mut bytes = Vec::with_capacity(32);
        for word in self.outer.iter().chain(self.inner.iter()) {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        hex(&bytes)
    }

    /// HMAC-MD5(secret, `message`).
    pub(crate) fn hmac(&self, message: &[u8]) -> [u8; 16] {
        let inner = md5_finish(self.inner, BLOCK as u64, message);
        md5_finish(self.outer, BLOCK as u64, &inner)
    }

    /// True if `digest_hex` (32 hex digits, either case) is HMAC-MD5(secret, `challenge`). The
    /// comparison runs in constant time; a digest of the wrong shape costs the same work.
    pub(crate) fn digest_matches(&self, challenge: &[u8], digest_hex: &str) -> bool {
        let ours = self.hmac(challenge);
        match decode_hex::<16>(digest_hex) {
            Some(theirs) => ours.ct_eq(&theirs).into(),
            None => {
                std::hint::black_box(ours.ct_eq(&[0u8; 16]));
                false
            }
        }
    }

    /// Equal contexts in constant time: used to check a password typed with USER/PASS against
    /// a stored `{CRAM-MD5}`.
    pub(crate) fn ct_eq(&self, other: &Self) -> bool {
        let a = self.outer.iter().chain(self.inner.iter());
        let b = other.outer.iter().chain(other.inner.iter());
        a.zip(b)
            .fold(subtle::Choice::from(1), |acc, (x, y)| acc & x.ct_eq(y))
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    #[test]
    fn sine_table_is_rfc1321s() {
        for (i, &k) in SINE.iter().enumerate() {
            let computed = ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32;
            assert_eq!(k, computed, "step {i}");
        }
    }

    #[test]
    fn md5_matches_the_md5_crate_at_every_length_around_the_block_edges() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let ours = md5_finish(MD5_IV, 0, &data[..len]);
            assert_eq!(ours[..], Md5::digest(&data[..len])[..], "length {len}");
        }
    }

    #[test]
    fn md5_rfc1321_vectors() {
        assert_eq!(
            hex(&md5_finish(MD5_IV, 0, b"")),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            hex(&md5_finish(MD5_IV, 0, b"message digest")),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
    }

    #[test]
    fn hmac_matches_the_hmac_crate_for_short_and_long_keys() {
        for key_len in [0usize, 1, 16, 63, 64, 65, 100, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 13 + 1) as u8).collect();
            for msg_len in [0usize, 1, 55, 56, 64, 120, 500] {
                let msg: Vec<u8> = (0..msg_len).map(|i| (i * 31 + 5) as u8).collect();
                let mut mac = Hmac::<Md5>::new_from_slice(&key).unwrap();
                mac.update(&msg);
                let expected = mac.finalize().into_bytes();
                let ours = CramMd5Context::from_secret(&key).hmac(&msg);
                assert_eq!(ours[..], expected[..], "key {key_len}, message {msg_len}");
            }
        }
    }

    #[test]
    fn rfc2195_example() {
        let ctx = CramMd5Context::from_secret(b"tanstaaftanstaaf");
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        assert_eq!(
            hex(&ctx.hmac(challenge)),
            "b913a602c7eda7a495b4e6e7334d3890"
        );
        assert!(ctx.digest_matches(challenge, "b913a602c7eda7a495b4e6e7334d3890"));
        assert!(ctx.digest_matches(challenge, "B913A602C7EDA7A495B4E6E7334D3890"));
        assert!(!ctx.digest_matches(challenge, "b913a602c7eda7a495b4e6e7334d3891"));
        assert!(!ctx.digest_matches(challenge, "b913a602c7eda7a495b4e6e7334d389"));
        assert!(!ctx.digest_matches(challenge, "b913a602c7eda7a495b4e6e7334d3890 "));
        assert!(!ctx.digest_matches(challenge, "g913a602c7eda7a495b4e6e7334d3890"));
        assert!(!ctx.digest_matches(challenge, ""));
        assert!(!ctx.digest_matches(
            b"<1896.697170953@postoffice.reston.mci.net>",
            "b913a602c7eda7a495b4e6e7334d3890"
        ));
    }

    #[test]
    fn dovecot_stored_form() {
        // `doveadm pw -s CRAM-MD5 -p password`, as quoted in PostfixAdmin's tests and others.
        let stored = "9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740";
        let ctx = CramMd5Context::from_secret(b"password");
        assert_eq!(ctx.to_hex(), stored);
        let parsed = CramMd5Context::from_hex(stored).unwrap();
        assert!(parsed.ct_eq(&ctx));
        assert!(!parsed.ct_eq(&CramMd5Context::from_secret(b"passwore")));
        assert!(CramMd5Context::from_hex(&stored.to_ascii_uppercase()).is_some());
        assert!(CramMd5Context::from_hex(&stored[..63]).is_none());
        assert!(CramMd5Context::from_hex(&format!("{stored}0")).is_none());
        assert!(CramMd5Context::from_hex(&stored.replace('9', "x")).is_none());
        assert!(CramMd5Context::from_hex(&stored.replacen('9', "é", 1)).is_none());
    }
}
