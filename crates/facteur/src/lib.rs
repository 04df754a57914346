//! # facteur: the world-facing half of the POP3 server
//!
//! Everything that touches sockets, files, clocks and processes lives here; the protocol rules
//! live in `facteur-proto` and are never written twice.
//!
//! ## Layout
//! - [`config`]: the TOML configuration, and every limit and default in one place.
//! - [`facteur_store`] (its own crate): maildrops (Maildir by default): snapshot, lock,
//!   unique-ids, UPDATE, delivery.
//! - [`privileges`]: giving up root after binding; refusing to serve mail as root.
//! - [`server`]: listeners, the per-connection driver, limits and graceful shutdown.
//! - [`cli`]: the `facteur` command line (serve, user, deliver, hash-password, check-config).
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod privileges;
pub mod server;
