//! App passwords: extra passwords of a user, each with a label, for POP3 logins only (USER/PASS
//! and SASL PLAIN/LOGIN). A phone's mail client holds one of them instead of the account's main
//! password; revoking it leaves the main password and the other app passwords working.
//!
//! # The format, and why
//! An app password is generated here, never chosen: five groups of four lowercase letters,
//! `abcd-efgh-ijkl-mnop-qrst`. The first group is its **id**, public and unique among the
//! user's app passwords; the other sixteen letters are the **secret** (16 × log2(26), about
//! 75 bits from the operating system's random source). Only a hash of the secret is stored, with
//! the id, the label and the creation time.
//!
//! The id is what keeps a login's cost bounded: a password of this shape names the one app
//! password it can be, so a login checks at most two hashes (that app password's and the main
//! password's), however many app passwords the user has, and a password of any other shape
//! costs only the main password's hash, as before. Letters only, so that a phone's keyboard
//! types it easily; a client may send it in upper case, or without the dashes, or with spaces:
//! the letters are what counts. A right id with a wrong secret costs one hash more than a wrong
//! id, so timing may tell that an id exists: ids are not secret (the 75 bits are the rest), and
//! an unknown user is never asked about app passwords.
//!
//! # Where they are
//! With the passwd-file, in a file beside it, `<users>.app-passwords` ([`app_passwords_path`]),
//! one line each, `user:id:label:created:{SCHEME}hash` (`created` in seconds since the Unix
//! epoch), edited as the passwd-file is (a lock beside it, an atomic rewrite) and re-read by the
//! server when it changes, so a revocation is in force at the next login. With SQL users, in the
//! `app_passwords` table ([`crate::sql`]).
//!
//! When each was last used is recorded by the server at most once a minute per app password,
//! never on a login's path with the passwd-file: a thread of its own merges the times into the
//! last-used file (`user:id:created:seconds` lines, under a lock of its own, by an atomic
//! rewrite), so neither a login storm nor two servers nor a `facteur user` edit can corrupt it,
//! and a login never waits on it or fails for it.
//!
//! # What this module must never do
//! Put a password, a secret or a hash in an error, a log line or a `Debug` output; check more
//! than one app password's hash for one login.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use facteur_proto::Secret;

use crate::cache::VerifiedCache;
use crate::edit::{check_stored, check_user, edit_file, IfMissing, LockWait};
use crate::passwd_file::PasswdFile;
use crate::{AuthError, StoredPassword};

/// The most app passwords one user may have: `add` refuses more.
pub const APP_PASSWORDS_PER_USER: usize = 32;

/// The longest label, in bytes.
pub const LABEL_MAX_LEN: usize = 64;

/// Letters of the id, then of the secret.
const ID_LEN: usize = 4;
const SECRET_LEN: usize = 16;

/// How often, at most, a login records that an app password was used.
pub const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// How long the server's recorder waits for the last-used file's lock before it gives up on
/// one write (the times stay in memory and go with the next).
const LAST_USED_LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long `facteur user app-password` waits for the app passwords file's lock.
const EDIT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The file of app passwords beside the passwd-file `users`: `<users>.app-passwords`.
pub fn app_passwords_path(users: &Path) -> PathBuf {
    with_suffix(users, ".app-passwords")
}

/// Where the server records when app passwords were last used, unless configured otherwise:
/// `<users>.app-passwords.last-used`.
pub fn default_last_used_path(users: &Path) -> PathBuf {
    with_suffix(users, ".app-passwords.last-used")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `n` lowercase letters, each uniform from the operating system's random source.
fn random_letters(n: usize) -> Result<String, AuthError> {
    let mut letters = String::with_capacity(n);
    while letters.len() < n {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)?;
        // 234 = 9 × 26: bytes from 234 up are dropped, so that every letter is equally likely.
        for b in raw.into_iter().filter(|&b| b < 234).take(n - letters.len()) {
            letters.push(char::from(b'a' + b % 26));
        }
    }
    Ok(letters)
}

/// A new app password's secret: 16 random lowercase letters. Hash it with
/// [`hash_password`](crate::hash_password), store the hash with [`add_app_password`] (which
/// picks the id), and show the user [`app_password_text`] of the two, once.
pub fn generate_app_password_secret() -> Result<Secret<String>, AuthError> {
    random_letters(SECRET_LEN).map(Secret::new)
}

/// The app password a client sends: the id and the secret in groups of four,
/// `abcd-efgh-ijkl-mnop-qrst`.
pub fn app_password_text(id: &str, secret: &Secret<String>) -> Secret<String> {
    let letters: Vec<char> = id.chars().chain(secret.expose().chars()).collect();
    let groups: Vec<String> = letters
        .chunks(4)
        .map(|group| group.iter().collect())
        .collect();
    Secret::new(groups.join("-"))
}

/// A password a client sent that has an app password's shape: the id it names, and the secret
/// to check against that one app password's hash.
pub(crate) struct Presented {
    pub(crate) id: String,
    pub(crate) secret: Secret<String>,
}

/// The app password `password` would be: 20 ASCII letters, in any case, with any `-` or space
/// between them. `None` for any other password (it can only be a main password).
pub(crate) fn presented(password: &[u8]) -> Option<Presented> {
    // The longest shape accepted: 20 letters and a separator between any two.
    if password.len() > 2 * (ID_LEN + SECRET_LEN) {
        return None;
    }
    let mut letters = String::with_capacity(ID_LEN + SECRET_LEN);
    for &b in password {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' => letters.push(char::from(b.to_ascii_lowercase())),
            b'-' | b' ' => {}
            _ => return None,
        }
    }
    if letters.len() != ID_LEN + SECRET_LEN {
        return None;
    }
    let secret = letters.split_off(ID_LEN);
    Some(Presented {
        id: letters,
        secret: Secret::new(secret),
    })
}

/// A label is 1 to [`LABEL_MAX_LEN`] bytes, with no `:`, no control character, and no space at
/// either end.
pub fn validate_label(label: &str) -> Result<(), AuthError> {
    if label.is_empty() {
        return Err(AuthError::BadLabel("is empty"));
    }
    if label.len() > LABEL_MAX_LEN {
        return Err(AuthError::BadLabel("is longer than 64 bytes"));
    }
    if label.chars().any(|c| c == ':' || c.is_control()) {
        return Err(AuthError::BadLabel("holds ':' or a control character"));
    }
    if label.trim() != label {
        return Err(AuthError::BadLabel("starts or ends with a space"));
    }
    Ok(())
}

pub(crate) fn is_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_lowercase())
}

/// A new id, none of `taken`.
pub(crate) fn new_id(taken: &[&str]) -> Result<String, AuthError> {
    // 26^4 = 456,976 ids for at most 32 app passwords: a few draws at most.
    loop {
        let id = random_letters(ID_LEN)?;
        if !taken.contains(&id.as_str()) {
            return Ok(id);
        }
    }
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One app password as `list` shows it: never its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPasswordInfo {
    pub id: String,
    pub label: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// Seconds since the Unix epoch; `None`: never used (or not recorded yet).
    pub last_used: Option<i64>,
}

/// One stored app password. `Debug` shows neither the hash nor the stored field.
pub(crate) struct AppPassword {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) created: i64,
    pub(crate) stored: StoredPassword,
    /// The hash field exactly as stored: what the cache of verifications is keyed on.
    pub(crate) field: Secret<String>,
}

impl fmt::Debug for AppPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppPassword")
            .field("id", &self.id)
            .field("label", &self.label)
            .field("created", &self.created)
            .field("scheme", &self.stored.scheme().name())
            .finish()
    }
}

/// Checks `presented` against `app`: a success remembered in `cache` (keyed on the app
/// password's id and stored field, never equal to a main password's), or the scheme's own
/// check with `slow`, whose success is then remembered.
pub(crate) fn check_app_password(
    cache: Option<&VerifiedCache>,
    user: &str,
    app: &AppPassword,
    presented: &Presented,
    now: Instant,
    slow: impl FnOnce(&StoredPassword, &[u8]) -> bool,
) -> bool {
    let secret = presented.secret.expose().as_bytes();
    let tagged = cache.map(|cache| {
        let field = format!("app-password:{}:{}", app.id, app.field.expose());
        (cache, cache.tag(user, &field, secret))
    });
    if let Some((cache, tag)) = &tagged {
        if cache.is_fresh(tag, now) {
            return true;
        }
    }
    if !slow(&app.stored, secret) {
        return false;
    }
    if let Some((cache, tag)) = tagged {
        cache.insert(tag, now);
    }
    true
}

/// The file of app passwords, parsed: each user's, in the file's order.
#[derive(Debug, Default)]
pub(crate) struct AppPasswordFile {
    by_user: HashMap<String, Vec<AppPassword>>,
}

impl AppPasswordFile {
    pub(crate) fn parse_bytes(bytes: &[u8], origin: &str) -> Result<Self, AuthError> {
        let bad = |line: usize, reason: &'static str| AuthError::AppPasswordLine {
            origin: origin.to_string(),
            line,
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad(0, "the file is not UTF-8"))?;
        let mut by_user: HashMap<String, Vec<AppPassword>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(':');
            let (Some(user), Some(id), Some(label), Some(created), Some(field), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                return Err(bad(number, "expected user:id:label:created:{SCHEME}hash"));
            };
            check_user(user).map_err(|_| bad(number, "invalid user name"))?;
            if !is_id(id) {
                return Err(bad(number, "invalid id (four lowercase letters)"));
            }
            validate_label(label).map_err(|_| bad(number, "invalid label"))?;
            let created = created
                .parse::<i64>()
                .map_err(|_| bad(number, "invalid creation time"))?;
            let stored =
                StoredPassword::parse(field).map_err(|_| bad(number, "invalid stored password"))?;
            let list = by_user.entry(user.to_string()).or_default();
            if list.iter().any(|a| a.id == id) {
                return Err(bad(
                    number,
                    "the user has another app password with this id",
                ));
            }
            if list.iter().any(|a| a.label == label) {
                return Err(bad(
                    number,
                    "the user has another app password with this label",
                ));
            }
            list.push(AppPassword {
                id: id.to_string(),
                label: label.to_string(),
                created,
                stored,
                field: Secret::new(field.to_string()),
            });
        }
        Ok(Self { by_user })
    }

    /// Reads the file; a file that does not exist has no app passwords.
    pub(crate) fn load(path: &Path) -> Result<Self, AuthError> {
        match fs::read(path) {
            Ok(bytes) => Self::parse_bytes(&bytes, &path.display().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// `user`'s app passwords, in the file's order.
    pub(crate) fn of(&self, user: &str) -> &[AppPassword] {
        self.by_user.get(user).map_or(&[][..], Vec::as_slice)
    }

    /// `user`'s app password `id`.
    pub(crate) fn find(&self, user: &str, id: &str) -> Option<&AppPassword> {
        self.of(user).iter().find(|a| a.id == id)
    }
}

/// Adds an app password labelled `label` for `user`, who must be in the passwd-file `users`;
/// `stored` is the hash of its secret (as [`hash_password`](crate::hash_password) returns it).
/// Returns its id. A new file of app passwords gets the mode and owner of the passwd-file.
pub fn add_app_password(
    users: impl AsRef<Path>,
    user: &str,
    label: &str,
    stored: &str,
) -> Result<String, AuthError> {
    let users = users.as_ref();
    check_user(user)?;
    validate_label(label)?;
    check_stored(stored)?;
    if PasswdFile::load(users)?.get(user).is_none() {
        return Err(AuthError::NoSuchUser {
            user: user.to_string(),
            path: users.to_path_buf(),
        });
    }
    let path = app_passwords_path(users);
    let created = unix_now();
    let mut id = String::new();
    let missing = IfMissing::CreateLike(users);
    edit_file(
        &path,
        missing,
        LockWait::Up(EDIT_LOCK_WAIT),
        validate,
        |content| {
            let file = AppPasswordFile::parse_bytes(content, &path.display().to_string())?;
            let mine = file.of(user);
            if mine.iter().any(|a| a.label == label) {
                return Err(AuthError::AppPasswordLabelTaken {
                    user: user.to_string(),
                    label: label.to_string(),
                });
            }
            if mine.len() >= APP_PASSWORDS_PER_USER {
                return Err(AuthError::TooManyAppPasswords {
                    user: user.to_string(),
                    max: APP_PASSWORDS_PER_USER,
                });
            }
            let taken: Vec<&str> = mine.iter().map(|a| a.id.as_str()).collect();
            id = new_id(&taken)?;
            let mut out = content.to_vec();
            if !out.is_empty() && !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            out.extend_from_slice(format!("{user}:{id}:{label}:{created}:{stored}\n").as_bytes());
            Ok(out)
        },
    )?;
    Ok(id)
}

/// `user`'s app passwords, with when each was last used as far as the server recorded it in
/// `last_used` (a file that cannot be read records nothing).
pub fn list_app_passwords(
    users: impl AsRef<Path>,
    last_used: impl AsRef<Path>,
    user: &str,
) -> Result<Vec<AppPasswordInfo>, AuthError> {
    let users = users.as_ref();
    check_user(user)?;
    if PasswdFile::load(users)?.get(user).is_none() {
        return Err(AuthError::NoSuchUser {
            user: user.to_string(),
            path: users.to_path_buf(),
        });
    }
    let file = AppPasswordFile::load(&app_passwords_path(users))?;
    let used = match fs::read(last_used.as_ref()) {
        Ok(bytes) => parse_last_used(&bytes),
        Err(_) => HashMap::new(),
    };
    Ok(file
        .of(user)
        .iter()
        .map(|a| AppPasswordInfo {
            id: a.id.clone(),
            label: a.label.clone(),
            created: a.created,
            last_used: used
                .get(&(user.to_string(), a.id.clone(), a.created))
                .copied(),
        })
        .collect())
}

/// Removes `user`'s app password labelled `label`; the server refuses it from its next login.
pub fn revoke_app_password(
    users: impl AsRef<Path>,
    user: &str,
    label: &str,
) -> Result<(), AuthError> {
    check_user(user)?;
    let removed = remove_lines(users.as_ref(), user, Some(label))?;
    if removed == 0 {
        return Err(AuthError::NoSuchAppPassword {
            user: user.to_string(),
            label: label.to_string(),
        });
    }
    Ok(())
}

/// Removes every app password of `user` (done by [`del_user`](crate::del_user), so that a
/// user added again later under the same name does not get them back); how many there were.
pub(crate) fn revoke_all_app_passwords(users: &Path, user: &str) -> Result<usize, AuthError> {
    remove_lines(users, user, None)
}

fn remove_lines(users: &Path, user: &str, label: Option<&str>) -> Result<usize, AuthError> {
    let path = app_passwords_path(users);
    if !path.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    let missing = IfMissing::Fail;
    edit_file(
        &path,
        missing,
        LockWait::Up(EDIT_LOCK_WAIT),
        validate,
        |content| {
            // The content parses (the server would not have it otherwise): lines are kept as they
            // are but those of the user (with the label).
            AppPasswordFile::parse_bytes(content, &path.display().to_string())?;
            let text = String::from_utf8_lossy(content);
            let mut out = String::with_capacity(text.len());
            for line in text.split_inclusive('\n') {
                let mut fields = line.trim_end_matches(['\r', '\n']).split(':');
                let this_user = fields.next() == Some(user);
                let this_label = label.is_none_or(|l| fields.nth(1) == Some(l));
                if this_user && this_label && !line.starts_with('#') {
                    removed += 1;
                } else {
                    out.push_str(line);
                }
            }
            Ok(out.into_bytes())
        },
    )?;
    Ok(removed)
}

fn validate(bytes: &[u8], path: &Path) -> Result<(), AuthError> {
    AppPasswordFile::parse_bytes(bytes, &path.display().to_string()).map(drop)
}

/// A last-used record's key: user, id and creation time (an id given again to a new app
/// password after a revocation is another key).
type UsedKey = (String, String, i64);

/// The last-used file's content, as far as it parses: lines that do not are skipped (it is a
/// record for the administrator; logins never depend on it).
fn parse_last_used(bytes: &[u8]) -> HashMap<UsedKey, i64> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let (Some(user), Some(id), Some(created), Some(at), None) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                return None;
            };
            let key = (user.to_string(), id.to_string(), created.parse().ok()?);
            Some((key, at.parse().ok()?))
        })
        .collect()
}

/// The last-used file with `times` merged in (the later time wins), without the app passwords
/// that no longer exist in `live` (when it could be read).
fn merge_last_used(
    old: &[u8],
    times: &HashMap<UsedKey, i64>,
    live: Option<&AppPasswordFile>,
) -> Vec<u8> {
    let mut merged = parse_last_used(old);
    for (key, &at) in times {
        let e = merged.entry(key.clone()).or_insert(at);
        *e = (*e).max(at);
    }
    let mut lines: Vec<String> = merged
        .into_iter()
        .filter(|((user, id, created), _)| {
            live.is_none_or(|file| file.find(user, id).is_some_and(|a| a.created == *created))
        })
        .map(|((user, id, created), at)| format!("{user}:{id}:{created}:{at}\n"))
        .collect();
    lines.sort();
    lines.concat().into_bytes()
}

/// The passwd-file backend's app passwords as the server keeps them: the file, re-read when it
/// changes, and the recorder of their use.
pub(crate) struct AppPasswordDb {
    path: PathBuf,
    current: Mutex<(Option<FileVersion>, Arc<AppPasswordFile>)>,
    recorder: Recorder,
}

impl fmt::Debug for AppPasswordDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppPasswordDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What identifies one version of the file (a rewrite by rename changes the inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl AppPasswordDb {
    /// The app passwords beside the passwd-file `users`, their use recorded in `last_used`.
    pub(crate) fn new(users: &Path, last_used: PathBuf) -> Self {
        Self {
            path: app_passwords_path(users),
            current: Mutex::new((None, Arc::default())),
            recorder: Recorder {
                path: last_used,
                apps_path: app_passwords_path(users),
                recent: Mutex::new(HashMap::new()),
                sender: Mutex::new(None),
            },
        }
    }

    /// Where their use is recorded.
    pub(crate) fn set_last_used_path(&mut self, path: PathBuf) {
        self.recorder.path = path;
    }

    /// The app passwords now: the file is re-read when it changed. A file that cannot be read
    /// or does not parse gives no app passwords at all (logged once per version): a
    /// revocation is never undone by an error.
    pub(crate) fn current(&self) -> Arc<AppPasswordFile> {
        use std::os::unix::fs::MetadataExt;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let version = match fs::metadata(&self.path) {
            Ok(m) => Some(FileVersion {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error,
                    "cannot stat the app passwords file; no app password is accepted");
                *current = (None, Arc::default());
                return Arc::clone(&current.1);
            }
        };
        if version != current.0 || version.is_none() {
            let file = match version {
                None => AppPasswordFile::default(),
                Some(_) => AppPasswordFile::load(&self.path).unwrap_or_else(|error| {
                    tracing::error!(%error,
                        "cannot load the app passwords file; no app password is accepted");
                    AppPasswordFile::default()
                }),
            };
            *current = (version, Arc::new(file));
        }
        Arc::clone(&current.1)
    }

    /// Records a login with `user`'s app password `app`, at most once a minute each.
    pub(crate) fn used(&self, user: &str, app: &AppPassword, now: Instant) {
        self.recorder.used(user, app, now);
    }

    /// Waits until every use recorded so far is written (for tests).
    #[cfg(test)]
    pub(crate) fn flush(&self) {
        let (done, wait) = mpsc::channel();
        let sender = self.recorder.sender.lock().unwrap().clone();
        if let Some(sender) = sender {
            sender.send(Job::Flush(done)).unwrap();
            wait.recv_timeout(Duration::from_secs(10)).unwrap();
        }
    }
}

/// A job for the recorder's thread.
enum Job {
    Used(UsedKey, i64),
    #[cfg(test)]
    Flush(mpsc::Sender<()>),
}

/// Records the use of app passwords: a login hands the time to a thread of its own (started at
/// the first use) and goes on.
struct Recorder {
    path: PathBuf,
    apps_path: PathBuf,
    /// When each app password's use was last handed to the thread.
    recent: Mutex<HashMap<(String, String), Instant>>,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
}

/// Past this many app passwords remembered, those handed over more than a minute ago are
/// forgotten.
const RECENT_MAX: usize = 10_000;

impl Recorder {
    fn used(&self, user: &str, app: &AppPassword, now: Instant) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (user.to_string(), app.id.clone());
            if recent
                .get(&key)
                .is_some_and(|&t| now.saturating_duration_since(t) < LAST_USED_EVERY)
            {
                return;
            }
            if recent.len() >= RECENT_MAX {
                recent.retain(|_, t| now.saturating_duration_since(*t) < LAST_USED_EVERY);
            }
            recent.insert(key, now);
        }
        let job = Job::Used((user.to_string(), app.id.clone(), app.created), unix_now());
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if sender.is_none() {
            let (tx, rx) = mpsc::channel();
            let path = self.path.clone();
            let apps_path = self.apps_path.clone();
            let spawned = std::thread::Builder::new()
                .name("app-password-last-used".into())
                .spawn(move || record_uses(&rx, &path, &apps_path));
            match spawned {
                Ok(_) => *sender = Some(tx),
                Err(error) => {
                    tracing::warn!(%error,
                        "cannot start the thread that records app password use");
                    return;
                }
            }
        }
        if let Some(tx) = sender.as_ref() {
            // The thread ends only when the sender is dropped: a send cannot fail before.
            let _ = tx.send(job);
        }
    }
}

/// The recorder's thread: takes every use waiting, writes them in one rewrite of the file,
/// and waits for more; ends when the database is dropped.
fn record_uses(jobs: &mpsc::Receiver<Job>, path: &Path, apps_path: &Path) {
    let mut pending: HashMap<UsedKey, i64> = HashMap::new();
    let mut failed_before = false;
    while let Ok(first) = jobs.recv() {
        #[cfg(test)]
        let mut flushed = Vec::new();
        for job in std::iter::once(first).chain(jobs.try_iter()) {
            match job {
                Job::Used(key, at) => {
                    let e = pending.entry(key).or_insert(at);
                    *e = (*e).max(at);
                }
                #[cfg(test)]
                Job::Flush(done) => flushed.push(done),
            }
        }
        if !pending.is_empty() {
            let live = AppPasswordFile::load(apps_path).ok();
            let written = edit_file(
                path,
                IfMissing::Create,
                LockWait::Up(LAST_USED_LOCK_WAIT),
                |_, _| Ok(()),
                |old| Ok(merge_last_used(old, &pending, live.as_ref())),
            );
            match written {
                Ok(()) => {
                    pending.clear();
                    failed_before = false;
                }
                // Kept for the next write; said once until it works again.
                Err(error) if !failed_before => {
                    tracing::warn!(%error, "cannot record when app passwords were last used");
                    failed_before = true;
                }
                Err(error) => tracing::debug!(%error, "still cannot record app password use"),
            }
        }
        #[cfg(test)]
        for done in flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_have_the_shape_logins_recognise() {
        let secret = generate_app_password_secret().unwrap();
        assert_eq!(secret.expose().len(), SECRET_LEN);
        assert!(secret.expose().bytes().all(|b| b.is_ascii_lowercase()));
        let id = new_id(&[]).unwrap();
        assert!(is_id(&id));
        let text = app_password_text(&id, &secret);
        let t = text.expose();
        assert_eq!(t.len(), 24);
        assert_eq!(t.matches('-').count(), 4);
        let p = presented(t.as_bytes()).unwrap();
        assert_eq!(p.id, id);
        assert_eq!(p.secret.expose(), secret.expose());
        // Two draws differ (75 bits: a collision here is a broken generator).
        assert_ne!(
            generate_app_password_secret().unwrap().expose(),
            secret.expose()
        );
    }

    #[test]
    fn the_shape_is_letters_in_any_case_with_any_dashes_or_spaces() {
        for ok in [
            "abcd-efgh-ijkl-mnop-qrst",
            "ABCD-EFGH-IJKL-MNOP-QRST",
            "abcdefghijklmnopqrst",
            "abcd efgh ijkl mnop qrst",
            "Abcd-efgh-ijkl-mnop-qrst",
        ] {
            let p = presented(ok.as_bytes()).unwrap();
            assert_eq!(p.id, "abcd", "{ok}");
            assert_eq!(p.secret.expose(), "efghijklmnopqrst", "{ok}");
        }
        for not in [
            "",
            "abcd-efgh-ijkl-mnop-qrs",
            "abcd-efgh-ijkl-mnop-qrstu",
            "abcd-efgh-ijkl-mnop-qrs1",
            "abcd_efgh_ijkl_mnop_qrst",
            "abcd-efgh-ijkl-mnop-qrsté",
            "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t---",
        ] {
            assert!(presented(not.as_bytes()).is_none(), "{not:?}");
        }
    }

    #[test]
    fn labels() {
        for ok in ["phone", "Alice's phone", "tablet (2026)", "é"] {
            validate_label(ok).unwrap();
        }
        for bad in ["", "a:b", "a\nb", " phone", "phone ", &"x".repeat(65)] {
            assert!(validate_label(bad).is_err(), "{bad:?}");
        }
    }

    fn users(dir: &Path) -> PathBuf {
        let users = dir.join("users");
        fs::write(&users, "alice:{PLAIN}main\nbob:{PLAIN}bobpw\n").unwrap();
        users
    }

    fn stored(secret: &str) -> String {
        crate::hash_password(crate::Scheme::Sha256Crypt, secret.as_bytes()).unwrap()
    }

    #[test]
    fn add_list_revoke_in_the_file_beside_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let users = users(dir.path());
        let last_used = default_last_used_path(&users);
        let a = add_app_password(&users, "alice", "phone", &stored("s1")).unwrap();
        let b = add_app_password(&users, "alice", "laptop", &stored("s2")).unwrap();
        assert!(is_id(&a) && is_id(&b) && a != b);
        add_app_password(&users, "bob", "phone", &stored("s3")).unwrap();
        // Labels are unique per user.
        let e = add_app_password(&users, "alice", "phone", &stored("s4")).unwrap_err();
        assert!(matches!(e, AuthError::AppPasswordLabelTaken { .. }), "{e}");
        let e = add_app_password(&users, "carol", "phone", &stored("s4")).unwrap_err();
        assert!(matches!(e, AuthError::NoSuchUser { .. }), "{e}");

        let list = list_app_passwords(&users, &last_used, "alice").unwrap();
        let labels: Vec<_> = list.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(labels, ["phone", "laptop"]);
        assert!(list.iter().all(|i| i.last_used.is_none()));
        assert!((list[0].created - unix_now()).abs() < 60);

        revoke_app_password(&users, "alice", "phone").unwrap();
        let e = revoke_app_password(&users, "alice", "phone").unwrap_err();
        assert!(matches!(e, AuthError::NoSuchAppPassword { .. }), "{e}");
        let list = list_app_passwords(&users, &last_used, "alice").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, b);
        // Bob's, with the same label, is left alone.
        assert_eq!(
            list_app_passwords(&users, &last_used, "bob").unwrap().len(),
            1
        );
    }

    #[test]
    fn a_user_has_at_most_so_many() {
        let dir = tempfile::tempdir().unwrap();
        let users = users(dir.path());
        let hash = stored("s");
        for i in 0..APP_PASSWORDS_PER_USER {
            add_app_password(&users, "alice", &format!("device {i}"), &hash).unwrap();
        }
        let e = add_app_password(&users, "alice", "one more", &hash).unwrap_err();
        assert!(matches!(e, AuthError::TooManyAppPasswords { .. }), "{e}");
    }

    #[test]
    fn a_file_that_does_not_parse_is_refused_with_its_line() {
        for (text, reason) in [
            ("alice:abcd:phone:1\n", "expected"),
            ("alice:ABCD:phone:1:{PLAIN}x\n", "invalid id"),
            ("alice:abcd:phone:x:{PLAIN}x\n", "creation time"),
            ("alice:abcd:phone:1:{NOPE}x\n", "stored password"),
            (
                "alice:abcd:phone:1:{PLAIN}x\nalice:abcd:tablet:1:{PLAIN}y\n",
                "with this id",
            ),
            (
                "alice:abcd:phone:1:{PLAIN}x\nalice:efgh:phone:1:{PLAIN}y\n",
                "with this label",
            ),
        ] {
            let e = AppPasswordFile::parse_bytes(text.as_bytes(), "f").unwrap_err();
            assert!(e.to_string().contains(reason), "{text:?}: {e}");
            assert!(e.to_string().starts_with("f:"), "{e}");
        }
    }

    #[test]
    fn the_last_used_record_merges_and_forgets_revoked_ones() {
        let live = AppPasswordFile::parse_bytes(
            b"alice:abcd:phone:100:{PLAIN}x\nalice:efgh:tablet:200:{PLAIN}y\n",
            "f",
        )
        .unwrap();
        let old = b"alice:abcd:100:1000\nalice:efgh:200:5000\nalice:zzzz:1:7\ngarbage\n";
        let mut times = HashMap::new();
        times.insert(("alice".to_string(), "abcd".to_string(), 100), 2000);
        // Older than what another server wrote: the later time stays.
        times.insert(("alice".to_string(), "efgh".to_string(), 200), 3000);
        let merged = merge_last_used(old, &times, Some(&live));
        assert_eq!(
            String::from_utf8(merged).unwrap(),
            "alice:abcd:100:2000\nalice:efgh:200:5000\n"
        );
    }
}
