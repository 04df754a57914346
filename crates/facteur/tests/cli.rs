//! The `facteur` command line: `serve --dev`, `deliver`, `check-config`, `user`,
//! `hash-password`.
//!
//! Delivery into a live session and the `user` commands followed by logins run on both stores
//! (`maildir::` and `postgresql::`); the rest is about the command line itself (`--dev` makes a
//! Maildir by design) and runs once.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;

/// Start `facteur serve --dev` and return it with the curl command line its banner prints.
/// Both ports are given: the default POP3S port of --dev may be taken by another test run.
fn start_dev(
    data_dir: &std::path::Path,
    port: u16,
    tls_port: u16,
) -> (std::process::Child, String) {
    let mut child = facteur()
        .args(["serve", "--dev", "--data-dir"])
        .arg(data_dir)
        .args(["--port", &port.to_string()])
        .args(["--tls-port", &tls_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start facteur serve --dev");
    let stdout = child.stdout.take().expect("the child's stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut banner = String::new();
    loop {
        match rx.recv_timeout(READ_TIMEOUT) {
            Ok(line) if line.trim_start().starts_with("curl ") => {
                return (child, line.trim().to_string());
            }
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve --dev printed no curl command line; it printed:\n{banner}");
            }
        }
    }
}

#[test]
fn serve_dev_prints_a_curl_command_that_reads_the_welcome_message() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let data_dir = tmp.path().join("facteur-dev");
    let port = free_port();
    let tls_port = free_port();

    let (mut child, curl) = start_dev(&data_dir, port, tls_port);
    assert!(
        curl.contains(&format!("pop3://127.0.0.1:{port}/")),
        "{curl}"
    );
    let (code, stdout, stderr) =
        run_with_input(std::process::Command::new("sh").arg("-c").arg(&curl), b"");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, Some(0), "{curl}: {stderr}");
    assert!(
        stdout.contains("Subject: Welcome to facteur\r\n"),
        "{stdout}"
    );
    assert!(stdout.contains("Hello!"), "{stdout}");

    // A second start reuses the data folder: same user, same password, same message.
    let (mut child, curl_again) = start_dev(&data_dir, port, tls_port);
    assert_eq!(curl_again, curl);
    let (code, again, stderr) =
        run_with_input(std::process::Command::new("sh").arg("-c").arg(&curl), b"");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, Some(0), "{curl}: {stderr}");
    assert_eq!(again, stdout);
}

fn deliver_exit_codes_and_delivery_into_a_live_session(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let (code, _, stderr) = run_with_input(
        facteur()
            .args(["deliver", "nobody", "--config"])
            .arg(&fx.config_path),
        &message(1),
    );
    assert_eq!(code, Some(67), "deliver to an unknown user: {stderr}");
    assert!(stderr.contains("nobody"), "{stderr}");

    // A configuration that cannot be read is a temporary failure: the MTA keeps the message.
    let (code, _, stderr) = run_with_input(
        facteur()
            .args(["deliver", USER, "--config"])
            .arg(fx.path().join("missing.toml")),
        &message(1),
    );
    assert_eq!(
        code,
        Some(75),
        "deliver with a missing configuration: {stderr}"
    );

    fx.deliver(USER, &message(1));
    let server = fx.start();
    let mut c = server.login(USER, PASSWORD);
    let (code, _, stderr) = run_with_input(
        facteur()
            .args(["deliver", USER, "--config"])
            .arg(&fx.config_path),
        &message(2),
    );
    assert_eq!(code, Some(0), "deliver: {stderr}");
    // Not part of this session; it survives this session's deletion of everything it lists.
    assert_eq!(c.stat().0, 1);
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();

    let mut c = server.login(USER, PASSWORD);
    assert_eq!(c.stat().0, 1);
    assert_eq!(c.retrieve("RETR 1"), crlf(&message(2)));
    c.quit();
}

#[test]
fn check_config_names_an_unknown_key() {
    let fx = Fixture::new();
    let (code, stdout, stderr) = run_with_input(
        facteur()
            .args(["check-config", "--config"])
            .arg(&fx.config_path),
        b"",
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    let bad = fx.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[auth]\npasswd_file = \"users\"\n[store]\nmaildir = \"mail/%u/Maildir\"\n[limits]\nmax_conections = 3\n",
    )
    .expect("write a configuration");
    let (code, stdout, stderr) =
        run_with_input(facteur().args(["check-config", "--config"]).arg(&bad), b"");
    assert_ne!(code, Some(0), "{stdout}");
    assert!(stderr.contains("max_conections"), "{stderr}");
}

#[test]
fn check_config_loads_the_certificate_and_key_as_serve_would() {
    let fx = Fixture::with_tls();
    let check = || {
        run_with_input(
            facteur()
                .args(["check-config", "--config"])
                .arg(&fx.config_path),
            b"",
        )
    };
    let (code, stdout, stderr) = check();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(": OK (") && stdout.contains("POP3S on"),
        "{stdout}"
    );

    // A key that does not load fails the check, naming the file.
    let files = fx.tls.clone().expect("a TLS fixture has certificate files");
    std::fs::write(
        &files.private_key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n",
    )
    .expect("damage the key");
    let (code, stdout, stderr) = check();
    assert_ne!(code, Some(0), "{stdout}");
    let key = files.private_key.display().to_string();
    assert!(
        stderr.contains(&key),
        "the error names the key file: {stderr}"
    );
}

fn user_add_passwd_del_then_log_in(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let user = |args: &[&str], stdin: &[u8]| {
        let (code, stdout, stderr) = run_with_input(
            facteur()
                .arg("user")
                .args(args)
                .arg("--config")
                .arg(&fx.config_path),
            stdin,
        );
        assert_eq!(code, Some(0), "user {args:?}: {stderr}");
        stdout
    };
    user(&["add", "dave", "--password-stdin"], b"correct horse\n");
    let listed = user(&["list"], b"");
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        vec![USER, CRYPT_USER, "dave"]
    );

    // A second add of the same name is refused.
    let (code, _, stderr) = run_with_input(
        facteur()
            .args(["user", "add", "dave", "--password-stdin", "--config"])
            .arg(&fx.config_path),
        b"other\n",
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("dave"), "{stderr}");

    fx.deliver("dave", &message(1));
    {
        let server = fx.start();
        let mut c = server.login("dave", "correct horse");
        assert_eq!(c.retrieve("RETR 1"), crlf(&message(1)));
        c.quit();
        let mut c = server.connect();
        c.cmd("USER dave");
        assert!(c.cmd("PASS correct horsf").starts_with("-ERR [AUTH]"));
    }

    user(&["passwd", "dave", "--password-stdin"], b"battery staple\n");
    {
        let server = fx.start();
        let mut c = server.connect();
        c.cmd("USER dave");
        assert!(c.cmd("PASS correct horse").starts_with("-ERR [AUTH]"));
        server.login("dave", "battery staple").quit();
    }

    user(&["del", "dave"], b"");
    assert_eq!(
        user(&["list"], b"").lines().collect::<Vec<_>>(),
        vec![USER, CRYPT_USER]
    );
    let server = fx.start();
    let mut c = server.connect();
    c.cmd("USER dave");
    assert!(c.cmd("PASS battery staple").starts_with("-ERR [AUTH]"));
    // The maildrop is kept.
    assert_eq!(fx.message_count("dave"), 1);
}

#[test]
fn hash_password_output_works_in_the_users_file() {
    let (code, stdout, stderr) = run_with_input(
        facteur().args([
            "hash-password",
            "--scheme",
            "SHA512-CRYPT",
            "--password-stdin",
        ]),
        b"s3cret pass\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    let hash = stdout.trim_end();
    assert!(hash.starts_with("{SHA512-CRYPT}$6$"), "{hash}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    let (code, argon, stderr) = run_with_input(
        facteur().args(["hash-password", "--scheme", "ARGON2ID", "--password-stdin"]),
        b"s3cret pass\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(argon.starts_with("{ARGON2ID}$argon2id$"), "{argon}");

    let fx = Fixture::new();
    let users = fx.config.auth.passwd_file.clone();
    let mut text = std::fs::read_to_string(&users).expect("read the users file");
    text += &format!("erin:{hash}\nfrank:{}\n", argon.trim_end());
    std::fs::write(&users, text).expect("write the users file");
    let server = fx.start();
    server.login("erin", "s3cret pass").quit();
    server.login("frank", "s3cret pass").quit();
    let mut c = server.connect();
    c.cmd("USER erin");
    assert!(c.cmd("PASS s3cret pas").starts_with("-ERR [AUTH]"));
}

both_backends!(
    deliver_exit_codes_and_delivery_into_a_live_session,
    user_add_passwd_del_then_log_in,
);
