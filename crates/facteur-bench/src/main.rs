//! The `facteur-bench` binary: a POP3 load generator, a test tool kept out of the `facteur`
//! binary (see the library's contract). It talks only to the server it is given.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

/// Load-test a POP3 server: N concurrent sessions of login, STAT, RETR..., QUIT.
#[derive(Parser, Debug)]
#[command(name = "facteur-bench", version)]
struct Cli {
    #[command(flatten)]
    args: facteur_bench::BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match facteur_bench::run(cli.args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("facteur-bench: {e}");
            ExitCode::from(1)
        }
    }
}
