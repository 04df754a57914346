//! What `facteur check-config` asks of the store before any mail arrives: does the maildir
//! template give every user a maildrop of their own, and can the user who serves the mail make
//! and write each one?
//!
//! It only looks: it creates, changes and locks nothing, so it can run beside a live server.
//! Every finding names the template, the directory or the users concerned, and what to change.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::template;
use super::StoreError;

/// Kernel file systems where no maildir can live (statfs `f_type`).
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const SYSFS_MAGIC: u64 = 0x6265_6572;

/// How many user names a finding lists before it says "and N more".
const NAMES_SHOWN: usize = 3;

/// The account that serves the mail (`[server] user`, or who runs facteur): it makes the
/// maildirs at the first login and writes in them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    pub uid: u32,
    pub gid: u32,
}

/// What [`check_maildirs`] found: errors (every delivery or login of the users concerned
/// fails, or users share a maildrop) and warnings (some users' mail fails).
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Findings {
    fn add(&mut self, error: bool, text: String) {
        if error {
            self.errors.push(text);
        } else {
            self.warnings.push(text);
        }
    }
}

/// Users grouped under one finding: how many, and the first few names.
#[derive(Default)]
struct Users {
    count: usize,
    names: Vec<String>,
}

impl Users {
    fn add(&mut self, user: &str) {
        self.count += 1;
        if self.names.len() < NAMES_SHOWN {
            self.names.push(format!("{user:?}"));
        }
    }

    /// "1 user (\"bob\")", "5 users (\"a\", \"b\", \"c\" and 2 more)".
    fn describe(&self) -> String {
        let more = self.count - self.names.len();
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!(
            "{} user{} ({}{tail})",
            self.count,
            if self.count == 1 { "" } else { "s" },
            self.names.join(", ")
        )
    }
}

/// Checks `template` for every account (user name, home directory) as `server` would use it.
pub fn check_maildirs<'a>(
    template: &str,
    accounts: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    server: Server,
) -> Findings {
    let mut found = Findings::default();
    // The template itself, with a user name and a home that every escape can use.
    if let Err(e @ StoreError::BadTemplate { .. }) =
        template::expand(template, "user@example.org", Some("/home/user"))
    {
        found.errors.push(e.to_string());
        return found;
    }
    let shared = !template::per_user(template);
    if shared {
        found.errors.push(format!(
            "the maildir template {template:?} has no per-user part (%u, %n or %h): users \
             would share one maildrop and read each other's mail"
        ));
    }
    let (mut no_home, mut bad_name) = (Users::default(), Users::default());
    let mut total = 0usize;
    // Maildir -> the first user of it, then the users that collide with that one.
    let mut owners: HashMap<PathBuf, (String, Users)> = HashMap::new();
    for (user, home) in accounts {
        total += 1;
        match template::expand(template, user, home) {
            Ok(path) => owners
                .entry(path)
                .or_insert_with(|| (user.to_owned(), Users::default()))
                .1
                .add(user),
            Err(StoreError::NoHome(_)) => no_home.add(user),
            Err(_) => bad_name.add(user),
        }
    }
    // A problem of some users is a warning; of every user, an error: nothing would work.
    if no_home.count > 0 {
        found.add(
            no_home.count == total,
            format!(
                "the maildir template {template:?} uses %h, but {} {} no home directory (the 6th \
             field of the passwd-file): their deliveries and logins fail",
                no_home.describe(),
                if no_home.count == 1 { "has" } else { "have" }
            ),
        );
    }
    if bad_name.count > 0 {
        let hint = if template.contains("%d") {
            " (with %d, names must be user@domain)"
        } else {
            ""
        };
        found.add(
            bad_name.count == total,
            format!(
                "the maildir template {template:?} cannot make a maildrop for {}{hint}: their \
             deliveries and logins fail; rename or remove them",
                bad_name.describe()
            ),
        );
    }
    if !shared {
        for (path, (_, users)) in &owners {
            if users.count > 1 {
                found.errors.push(format!(
                    "{} share the maildrop {}: they would read each other's mail (give each \
                     one its own, e.g. with %u or distinct home directories)",
                    users.describe(),
                    path.display()
                ));
            }
        }
    }
    // Where the maildirs would be made: looked at once per directory that exists.
    let mut verdicts: HashMap<PathBuf, Option<String>> = HashMap::new();
    let mut failing: HashMap<String, Users> = HashMap::new();
    let mut paths: Vec<_> = owners.into_iter().collect();
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, (first, users)) in paths {
        let problem = match nearest_existing(&path) {
            Ok(existing) => verdicts
                .entry(existing.clone())
                .or_insert_with(|| usable(&existing, existing == path, server))
                .clone(),
            Err(e) => Some(e),
        };
        if let Some(problem) = problem {
            let group = failing.entry(problem).or_default();
            group.add(&first);
            group.count += users.count - 1;
        }
    }
    let mut failing: Vec<_> = failing.into_iter().collect();
    failing.sort_by(|a, b| a.0.cmp(&b.0));
    for (problem, users) in failing {
        found.errors.push(format!(
            "{problem}: the maildrops of {} cannot be made or written",
            users.describe()
        ));
    }
    found
}

/// `path` itself, or the nearest of its parents that exists.
fn nearest_existing(path: &Path) -> Result<PathBuf, String> {
    for dir in path.ancestors() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match fs::metadata(dir) {
            Ok(_) => return Ok(dir.to_owned()),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::NOTDIR) => {}
            Err(e) => return Err(format!("cannot look at {}: {e}", dir.display())),
        }
    }
    Err(format!("no part of {} exists", path.display()))
}

/// Why the maildir cannot be made under (or, when `is_maildir`, used in) the existing
/// directory `dir` by `server`, or `None` if it can.
fn usable(dir: &Path, is_maildir: bool, server: Server) -> Option<String> {
    let shown = dir.display();
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot look at {shown}: {e}")),
    };
    if !meta.is_dir() {
        return Some(format!("{shown} is not a directory"));
    }
    if let Ok(fs) = rustix::fs::statfs(dir) {
        if matches!(fs.f_type as u64, PROC_SUPER_MAGIC | SYSFS_MAGIC) {
            return Some(format!(
                "{shown} is on a kernel file system (/proc or /sys), where no maildir can be made"
            ));
        }
    }
    if let Ok(vfs) = rustix::fs::statvfs(dir) {
        if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Some(format!("{shown} is on a read-only file system"));
        }
    }
    if server.uid == 0 {
        return None; // root passes the permission bits (not a read-only mount, seen above)
    }
    // Every directory above must let the server through; this one must let it write too.
    let what = if is_maildir {
        "the maildir"
    } else {
        "the directory the maildirs are made in"
    };
    for (i, d) in dir.ancestors().enumerate() {
        if d.as_os_str().is_empty() {
            continue;
        }
        let Ok(m) = fs::metadata(d) else { continue };
        let needed = if i == 0 { 0o3 } else { 0o1 }; // write and search, or search
        if !allows(&m, server, needed) {
            let right = if i == 0 {
                format!("{what} {shown} is not writable")
            } else {
                format!("{} cannot be entered (no search permission)", d.display())
            };
            return Some(format!(
                "{right} by uid {} gid {}, who serves the mail (owner uid {}, gid {}, mode {:04o})",
                server.uid,
                server.gid,
                m.uid(),
                m.gid(),
                m.permissions().mode() & 0o7777
            ));
        }
    }
    None
}

/// True if `server` has the `rwx` bits `needed` (as 0o4, 0o2, 0o1) on a file with metadata
/// `m`: the owner's bits for its owner, the group's for its group, else the others'. (ACLs and
/// supplementary groups are not looked at: the server gives up its supplementary groups.)
fn allows(m: &fs::Metadata, server: Server, needed: u32) -> bool {
    let mode = m.permissions().mode();
    let bits = if m.uid() == server.uid {
        mode >> 6
    } else if m.gid() == server.gid {
        mode >> 3
    } else {
        mode
    };
    bits & needed == needed
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Server = Server { uid: 0, gid: 0 };

    fn errors(template: &str, users: &[(&str, Option<&str>)], who: Server) -> Findings {
        check_maildirs(template, users.iter().copied(), who)
    }

    #[test]
    fn a_bad_template_is_an_error_and_nothing_else_is_checked() {
        let f = errors("/m/%x", &[("bob", None)], ME);
        assert_eq!(f.errors.len(), 1, "{f:?}");
        assert!(f.errors[0].contains("unknown %-escape"), "{f:?}");
    }

    #[test]
    fn shared_maildrops_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = format!("{}/Maildir", dir.path().display());
        let f = errors(&t, &[("a", None), ("b", None)], ME);
        assert!(f.errors[0].contains("no per-user part"), "{f:?}");
        // Two users with one home.
        let t = "%h/Maildir";
        let home = dir.path().to_str().unwrap();
        let f = errors(t, &[("a", Some(home)), ("b", Some(home))], ME);
        assert_eq!(f.errors.len(), 1, "{f:?}");
        assert!(
            f.errors[0].contains("2 users (\"a\", \"b\") share"),
            "{f:?}"
        );
    }

    #[test]
    fn users_the_template_cannot_serve_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let t = format!("{}/%d/%n", dir.path().display());
        let users = [
            ("a", None),
            ("b", None),
            ("c", None),
            ("d", None),
            ("e@x", None),
        ];
        let f = errors(&t, &users, ME);
        assert!(f.errors.is_empty(), "{f:?}");
        assert_eq!(f.warnings.len(), 1, "{f:?}");
        assert!(
            f.warnings[0].contains("4 users (\"a\", \"b\", \"c\" and 1 more)"),
            "{f:?}"
        );
        assert!(f.warnings[0].contains("user@domain"), "{f:?}");
        let f = errors("%h/M", &[("a", None), ("b", Some("/tmp"))], ME);
        assert!(
            f.warnings[0].contains("1 user (\"a\") has no home"),
            "{f:?}"
        );
        // When it is every user, nothing would work: an error.
        let f = errors("%h/M", &[("a", None)], ME);
        assert!(f.errors[0].contains("has no home"), "{f:?}");
        assert!(f.warnings.is_empty(), "{f:?}");
    }

    #[test]
    fn places_where_no_maildir_can_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let f = errors(&format!("{}/%u", file.display()), &[("bob", None)], ME);
        assert!(f.errors[0].contains("is not a directory"), "{f:?}");
        assert!(f.errors[0].contains(&*file.to_string_lossy()), "{f:?}");
        let f = errors("/proc/mail/%u", &[("bob", None)], ME);
        assert!(f.errors[0].contains("kernel file system"), "{f:?}");
        let f = errors(
            &format!("{}/%u/Maildir", dir.path().display()),
            &[("bob", None)],
            ME,
        );
        assert!(f.errors.is_empty(), "{f:?}");
    }

    #[test]
    fn the_serving_users_permissions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("mail");
        fs::create_dir(&base).unwrap();
        let mine = fs::metadata(&base).unwrap();
        let t = format!("{}/%u/Maildir", base.display());
        let owner = Server {
            uid: mine.uid(),
            gid: mine.gid(),
        };
        // Some other account than the owner, in no group of the directory.
        let other = Server {
            uid: mine.uid().wrapping_add(4242),
            gid: mine.gid().wrapping_add(4242),
        };
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(errors(&t, &[("bob", None)], owner).errors.is_empty());
        let f = errors(&t, &[("bob", None), ("eve", None)], other);
        assert_eq!(f.errors.len(), 1, "{f:?}");
        assert!(f.errors[0].contains("is not writable by uid"), "{f:?}");
        assert!(f.errors[0].contains("mode 0755"), "{f:?}");
        assert!(f.errors[0].contains("2 users"), "{f:?}");
        // Group-writable, and the server in that group.
        fs::set_permissions(&base, fs::Permissions::from_mode(0o770)).unwrap();
        let member = Server {
            gid: mine.gid(),
            ..other
        };
        assert!(errors(&t, &[("bob", None)], member).errors.is_empty());
        // A directory above that cannot be entered.
        fs::set_permissions(&base, fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let f = errors(&t, &[("bob", None)], other);
        assert!(f.errors[0].contains("cannot be entered"), "{f:?}");
    }
}
