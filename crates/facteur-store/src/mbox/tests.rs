use super::*;
use std::fs;
use std::time::Duration;

struct Spool {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: MboxStore,
}

fn spool() -> Spool {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let store = MboxStore::new(format!("{}/%u", path.display()));
    Spool {
        _dir: dir,
        path,
        store,
    }
}

impl Spool {
    fn mbox(&self) -> PathBuf {
        self.path.join("alice")
    }
    fn open(&self) -> LockedMbox {
        self.store
            .open_mbox("alice", None, Owner::default())
            .unwrap()
    }
    fn deliver(&self, msg: &[u8]) -> Delivered {
        self.store.deliver("alice", None, &mut &msg[..]).unwrap()
    }
    fn write(&self, bytes: &[u8]) {
        fs::write(self.mbox(), bytes).unwrap();
    }
    /// Every message of a fresh session: (unique-id, content).
    fn all(&self) -> Vec<(String, Vec<u8>)> {
        let mut m = self.open();
        (0..m.messages().len())
            .map(|i| (m.messages()[i].uid.as_str().to_owned(), read(&mut m, i)))
            .collect()
    }
    fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "alice" && n != ".alice.facteur-lock")
            .collect();
        names.sort();
        names
    }
}

fn read(m: &mut LockedMbox, i: usize) -> Vec<u8> {
    let mut out = Vec::new();
    m.open_message(i).unwrap().read_to_end(&mut out).unwrap();
    // LIST's size is exactly what RETR sends before dot-stuffing.
    let wire = super::super::name::count_wire_size(&mut &out[..], &mut [0u8; 7]).unwrap();
    assert_eq!(m.size(i), Some(wire), "message {i}");
    out
}

const POSTFIX: &[u8] = b"From bob@example.org  Thu Dec  3 10:00:00 2026\nReturn-Path: <bob@example.org>\nSubject: one\n\n>From the start of a line\n>>From deeper\nend\n\nFrom carol@example.org  Thu Dec  3 10:00:05 2026\nSubject: two\n\nsecond\n\n";

#[test]
fn reads_what_postfix_local_writes() {
    let s = spool();
    s.write(POSTFIX);
    let all = s.all();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0].1,
        b"Return-Path: <bob@example.org>\nSubject: one\n\nFrom the start of a line\n>From deeper\nend\n"
    );
    assert_eq!(all[1].1, b"Subject: two\n\nsecond\n");
    // Stable across sessions.
    assert_eq!(s.all(), all);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn no_mbox_is_an_empty_maildrop_and_delivery_creates_it() {
    let s = spool();
    assert!(s.open().messages().is_empty());
    let msg = b"Subject: hi\r\n\r\nFrom me\r\n>From you\r\nno final newline";
    let d = s.deliver(msg);
    // Created for the user and the spool's group, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(s.mbox()).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o660);
    let all = s.all();
    assert_eq!(all.len(), 1);
    // The final newline a delivery adds is part of the message from then on.
    let mut want = msg.to_vec();
    want.push(b'\n');
    assert_eq!(all[0].1, want);
    let mut m = s.open();
    assert_eq!(m.size(0), Some(d.wire_size));
    assert_eq!(read(&mut m, 0), want);
    let text = fs::read(s.mbox()).unwrap();
    assert!(text.starts_with(b"From MAILER-DAEMON "));
    assert!(text.ends_with(b">From me\r\n>>From you\r\nno final newline\n\n"));
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn identical_messages_get_distinct_stable_ids() {
    let s = spool();
    let one = b"From a@x Thu Dec  3 10:00:00 2026\nSubject: same\n\nbody\n\n";
    let mut bytes = Vec::new();
    for _ in 0..3 {
        bytes.extend_from_slice(one);
    }
    bytes.extend_from_slice(b"From a@x Thu Dec  3 10:00:01 2026\nSubject: same\n\nbody\n\n");
    s.write(&bytes);
    let ids: Vec<String> = s.all().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[1], format!("{}-2", ids[0]));
    assert_eq!(ids[2], format!("{}-3", ids[0]));
    assert_eq!(ids[0].len(), 32);
    // Another second in the From line: another id, no counter.
    assert_eq!(ids[3].len(), 32);
    assert_ne!(ids[3], ids[0]);
    // Deleting the last duplicate and the distinct one keeps the others' ids.
    let mut m = s.open();
    m.apply_deletions(&[2]).unwrap();
    drop(m);
    let after: Vec<String> = s.all().into_iter().map(|(id, _)| id).collect();
    assert_eq!(after, vec![ids[0].clone(), ids[1].clone(), ids[3].clone()]);
}

#[test]
fn a_second_session_is_in_use_and_deliveries_go_on() {
    let s = spool();
    s.write(POSTFIX);
    let m = s.open();
    assert!(matches!(
        s.store.open_mbox("alice", None, Owner::default()),
        Err(StoreError::InUse)
    ));
    // The MTA's locks are not held during the session.
    s.deliver(b"Subject: three\n\nthird\n");
    assert!(!s.path.join("alice.lock").exists());
    drop(m);
    assert_eq!(s.all().len(), 3);
}

#[test]
fn update_keeps_mail_delivered_during_the_session() {
    let s = spool();
    s.write(POSTFIX);
    let before = s.all();
    let mut m = s.open();
    s.deliver(b"Subject: three\n\nthird\nFrom inside\n");
    m.apply_deletions(&[0]).unwrap();
    drop(m);
    let after = s.all();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before[1]);
    assert_eq!(after[1].1, b"Subject: three\n\nthird\nFrom inside\n");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    // The file is what it should be, octet for octet.
    let text = fs::read(s.mbox()).unwrap();
    assert!(text.starts_with(b"From carol@example.org  Thu Dec  3 10:00:05 2026\nSubject: two\n\nsecond\n\nFrom MAILER-DAEMON "));
}

#[test]
fn update_deleting_everything_leaves_an_empty_file() {
    let s = spool();
    s.write(POSTFIX);
    let mut m = s.open();
    m.apply_deletions(&[1, 0, 1]).unwrap();
    drop(m);
    assert_eq!(fs::read(s.mbox()).unwrap(), b"");
    assert!(s.all().is_empty());
    let mut m = s.open();
    assert!(matches!(
        m.apply_deletions(&[0]),
        Err(StoreError::NoSuchMessage(1))
    ));
}

/// Three messages; the session deletes the second; the "UPDATE" stops at `step`; an MTA appends a
/// fourth before the next login (a stale dotlock broken); the next login recovers.
fn crash_case(step: Step, append_after: bool) {
    let s = spool();
    let third = b"From dave@example.org  Thu Dec  3 10:00:09 2026\nSubject: three\n\nthird\n\n";
    let mut bytes = POSTFIX.to_vec();
    bytes.extend_from_slice(third);
    s.write(&bytes);
    let before = s.all();
    let mut m = s.open();
    m.crash_at(step);
    assert!(m.apply_deletions(&[1]).is_err(), "{step:?}");
    drop(m);
    let mut want: Vec<(String, Vec<u8>)> =
        if matches!(step, Step::JournalHalf | Step::JournalWritten) {
            before.clone()
        } else {
            vec![before[0].clone(), before[2].clone()]
        };
    if append_after {
        // Appended the way an MTA does, with no knowledge of the journal.
        let mut f = fs::OpenOptions::new().append(true).open(s.mbox()).unwrap();
        f.write_all(
            b"From erin@example.org  Thu Dec  3 10:00:10 2026\nSubject: four\n\nfourth\n\n",
        )
        .unwrap();
        drop(f);
    }
    let after = s.all();
    if append_after {
        assert_eq!(after.len(), want.len() + 1, "{step:?}");
        assert_eq!(
            after.last().unwrap().1,
            b"Subject: four\n\nfourth\n",
            "{step:?}"
        );
        want.push(after.last().unwrap().clone());
    }
    assert_eq!(after, want, "{step:?} append {append_after}");
    assert!(s.leftovers().is_empty(), "{step:?}: {:?}", s.leftovers());
    // And a second recovery changes nothing.
    assert_eq!(s.all(), want);
}

#[test]
fn a_crash_at_any_step_of_update_loses_and_resurrects_nothing() {
    for step in [
        Step::JournalHalf,
        Step::JournalWritten,
        Step::Committed,
        Step::DataHalf,
        Step::DataWritten,
        Step::Truncated,
    ] {
        crash_case(step, false);
        crash_case(step, true);
    }
}

#[test]
fn links_fifos_and_hard_links_are_refused() {
    let s = spool();
    fs::write(s.path.join("target"), POSTFIX).unwrap();
    std::os::unix::fs::symlink(s.path.join("target"), s.mbox()).unwrap();
    assert!(s.store.open_mbox("alice", None, Owner::default()).is_err());
    assert!(s.store.deliver("alice", None, &mut &b"x\n"[..]).is_err());
    fs::remove_file(s.mbox()).unwrap();
    fs::hard_link(s.path.join("target"), s.mbox()).unwrap();
    let err = s
        .store
        .open_mbox("alice", None, Owner::default())
        .unwrap_err();
    assert!(err.to_string().contains("hard links"), "{err}");
    fs::remove_file(s.mbox()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        s.mbox(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert!(s.store.open_mbox("alice", None, Owner::default()).is_err());
    // Names of facteur's own files are never a user's mbox.
    for bad in [".alice.facteur-lock", "alice.lock"] {
        assert!(matches!(
            s.store.open_mbox(bad, None, Owner::default()),
            Err(StoreError::BadUser(_))
        ));
    }
}

#[test]
fn a_stale_dotlock_is_broken_a_fresh_one_is_respected() {
    let s = spool();
    s.write(POSTFIX);
    let lock = s.path.join("alice.lock");
    fs::write(&lock, "").unwrap();
    let old = SystemTime::now() - lock::STALE_DOTLOCK - Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(s.all().len(), 2);
    assert!(!lock.exists());
    // A dead writer's pid: removed at once, whatever its age.
    fs::write(&lock, "999999999\n").unwrap();
    assert_eq!(s.all().len(), 2);
    assert!(!lock.exists());
}

#[test]
fn a_damaged_journal_stops_the_mbox_from_being_served() {
    let s = spool();
    s.write(POSTFIX);
    fs::write(s.path.join(".alice.facteur-journal"), b"garbage").unwrap();
    let err = s
        .store
        .open_mbox("alice", None, Owner::default())
        .unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(fs::read(s.mbox()).unwrap(), POSTFIX);
}

#[test]
fn login_delay_is_kept_beside_the_mbox() {
    let s = spool();
    s.write(POSTFIX);
    let mut m = s.open();
    m.check_login_delay(Duration::from_secs(60)).unwrap();
    m.release().unwrap();
    drop(m);
    let mut m = s.open();
    assert!(matches!(
        m.check_login_delay(Duration::from_secs(60)),
        Err(StoreError::LoginDelay)
    ));
    // A refused login did not move the time; a shorter delay has passed.
    std::thread::sleep(Duration::from_millis(20));
    m.check_login_delay(Duration::from_millis(10)).unwrap();
    assert!(s.path.join(".alice.facteur-last-login").exists());
    // The mbox itself is untouched.
    assert_eq!(fs::read(s.mbox()).unwrap(), POSTFIX);
}

#[test]
fn expire_removes_what_was_retrieved_long_enough_ago_and_serves_the_rest() {
    let s = spool();
    s.write(POSTFIX);
    let before = s.all();
    // A session retrieved message 1; it is recorded at its committed QUIT.
    let mut m = s.open();
    m.record_retrievals(&[0]).unwrap();
    drop(m);
    // Not yet due: nothing moves.
    let mut m = s.open();
    assert_eq!(m.expire(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(m.messages().len(), 2);
    drop(m);
    // Due: removed from the file and from the snapshot, whose other message reads right.
    let mut m = s.open();
    assert_eq!(m.expire(Duration::ZERO).unwrap(), 1);
    assert_eq!(m.messages().len(), 1);
    assert_eq!(m.messages()[0].uid.as_str(), before[1].0);
    assert_eq!(read(&mut m, 0), before[1].1);
    drop(m);
    assert_eq!(s.all(), vec![before[1].clone()]);
}
