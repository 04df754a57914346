//! # facteur: the command line
//!
//! The `facteur` binary's commands (serve, fetch, user, deliver, hash-password, check-config):
//! each parses its arguments, reads what it needs and hands over to the crate that does the work.
//! No POP3 rule, no file format and no socket handling is written here.
//!
//! ## Layout
//! - [`cli`]: the commands.
//! - The crates below it, from the bottom up: `facteur-proto` (POP3 and SASL, no I/O),
//!   `facteur-store` (maildrops), `facteur-auth` (users, schemes, penalties), `facteur-tls`,
//!   `facteur-server` (listeners and sessions) and `facteur-fetch` (the POP3 client and fetcher).
#![forbid(unsafe_code)]

pub mod cli;
