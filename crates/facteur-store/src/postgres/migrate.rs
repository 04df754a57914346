//! `facteur migrate`: copying Maildir maildrops into the PostgreSQL store, keeping each
//! message's unique-id, while the old server may still serve them.
//!
//! Per maildrop:
//! 1. List the Maildir read-only, as the Maildir store's open would list it (the same delivery
//!    order and the same unique-ids, derived from the base names by the same code), without
//!    its lock and without changing anything in it: no move from `new/`, no index, no rename.
//! 2. Read each message through the store's safe opening (one path component, never a link, no
//!    wait on a FIFO), counting its wire size and SHA-256 as it streams, and insert it in one
//!    transaction: the message row with its unique-id, its chunks, and its row in the ledger
//!    `migrated_messages`. The insert is `ON CONFLICT (maildrop_id, uid) DO NOTHING`, so a
//!    second run (after a crash, or to catch up) skips what is there, and checks that its
//!    SHA-256 is the file's (else: a conflict, reported, nothing changed).
//! 3. A message the ledger knows but PostgreSQL no longer has was deleted there by a POP3
//!    session after the cutover: it is never copied again. A message the ledger knows that the
//!    Maildir no longer has (confirmed by a second listing) was deleted by the old server after
//!    it was copied: it is removed from PostgreSQL too, under the maildrop's lease, unless a
//!    session holds it (then a later run does it).
//! 4. Verify: every message read from the Maildir is in PostgreSQL with the same SHA-256 and
//!    wire size (the chunks of each message copied now are read back and hashed), and the count
//!    of rows matches.
//!
//! What it must never do: write into the Maildir, follow a link in it, hold a message whole in
//! memory, copy a message twice, or give a message another unique-id than the Maildir store
//! gives it. File reads run on the calling task: this is for the command line's own runtime,
//! not for a server's.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use uuid::Uuid;

use super::store::{fill, maildrop_id, within, RELEASE_LEASE, TAKE_LEASE};
use super::{check_schema, db_error, CHUNK_SIZE};
use crate::handle::{escaped, Opened};
use crate::listing::{Listed, ReadOnlyListing};
use crate::name::{base_name, order_key, wire_size_field, WireCounter};
use crate::{Owner, StoreError};

/// How long the lease taken to remove messages deleted from the Maildir lasts (it is released
/// at once; this only bounds a migrate killed while holding it).
const REMOVAL_LEASE: Duration = Duration::from_secs(60);

/// The latest delivery time taken from a Maildir name (9999-12-31); a larger number is no time.
const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// What one maildrop's migration did. Problems are sentences for the administrator.
#[derive(Clone, Debug, Default)]
pub struct MaildropReport {
    /// The user name (the maildrop's name in PostgreSQL).
    pub user: String,
    /// Messages in the Maildir listing.
    pub listed: u64,
    /// Messages copied by this run (with `dry_run`: that would be copied).
    pub copied: u64,
    /// Octets copied by this run (as stored, before any CRLF is added).
    pub octets: u64,
    /// Messages already in PostgreSQL with the same content.
    pub already: u64,
    /// Messages copied by an earlier run and deleted since by a session on PostgreSQL: not
    /// copied again.
    pub deleted_in_postgres: u64,
    /// Messages listed but deleted from the Maildir before they could be read (a POP3 session
    /// of the old server): not copied, not an error.
    pub missing: u64,
    /// Messages copied by an earlier run and deleted from the Maildir since: removed from
    /// PostgreSQL too.
    pub removed: u64,
    /// As `removed`, but a session held the maildrop: left for a later run.
    pub removals_deferred: u64,
    /// Entries not copied: links, FIFOs and other non-files, unreadable files, files whose
    /// unique-id another file has.
    pub skipped: Vec<String>,
    /// Messages whose content differs between the Maildir and PostgreSQL.
    pub conflicts: Vec<String>,
    /// What the verification found wrong.
    pub verify_failures: Vec<String>,
    /// Things worth knowing that are not failures (a `,W=` field that was wrong).
    pub notes: Vec<String>,
}

impl MaildropReport {
    /// True when nothing conflicts and the verification passed.
    pub fn ok(&self) -> bool {
        self.conflicts.is_empty() && self.verify_failures.is_empty()
    }
}

/// What `facteur migrate` does besides copying.
#[derive(Clone, Copy, Debug, Default)]
pub struct MigrateOptions {
    /// Read and compare everything, write nothing to the database.
    pub dry_run: bool,
    /// The unique-ids the old server gives (its `[store] uidl`), carried into the database.
    pub uidl: crate::UidlScheme,
}

/// How long one database step (a statement, or the copy of one message) may take.
const STEP_DEADLINE: Duration = Duration::from_secs(300);

/// One connection to the database, migrating maildrops one after the other.
pub struct Migrator {
    client: Client,
    /// The chunk insert, prepared once for the connection (not once per message).
    insert_chunk: tokio_postgres::Statement,
    driver: tokio::task::JoinHandle<()>,
    holder: String,
}

/// A message as read from the Maildir.
#[derive(Clone)]
struct Content {
    sha256: Vec<u8>,
    wire_size: i64,
    octets: i64,
}

/// What PostgreSQL has under one unique-id.
struct Row {
    sha256: Vec<u8>,
    delivered_at: SystemTime,
}

enum Copied {
    /// Inserted: the message's id and what was read.
    Done(Uuid, Content),
    /// Another run inserted this unique-id meanwhile; nothing was written.
    Raced,
}

impl Drop for Migrator {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Migrator {
    /// Connects to `url` and checks the schema is this facteur's.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (client, driver) = super::connect(url).await?;
        check_schema(&client).await?;
        let insert_chunk = client
            .prepare("INSERT INTO message_chunks (message_id, seq, data) VALUES ($1, $2, $3)")
            .await
            .map_err(db_error("prepare the chunk insert"))?;
        Ok(Self {
            client,
            insert_chunk,
            driver,
            holder: format!(
                "facteur migrate on {} pid {}",
                crate::deliver::hostname(),
                std::process::id()
            ),
        })
    }

    /// Migrates the Maildir `maildir` into the maildrop of `user`. A Maildir that belongs to
    /// another uid than `owner`'s (when the users file gives one) is refused, as the Maildir
    /// store refuses to serve it.
    pub async fn maildrop(
        &mut self,
        user: &str,
        maildir: &Path,
        owner: Owner,
        options: MigrateOptions,
    ) -> Result<MaildropReport, StoreError> {
        let mut report = MaildropReport {
            user: user.to_owned(),
            ..MaildropReport::default()
        };
        let listing = ReadOnlyListing::list(maildir, owner, options.uidl)?;
        report.listed = listing.messages.len() as u64;
        if !listing.exists() {
            report.notes.push(format!(
                "{}: no Maildir (or no cur/ in it): nothing to copy, nothing removed",
                maildir.display()
            ));
        }
        for (folder, name) in &listing.not_regular {
            report.skipped.push(format!(
                "{}/{}/{}: not a regular file (a link, a FIFO, a device or a folder)",
                maildir.display(),
                folder.name(),
                escaped(name)
            ));
        }
        for (folder, name) in &listing.duplicates {
            report.skipped.push(format!(
                "{}/{}/{}: another message has its unique-id (the old server renames it at its \
                 next login; run migrate again after that)",
                maildir.display(),
                folder.name(),
                escaped(name)
            ));
        }

        let id = if options.dry_run {
            let row = self
                .client
                .query_opt("SELECT id FROM maildrops WHERE name = $1", &[&user])
                .await
                .map_err(db_error("find the maildrop"))?;
            row.map(|r| r.get::<_, Uuid>(0))
        } else {
            Some(maildrop_id(&self.client, user).await?)
        };
        let (mut ledger, mut rows) = match id {
            Some(id) => (self.ledger(id).await?, self.rows(id).await?),
            None => (HashMap::new(), HashMap::new()),
        };

        // What should be in PostgreSQL now, as read from the Maildir; what this run copied.
        let mut present: HashMap<String, Content> = HashMap::with_capacity(listing.messages.len());
        let mut copied_now: Vec<(Uuid, String)> = Vec::new();
        let mut missing: HashSet<String> = HashSet::new();
        let mut buf = vec![0u8; CHUNK_SIZE];
        // The delivery time of the message listed before, as PostgreSQL has it.
        let mut last = None;
        for message in &listing.messages {
            let uid = message.uid.as_str().to_owned();
            let delivered_at = next_time(name_time(message.name.as_bytes()), last);
            last = Some(rows.get(&uid).map_or(delivered_at, |r| r.delivered_at));
            let place = format!(
                "{}/{}/{}",
                maildir.display(),
                message.folder.name(),
                escaped(&message.name)
            );
            let mut file = match listing.open(message) {
                Ok(Opened::File(f)) => f,
                Ok(Opened::Missing) => {
                    report.missing += 1;
                    missing.insert(uid);
                    continue;
                }
                Ok(Opened::NotRegular) => {
                    report.skipped.push(format!("{place}: not a regular file"));
                    continue;
                }
                Err(e) => {
                    report.skipped.push(format!("{place}: cannot open: {e}"));
                    continue;
                }
            };
            let content = match (id, ledger.contains_key(&uid) || rows.contains_key(&uid)) {
                (Some(maildrop), false) if !options.dry_run => {
                    let copied = within(
                        STEP_DEADLINE,
                        "copy a message",
                        self.copy(maildrop, &uid, &mut file, &mut buf, delivered_at),
                    )
                    .await?;
                    match copied {
                        Ok(Copied::Done(row_id, content)) => {
                            report.copied += 1;
                            report.octets = report
                                .octets
                                .saturating_add(u64::try_from(content.octets).unwrap_or(0));
                            rows.insert(
                                uid.clone(),
                                Row {
                                    sha256: content.sha256.clone(),
                                    delivered_at,
                                },
                            );
                            ledger.insert(uid.clone(), content.sha256.clone());
                            copied_now.push((row_id, uid.clone()));
                            Some(content)
                        }
                        Ok(Copied::Raced) => {
                            // Another migrate inserted it meanwhile: compare with its copy.
                            rows = self.rows(maildrop).await?;
                            ledger = self.ledger(maildrop).await?;
                            None
                        }
                        // The file could not be read: skipped, nothing written.
                        Err(e) => {
                            report.skipped.push(format!("{place}: cannot read: {e}"));
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let content = match content {
                Some(c) => {
                    note_wire_field(message, &c, &place, &mut report);
                    present.insert(uid, c);
                    continue;
                }
                None => match reopen_and_hash(&listing, message, file, &mut buf) {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        report.missing += 1;
                        missing.insert(uid);
                        continue;
                    }
                    Err(e) => {
                        report.skipped.push(format!("{place}: cannot read: {e}"));
                        continue;
                    }
                },
            };
            let keep = self
                .compare(id, &uid, &content, &mut ledger, &rows, &mut report, options)
                .await?;
            if keep {
                present.insert(uid, content);
            }
        }

        if let Some(maildrop) = id {
            if listing.exists() {
                let listed: HashSet<&str> = listing
                    .messages
                    .iter()
                    .map(|m| m.uid.as_str())
                    .filter(|u| !missing.contains(*u))
                    .collect();
                self.remove_deleted(
                    maildrop,
                    maildir,
                    owner,
                    &listed,
                    &ledger,
                    &rows,
                    options,
                    &mut report,
                )
                .await?;
            }
            if !options.dry_run {
                self.verify(maildrop, &present, &copied_now, &mut report)
                    .await?;
            }
        }
        Ok(report)
    }

    /// The ledger of a maildrop: unique-id to SHA-256 of what was copied.
    async fn ledger(&self, maildrop: Uuid) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        let rows = within(STEP_DEADLINE, "read the migration ledger", async {
            self.client
                .query(
                    "SELECT uid, sha256 FROM migrated_messages WHERE maildrop_id = $1",
                    &[&maildrop],
                )
                .await
                .map_err(db_error("read the migration ledger"))
        })
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The messages of a maildrop, by unique-id.
    async fn rows(&self, maildrop: Uuid) -> Result<HashMap<String, Row>, StoreError> {
        let rows = within(STEP_DEADLINE, "list the maildrop", async {
            self.client
                .query(
                    "SELECT uid, sha256, delivered_at FROM messages WHERE maildrop_id = $1",
                    &[&maildrop],
                )
                .await
                .map_err(db_error("list the maildrop"))
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let row = Row {
                    sha256: r.get(1),
                    delivered_at: r.get(2),
                };
                (r.get(0), row)
            })
            .collect())
    }

    /// A message PostgreSQL or the ledger knows already: the same content is "already there"
    /// (true: it must be in PostgreSQL), another content a conflict.
    #[allow(
        clippy::too_many_arguments,
        reason = "the state of one maildrop's run, passed apart to keep the borrows short"
    )]
    async fn compare(
        &self,
        id: Option<Uuid>,
        uid: &str,
        content: &Content,
        ledger: &mut HashMap<String, Vec<u8>>,
        rows: &HashMap<String, Row>,
        report: &mut MaildropReport,
        options: MigrateOptions,
    ) -> Result<bool, StoreError> {
        let conflict = |report: &mut MaildropReport, what: &str| {
            report.conflicts.push(format!(
                "unique-id {uid}: the Maildir's message differs from {what} (SHA-256); left as it is"
            ));
        };
        match (ledger.get(uid), rows.get(uid)) {
            (Some(copied), _) if *copied != content.sha256 => {
                conflict(report, "the one copied before");
                Ok(false)
            }
            (_, Some(row)) if row.sha256 != content.sha256 => {
                conflict(report, "PostgreSQL's");
                Ok(false)
            }
            (Some(_), Some(_)) => {
                report.already += 1;
                Ok(true)
            }
            (Some(_), None) => {
                report.deleted_in_postgres += 1;
                Ok(false)
            }
            (None, Some(_)) => {
                // There, with the same content, but not by a migrate run: record it.
                if let (Some(maildrop), false) = (id, options.dry_run) {
                    within(STEP_DEADLINE, "record a message in the ledger", async {
                        self.client
                            .execute(
                                LEDGER_INSERT,
                                &[&maildrop, &uid, &content.sha256, &content.wire_size],
                            )
                            .await
                            .map_err(db_error("record a message in the ledger"))
                    })
                    .await?;
                    ledger.insert(uid.to_owned(), content.sha256.clone());
                }
                report.already += 1;
                Ok(true)
            }
            (None, None) => {
                // Only in a dry run: this message would be copied.
                report.copied += 1;
                report.octets = report
                    .octets
                    .saturating_add(u64::try_from(content.octets).unwrap_or(0));
                Ok(false)
            }
        }
    }

    /// Copies one message in one transaction: its row, its chunks, its ledger row.
    async fn copy(
        &mut self,
        maildrop: Uuid,
        uid: &str,
        file: &mut std::fs::File,
        buf: &mut [u8],
        delivered_at: SystemTime,
    ) -> Result<io::Result<Copied>, StoreError> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(db_error("begin a copy"))?;
        let id = Uuid::new_v4();
        let inserted = tx
            .query_opt(
                "INSERT INTO messages \
                 (id, maildrop_id, uid, wire_size, octets, chunks, sha256, delivered_at) \
                 VALUES ($1, $2, $3, 0, 0, 0, ''::bytea, $4) \
                 ON CONFLICT (maildrop_id, uid) DO NOTHING RETURNING id",
                &[&id, &maildrop, &uid, &delivered_at],
            )
            .await
            .map_err(db_error("record the message"))?;
        if inserted.is_none() {
            tx.rollback().await.map_err(db_error("roll back a copy"))?;
            return Ok(Ok(Copied::Raced));
        }
        let mut counter = WireCounter::default();
        let mut hash = Sha256::new();
        let mut seq: i32 = 0;
        loop {
            let n = match fill(file, buf) {
                Ok(n) => n,
                // Dropping the transaction rolls it back.
                Err(e) => return Ok(Err(e)),
            };
            if n == 0 {
                break;
            }
            let block = buf.get(..n).unwrap_or_default();
            counter.feed(block);
            hash.update(block);
            tx.execute(&self.insert_chunk, &[&id, &seq, &block])
                .await
                .map_err(db_error("store a chunk of the message"))?;
            let Some(next) = seq.checked_add(1) else {
                return Ok(Err(io::Error::other("message too large for the store")));
            };
            seq = next;
            if n < buf.len() {
                break;
            }
        }
        let (Ok(octets), Ok(wire_size)) = (
            i64::try_from(counter.size()),
            i64::try_from(counter.wire_size()),
        ) else {
            return Ok(Err(io::Error::other("message too large for the store")));
        };
        let sha256 = hash.finalize().to_vec();
        tx.execute(
            "UPDATE messages SET wire_size = $2, octets = $3, chunks = $4, sha256 = $5 \
             WHERE id = $1",
            &[&id, &wire_size, &octets, &seq, &sha256],
        )
        .await
        .map_err(db_error("complete the message"))?;
        tx.execute(LEDGER_INSERT, &[&maildrop, &uid, &sha256, &wire_size])
            .await
            .map_err(db_error("record the message in the ledger"))?;
        tx.commit().await.map_err(db_error("commit a copy"))?;
        Ok(Ok(Copied::Done(
            id,
            Content {
                sha256,
                wire_size,
                octets,
            },
        )))
    }

    /// Removes from PostgreSQL the messages an earlier run copied that the Maildir no longer
    /// has (the old server deleted them since), after a second listing confirms they are gone,
    /// and only those whose content is still the one copied. Under the maildrop's lease: while
    /// a session holds it, they are left for a later run.
    #[allow(
        clippy::too_many_arguments,
        reason = "the state of one maildrop's run, passed apart to keep the borrows short"
    )]
    async fn remove_deleted(
        &mut self,
        maildrop: Uuid,
        maildir: &Path,
        owner: Owner,
        listed: &HashSet<&str>,
        ledger: &HashMap<String, Vec<u8>>,
        rows: &HashMap<String, Row>,
        options: MigrateOptions,
        report: &mut MaildropReport,
    ) -> Result<(), StoreError> {
        let mut gone: Vec<&str> = ledger
            .iter()
            .filter(|(uid, sha)| {
                !listed.contains(uid.as_str())
                    && rows.get(uid.as_str()).is_some_and(|r| r.sha256 == **sha)
            })
            .map(|(uid, _)| uid.as_str())
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        // A file renamed while the first listing ran may have been missed: look again.
        let again = ReadOnlyListing::list(maildir, owner, options.uidl)?;
        if !again.exists() {
            return Ok(());
        }
        let still: HashSet<&str> = again.messages.iter().map(|m| m.uid.as_str()).collect();
        gone.retain(|uid| !still.contains(uid));
        if gone.is_empty() {
            return Ok(());
        }
        if options.dry_run {
            report.removed += gone.len() as u64;
            return Ok(());
        }
        let token = Uuid::new_v4();
        let taken = within(STEP_DEADLINE, "take the maildrop's lease", async {
            self.client
                .query_opt(
                    TAKE_LEASE,
                    &[
                        &maildrop,
                        &token,
                        &self.holder,
                        &REMOVAL_LEASE.as_secs_f64(),
                    ],
                )
                .await
                .map_err(db_error("take the maildrop's lease"))
        })
        .await?;
        if taken.is_none() {
            report.removals_deferred += gone.len() as u64;
            return Ok(());
        }
        let removed = within(
            STEP_DEADLINE,
            "remove messages deleted from the Maildir",
            async {
                self.client
                    .execute(
                        "DELETE FROM messages m USING migrated_messages l \
                     WHERE m.maildrop_id = $1 AND m.uid = ANY($2) \
                     AND l.maildrop_id = m.maildrop_id AND l.uid = m.uid \
                     AND l.sha256 = m.sha256",
                        &[&maildrop, &gone],
                    )
                    .await
                    .map_err(db_error("remove messages deleted from the Maildir"))
            },
        )
        .await;
        let released = within(STEP_DEADLINE, "release the maildrop's lease", async {
            self.client
                .execute(RELEASE_LEASE, &[&maildrop, &token, &Uuid::new_v4()])
                .await
                .map_err(db_error("release the maildrop's lease"))
        })
        .await;
        report.removed += removed?;
        released?;
        Ok(())
    }

    /// Checks that PostgreSQL has every message read from the Maildir, with its SHA-256 and
    /// wire size, and that the chunks of each message copied now hash to what was read.
    async fn verify(
        &self,
        maildrop: Uuid,
        present: &HashMap<String, Content>,
        copied_now: &[(Uuid, String)],
        report: &mut MaildropReport,
    ) -> Result<(), StoreError> {
        let uids: Vec<&str> = present.keys().map(String::as_str).collect();
        let rows = within(STEP_DEADLINE, "verify the maildrop", async {
            self.client
                .query(
                    "SELECT uid, sha256, wire_size FROM messages \
                     WHERE maildrop_id = $1 AND uid = ANY($2)",
                    &[&maildrop, &uids],
                )
                .await
                .map_err(db_error("verify the maildrop"))
        })
        .await?;
        if rows.len() != present.len() {
            report.verify_failures.push(format!(
                "{} messages read from the Maildir, {} of them in PostgreSQL",
                present.len(),
                rows.len()
            ));
        }
        for row in rows {
            let (uid, sha256, wire_size): (String, Vec<u8>, i64) =
                (row.get(0), row.get(1), row.get(2));
            match present.get(&uid) {
                Some(c) if c.sha256 == sha256 && c.wire_size == wire_size => {}
                Some(c) => report.verify_failures.push(format!(
                    "unique-id {uid}: PostgreSQL has wire size {wire_size}, the Maildir {} \
                     (or their SHA-256 differ)",
                    c.wire_size
                )),
                None => {}
            }
        }
        for (id, uid) in copied_now {
            let Some(expected) = present.get(uid) else {
                continue;
            };
            let stored = within(STEP_DEADLINE, "read a copied message back", async {
                let chunks = self
                    .client
                    .query_raw(
                        "SELECT data FROM message_chunks WHERE message_id = $1 ORDER BY seq",
                        [id],
                    )
                    .await
                    .map_err(db_error("read a copied message back"))?;
                let mut chunks = std::pin::pin!(chunks);
                let (mut hash, mut counter) = (Sha256::new(), WireCounter::default());
                while let Some(row) = chunks.next().await {
                    let row = row.map_err(db_error("read a copied message back"))?;
                    let data: &[u8] = row.get(0);
                    hash.update(data);
                    counter.feed(data);
                }
                Ok((hash.finalize().to_vec(), counter))
            })
            .await?;
            let (sha256, counter) = stored;
            let same = sha256 == expected.sha256
                && i64::try_from(counter.size()).ok() == Some(expected.octets)
                && i64::try_from(counter.wire_size()).ok() == Some(expected.wire_size);
            if !same {
                report.verify_failures.push(format!(
                    "unique-id {uid}: the chunks stored differ from the Maildir's file"
                ));
            }
        }
        Ok(())
    }
}

const LEDGER_INSERT: &str = "INSERT INTO migrated_messages (maildrop_id, uid, sha256, wire_size) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (maildrop_id, uid) DO NOTHING";

/// Reads the rest of an open message (from its start) and returns its content's sums; `None`
/// if it vanished. The file handed in was opened by the caller; it is rewound, not reopened,
/// unless the copy consumed it.
fn reopen_and_hash(
    listing: &ReadOnlyListing,
    message: &Listed,
    file: std::fs::File,
    buf: &mut [u8],
) -> io::Result<Option<Content>> {
    use std::io::{Seek, SeekFrom};
    let mut file = file;
    if file.seek(SeekFrom::Start(0)).is_err() {
        file = match listing.open(message)? {
            Opened::File(f) => f,
            Opened::Missing => return Ok(None),
            Opened::NotRegular => return Err(io::Error::other("not a regular file")),
        };
    }
    hash_file(&mut file, buf).map(Some)
}

/// The SHA-256, octets and wire size of a message, read in blocks.
fn hash_file(file: &mut dyn Read, buf: &mut [u8]) -> io::Result<Content> {
    let mut counter = WireCounter::default();
    let mut hash = Sha256::new();
    loop {
        let n = fill(file, buf)?;
        if n == 0 {
            break;
        }
        let block = buf.get(..n).unwrap_or_default();
        counter.feed(block);
        hash.update(block);
        if n < buf.len() {
            break;
        }
    }
    let too_large = || io::Error::other("message too large");
    Ok(Content {
        sha256: hash.finalize().to_vec(),
        wire_size: i64::try_from(counter.wire_size()).map_err(|_| too_large())?,
        octets: i64::try_from(counter.size()).map_err(|_| too_large())?,
    })
}

/// A `,W=` field of the name that disagrees with the wire size counted: worth a note, since the
/// old server told clients the field's number.
fn note_wire_field(message: &Listed, content: &Content, place: &str, report: &mut MaildropReport) {
    if let Some(w) = wire_size_field(base_name(message.name.as_bytes())) {
        if i64::try_from(w).ok() != Some(content.wire_size) {
            report.notes.push(format!(
                "{place}: its name says W={w}, its wire size is {} (PostgreSQL keeps the \
                 counted size)",
                content.wire_size
            ));
        }
    }
}

/// The delivery time a Maildir name starts with: `<seconds>.M<microseconds>` (facteur's and
/// Dovecot's names), or `<seconds>.` alone; `None` for a name without one.
fn name_time(name: &[u8]) -> Option<SystemTime> {
    let (no_time, seconds) = order_key(name);
    if no_time || seconds > MAX_TIMESTAMP {
        return None;
    }
    let base = base_name(name);
    let micros = base
        .iter()
        .position(|&b| b == b'.')
        .and_then(|dot| base.get(dot + 1..))
        .and_then(|rest| rest.strip_prefix(b"M"))
        .map(|rest| {
            rest.iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |v, &d| {
                    v.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                })
        })
        .filter(|&us| us < 1_000_000)
        .unwrap_or(0);
    Some(UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros))
}

/// The `delivered_at` of a message copied now: the time its name says, but always after the
/// message listed before it (`last`, as PostgreSQL has it), so that PostgreSQL's order (by
/// `delivered_at`) is the Maildir's, on a first run and on a catch-up run alike. A name without
/// a time (such names sort last in a Maildir) comes just after the one before it.
fn next_time(named: Option<SystemTime>, last: Option<SystemTime>) -> SystemTime {
    let after = last.map(|t| t + Duration::from_micros(1));
    match (named, after) {
        (Some(t), Some(a)) => t.max(a),
        (Some(t), None) => t,
        (None, Some(a)) => a,
        (None, None) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_times_keep_the_maildir_order() {
        let at = |s: u64, us: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us);
        assert_eq!(
            name_time(b"1700000000.M45P1Q2R00.h:2,S"),
            Some(at(1_700_000_000, 45))
        );
        assert_eq!(name_time(b"1700000000.P1.h"), Some(at(1_700_000_000, 0)));
        assert_eq!(
            name_time(b"1700000000.M99999999P1.h"),
            Some(at(1_700_000_000, 0))
        );
        assert_eq!(name_time(b"nodate"), None);
        assert_eq!(name_time(b"99999999999999.M1.h"), None);
        // Never before the message listed before it, whatever the name says.
        let names: [&[u8]; 4] = [
            b"1700000000.M9P1.h",
            b"1700000000.M9P2.h",
            b"1699999999.M1.h",
            b"x",
        ];
        let mut last = None;
        let mut times = Vec::new();
        for name in names {
            let t = next_time(name_time(name), last);
            last = Some(t);
            times.push(t);
        }
        assert_eq!(
            times,
            [
                at(1_700_000_000, 9),
                at(1_700_000_000, 10),
                at(1_700_000_000, 11),
                at(1_700_000_000, 12)
            ]
        );
    }
}
