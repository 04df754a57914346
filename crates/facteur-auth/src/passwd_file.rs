//! The passwd-file user database, in Dovecot's format:
//!
//! ```text
//! user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields
//! ```
//!
//! Only the user and the password are required. Blank lines and lines starting with `#` are
//! ignored. Extra fields are the rest of the line after the seventh `:`, colons included.
//! Every line is checked when the file is loaded, so a mistake is reported at start-up with the
//! file and the line, never at a user's login.
//!
//! [`PasswdDb`] is the [`Authenticator`] the server uses: it re-reads the file when it changes,
//! so `facteur user add` takes effect without a restart.

use std::collections::HashMap;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use facteur_proto::policy::{BadPolicy, Expire, UserPolicy};
use facteur_proto::Secret;

use super::app_password::{check_app_password, default_last_used_path, presented, AppPasswordDb};
use super::cache::VerifiedCache;
use super::cram_md5::CramMd5Context;
use super::scheme::{
    apop_digest, apop_digest_matches, random_token, CostKey, ScramSource, StoredPassword,
};
use super::scram::{fake_keys, plain_user_salt};
use super::{
    validate_user_name, Account, AuthError, AuthOutcome, Authenticator, Checked, FailureReason,
    LineError, ScramCredentials, PASSWORD_MAX_LEN, SCRAM_DEFAULT_ITERATIONS, USER_NAME_MAX_LEN,
};
use facteur_store::Owner;

/// One user of the passwd-file.
///
/// `Debug` shows the scheme of the password, never the password or its hash.
#[derive(Clone, Debug)]
pub struct PasswdEntry {
    user: String,
    password: StoredPassword,
    /// The password field exactly as in the file: what the cache of verifications is keyed on.
    password_field: Secret<String>,
    uid: Option<String>,
    gid: Option<String>,
    gecos: Option<String>,
    home: Option<String>,
    shell: Option<String>,
    extra_fields: Option<String>,
    /// `login_delay=` and `expire=` of the extra fields.
    policy: UserPolicy,
    line: usize,
}

impl PasswdEntry {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &StoredPassword {
        &self.password
    }

    /// The third field, if present and not empty.
    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    /// The fourth field, if present and not empty.
    pub fn gid(&self) -> Option<&str> {
        self.gid.as_deref()
    }

    /// The fifth field, if present and not empty; unused by facteur.
    pub fn gecos(&self) -> Option<&str> {
        self.gecos.as_deref()
    }

    /// The home directory (sixth field), if present and not empty.
    pub fn home(&self) -> Option<&str> {
        self.home.as_deref()
    }

    /// The seventh field, if present and not empty; unused by facteur.
    pub fn shell(&self) -> Option<&str> {
        self.shell.as_deref()
    }

    /// Everything after the seventh `:` (space-separated `key=value` pairs in Dovecot), if not
    /// empty.
    pub fn extra_fields(&self) -> Option<&str> {
        self.extra_fields.as_deref()
    }

    /// The line of the file the user is defined on, counting from 1.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The user's own LOGIN-DELAY and EXPIRE, from the extra fields.
    pub fn policy(&self) -> UserPolicy {
        self.policy
    }

    fn account(&self) -> Account {
        Account {
            user: self.user.clone(),
            home: self.home.clone(),
            owner: Owner::from_fields(self.uid(), self.gid()),
            policy: Ok(self.policy),
            app_password: None,
        }
    }
}

/// A parsed passwd-file. Lookups are by exact user name (case matters).
#[derive(Clone, Debug)]
pub struct PasswdFile {
    origin: String,
    entries: Vec<PasswdEntry>,
    index: HashMap<String, usize>,
    apop_possible: bool,
    cram_md5_possible: bool,
    scram_possible: bool,
    policy_per_user: bool,
}

/// True for a line the format ignores: blank, or a `#` comment.
pub(crate) fn is_ignored_line(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// The user a line defines, as far as its first `:`; `None` for a blank or comment line.
/// Tolerant: used to edit files, including lines that do not parse.
pub(crate) fn line_user(line: &str) -> Option<&str> {
    if is_ignored_line(line) {
        return None;
    }
    Some(line.split(':').next().unwrap_or(line))
}

fn non_empty(field: Option<&str>) -> Option<String> {
    field.filter(|f| !f.is_empty()).map(str::to_string)
}

/// The user's LOGIN-DELAY and EXPIRE among the extra fields, Dovecot's space-separated
/// `key=value` pairs: `login_delay=SECONDS` and `expire=DAYS|never`. Other keys are Dovecot's
/// or someone else's, and left alone.
pub(crate) fn extra_fields_policy(extra: Option<&str>) -> Result<UserPolicy, BadPolicy> {
    let mut policy = UserPolicy::default();
    for field in extra.unwrap_or_default().split_ascii_whitespace() {
        match field.split_once('=') {
            Some(("login_delay", v)) => {
                policy.login_delay = Some(facteur_proto::policy::parse_login_delay(v)?)
            }
            Some(("expire", v)) => policy.expire = Some(Expire::parse(v)?),
            _ => {}
        }
    }
    Ok(policy)
}

fn parse_line(line: &str, number: usize) -> Result<PasswdEntry, LineError> {
    let mut fields = line.splitn(8, ':');
    let user = fields.next().unwrap_or_default();
    validate_user_name(user).map_err(LineError::InvalidUserName)?;
    let password_field = fields.next().ok_or(LineError::NoPasswordField)?;
    let password = StoredPassword::parse(password_field)?;
    let (uid, gid, gecos, home, shell) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    );
    let extra_fields = non_empty(fields.next());
    let policy = extra_fields_policy(extra_fields.as_deref())?;
    Ok(PasswdEntry {
        user: user.to_string(),
        password,
        password_field: Secret::new(password_field.to_string()),
        uid: non_empty(uid),
        gid: non_empty(gid),
        gecos: non_empty(gecos),
        home: non_empty(home),
        shell: non_empty(shell),
        extra_fields,
        policy,
        line: number,
    })
}

impl PasswdFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_bytes(&bytes, &path.display().to_string())
    }

    /// Parses the text of a passwd-file; `origin` names it in error messages (usually its path).
    pub fn parse(text: &str, origin: &str) -> Result<Self, AuthError> {
        Self::parse_bytes(text.as_bytes(), origin)
    }

    /// As [`PasswdFile::parse`], for a file that may not be UTF-8 (an error, with its line).
    pub(crate) fn parse_bytes(bytes: &[u8], origin: &str) -> Result<Self, AuthError> {
        let mut entries: Vec<PasswdEntry> = Vec::new();
        let mut index = HashMap::new();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let number = i + 1;
            let fail = |error| AuthError::Parse {
                origin: origin.to_string(),
                line: number,
                error,
            };
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = std::str::from_utf8(raw).map_err(|_| fail(LineError::NotUtf8))?;
            if is_ignored_line(line) {
                continue;
            }
            let entry = parse_line(line, number).map_err(fail)?;
            if let Some(&first) = index.get(&entry.user) {
                let first_line = entries.get(first).map_or(0, PasswdEntry::line);
                return Err(fail(LineError::DuplicateUser {
                    user: entry.user,
                    first_line,
                }));
            }
            index.insert(entry.user.clone(), entries.len());
            entries.push(entry);
        }
        let apop_possible = entries.iter().any(|e| e.password.apop_secret().is_some());
        let cram_md5_possible = entries
            .iter()
            .any(|e| e.password.cram_md5_context().is_some());
        let scram_possible = entries.iter().any(|e| e.password.scram_source().is_some());
        let policy_per_user = entries.iter().any(|e| e.policy.overrides());
        Ok(Self {
            origin: origin.to_string(),
            entries,
            index,
            apop_possible,
            cram_md5_possible,
            scram_possible,
            policy_per_user,
        })
    }

    /// The user named exactly `user`.
    pub fn get(&self, user: &str) -> Option<&PasswdEntry> {
        self.index.get(user).and_then(|&i| self.entries.get(i))
    }

    /// Every user, in the order of the file.
    pub fn entries(&self) -> &[PasswdEntry] {
        &self.entries
    }

    /// Every user name, in the order of the file.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(PasswdEntry::user)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the file was loaded from, as given to [`PasswdFile::parse`] or [`PasswdFile::load`].
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// True if some user's password is stored `{PLAIN}`, so that APOP could work for them.
    pub fn apop_possible(&self) -> bool {
        self.apop_possible
    }

    /// True if some user has `login_delay=` or `expire=` in their extra fields.
    pub fn policy_per_user(&self) -> bool {
        self.policy_per_user
    }

    /// True if some user's password is stored `{PLAIN}` or `{CRAM-MD5}`, so that SASL
    /// CRAM-MD5 could work for them.
    pub fn cram_md5_possible(&self) -> bool {
        self.cram_md5_possible
    }

    /// True if some user's password is stored `{SCRAM-SHA-256}` or `{PLAIN}`, so that SASL
    /// SCRAM-SHA-256 could work for them.
    pub fn scram_possible(&self) -> bool {
        self.scram_possible
    }

    /// How made-up SCRAM keys should look and cost, from the users who can use SCRAM.
    fn scram_model(&self) -> ScramModel {
        let mut iterations: HashMap<u32, (usize, usize)> = HashMap::new();
        let (mut stored, mut plain) = (0usize, 0usize);
        for (i, entry) in self.entries.iter().enumerate() {
            match entry.password.scram_source() {
                Some(ScramSource::Stored(keys)) => {
                    stored += 1;
                    iterations.entry(keys.iterations).or_insert((0, i)).0 += 1;
                }
                Some(ScramSource::Plain(_)) => plain += 1,
                None => {}
            }
        }
        let iterations = iterations
            .into_iter()
            .max_by_key(|&(_, (count, first))| (count, std::cmp::Reverse(first)))
            .map_or(SCRAM_DEFAULT_ITERATIONS, |(iterations, _)| iterations);
        ScramModel {
            iterations,
            derive: plain > stored,
        }
    }

    /// The slowest scheme and cost in the file (by [`CostKey::estimated_work`]; the first seen
    /// wins a tie); ARGON2ID with default parameters for a file with no users. Unknown users
    /// are checked against a dummy hash of this cost: a login for a name that does not exist
    /// then takes as long as one for the users with the slowest hash, and is never the fastest
    /// answer of all. (Users of faster schemes still answer faster: only one scheme for every
    /// user makes every login cost the same.)
    pub(crate) fn slowest_cost(&self) -> CostKey {
        let mut slowest: Option<CostKey> = None;
        for entry in &self.entries {
            let key = entry.password.cost_key();
            if slowest.is_none_or(|s| key.estimated_work() > s.estimated_work()) {
                slowest = Some(key);
            }
        }
        slowest.unwrap_or_default()
    }
}

/// What identifies one version of the file: a rewrite by rename changes the inode, an edit in
/// place the size, the modification or the change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// How SCRAM keys for a user who cannot use SCRAM are made up, so that they look and cost like
/// those of the users who can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScramModel {
    /// The iteration count most used by `{SCRAM-SHA-256}` users (4096 if there are none); the
    /// keys of `{PLAIN}` users are derived with it too.
    iterations: u32,
    /// `{PLAIN}` users, whose keys cost a PBKDF2 at each proof checked, outnumber the users
    /// with stored keys: made-up keys cost a PBKDF2 at the proof too.
    derive: bool,
}

/// One loaded version of the file, with what unknown users are checked against.
struct Loaded {
    file: Arc<PasswdFile>,
    /// A hash of a random password with the slowest scheme and cost of the file.
    dummy: StoredPassword,
    /// A random secret for APOP and CRAM-MD5 attempts that cannot succeed.
    dummy_apop_secret: Secret<String>,
    scram: ScramModel,
}

impl Loaded {
    fn new(file: PasswdFile) -> Result<Self, AuthError> {
        let dummy = StoredPassword::dummy(file.slowest_cost())?;
        let scram = file.scram_model();
        Ok(Self {
            file: Arc::new(file),
            dummy,
            dummy_apop_secret: Secret::new(random_token()?),
            scram,
        })
    }

    /// Reads the file, and the stamp of the very version that was read.
    fn read(path: &Path) -> Result<(Self, FileStamp), AuthError> {
        let read_error = |source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut f = File::open(path).map_err(read_error)?;
        let stamp = FileStamp::of(&f.metadata().map_err(read_error)?);
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(read_error)?;
        let file = PasswdFile::parse_bytes(&bytes, &path.display().to_string())?;
        Ok((Self::new(file)?, stamp))
    }
}

#[derive(Default)]
struct Seen {
    /// The version last loaded, or last found broken.
    stamp: Option<FileStamp>,
    /// The file could not be stat'ed last time (logged once, not at every login).
    stat_failed: bool,
}

/// The passwd-file as the server uses it: an [`Authenticator`] that checks, at each login,
/// whether the file changed and reloads it if so. A file that fails to reload is reported in
/// the log and the previous version stays in use.
///
/// [`PasswdDb::open`] gives a database that hashes the password at every USER/PASS and SASL
/// PLAIN/LOGIN login; [`PasswdDb::with_verified_cache`] makes it remember successes for a while.
pub struct PasswdDb {
    path: PathBuf,
    current: RwLock<Arc<Loaded>>,
    seen: Mutex<Seen>,
    /// Random for each process, kept across reloads: the key from which the SCRAM salts of
    /// `{PLAIN}` users and the made-up SCRAM keys of the other users are derived. A user's salt
    /// stays the same while the server runs, and changes when it restarts (for every user who
    /// has no stored SCRAM keys).
    scram_secret: Secret<[u8; 32]>,
    /// Successful password verifications remembered for a while; `None`: every login hashes.
    verified: Option<VerifiedCache>,
    /// The app passwords, from the file beside this one.
    apps: AppPasswordDb,
    /// How many passwords were checked the slow way (the scheme's own check, or the dummy's).
    #[cfg(test)]
    slow_checks: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for PasswdDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswdDb")
            .field("path", &self.path)
            .field("users", &self.snapshot().len())
            .field("verified_cache", &self.verified)
            .finish()
    }
}

impl PasswdDb {
    /// Loads the file; an error here should stop the server from starting. The database has no
    /// cache of verifications: see [`PasswdDb::with_verified_cache`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, AuthError> {
        let path = path.into();
        let (loaded, stamp) = Loaded::read(&path)?;
        let apps = AppPasswordDb::new(&path, default_last_used_path(&path));
        let mut scram_secret = [0u8; 32];
        getrandom::fill(&mut scram_secret)?;
        Ok(Self {
            path,
            current: RwLock::new(Arc::new(loaded)),
            seen: Mutex::new(Seen {
                stamp: Some(stamp),
                stat_failed: false,
            }),
            scram_secret: Secret::new(scram_secret),
            verified: None,
            apps,
            #[cfg(test)]
            slow_checks: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Remembers each successful USER/PASS or SASL PLAIN/LOGIN verification for `ttl`, at most
    /// `max_entries` at once, so that the same user with the same password is not hashed again
    /// meanwhile (APOP, CRAM-MD5 and SCRAM hash nothing slowly and are not cached). Only a keyed
    /// HMAC of the user, the stored password and the password is kept, never either password;
    /// failures are never remembered, so a wrong password always costs the full hash.
    ///
    /// The trade-off: a memory dump of the server lets an attacker test guesses against the
    /// remembered successes at HMAC speed instead of the scheme's cost. A `ttl` or `max_entries`
    /// of zero leaves the cache off, and so does a failure to get a random key (logged).
    pub fn with_verified_cache(mut self, ttl: Duration, max_entries: usize) -> Self {
        self.verified = VerifiedCache::new(ttl, max_entries);
        self
    }

    /// Records when app passwords were last used in `path` instead of
    /// [`default_last_used_path`](crate::default_last_used_path) (a directory the server may
    /// write to, when the passwd-file's is read-only for it).
    pub fn with_app_password_last_used(mut self, path: impl Into<PathBuf>) -> Self {
        self.apps.set_last_used_path(path.into());
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version of the file in use now, without checking the file for changes.
    pub fn snapshot(&self) -> Arc<PasswdFile> {
        Arc::clone(&self.loaded().file)
    }

    fn loaded(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reloads the file if it changed since it was last read; true if a new version is now in
    /// use. Called at each login; the server may also call it on SIGHUP.
    pub fn reload_if_changed(&self) -> bool {
        let now = fs::metadata(&self.path).map(|m| FileStamp::of(&m));
        // Held while reloading: logins that see the same change wait for the one reload.
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = match now {
            Ok(stamp) => stamp,
            Err(error) => {
                if !seen.stat_failed {
                    tracing::error!(
                        path = %self.path.display(),
                        %error,
                        "cannot stat the passwd-file; keeping the users already loaded"
                    );
                    seen.stat_failed = true;
                }
                return false;
            }
        };
        seen.stat_failed = false;
        if seen.stamp == Some(now) {
            return false;
        }
        match Loaded::read(&self.path) {
            Ok((loaded, stamp)) => {
                let users = loaded.file.len();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
                seen.stamp = Some(stamp);
                tracing::info!(path = %self.path.display(), users, "reloaded the passwd-file");
                true
            }
            Err(error) => {
                // A file that does not parse stays broken until it changes again: report it
                // once. An I/O error may pass: try again at the next login.
                if matches!(error, AuthError::Parse { .. }) {
                    seen.stamp = Some(now);
                }
                tracing::error!(
                    path = %self.path.display(),
                    %error,
                    "cannot reload the passwd-file; keeping the users already loaded"
                );
                false
            }
        }
    }

    /// Whether the file is, by the kernel's caches alone, the version last loaded (or last
    /// found broken): a stat through a path lookup that may not wait for a disk
    /// (`openat2(O_PATH, RESOLVE_CACHED)` and fstat), and no wait for a reload under way.
    /// False whenever that cannot be told at once: [`Self::current`] then checks the usual way.
    fn unchanged_now(&self) -> bool {
        use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        let Ok(fd) = openat2(CWD, &self.path, flags, Mode::empty(), ResolveFlags::CACHED) else {
            return false;
        };
        let Ok(meta) = File::from(fd).metadata() else {
            return false;
        };
        let now = FileStamp::of(&meta);
        match self.seen.try_lock() {
            Ok(seen) => !seen.stat_failed && seen.stamp == Some(now),
            Err(_) => false,
        }
    }

    fn current(&self) -> Arc<Loaded> {
        self.reload_if_changed();
        self.loaded()
    }

    /// [`Authenticator::verify_password`] at the time `now`, for the cache of verifications.
    fn check_password_at(&self, user: &str, password: &[u8], now: Instant) -> Checked {
        // Whatever path led here: no lookup and no hash for credentials no user can have. The
        // login commands refuse them first with a clearer answer.
        if user.len() > USER_NAME_MAX_LEN || password.len() > PASSWORD_MAX_LEN {
            return Err(FailureReason::TooLong);
        }
        let loaded = self.current();
        let entry = loaded.file.get(user);
        // The tag is computed for unknown users too (against an empty field, which no user
        // has, so it is never found): their login costs what a known user's costs.
        let field = entry.map_or("", |e| e.password_field.expose().as_str());
        let cached = self
            .verified
            .as_ref()
            .map(|cache| (cache, cache.tag(user, field, password)));
        if let Some((cache, tag)) = &cached {
            if cache.is_fresh(tag, now) {
                if let Some(entry) = entry {
                    return Ok(entry.account());
                }
            }
        }
        // A password of an app password's shape names the one app password it can be, as the
        // file is now (a revoked one is not in it): that one hash is checked, then the main
        // password's, so a login costs two hashes at most whatever the number of app passwords.
        if let (Some(entry), Some(p)) = (entry, presented(password)) {
            let apps = self.apps.current();
            if let Some(app) = apps.find(user, &p.id) {
                let cache = self.verified.as_ref();
                if check_app_password(cache, user, app, &p, now, |s, pw| self.slow_check(s, pw)) {
                    self.apps.used(user, app, now);
                    return Ok(Account {
                        app_password: Some(app.label.clone()),
                        ..entry.account()
                    });
                }
            }
        }
        match entry {
            Some(entry) if self.slow_check(&entry.password, password) => {
                if let Some((cache, tag)) = cached {
                    cache.insert(tag, now);
                }
                Ok(entry.account())
            }
            Some(_) => Err(FailureReason::WrongPassword),
            None => {
                // The same work as for a user who exists, so that the time taken does not
                // tell which user names are valid.
                black_box(self.slow_check(&loaded.dummy, password));
                Err(FailureReason::UnknownUser)
            }
        }
    }

    /// The scheme's own check of `password`: slow on purpose.
    fn slow_check(&self, stored: &StoredPassword, password: &[u8]) -> bool {
        #[cfg(test)]
        self.slow_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stored.verify(password)
    }
}

impl Authenticator for PasswdDb {
    fn verify_password(&self, user: &str, password: &[u8]) -> AuthOutcome {
        self.check_password(user, password).into()
    }

    fn check_password(&self, user: &str, password: &[u8]) -> Checked {
        self.check_password_at(user, password, Instant::now())
    }

    /// A success the cache of verifications remembers, for the file as it is now: what
    /// `check_password` answers first, with the same checks and no hash. Anything else (a
    /// file that changed or cannot be looked at from the caches, an unknown user, a password
    /// not remembered) is left to `check_password`.
    fn check_password_now(&self, user: &str, password: &[u8]) -> Option<Checked> {
        if user.len() > USER_NAME_MAX_LEN || password.len() > PASSWORD_MAX_LEN {
            return None;
        }
        let cache = self.verified.as_ref()?;
        if !self.unchanged_now() {
            return None;
        }
        let loaded = Arc::clone(&*self.current.try_read().ok()?);
        let entry = loaded.file.get(user)?;
        let tag = cache.tag(user, entry.password_field.expose(), password);
        cache
            .is_fresh(&tag, Instant::now())
            .then(|| Ok(entry.account()))
    }

    fn verify_apop(&self, user: &str, timestamp: &str, digest: &str) -> AuthOutcome {
        self.check_apop(user, timestamp, digest).into()
    }

    fn check_apop(&self, user: &str, timestamp: &str, digest: &str) -> Checked {
        let loaded = self.current();
        let entry = loaded.file.get(user);
        match entry.and_then(|e| e.password.apop_secret().map(|secret| (e, secret))) {
            Some((entry, secret)) => {
                if apop_digest_matches(&apop_digest(timestamp, secret), digest) {
                    Ok(entry.account())
                } else {
                    Err(FailureReason::WrongPassword)
                }
            }
            None => {
                // Unknown user, or a hashed password (no shared secret): an MD5 all the same.
                let ours = apop_digest(timestamp, loaded.dummy_apop_secret.expose().as_bytes());
                black_box(apop_digest_matches(&ours, digest));
                Err(impossible_or_unknown(entry))
            }
        }
    }

    fn apop_possible(&self) -> bool {
        self.current().file.apop_possible()
    }

    /// As of the file last loaded (each login reloads a changed file): asked at every
    /// connection, it costs no system call.
    fn policy_per_user(&self) -> bool {
        self.loaded().file.policy_per_user()
    }

    fn verify_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> AuthOutcome {
        self.check_cram_md5(user, challenge, digest_hex).into()
    }

    fn check_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> Checked {
        let loaded = self.current();
        let entry = loaded.file.get(user);
        match entry.and_then(|e| e.password.cram_md5_context().map(|ctx| (e, ctx))) {
            Some((entry, ctx)) => {
                if ctx.digest_matches(challenge, digest_hex) {
                    Ok(entry.account())
                } else {
                    Err(FailureReason::WrongPassword)
                }
            }
            None => {
                // Unknown user, or no secret CRAM-MD5 can use: the work of a {PLAIN} user.
                let ctx = CramMd5Context::from_secret(loaded.dummy_apop_secret.expose().as_bytes());
                black_box(ctx.digest_matches(challenge, digest_hex));
                Err(impossible_or_unknown(entry))
            }
        }
    }

    fn cram_md5_possible(&self) -> bool {
        self.current().file.cram_md5_possible()
    }

    fn scram_credentials(&self, user: &str) -> ScramCredentials {
        let loaded = self.current();
        let secret = self.scram_secret.expose();
        let entry = loaded.file.get(user);
        match entry.and_then(|e| e.password.scram_source().map(|source| (e, source))) {
            Some((entry, ScramSource::Stored(keys))) => {
                ScramCredentials::from_keys(keys.clone(), Some(entry.account()))
            }
            Some((entry, ScramSource::Plain(password))) => ScramCredentials::from_password(
                password,
                &plain_user_salt(secret, user),
                loaded.scram.iterations,
                Some(entry.account()),
            ),
            None => {
                // No PBKDF2 here: the keys of a {PLAIN} user are derived only when the proof
                // arrives, and made-up keys cost the same then if {PLAIN} users are the rule.
                let keys = fake_keys(secret, user, loaded.scram.iterations);
                ScramCredentials::made_up(keys, loaded.scram.derive)
                    .because(impossible_or_unknown(entry))
            }
        }
    }

    fn scram_possible(&self) -> bool {
        self.current().file.scram_possible()
    }

    fn account(&self, user: &str) -> Option<Account> {
        self.current().file.get(user).map(PasswdEntry::account)
    }
}

/// Why a user the method could not serve failed: unknown, or stored with a scheme the method
/// cannot work from. Read after the same work was done for both.
fn impossible_or_unknown(entry: Option<&PasswdEntry>) -> FailureReason {
    entry.map_or(FailureReason::UnknownUser, |e| {
        FailureReason::MethodImpossible(e.password.scheme().name())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scram::format_stored;
    use crate::{add_user, hash_password, set_password, Scheme};
    use facteur_proto::sasl::ScramKeys;
    use proptest::prelude::*;

    const SHA512: &str =
        "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    const SHA256: &str = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
    const BCRYPT: &str = "$2y$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a";
    const ARGON2: &str =
        "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";

    fn parse(text: &str) -> Result<PasswdFile, AuthError> {
        PasswdFile::parse(text, "test.passwd")
    }

    fn parse_error(text: &str) -> (usize, LineError, String) {
        match parse(text) {
            Err(e @ AuthError::Parse { .. }) => {
                let message = e.to_string();
                let AuthError::Parse { line, error, .. } = e else {
                    unreachable!()
                };
                (line, error, message)
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn every_field_count_parses() {
        let text = "\
a:{PLAIN}pa
b:{PLAIN}pb:1000
c:{PLAIN}pc:1000:100
d:{PLAIN}pd:1000:100:Dee Dee
e:{PLAIN}pe:1000:100:Eve:/home/e
f:{PLAIN}pf:1000:100::/home/f:/bin/false
g:{PLAIN}pg:1000:100:G:/home/g:/bin/sh:userdb_mail=maildir:~/Maildir quota=1G
h:{PLAIN}ph:::::
";
        let file = parse(text).unwrap();
        assert_eq!(file.len(), 8);
        assert_eq!(
            file.users().collect::<Vec<_>>(),
            ["a", "b", "c", "d", "e", "f", "g", "h"]
        );
        let a = file.get("a").unwrap();
        assert_eq!((a.uid(), a.home(), a.line()), (None, None, 1));
        assert_eq!(file.get("b").unwrap().uid(), Some("1000"));
        assert_eq!(file.get("c").unwrap().gid(), Some("100"));
        assert_eq!(file.get("d").unwrap().gecos(), Some("Dee Dee"));
        assert_eq!(file.get("d").unwrap().home(), None);
        assert_eq!(file.get("e").unwrap().home(), Some("/home/e"));
        let f = file.get("f").unwrap();
        assert_eq!(
            (f.gecos(), f.home(), f.shell()),
            (None, Some("/home/f"), Some("/bin/false"))
        );
        assert_eq!(
            file.get("g").unwrap().extra_fields(),
            Some("userdb_mail=maildir:~/Maildir quota=1G")
        );
        let h = file.get("h").unwrap();
        assert_eq!((h.home(), h.shell(), h.extra_fields()), (None, None, None));
        assert!(h.password().verify(b"ph"));
        // No user has a LOGIN-DELAY or EXPIRE of their own.
        assert!(!file.policy_per_user());
        assert_eq!(file.get("g").unwrap().policy(), UserPolicy::default());
    }

    /// LOGIN-DELAY and EXPIRE per user: Dovecot-style `key=value` extra fields, beside any
    /// others; a value that cannot be used is a load error naming the line, never a surprise
    /// at a login.
    #[test]
    fn login_delay_and_expire_come_from_the_extra_fields() {
        let text = "a:{PLAIN}pa\n\
            b:{PLAIN}pb::::::quota=1G login_delay=900 expire=never\n\
            c:{PLAIN}pc::::::expire=0\n";
        let file = parse(text).unwrap();
        assert!(file.policy_per_user());
        assert_eq!(file.get("a").unwrap().policy(), UserPolicy::default());
        assert_eq!(
            file.get("b").unwrap().policy(),
            UserPolicy {
                login_delay: Some(900),
                expire: Some(Expire::Never)
            }
        );
        assert_eq!(
            file.get("c").unwrap().policy(),
            UserPolicy {
                login_delay: None,
                expire: Some(Expire::Days(0))
            }
        );
        let (_dir, _path, db) = db_with(text);
        assert!(db.policy_per_user());
        match db.verify_password("c", b"pc") {
            AuthOutcome::Success(account) => assert_eq!(
                account.policy,
                Ok(UserPolicy {
                    login_delay: None,
                    expire: Some(Expire::Days(0))
                })
            ),
            AuthOutcome::Failure => panic!("c logs in"),
        }
        for bad in ["login_delay=-1", "login_delay=soon", "expire=7d", "expire="] {
            let err = parse(&format!("a:{{PLAIN}}pa\nb:{{PLAIN}}pb::::::{bad}\n")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(":2: extra field"), "{text}");
            assert!(
                matches!(
                    err,
                    AuthError::Parse {
                        line: 2,
                        error: LineError::Policy(_),
                        ..
                    }
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let text = "# users\r\n\r\n   \n  # indented comment\nalice:{PLAIN}x:::::/home/alice\r\n\n#bob:{PLAIN}y\n";
        let file = parse(text).unwrap();
        assert_eq!(file.users().collect::<Vec<_>>(), ["alice"]);
        let alice = file.get("alice").unwrap();
        assert_eq!(alice.line(), 5);
        assert!(alice.password().verify(b"x"));
        assert!(!alice.password().verify(b"x\r"));
        assert!(file.get("bob").is_none());
        assert!(file.get("#bob").is_none());
        assert!(parse("").unwrap().is_empty());
        assert!(parse("\n\n# only comments\n").unwrap().is_empty());
    }

    #[test]
    fn lookup_is_exact() {
        let file = parse("Alice:{PLAIN}x\n").unwrap();
        assert!(file.get("Alice").is_some());
        assert!(file.get("alice").is_none());
        assert!(file.get("Alice ").is_none());
        assert!(file.get("").is_none());
    }

    #[test]
    fn errors_carry_the_origin_and_the_line() {
        let (line, error, message) = parse_error("# c\nalice:{PLAIN}x\nbob\n");
        assert_eq!((line, error), (3, LineError::NoPasswordField));
        assert!(message.starts_with("test.passwd:3: "), "{message}");

        let (line, error, _) = parse_error("alice:{PLAIN}x\n\n:{PLAIN}y\n");
        assert_eq!(line, 3);
        assert!(matches!(error, LineError::InvalidUserName(_)));

        let (line, error, _) = parse_error("al ice:{PLAIN}x\n");
        assert_eq!(line, 1);
        assert!(matches!(error, LineError::InvalidUserName(_)));

        let (line, error, _) = parse_error("alice:\n");
        assert_eq!(line, 1);
        assert!(matches!(error, LineError::Password(_)));
    }

    #[test]
    fn unknown_scheme_is_refused_at_load() {
        let (line, error, message) = parse_error("alice:{PLAIN}x\nbob:{SSHA}c2VjcmV0c2FsdA==\n");
        assert_eq!(line, 2);
        assert!(matches!(error, LineError::Password(_)), "{error:?}");
        assert!(message.contains("SSHA"), "{message}");
        assert!(!message.contains("c2VjcmV0"), "{message}");
        // A password without a scheme, and one that is not a crypt string.
        let (line, _, message) = parse_error("alice:{PLAIN}x\nbob:hunter2\n");
        assert_eq!(line, 2);
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn bad_hash_is_refused_at_load_without_quoting_it() {
        let broken = &SHA512[..SHA512.len() - 3];
        let (line, error, message) =
            parse_error(&format!("a:{SHA256}\nb:{{SHA512-CRYPT}}{broken}\n"));
        assert_eq!(line, 2);
        assert!(matches!(error, LineError::Password(_)));
        assert!(message.contains("SHA512-CRYPT"), "{message}");
        assert!(!message.contains(&broken[12..]), "{message}");
        assert!(!message.contains("saltsalt"), "{message}");
    }

    #[test]
    fn duplicate_user_is_an_error() {
        let (line, error, message) = parse_error("alice:{PLAIN}x\nbob:{PLAIN}y\nalice:{PLAIN}z\n");
        assert_eq!(line, 3);
        assert_eq!(
            error,
            LineError::DuplicateUser {
                user: "alice".to_string(),
                first_line: 1
            }
        );
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error() {
        let e = PasswdFile::parse_bytes(b"alice:{PLAIN}x\nb\xffb:{PLAIN}y\n", "f").unwrap_err();
        assert!(
            matches!(
                e,
                AuthError::Parse {
                    line: 2,
                    error: LineError::NotUtf8,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn debug_never_shows_a_password_or_a_hash() {
        let text = format!(
            "p:{{PLAIN}}tanstaaf\ns:{SHA512}\nb:{{BLF-CRYPT}}{BCRYPT}\na:{{ARGON2ID}}{ARGON2}\n"
        );
        let file = parse(&text).unwrap();
        for debug in [
            format!("{file:?}"),
            format!("{file:#?}"),
            format!("{:?}", file.get("p").unwrap()),
            format!("{:?}", file.entries()),
        ] {
            for secret in [
                "tanstaaf",
                "saltsalt",
                "TVLlQcbp",
                "abcdefghij",
                "c29tZXNhbHQ",
                "nf65EO",
            ] {
                assert!(!debug.contains(secret), "{secret} in {debug}");
            }
            assert!(
                debug.contains("PLAIN") || debug.contains("Plain"),
                "{debug}"
            );
        }
    }

    #[test]
    fn the_dummy_cost_is_the_slowest_of_the_file() {
        let cost = |text: &str| parse(text).unwrap().slowest_cost();
        let key = |field: &str| StoredPassword::parse(field).unwrap().cost_key();
        let sha256 = key(SHA256);
        let sha512 = key(SHA512);
        let bcrypt5 = key(BCRYPT);
        let argon2 = key(ARGON2);
        let scram = key(&format!(
            "{{SCRAM-SHA-256}}{}",
            format_stored(&ScramKeys::derive(b"pw", b"0123456789abcdef", 4096))
        ));
        // Many {PLAIN} users and one SHA-crypt user: the dummy is the SHA-crypt hash, not the
        // most common (an unknown user would otherwise answer at once, unlike that user).
        let text = format!(
            "a:{{PLAIN}}x\nb:{{PLAIN}}y\nc:{{CRAM-MD5}}{}\nd:{SHA256}\n",
            "0".repeat(64)
        );
        assert_eq!(cost(&text), sha256);
        // SHA-crypt's 5000 rounds (about 5 ms) over bcrypt at cost 5 (2^5 rounds, about 2 ms),
        // over argon2id with m=256 KiB and t=2 (about 0.5 ms), whatever their number.
        let text = format!("a:{BCRYPT}\nb:{SHA512}\nc:{ARGON2}\nd:{BCRYPT}\n");
        assert_eq!(cost(&text), sha512);
        assert!(sha512.estimated_work() > bcrypt5.estimated_work());
        assert!(bcrypt5.estimated_work() > argon2.estimated_work());
        assert!(scram.estimated_work() > argon2.estimated_work());
        assert!(scram.estimated_work() < sha256.estimated_work());
        // A tie goes to the first seen.
        let text = format!("a:{SHA256}\nb:{SHA512}\n");
        assert_eq!(cost(&text), sha256);
        // A cost-12 bcrypt hash (about 0.3 s) beats the default argon2id.
        let bcrypt12 = BCRYPT.replacen("$05$", "$12$", 1);
        let text = format!("a:{SHA512}\nb:{{PLAIN}}x\nc:{bcrypt12}\n");
        assert_eq!(cost(&text), key(&bcrypt12));
        assert!(key(&bcrypt12).estimated_work() > CostKey::default().estimated_work());
        assert_eq!(cost(""), CostKey::default());
    }

    fn db_with(text: &str) -> (tempfile::TempDir, PathBuf, PasswdDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, text).unwrap();
        let db = PasswdDb::open(&path).unwrap();
        (dir, path, db)
    }

    fn success(user: &str, home: Option<&str>) -> AuthOutcome {
        AuthOutcome::Success(Account {
            user: user.to_string(),
            home: home.map(str::to_string),
            owner: Ok(Owner::default()),
            policy: Ok(UserPolicy::default()),
            app_password: None,
        })
    }

    #[test]
    fn verify_each_scheme_through_the_db() {
        let text = format!(
            "plain:{{PLAIN}}tanstaaf::::/home/plain\n\
             sha512:{{SHA512-CRYPT}}{SHA512}\n\
             sha256:{SHA256}:1:1::/home/sha256\n\
             bcrypt:{{BLF-CRYPT}}{BCRYPT}\n\
             argon:{{ARGON2ID}}{ARGON2}\n"
        );
        let (_dir, _path, db) = db_with(&text);
        let cases = [
            ("plain", &b"tanstaaf"[..], Some("/home/plain")),
            ("sha512", b"secret", None),
            ("sha256", b"secret", Some("/home/sha256")),
            ("bcrypt", b"secret", None),
            ("argon", b"password", None),
        ];
        for (user, password, home) in cases {
            let mut expected = success(user, home);
            if let AuthOutcome::Success(account) = &mut expected {
                if user == "sha256" {
                    // The line's uid and gid fields.
                    account.owner = Ok(Owner {
                        uid: Some(1),
                        gid: Some(1),
                    });
                }
            }
            assert_eq!(db.verify_password(user, password), expected, "{user}");
            assert_eq!(
                db.verify_password(user, b"wrong"),
                AuthOutcome::Failure,
                "{user}"
            );
            assert_eq!(
                db.verify_password(user, b""),
                AuthOutcome::Failure,
                "{user}"
            );
        }
        // Another user's password does not open this account.
        assert_eq!(db.verify_password("plain", b"secret"), AuthOutcome::Failure);
    }

    #[test]
    fn unknown_user_fails() {
        let (_dir, _path, db) = db_with(&format!("alice:{SHA256}\n"));
        assert_eq!(db.verify_password("bob", b"secret"), AuthOutcome::Failure);
        assert_eq!(db.verify_password("", b""), AuthOutcome::Failure);
        assert_eq!(db.verify_password("Alice", b"secret"), AuthOutcome::Failure);
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", None)
        );
    }

    /// Each failure says why, for the log; the verdict the client gets is the same, and the
    /// hash work too (one slow check for an unknown user as for a known one).
    #[test]
    fn failures_carry_their_reason_at_the_same_cost() {
        use FailureReason::*;
        let (_dir, _path, db) = db_with(&format!(
            "carol:{{SHA512-CRYPT}}{SHA512}\nalice:{{PLAIN}}secret\n"
        ));
        assert_eq!(db.check_password("carol", b"wrong"), Err(WrongPassword));
        assert_eq!(db.slow_checks(), 1);
        assert_eq!(db.check_password("bob", b"wrong"), Err(UnknownUser));
        assert_eq!(db.slow_checks(), 2);
        assert_eq!(db.verify_password("bob", b"wrong"), AuthOutcome::Failure);
        let long_user = "u".repeat(USER_NAME_MAX_LEN + 1);
        assert_eq!(db.check_password(&long_user, b"x"), Err(TooLong));
        let long_password = vec![b'p'; PASSWORD_MAX_LEN + 1];
        assert_eq!(db.check_password("carol", &long_password), Err(TooLong));
        assert_eq!(db.slow_checks(), 3, "no hash for credentials too long");
        assert_eq!(
            db.check_password("carol", b"secret"),
            Ok(db.account("carol").unwrap())
        );

        let ts = "<1.2@example.org>";
        let digest = apop_digest(ts, b"secret");
        assert_eq!(
            db.check_apop("alice", ts, &digest),
            Ok(db.account("alice").unwrap())
        );
        assert_eq!(
            db.check_apop("alice", ts, &"0".repeat(32)),
            Err(WrongPassword)
        );
        assert_eq!(
            db.check_apop("carol", ts, &digest),
            Err(MethodImpossible(Scheme::Sha512Crypt.name()))
        );
        assert_eq!(db.check_apop("bob", ts, &digest), Err(UnknownUser));
        assert_eq!(db.verify_apop("carol", ts, &digest), AuthOutcome::Failure);

        let zeros = "0".repeat(32);
        assert_eq!(
            db.check_cram_md5("alice", ts.as_bytes(), &zeros),
            Err(WrongPassword)
        );
        assert_eq!(
            db.check_cram_md5("carol", ts.as_bytes(), &zeros),
            Err(MethodImpossible(Scheme::Sha512Crypt.name()))
        );
        assert_eq!(
            db.check_cram_md5("bob", ts.as_bytes(), &zeros),
            Err(UnknownUser)
        );
        assert_eq!(
            db.scram_credentials("carol").no_account_reason(),
            MethodImpossible(Scheme::Sha512Crypt.name())
        );
        assert_eq!(db.scram_credentials("bob").no_account_reason(), UnknownUser);
    }

    #[test]
    fn matching_the_dummy_never_logs_in() {
        let (_dir, _path, db) = db_with(&format!("alice:{SHA256}\n"));
        // Swap in a dummy whose password and APOP secret are known.
        {
            let mut current = db.current.write().unwrap();
            *current = Arc::new(Loaded {
                file: Arc::clone(&current.file),
                dummy: StoredPassword::parse("{PLAIN}guess").unwrap(),
                dummy_apop_secret: Secret::new("guess".to_string()),
                scram: current.scram,
            });
        }
        assert_eq!(db.verify_password("bob", b"guess"), AuthOutcome::Failure);
        assert_eq!(db.verify_password("alice", b"guess"), AuthOutcome::Failure);
        let ts = "<1.2@example.org>";
        let digest = apop_digest(ts, b"guess");
        assert_eq!(db.verify_apop("bob", ts, &digest), AuthOutcome::Failure);
        assert_eq!(db.verify_apop("alice", ts, &digest), AuthOutcome::Failure);
        let digest = facteur_proto::encoding::hex(
            &CramMd5Context::from_secret(b"guess").hmac(ts.as_bytes()),
        );
        assert_eq!(
            db.verify_cram_md5("bob", ts.as_bytes(), &digest),
            AuthOutcome::Failure
        );
        assert_eq!(
            db.verify_cram_md5("alice", ts.as_bytes(), &digest),
            AuthOutcome::Failure
        );
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", None)
        );
    }

    #[test]
    fn the_dummy_follows_the_file() {
        let (_dir, _path, db) = db_with(&format!("a:{SHA256}\nb:{SHA256}\nc:{{PLAIN}}x\n"));
        let sha256 = StoredPassword::parse(SHA256).unwrap().cost_key();
        assert_eq!(db.loaded().dummy.cost_key(), sha256);
        // Mostly {PLAIN} users: the dummy is still the one slow hash of the file.
        let (_dir, _path, db) = db_with(&format!("a:{{PLAIN}}x\nb:{{PLAIN}}y\nc:{SHA256}\n"));
        assert_eq!(db.loaded().dummy.cost_key(), sha256);
    }

    #[test]
    fn apop_rfc1939_example() {
        let (_dir, _path, db) = db_with("mrose:{PLAIN}tanstaaf::::/var/mail/mrose\n");
        let ts = "<1896.697170952@dbc.mtview.ca.us>";
        assert!(db.apop_possible());
        assert_eq!(
            db.verify_apop("mrose", ts, "c4c9334bac560ecc979e58001b3e22fb"),
            success("mrose", Some("/var/mail/mrose"))
        );
        assert_eq!(
            db.verify_apop("mrose", ts, "c4c9334bac560ecc979e58001b3e22fc"),
            AuthOutcome::Failure
        );
        assert_eq!(
            db.verify_apop(
                "mrose",
                "<1897.697170952@dbc.mtview.ca.us>",
                "c4c9334bac560ecc979e58001b3e22fb"
            ),
            AuthOutcome::Failure
        );
        assert_eq!(
            db.verify_apop("nobody", ts, "c4c9334bac560ecc979e58001b3e22fb"),
            AuthOutcome::Failure
        );
        assert_eq!(db.verify_apop("mrose", ts, ""), AuthOutcome::Failure);
    }

    #[test]
    fn apop_is_refused_for_a_hashed_password() {
        // The digest a client would send if it knew the secret: still refused, since the server
        // holds only a hash and cannot check it.
        let (_dir, _path, db) = db_with(&format!("plain:{{PLAIN}}x\nhashed:{SHA256}\n"));
        let ts = "<1.2@example.org>";
        let digest = apop_digest(ts, b"secret");
        assert_eq!(db.verify_apop("hashed", ts, &digest), AuthOutcome::Failure);
        let digest = apop_digest(ts, SHA256.as_bytes());
        assert_eq!(db.verify_apop("hashed", ts, &digest), AuthOutcome::Failure);
        assert!(db.apop_possible());
    }

    #[test]
    fn apop_possible_only_with_a_plain_password() {
        let (_dir, path, db) = db_with(&format!("a:{SHA256}\nb:{{BLF-CRYPT}}{BCRYPT}\n"));
        assert!(!db.apop_possible());
        add_user(&path, "c", "{PLAIN}x").unwrap();
        assert!(db.apop_possible());
    }

    #[test]
    fn reloads_when_the_file_changes() {
        let (_dir, path, db) = db_with(&format!("alice:{SHA256}\n"));
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", None)
        );
        assert!(!db.reload_if_changed());

        // `facteur user add` while the server runs.
        add_user(&path, "bob", "{PLAIN}bobpw").unwrap();
        assert_eq!(db.verify_password("bob", b"bobpw"), success("bob", None));

        // `facteur user passwd`.
        set_password(
            &path,
            "alice",
            &hash_password(Scheme::Sha256Crypt, b"new").unwrap(),
        )
        .unwrap();
        assert_eq!(db.verify_password("alice", b"secret"), AuthOutcome::Failure);
        assert_eq!(db.verify_password("alice", b"new"), success("alice", None));

        // An edit in place (same inode) is seen too.
        fs::write(&path, "carol:{PLAIN}c::::/home/carol\n").unwrap();
        assert_eq!(
            db.verify_password("carol", b"c"),
            success("carol", Some("/home/carol"))
        );
        assert_eq!(db.verify_password("bob", b"bobpw"), AuthOutcome::Failure);
        assert_eq!(db.snapshot().len(), 1);
    }

    #[test]
    fn a_broken_reload_keeps_the_previous_users() {
        let (_dir, path, db) = db_with("alice:{PLAIN}a\n");
        fs::write(&path, "alice:{PLAIN}b\nbob:{NOPE}x\n").unwrap();
        assert_eq!(db.verify_password("alice", b"a"), success("alice", None));
        assert_eq!(db.verify_password("alice", b"b"), AuthOutcome::Failure);
        fs::remove_file(&path).unwrap();
        assert_eq!(db.verify_password("alice", b"a"), success("alice", None));
        // Fixed: the new version is used.
        fs::write(&path, "alice:{PLAIN}b\n").unwrap();
        assert_eq!(db.verify_password("alice", b"b"), success("alice", None));
        assert_eq!(db.verify_password("alice", b"a"), AuthOutcome::Failure);
    }

    #[test]
    fn open_fails_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        assert!(matches!(PasswdDb::open(&path), Err(AuthError::Read { .. })));
        fs::write(&path, "a:{PLAIN}x\na:{PLAIN}y\n").unwrap();
        let e = PasswdDb::open(&path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:2: ", path.display())),
            "{e}"
        );
        assert!(PasswdFile::load(&path).is_err());
    }

    fn scram_line(user: &str, iterations: u32) -> String {
        let keys = ScramKeys::derive(b"pw", b"0123456789abcdef", iterations);
        format!("{user}:{{SCRAM-SHA-256}}{}\n", format_stored(&keys))
    }

    #[test]
    fn scram_model_follows_the_scram_users() {
        let model = |text: &str| parse(text).unwrap().scram_model();
        let default = ScramModel {
            iterations: SCRAM_DEFAULT_ITERATIONS,
            derive: false,
        };
        assert_eq!(model(""), default);
        assert_eq!(model(&format!("a:{SHA256}\n")), default);
        let text = format!(
            "{}{}{}",
            scram_line("a", 5000),
            scram_line("b", 6000),
            scram_line("c", 6000)
        );
        assert_eq!(
            model(&text),
            ScramModel {
                iterations: 6000,
                derive: false
            }
        );
        let text = format!("{}p:{{PLAIN}}x\nq:{{PLAIN}}y\n", scram_line("a", 5000));
        assert_eq!(
            model(&text),
            ScramModel {
                iterations: 5000,
                derive: true
            }
        );
        assert!(model("p:{PLAIN}x\n").derive);
    }

    #[test]
    fn scram_credentials_per_kind_of_user() {
        let text = format!(
            "{}p:{{PLAIN}}x::::/home/p\ns:{SHA256}\n",
            scram_line("a", 5000)
        );
        let (_dir, path, db) = db_with(&text);
        let stored = db.scram_credentials("a");
        assert_eq!(stored.iterations(), 5000);
        assert_eq!(stored.salt(), b"0123456789abcdef");
        assert_eq!(stored.account(), Some(&success_account("a", None)));
        // A {PLAIN} user: keys derived with the file's iteration count, under a salt that
        // stays the same while the server runs.
        let plain = db.scram_credentials("p");
        assert_eq!(plain.iterations(), 5000);
        assert_eq!(plain.salt().len(), 16);
        assert_eq!(plain.salt(), db.scram_credentials("p").salt());
        assert_eq!(
            plain.account(),
            Some(&success_account("p", Some("/home/p")))
        );
        let keys = ScramKeys::derive(b"x", plain.salt(), 5000);
        assert_eq!(plain.keys().stored_key, keys.stored_key);
        // Unknown users and users of other schemes: made-up keys that look the same.
        for user in ["nobody", "s", "A", ""] {
            let fake = db.scram_credentials(user);
            assert_eq!(fake.iterations(), 5000, "{user}");
            assert_eq!(fake.salt().len(), 16, "{user}");
            assert_eq!(fake.account(), None, "{user}");
            assert_eq!(fake.salt(), db.scram_credentials(user).salt(), "{user}");
        }
        assert_ne!(
            db.scram_credentials("nobody").salt(),
            db.scram_credentials("nobody2").salt()
        );
        // A reload keeps the salts of those who have no stored keys.
        let before = db.scram_credentials("nobody").salt().to_vec();
        let plain_before = plain.salt().to_vec();
        add_user(&path, "new", "{PLAIN}y").unwrap();
        assert!(db.account("new").is_some());
        assert_eq!(db.scram_credentials("nobody").salt(), &before[..]);
        assert_eq!(db.scram_credentials("p").salt(), &plain_before[..]);
    }

    /// Looking up SCRAM credentials (the first client message) costs no PBKDF2, whoever the
    /// user; the keys of a {PLAIN} user, and made-up keys that must cost the same, are derived
    /// only for the proof.
    #[test]
    fn scram_credentials_derive_nothing_before_the_proof() {
        use facteur_proto::sasl::derivations;
        // {PLAIN} users outnumber those with stored keys: made-up keys cost a derivation.
        let text = format!("{}p:{{PLAIN}}x\nq:{{PLAIN}}y\n", scram_line("a", 4096));
        let (_dir, _path, db) = db_with(&text);
        let before = derivations();
        let plain = db.scram_credentials("p");
        let unknown = db.scram_credentials("nobody");
        let stored = db.scram_credentials("a");
        for _ in 0..50 {
            db.scram_credentials("nobody");
            db.scram_credentials("p");
        }
        assert_eq!(derivations(), before);
        assert_eq!(
            plain.keys().stored_key,
            ScramKeys::derive(b"x", plain.salt(), 4096).stored_key
        );
        assert_eq!(derivations(), before + 2);
        let _ = unknown.keys();
        assert_eq!(derivations(), before + 3);
        let _ = stored.keys();
        assert_eq!(derivations(), before + 3);
        // Stored keys the rule: made-up keys cost nothing more either.
        let text = format!("{}p:{{PLAIN}}x\n", scram_line("a", 4096));
        let (_dir, _path, db) = db_with(&text);
        let before = derivations();
        let _ = db.scram_credentials("nobody").keys();
        assert_eq!(derivations(), before);
    }

    fn success_account(user: &str, home: Option<&str>) -> Account {
        Account {
            user: user.to_string(),
            home: home.map(str::to_string),
            owner: Ok(Owner::default()),
            policy: Ok(UserPolicy::default()),
            app_password: None,
        }
    }

    #[test]
    fn account_and_possibilities() {
        let (_dir, path, db) = db_with(&format!("s:{SHA256}:1:1::/home/s\n"));
        let mut s = success_account("s", Some("/home/s"));
        s.owner = Ok(Owner {
            uid: Some(1),
            gid: Some(1),
        });
        assert_eq!(db.account("s"), Some(s));
        assert_eq!(db.account("S"), None);
        assert_eq!(db.account("nobody"), None);
        assert!(!db.cram_md5_possible());
        assert!(!db.scram_possible());
        add_user(&path, "c", &hash_password(Scheme::CramMd5, b"x").unwrap()).unwrap();
        assert!(db.cram_md5_possible());
        assert!(!db.scram_possible());
        add_user(
            &path,
            "k",
            &hash_password(Scheme::ScramSha256, b"x").unwrap(),
        )
        .unwrap();
        assert!(db.scram_possible());
        assert!(!db.apop_possible());
        assert_eq!(
            db.verify_password("c", b"x"),
            AuthOutcome::Success(success_account("c", None))
        );
        assert_eq!(
            db.verify_password("k", b"x"),
            AuthOutcome::Success(success_account("k", None))
        );
        assert_eq!(db.verify_password("k", b"y"), AuthOutcome::Failure);
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// A database that remembers verifications for an hour, at most `max` of them.
    fn cached_db_with(text: &str, max: usize) -> (tempfile::TempDir, PathBuf, PasswdDb) {
        let (dir, path, db) = db_with(text);
        (dir, path, db.with_verified_cache(HOUR, max))
    }

    impl PasswdDb {
        pub(crate) fn slow_checks(&self) -> usize {
            self.slow_checks.load(std::sync::atomic::Ordering::Relaxed)
        }

        fn cached(&self) -> usize {
            self.verified.as_ref().map_or(0, VerifiedCache::len)
        }
    }

    #[test]
    fn a_second_correct_login_is_served_from_the_cache() {
        let (_dir, _path, db) = cached_db_with(&format!("alice:{SHA512}::::/home/alice\n"), 10);
        let alice = success("alice", Some("/home/alice"));
        assert_eq!(db.verify_password("alice", b"secret"), alice);
        assert_eq!((db.slow_checks(), db.cached()), (1, 1));
        for _ in 0..3 {
            assert_eq!(db.verify_password("alice", b"secret"), alice);
        }
        assert_eq!((db.slow_checks(), db.cached()), (1, 1));
    }

    #[test]
    fn every_password_login_is_cached_whatever_the_scheme() {
        let text = format!(
            "plain:{{PLAIN}}tanstaaf\nsha256:{SHA256}\nbcrypt:{{BLF-CRYPT}}{BCRYPT}\n\
             argon:{{ARGON2ID}}{ARGON2}\nscram:{}",
            scram_line("x", 4096).trim_start_matches("x:")
        );
        let (_dir, _path, db) = cached_db_with(&text, 10);
        let cases: [(&str, &[u8]); 5] = [
            ("plain", b"tanstaaf"),
            ("sha256", b"secret"),
            ("bcrypt", b"secret"),
            ("argon", b"password"),
            ("scram", b"pw"),
        ];
        for (user, password) in cases {
            for _ in 0..2 {
                assert_eq!(
                    db.verify_password(user, password),
                    success(user, None),
                    "{user}"
                );
            }
        }
        assert_eq!((db.slow_checks(), db.cached()), (5, 5));
    }

    #[test]
    fn a_wrong_password_after_a_cached_success_costs_a_full_check() {
        let (_dir, _path, db) = cached_db_with(&format!("alice:{SHA256}\nbob:{SHA256}\n"), 10);
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", None)
        );
        let checks = db.slow_checks();
        for (user, password) in [
            ("alice", &b"wrong"[..]),
            ("alice", b"secret "),
            ("alice", b""),
            ("Alice", b"secret"),
            ("nobody", b"secret"),
        ] {
            assert_eq!(db.verify_password(user, password), AuthOutcome::Failure);
        }
        // Each failure hashed, and none was remembered or forgot the success.
        assert_eq!(db.slow_checks(), checks + 5);
        assert_eq!(db.cached(), 1);
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", None)
        );
        assert_eq!(db.slow_checks(), checks + 5);
        // The same password is not remembered for another user who has the same hash.
        assert_eq!(db.verify_password("bob", b"secret"), success("bob", None));
        assert_eq!(db.slow_checks(), checks + 6);
    }

    #[test]
    fn a_password_change_invalidates_the_cached_verification() {
        let (_dir, path, db) = cached_db_with(&format!("alice:{SHA256}::::/home/a\n"), 10);
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", Some("/home/a"))
        );
        set_password(
            &path,
            "alice",
            &hash_password(Scheme::Sha256Crypt, b"new").unwrap(),
        )
        .unwrap();
        let checks = db.slow_checks();
        assert_eq!(db.verify_password("alice", b"secret"), AuthOutcome::Failure);
        assert_eq!(db.slow_checks(), checks + 1);
        assert_eq!(
            db.verify_password("alice", b"new"),
            success("alice", Some("/home/a"))
        );
        // The same password under another scheme is a new entry too.
        set_password(&path, "alice", "{PLAIN}new").unwrap();
        assert_eq!(
            db.verify_password("alice", b"new"),
            success("alice", Some("/home/a"))
        );
        assert_eq!(db.slow_checks(), checks + 3);
    }

    /// The answer from memory is the remembered success only, as of the file now; the rest
    /// (a first login, a wrong password, a file changed since) is left to the full check.
    #[test]
    fn an_answer_from_memory_is_only_a_remembered_success_of_the_current_file() {
        let (_dir, path, db) = cached_db_with(&format!("alice:{SHA256}::::/home/a\n"), 10);
        assert_eq!(db.check_password_now("alice", b"secret"), None);
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", Some("/home/a"))
        );
        let checks = db.slow_checks();
        let now = db
            .check_password_now("alice", b"secret")
            .map(AuthOutcome::from);
        assert_eq!(now, Some(success("alice", Some("/home/a"))));
        for (user, password) in [
            ("alice", &b"wrong"[..]),
            ("Alice", b"secret"),
            ("bob", b"x"),
        ] {
            assert_eq!(db.check_password_now(user, password), None, "{user}");
        }
        assert_eq!(db.slow_checks(), checks, "nothing hashed");

        // The file changed (a password, the home, a user removed): not answered until the
        // full check has read the new version, and then only as that version says.
        fs::write(&path, format!("alice:{SHA256}::::/home/b\n")).unwrap();
        assert_eq!(db.check_password_now("alice", b"secret"), None);
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", Some("/home/b"))
        );
        let now = db
            .check_password_now("alice", b"secret")
            .map(AuthOutcome::from);
        assert_eq!(now, Some(success("alice", Some("/home/b"))));
        set_password(&path, "alice", "{PLAIN}new").unwrap();
        assert_eq!(db.check_password_now("alice", b"secret"), None);
        assert_eq!(db.verify_password("alice", b"secret"), AuthOutcome::Failure);
        assert_eq!(db.check_password_now("alice", b"secret"), None);
        fs::write(&path, "bob:{PLAIN}b\n").unwrap();
        assert_eq!(db.check_password_now("alice", b"new"), None);
        assert_eq!(db.verify_password("alice", b"new"), AuthOutcome::Failure);
        assert_eq!(db.check_password_now("alice", b"new"), None);

        // Without a cache of verifications, nothing is answered from memory.
        let (_dir, _path, db) = db_with(&format!("alice:{SHA256}\n"));
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", None)
        );
        assert_eq!(db.check_password_now("alice", b"secret"), None);
    }

    #[test]
    fn a_cached_login_gets_the_account_of_the_current_file() {
        let (_dir, path, db) = cached_db_with(&format!("alice:{SHA256}::::/home/a\n"), 10);
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", Some("/home/a"))
        );
        // The home directory changes, the password field does not: still remembered.
        fs::write(&path, format!("alice:{SHA256}::::/home/b\n")).unwrap();
        assert_eq!(
            db.verify_password("alice", b"secret"),
            success("alice", Some("/home/b"))
        );
        assert_eq!(db.slow_checks(), 1);
        // A user removed from the file cannot log in on a remembered success.
        fs::write(&path, "bob:{PLAIN}b\n").unwrap();
        assert_eq!(db.verify_password("alice", b"secret"), AuthOutcome::Failure);
        assert_eq!(db.slow_checks(), 2);
    }

    #[test]
    fn a_cached_verification_expires() {
        let (_dir, _path, db) = db_with(&format!("alice:{SHA256}\n"));
        let db = db.with_verified_cache(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let alice = success("alice", None);
        assert_eq!(
            AuthOutcome::from(db.check_password_at("alice", b"secret", t0)),
            alice
        );
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            AuthOutcome::from(db.check_password_at("alice", b"secret", at(59))),
            alice
        );
        assert_eq!(db.slow_checks(), 1);
        // Expired: hashed again, and remembered from then on.
        assert_eq!(
            AuthOutcome::from(db.check_password_at("alice", b"secret", at(60))),
            alice
        );
        assert_eq!(db.slow_checks(), 2);
        assert_eq!(
            AuthOutcome::from(db.check_password_at("alice", b"secret", at(119))),
            alice
        );
        assert_eq!(db.slow_checks(), 2);
        assert_eq!(
            AuthOutcome::from(db.check_password_at("alice", b"secret", at(120))),
            alice
        );
        assert_eq!(db.slow_checks(), 3);
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let text: String = (0..20).map(|n| format!("u{n}:{{PLAIN}}p{n}\n")).collect();
        let (_dir, _path, db) = cached_db_with(&text, 8);
        for round in 0..3 {
            for n in 0..20 {
                let user = format!("u{n}");
                assert_eq!(
                    db.verify_password(&user, format!("p{n}").as_bytes()),
                    success(&user, None),
                    "round {round}"
                );
                assert!(db.cached() <= 8, "{}", db.cached());
            }
        }
    }

    #[test]
    fn without_a_cache_every_login_hashes() {
        let (_dir, _path, db) = db_with(&format!("alice:{SHA256}\n"));
        let (_dir2, _path2, zero_ttl) = db_with(&format!("alice:{SHA256}\n"));
        let zero_ttl = zero_ttl.with_verified_cache(Duration::ZERO, 10);
        let (_dir3, _path3, zero_entries) = db_with(&format!("alice:{SHA256}\n"));
        let zero_entries = zero_entries.with_verified_cache(HOUR, 0);
        for db in [&db, &zero_ttl, &zero_entries] {
            assert!(db.verified.is_none());
            for _ in 0..3 {
                assert_eq!(
                    db.verify_password("alice", b"secret"),
                    success("alice", None)
                );
            }
            assert_eq!(db.slow_checks(), 3);
        }
    }

    #[test]
    fn debug_of_a_cached_db_shows_no_secret() {
        let (_dir, _path, db) = cached_db_with("alice:{PLAIN}tanstaaf\n", 10);
        assert_eq!(
            db.verify_password("alice", b"tanstaaf"),
            success("alice", None)
        );
        let debug = format!("{db:?}");
        assert!(debug.contains("len: 1"), "{debug}");
        assert!(!debug.contains("tanstaaf"), "{debug}");
    }

    #[test]
    fn passwd_db_is_send_and_sync() {
        fn assert_authenticator<T: Authenticator>() {}
        assert_authenticator::<PasswdDb>();
    }

    fn field_strategy() -> impl Strategy<Value = String> {
        let prefixes = prop_oneof![
            Just(String::new()),
            Just("{PLAIN}".to_string()),
            Just("{ARGON2ID}$argon2id$v=19$m=".to_string()),
            Just("$argon2id$".to_string()),
            Just("$6$rounds=".to_string()),
            Just("{SHA256-CRYPT}$5$".to_string()),
            Just("$2y$".to_string()),
            Just("{BLF-CRYPT}$2a$1".to_string()),
            Just("{".to_string()),
        ];
        let tails = prop_oneof!["[ -~]{0,100}", "\\PC{0,100}", "[$0-9a-zA-Z./=,é]{0,100}"];
        (prefixes, tails).prop_map(|(p, tail)| p + &tail)
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn parse_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = PasswdFile::parse_bytes(&bytes, "f");
        }

        #[test]
        fn parse_never_panics_on_near_valid_lines(
            lines in proptest::collection::vec(("[a-z#: ]{0,6}", field_strategy(), "[ -~]{0,30}"), 0..6)
        ) {
            let text: String = lines
                .iter()
                .map(|(user, field, rest)| format!("{user}:{field}{rest}\n"))
                .collect();
            let _ = parse(&text);
        }
    }
}

/// App passwords at login: the one hash their id names, revocation, the cache, the record of
/// their use.
#[cfg(test)]
mod app_password_tests {
    use super::*;
    use crate::app_password::{app_password_text, generate_app_password_secret};
    use crate::{
        add_app_password, hash_password, list_app_passwords, revoke_app_password, Scheme,
        LAST_USED_EVERY,
    };

    fn db(cache: bool) -> (tempfile::TempDir, PathBuf, PasswdDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, "alice:{PLAIN}main\nbob:{PLAIN}bobpw\n").unwrap();
        let mut db = PasswdDb::open(&path).unwrap();
        if cache {
            db = db.with_verified_cache(Duration::from_secs(3600), 100);
        }
        (dir, path, db)
    }

    /// A new app password of `user`: what a client sends.
    fn add(path: &Path, user: &str, label: &str) -> String {
        let secret = generate_app_password_secret().unwrap();
        let stored = hash_password(Scheme::Sha256Crypt, secret.expose().as_bytes()).unwrap();
        let id = add_app_password(path, user, label, &stored).unwrap();
        app_password_text(&id, &secret).expose().clone()
    }

    fn label_of(checked: Checked) -> Option<String> {
        checked.expect("a success").app_password
    }

    #[test]
    fn either_the_main_password_or_an_app_password() {
        let (_dir, path, db) = db(false);
        let phone = add(&path, "alice", "phone");
        let laptop = add(&path, "alice", "laptop");
        assert_eq!(
            label_of(db.check_password("alice", phone.as_bytes())),
            Some("phone".to_string())
        );
        assert_eq!(
            label_of(db.check_password("alice", laptop.as_bytes())),
            Some("laptop".to_string())
        );
        assert_eq!(label_of(db.check_password("alice", b"main")), None);
        // Another user's, and a wrong secret behind a right id, are wrong passwords.
        assert_eq!(
            db.check_password("bob", phone.as_bytes()),
            Err(FailureReason::WrongPassword)
        );
        let mut wrong = phone.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            db.check_password("alice", &wrong),
            Err(FailureReason::WrongPassword)
        );
    }

    #[test]
    fn a_login_costs_two_hashes_at_most_however_many_app_passwords() {
        let (_dir, path, db) = db(false);
        let passwords: Vec<String> = (0..20)
            .map(|i| add(&path, "alice", &format!("device {i}")))
            .collect();
        let before = db.slow_checks();
        // A wrong password of another shape: the main password's hash only.
        assert!(db.check_password("alice", b"guess").is_err());
        assert_eq!(db.slow_checks() - before, 1);
        // Of the app password shape, an id nobody has: the main password's only.
        assert!(db
            .check_password("alice", b"zzzz-aaaa-aaaa-aaaa-aaaa")
            .is_err());
        // A right id with a wrong secret: that app password's hash and the main one's.
        let wrong = format!("{}-aaaa-aaaa-aaaa-aaaa", &passwords[7][..4]);
        let before = db.slow_checks();
        assert!(db.check_password("alice", wrong.as_bytes()).is_err());
        assert_eq!(db.slow_checks() - before, 2);
        // The last app password added: one hash.
        let before = db.slow_checks();
        assert!(db.check_password("alice", passwords[19].as_bytes()).is_ok());
        assert_eq!(db.slow_checks() - before, 1);
    }

    #[test]
    fn a_revoked_app_password_fails_at_the_next_login_despite_the_cache() {
        let (_dir, path, db) = db(true);
        let phone = add(&path, "alice", "phone");
        let laptop = add(&path, "alice", "laptop");
        assert!(db.check_password("alice", phone.as_bytes()).is_ok());
        assert!(db.check_password("alice", laptop.as_bytes()).is_ok());
        // Remembered: no hash the second time.
        let before = db.slow_checks();
        assert!(db.check_password("alice", phone.as_bytes()).is_ok());
        assert_eq!(db.slow_checks(), before);

        revoke_app_password(&path, "alice", "phone").unwrap();
        assert_eq!(
            db.check_password("alice", phone.as_bytes()),
            Err(FailureReason::WrongPassword)
        );
        assert!(db.check_password("alice", laptop.as_bytes()).is_ok());
        assert!(db.check_password("alice", b"main").is_ok());
        // A new one under the old label is a new password: the old one stays refused.
        let again = add(&path, "alice", "phone");
        assert!(db.check_password("alice", phone.as_bytes()).is_err());
        assert!(db.check_password("alice", again.as_bytes()).is_ok());
    }

    #[test]
    fn a_file_that_does_not_parse_accepts_no_app_password() {
        let (_dir, path, db) = db(false);
        let phone = add(&path, "alice", "phone");
        assert!(db.check_password("alice", phone.as_bytes()).is_ok());
        let apps = crate::app_passwords_path(&path);
        let mut text = fs::read_to_string(&apps).unwrap();
        text.push_str("garbage\n");
        fs::write(&apps, text).unwrap();
        assert!(db.check_password("alice", phone.as_bytes()).is_err());
        assert!(db.check_password("alice", b"main").is_ok());
    }

    #[test]
    fn the_last_use_is_recorded_once_a_minute_at_most() {
        let (_dir, path, db) = db(true);
        let last_used = crate::default_last_used_path(&path);
        let phone = add(&path, "alice", "phone");
        add(&path, "alice", "laptop");
        let now = Instant::now();
        assert!(db.check_password_at("alice", phone.as_bytes(), now).is_ok());
        db.apps.flush();
        let list = list_app_passwords(&path, &last_used, "alice").unwrap();
        let used = list[0].last_used.expect("the phone's use recorded");
        assert!((used - crate::app_password::unix_now()).abs() < 60);
        assert_eq!(list[1].last_used, None);
        // Within the minute, nothing more is written, even if the file is lost.
        fs::remove_file(&last_used).unwrap();
        let soon = now + Duration::from_secs(30);
        assert!(db
            .check_password_at("alice", phone.as_bytes(), soon)
            .is_ok());
        db.apps.flush();
        assert!(!last_used.exists());
        // A minute later, it is.
        let later = now + LAST_USED_EVERY;
        assert!(db
            .check_password_at("alice", phone.as_bytes(), later)
            .is_ok());
        db.apps.flush();
        let list = list_app_passwords(&path, &last_used, "alice").unwrap();
        assert!(list[0].last_used.is_some());
        assert_eq!(list[1].last_used, None);
    }
}

/// Two servers recording the use of app passwords while `facteur user app-password` edits the
/// file: the record is never corrupted, and no server's record is lost.
#[cfg(test)]
mod app_password_concurrency {
    use super::*;
    use crate::app_password::{app_password_text, generate_app_password_secret};
    use crate::{add_app_password, hash_password, list_app_passwords, revoke_app_password, Scheme};

    #[test]
    fn two_servers_and_an_editor_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, "alice:{PLAIN}main\nbob:{PLAIN}bobpw\n").unwrap();
        let add = |user: &str, label: &str| {
            let secret = generate_app_password_secret().unwrap();
            let stored = hash_password(Scheme::Sha256Crypt, secret.expose().as_bytes()).unwrap();
            let id = add_app_password(&path, user, label, &stored).unwrap();
            app_password_text(&id, &secret).expose().clone()
        };
        let alice = add("alice", "phone");
        let bob = add("bob", "phone");
        let servers = [
            PasswdDb::open(&path).unwrap(),
            PasswdDb::open(&path).unwrap(),
        ];
        let start = Instant::now();
        std::thread::scope(|s| {
            for (n, db) in servers.iter().enumerate() {
                let (user, password) = if n == 0 {
                    ("alice", &alice)
                } else {
                    ("bob", &bob)
                };
                s.spawn(move || {
                    // Each login a minute after the last, as the clock goes: each one written.
                    for i in 0..20 {
                        let at = start + crate::LAST_USED_EVERY * i;
                        assert!(db.check_password_at(user, password.as_bytes(), at).is_ok());
                    }
                    db.apps.flush();
                });
            }
            s.spawn(|| {
                for i in 0..20 {
                    add("alice", &format!("tablet {i}"));
                    revoke_app_password(&path, "alice", &format!("tablet {i}")).unwrap();
                }
            });
        });
        let last_used = crate::default_last_used_path(&path);
        let text = fs::read_to_string(&last_used).unwrap();
        assert!(
            text.lines().all(|l| l.split(':').count() == 4),
            "every line whole: {text}"
        );
        for user in ["alice", "bob"] {
            let list = list_app_passwords(&path, &last_used, user).unwrap();
            let phone = list.iter().find(|a| a.label == "phone").unwrap();
            assert!(phone.last_used.is_some(), "{user}'s use lost: {text}");
        }
    }
}
