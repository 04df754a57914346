//! `command::parse` on any line: never panics, and every command it accepts encodes to a line that
//! parses back to the same command (what a client sends is what the server reads).
#![no_main]

use facteur_proto::command::{parse, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let Ok(cmd) = parse(line) else { return };
    let mut wire = Vec::new();
    cmd.encode(&mut wire);
    let Some(encoded) = wire.strip_suffix(b"\r\n") else {
        panic!("{cmd:?} encodes without its CRLF: {wire:?}");
    };
    assert!(
        !encoded.contains(&b'\n'),
        "{cmd:?} encodes to more than one line: {wire:?}"
    );
    let again = parse(encoded);
    assert_eq!(
        again.as_ref(),
        Ok(&cmd),
        "round trip of {line:?} via {encoded:?}"
    );
    // The log forms never show a secret, whatever it is.
    match &cmd {
        Command::Pass(_) => {
            assert_eq!(cmd.to_string(), "PASS <redacted>");
            assert_eq!(format!("{cmd:?}"), "Pass(Secret(<redacted>))");
        }
        Command::Auth {
            mechanism: Some(m),
            initial_response: Some(_),
        } => assert_eq!(cmd.to_string(), format!("AUTH {m} <redacted>")),
        _ => {}
    }
});
