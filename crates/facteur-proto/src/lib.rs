//! # facteur-proto: the POP3 protocol with no I/O
//!
//! This crate does no I/O at all: no sockets, no files, no clock, no random source, no tokio. It
//! turns bytes into commands and events, and answers into bytes, so that every rule of POP3 is
//! written once, here, and tested without a network. The server, the fetcher and the fuzz targets
//! all drive the same state machines. What only I/O can give (a user database, random bytes,
//! the time) comes in through arguments: a [`sasl::SaslVerifier`], [`sasl::Nonces`].
//!
//! ## Layout
//! - [`types`]: values that cannot be invalid (message numbers, unique-ids, secrets).
//! - [`line`](mod@line): bounded line framing (length cap, discard-to-LF after an overflow).
//! - [`command`]: the POP3 commands; strict parsing (server side) and encoding (client side).
//! - [`response`]: `+OK` / `-ERR` lines with RFC 2449 / RFC 3206 response codes, and CAPA.
//! - [`dot`]: streaming dot-stuffing, LF to CRLF, TOP line limits, wire sizes, un-stuffing.
//! - [`encoding`]: lowercase hex and `%XX` escapes, the one copy every facteur crate writes and
//!   reads them with (digests, keys, the maildrop index, the fetcher's state).
//! - [`policy`]: RFC 2449's LOGIN-DELAY and EXPIRE: their values, server-wide and per user.
//! - [`proxy`]: the PROXY protocol header (v1 and v2) a load balancer sends before POP3,
//!   naming the client it relays.
//! - [`lmtp`]: LMTP (RFC 2033), the delivery protocol an MTA speaks to facteur: commands,
//!   replies with enhanced status codes, the DATA body decoder, the session's state machine.
//! - [`pop2`]: POP2 (RFC 937), POP3's predecessor on port 109: commands, replies, the session's
//!   state machine, and the encoder of a message as its RETR sends it (counted, not stuffed).
//! - [`text`]: the catalogue of every human-readable text the server sends, in English and
//!   French (LANG, RFC 6856 section 3).
//! - [`utf8`]: SASLprep for UTF-8 user names and passwords (RFC 6856 section 2).
//! - [`server`]: `ServerSession`, the server's state machine (AUTHORIZATION, TRANSACTION, UPDATE).
//! - [`client`]: `ClientSession`, the client's state machine: replies matched to commands in order.
//! - [`sasl`]: the SASL mechanisms of AUTH (PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256, EXTERNAL) as
//!   server-side exchanges over a [`sasl::SaslVerifier`], and the SCRAM-SHA-256 keys both sides
//!   derive.
//!
//! ## RFCs covered
//! RFC 1939 (POP3), RFC 2449 (CAPA, response codes, PIPELINING), RFC 3206 (SYS and AUTH codes),
//! RFC 1460 (the obsolete LAST command, off by default), RFC 5034 (SASL in POP3) with RFC 4616
//! (PLAIN), RFC 2195 (CRAM-MD5), RFC 5802 and RFC 7677 (SCRAM-SHA-256), RFC 4422 (EXTERNAL);
//! RFC 2033 (LMTP) with RFC 5321, RFC 2034 and RFC 3463 (enhanced status codes), RFC 2920
//! (PIPELINING), RFC 1870 (SIZE), RFC 6152 (8BITMIME); RFC 937 (POP2); RFC 6856 (UTF8 and LANG)
//! with RFC 4013 (SASLprep), RFC 4647 (language ranges) and RFC 5198 (UTF-8 text in NFC).
#![forbid(unsafe_code)]

pub mod client;
pub mod command;
pub mod dot;
pub mod encoding;
pub mod line;
pub mod lmtp;
pub mod policy;
pub mod pop2;
pub mod proxy;
pub mod response;
pub mod sasl;
pub mod server;
pub mod text;
pub mod types;
pub mod utf8;

pub use text::{Lang, Msg};
pub use types::{MessageMeta, MsgNum, Secret, Uidl};
