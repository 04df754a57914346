//! How opening a large maildrop scales: the first open (no index: every message file is listed;
//! with more than 256 files of unknown size, sizing them is deferred), the first STAT (which
//! reads every file to count its wire size), and later opens (the index alone).
//!
//! Usage: `cargo run --release -p facteur --example maildir_scale -- [MESSAGES] [dovecot]`
//! (default 100000). With `dovecot`, the store runs with `uidl = "dovecot"`: the first open
//! also writes `dovecot-uidlist`, and later opens look every message up in its parsed copy.
//!
//! The messages are written straight into `cur/` without a `,W=` field, as a delivery agent that
//! records no wire size would leave them, so the first open really has to read each one.

use std::error::Error;
use std::fs;
use std::time::{Duration, Instant};

use facteur_store::{LockedMaildir, MaildirStore, Maildrop, OpenStats, UidlScheme};

fn main() -> Result<(), Box<dyn Error>> {
    let count: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 100_000,
    };
    let tmp = tempfile::tempdir()?;
    let uidl = match std::env::args().nth(2).as_deref() {
        None => UidlScheme::Facteur,
        Some("dovecot") => UidlScheme::Dovecot,
        Some(other) => return Err(format!("unknown unique-id scheme {other:?}").into()),
    };
    let store = MaildirStore::new(format!("{}/%u", tmp.path().display())).with_uidl(uidl);
    let dir = store.maildir_path("bench", None)?;
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub))?;
    }

    let started = Instant::now();
    for i in 0..count {
        let name = format!("{}.M{}P4242.bench:2,", 1_600_000_000 + i, i % 1_000_000);
        let body =
            format!("From: a@example.org\nTo: bench@example.org\nSubject: message {i}\n\nHello.\n");
        fs::write(dir.join("cur").join(name), body)?;
    }
    println!("created {count} messages in {:.2?}", started.elapsed());

    // The index trusts a directory's mtime only once it is older than the settle time; wait it
    // out, as a real maildrop would between deliveries and logins.
    std::thread::sleep(Duration::from_millis(2100));

    let open = |label: &str| -> Result<(LockedMaildir, OpenStats), Box<dyn Error>> {
        let started = Instant::now();
        let (maildrop, stats) = store.open_maildir("bench", None)?;
        let elapsed = started.elapsed();
        let total: u64 = maildrop.messages().iter().map(|m| m.size).sum();
        println!(
            "{label:<34} {:>10.2?}  messages={} octets={total} files_read={} sizes_deferred={} \
             dir_listings={} fast_path={} index_written={}",
            elapsed,
            stats.messages,
            stats.files_read,
            stats.sizes_deferred,
            stats.dir_listings,
            stats.fast_path,
            stats.index_written
        );
        Ok((maildrop, stats))
    };
    let report = |label: &str| -> Result<OpenStats, Box<dyn Error>> { Ok(open(label)?.1) };

    let (mut first, _) = open("cold open (builds the index)")?;
    let started = Instant::now();
    let sizes = first.compute_sizes()?;
    println!(
        "{:<34} {:>10.2?}  octets={} (reads every file, records the sizes in the index)",
        "first STAT (sizes every message)",
        started.elapsed(),
        sizes.iter().sum::<u64>()
    );
    drop(first);
    report("warm open (index only)")?;
    report("warm open again")?;

    // Another program marks one message Seen: cur/ changes, so the next open lists it, but
    // finds every size in the index by base name.
    let first = format!("{}.M0P4242.bench", 1_600_000_000);
    fs::rename(
        dir.join("cur").join(format!("{first}:2,")),
        dir.join("cur").join(format!("{first}:2,S")),
    )?;
    std::thread::sleep(Duration::from_millis(2100));
    report("after a flag change (lists cur/)")?;
    report("warm open")?;
    Ok(())
}
