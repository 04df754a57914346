//! The `facteur-bench` binary: a POP3 load generator, a test tool kept out of the `facteur`
//! binary (see the library's contract). It talks only to the server it is given.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use facteur_bench::retr;
use std::process::ExitCode;

/// Load-test a POP3 server: N concurrent sessions of login, STAT, RETR..., QUIT. The
/// subcommands measure one big RETR (workload 3 of bench/compare.sh).
#[derive(Parser, Debug)]
#[command(
    name = "facteur-bench",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    tool: Option<Tool>,
    #[command(flatten)]
    args: facteur_bench::BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// One session: RETR of one message K times, each read to its end and timed (MB/s).
    Retr(retr::RetrArgs),
    /// The same client against a sender of the same wire bytes in this process (sendfile, or
    /// rustls from memory): the ceiling of `retr`.
    Raw(retr::RawArgs),
    /// AES-128-GCM sealing and opening on one core (aws-lc-rs), MB/s.
    AesSpeed(retr::AesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = match cli.tool {
        None => facteur_bench::run(cli.args).map(drop),
        Some(Tool::Retr(a)) => retr::retr(a).map(drop),
        Some(Tool::Raw(a)) => retr::raw(a).map(drop),
        Some(Tool::AesSpeed(a)) => retr::aes_speed(a).map(drop),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("facteur-bench: {e}");
            ExitCode::from(1)
        }
    }
}
