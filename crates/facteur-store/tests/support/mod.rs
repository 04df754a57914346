//! Helpers shared by the integration tests of facteur-store.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the helpers"
)]

pub mod pg;
pub mod pg_tls;
