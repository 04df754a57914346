//! RFC 6856 end to end, on both stores: UTF8 and a UTF-8 login with Python's poplib (a user
//! added by `facteur user add` with its name and password typed in NFD, stored in NFC, and
//! logged in typed in NFD again), a message with UTF-8 headers sent as it is stored, and LANG
//! (the listing, French texts, `[server] language`).

mod common;

use common::*;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// "José" and "mot de passé" in NFC (precomposed é) and NFD (e and a combining acute accent).
const NAME_NFC: &str = "jos\u{e9}";
const NAME_NFD: &str = "jose\u{301}";
const PASSWORD_NFC: &str = "mot de pass\u{e9}";
const PASSWORD_NFD: &str = "mot de passe\u{301}";

/// A message with raw UTF-8 in its headers and body (RFC 6532), as the French seeds are.
const MESSAGE: &str = "From: Ren\u{e9}e <ren\u{e9}e@example.org>\n\
    To: Jos\u{e9} <jos\u{e9}@example.org>\n\
    Subject: R\u{e9}union \u{e0} l'\u{e9}t\u{e9}\n\
    \n\
    Ch\u{e8}re coll\u{e8}gue, le caf\u{e9} est \u{e0} 10 h.\n";

/// CAPA, UTF8, then a login and RETR 1; the user and password come as hex of their UTF-8 (so
/// that no locale decodes them on the way), and poplib sends them as UTF-8.
const POPLIB_UTF8: &str = r#"
import hashlib, poplib, sys
host, port = sys.argv[1], int(sys.argv[2])
user, password = (bytes.fromhex(a).decode("utf-8") for a in sys.argv[3:5])
p = poplib.POP3(host, port, timeout=30)
caps = p.capa()
print("CAPA", caps.get("UTF8"), "LANG" in caps)
print("UTF8", p.utf8()[:3].decode())
p.user(user)
p.pass_(password)
count, size = p.stat()
print("STAT", count, size)
resp, lines, octets = p.retr(1)
print("RETR", octets, hashlib.sha256(b"".join(l + b"\r\n" for l in lines)).hexdigest())
print("QUIT", p.quit()[:3].decode())
"#;

/// LANG through poplib's generic commands: the listing, French, a wrong password in French, and
/// back to the default.
const POPLIB_LANG: &str = r#"
import poplib, sys
host, port = sys.argv[1], int(sys.argv[2])
p = poplib.POP3(host, port, timeout=30)
print("WELCOME", p.getwelcome().decode())
resp, lines, _ = p._longcmd("LANG")
print("LIST", [l.decode() for l in lines])
print("FR", p._shortcmd("LANG fr").decode())
p.user("alice")
try:
    p.pass_("wrong")
except poplib.error_proto as e:
    print("PASS", e.args[0].decode())
try:
    p._shortcmd("LANG xx")
except poplib.error_proto as e:
    print("XX", e.args[0].decode())
print("DEFAULT", p._shortcmd("LANG *").decode())
print("QUIT", p.quit().decode())
"#;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn python(script: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = run_with_input(
        Command::new("python3").arg("-c").arg(script).args(args),
        b"",
    );
    assert_eq!(code, Some(0), "python3 poplib failed:\n{stdout}\n{stderr}");
    stdout
}

/// `facteur user add NAME` with the password on stdin.
fn user_add(fx: &Fixture, name: &str, password: &str) {
    let mut child = facteur()
        .args(["user", "add", name, "--password-stdin", "--config"])
        .arg(&fx.config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start facteur");
    let _ = child
        .stdin
        .take()
        .expect("its stdin")
        .write_all(format!("{password}\n").as_bytes());
    let o = child.wait_with_output().expect("wait for facteur");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "user add failed: {err}");
}

fn utf8_login_with_poplib(backend: Backend) {
    let fx = Fixture::new().on(backend);
    // Typed in NFD; stored in NFC, name and password (the SASLprep'd one is what is hashed).
    user_add(&fx, NAME_NFD, PASSWORD_NFD);
    let users = std::fs::read_to_string(fx.path().join("users")).expect("read the users file");
    assert!(users.contains(&format!("\n{NAME_NFC}:")), "{users}");
    assert!(!users.contains(NAME_NFD), "{users}");
    let delivered = fx.deliver(NAME_NFC, MESSAGE.as_bytes());
    let server = fx.start();

    let port = server.addr.port().to_string();
    let stdout = python(
        POPLIB_UTF8,
        &["127.0.0.1", &port, &hex(NAME_NFD), &hex(PASSWORD_NFD)],
    );
    let size = delivered.wire_size;
    let expected = format!(
        "CAPA ['USER'] True\nUTF8 +OK\nSTAT 1 {size}\nRETR {size} {}\nQUIT +OK\n",
        sha256_hex(&crlf(MESSAGE.as_bytes()))
    );
    assert_eq!(stdout, expected);

    // Typed in NFC, without UTF8, over our own client: the same user. A password that SASLprep
    // refuses gets [UTF8].
    let mut c = server.connect();
    assert!(c.cmd(&format!("USER {NAME_NFC}")).starts_with("+OK"));
    let ok = c.cmd(&format!("PASS {PASSWORD_NFC}"));
    assert!(
        ok.starts_with(&format!("+OK {NAME_NFC} has 1 message")),
        "{ok}"
    );
    c.quit();
    let mut c = server.connect();
    c.cmd(&format!("USER {NAME_NFD}"));
    let refused = c.cmd("PASS caf\u{e9}\u{e000}");
    assert!(refused.starts_with("-ERR [UTF8] "), "{refused}");
}

fn lang_with_poplib(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let server = fx.start();
    let port = server.addr.port().to_string();
    let stdout = python(POPLIB_LANG, &["127.0.0.1", &port]);
    let expected = "WELCOME +OK facteur POP3 server ready\n\
        LIST ['en English', 'fr Fran\u{e7}ais']\n\
        FR +OK langue choisie : fran\u{e7}ais\n\
        PASS -ERR [AUTH] nom d'utilisateur ou mot de passe invalide\n\
        XX -ERR langue non prise en charge\n\
        DEFAULT +OK language changed to English\n\
        QUIT +OK signing off\n";
    assert_eq!(stdout, expected);
}

/// `[server] language = "fr"`: the greeting and every text in French until LANG; `LANG *`
/// comes back to French.
fn default_language_from_the_configuration(backend: Backend) {
    let mut fx = Fixture::new().on(backend);
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let text = text.replacen("[server]\n", "[server]\nlanguage = \"fr\"\n", 1);
    fx.config = facteur_server::config::Config::parse(&text, &fx.config_path)
        .expect("the configuration parses");
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let mut c = server.connect();
    assert_eq!(c.greeting, "+OK serveur POP3 facteur pr\u{ea}t\r\n");
    assert_eq!(c.cmd(&format!("USER {USER}")), "+OK envoyez PASS\r\n");
    let ok = c.cmd(&format!("PASS {PASSWORD}"));
    assert!(ok.starts_with(&format!("+OK {USER} a 1 message (")), "{ok}");
    assert_eq!(c.cmd("LANG en"), "+OK language changed to English\r\n");
    assert_eq!(
        c.cmd("DELE 9"),
        "-ERR no such message, only 1 in maildrop\r\n"
    );
    assert_eq!(c.cmd("LANG *"), "+OK langue choisie : fran\u{e7}ais\r\n");
    assert_eq!(c.cmd("QUIT"), "+OK au revoir (il reste 1 message)\r\n");
}

both_backends!(
    utf8_login_with_poplib,
    lang_with_poplib,
    default_language_from_the_configuration,
);
