//! # facteur: the command line
//!
//! The `facteur` binary's commands (serve, fetch, user, deliver, hash-password, check-config):
//! each parses its arguments, reads what it needs and hands over to the crate that does the work.
//! It must never hold a POP3 rule, a file format or socket handling of its own: those live in
//! the crates below, where the tests of each layer reach them. It never takes a password on its
//! command line (where `ps` would show it).
//!
//! ## Layout
//! - [`cli`]: the commands.
//! - The crates below it, from the bottom up: `facteur-proto` (POP3 and SASL, no I/O),
//!   `facteur-store` (maildrops), `facteur-auth` (users, schemes, penalties), `facteur-tls`,
//!   `facteur-server` (listeners and sessions) and `facteur-fetch` (the POP3 client and fetcher).
#![forbid(unsafe_code)]

pub mod cli;
