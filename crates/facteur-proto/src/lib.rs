//! # facteur-proto: the POP3 protocol with no I/O
//!
//! This crate does no I/O at all: no sockets, no files, no clock, no tokio. It turns bytes into
//! commands and events, and answers into bytes, so that every rule of POP3 is written once, here,
//! and tested without a network. The server, the fetcher and the fuzz targets all drive the same
//! state machines.
//!
//! ## Layout
//! - [`types`]: values that cannot be invalid (message numbers, unique-ids, secrets).
//! - [`line`](mod@line): bounded line framing (length cap, discard-to-LF after an overflow).
//! - [`command`]: the POP3 commands; strict parsing (server side) and encoding (client side).
//! - [`response`]: `+OK` / `-ERR` lines with RFC 2449 / RFC 3206 response codes, and CAPA.
//! - [`dot`]: streaming dot-stuffing, LF to CRLF, TOP line limits, wire sizes, un-stuffing.
//! - [`encoding`]: lowercase hex and `%XX` escapes, the one copy every facteur crate writes and
//!   reads them with (digests, keys, the maildrop index, the fetcher's state).
//! - [`server`]: `ServerSession`, the server's state machine (AUTHORIZATION, TRANSACTION, UPDATE).
//! - [`client`]: `ClientSession`, the client's state machine: replies matched to commands in order.
//!
//! ## RFCs covered
//! RFC 1939 (POP3), RFC 2449 (CAPA, response codes, PIPELINING), RFC 3206 (SYS and AUTH codes),
//! RFC 1460 (the obsolete LAST command, off by default).
#![forbid(unsafe_code)]

pub mod client;
pub mod command;
pub mod dot;
pub mod encoding;
pub mod line;
pub mod response;
pub mod server;
pub mod types;

pub use types::{MessageMeta, MsgNum, Secret, Uidl};
