//! Giving up root: `facteur serve` binds its listeners (ports 110 and 995 need root or
//! `CAP_NET_BIND_SERVICE`) and reads its certificate, then runs as an unprivileged user before it
//! serves a single connection, and refuses to serve mail as root at all unless told to.
//!
//! The switch uses the raw system calls, which on Linux change the ids of the calling thread
//! only (the C library's `setuid` is what broadcasts a change to every thread, and unsafe code is
//! forbidden here). So it must happen while the process has exactly one thread:
//! [`drop_privileges`] reads `Threads:` in /proc and refuses to go on otherwise, and `serve`
//! creates the tokio runtime only after it; the threads created later inherit the ids.
//!
//! The order is the only safe one: supplementary groups cleared, then the gid (real, effective
//! and saved), then the uid (the same three), since once the uid is not 0 nothing else may
//! change. Then every id is read back from the kernel, `setresuid(0, 0, 0)` must fail, any
//! capability left (such as systemd's `AmbientCapabilities=CAP_NET_BIND_SERVICE`, useless once
//! the listeners are open) is cleared, and `no_new_privs` is set. Any failure stops the server:
//! it never goes on half dropped.
//!
//! Accounts are looked up by reading /etc/passwd and /etc/group, with no NSS: an account that
//! only LDAP or systemd-userdb knows must be given by number.

use std::fmt;
use std::io;

use facteur_proto::types::parse_decimal;
use rustix::process::{Gid, Uid};
use rustix::thread::{self as kernel, CapabilitySet, CapabilitySets};

/// Where accounts are looked up.
pub const PASSWD_PATH: &str = "/etc/passwd";
/// Where groups are looked up.
pub const GROUP_PATH: &str = "/etc/group";
/// What the kernel says about the calling thread: ids, groups, capabilities, thread count.
const STATUS_PATH: &str = "/proc/thread-self/status";

/// Why the server cannot run as the configured account, or could not give up root.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        source: io::Error,
    },
    #[error("[server] user = {0:?}: no such user in /etc/passwd")]
    UnknownUser(String),
    #[error("[server] group = {0:?}: no such group in /etc/group")]
    UnknownGroup(String),
    #[error(
        "[server] user = {0:?}: uid {0} is not in /etc/passwd, so its group is unknown: set \
         [server] group too"
    )]
    NoGroupFor(String),
    #[error("[server] {key} = {value:?}: {why}")]
    BadId {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "cannot switch to {target}: that needs root, and facteur runs as uid {uid}; start it as \
         root, or as that user and group (systemd: User= and Group=)"
    )]
    NotRoot { target: String, uid: u32 },
    #[error(
        "cannot change user ids: the process has {0} threads, and the change would apply to \
         the calling one only"
    )]
    Threads(usize),
    #[error("giving up root failed at {step}: {source}")]
    Step {
        step: &'static str,
        source: io::Error,
    },
    #[error("giving up root did not take: {0}")]
    Verify(String),
}

/// An account of /etc/passwd: `name:password:uid:gid:gecos:home:shell`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdAccount {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A group of /etc/group: `name:password:gid:members`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
}

/// A user or group id as written in /etc/passwd, /etc/group or the configuration: decimal
/// digits only (no sign, no space), below 2^32 - 1, which the kernel reads as "unchanged".
fn parse_id(s: &str) -> Option<u32> {
    parse_decimal(s.as_bytes())
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n != u32::MAX)
}

/// The lines of an /etc file that may hold an entry: not empty, not a comment, and not a NIS
/// `+`/`-` inclusion (those name no account of this file).
fn entry_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty() && !l.starts_with(['#', '+', '-']))
}

/// The accounts of an /etc/passwd text, in order. A line without a name or with an id that is
/// not a plain number is skipped, as the C library skips it.
pub fn parse_passwd(text: &str) -> Vec<PasswdAccount> {
    entry_lines(text)
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next().filter(|n| !n.is_empty())?;
            let _password = f.next()?;
            let uid = parse_id(f.next()?)?;
            let gid = parse_id(f.next()?)?;
            Some(PasswdAccount {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .collect()
}

/// The groups of an /etc/group text, in order (bad lines skipped, as in [`parse_passwd`]).
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    entry_lines(text)
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next().filter(|n| !n.is_empty())?;
            let _password = f.next()?;
            let gid = parse_id(f.next()?)?;
            Some(GroupEntry {
                name: name.to_string(),
                gid,
            })
        })
        .collect()
}

/// Who `facteur serve` runs as once its listeners are bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The account's name, or its number when /etc/passwd does not name it.
    pub user: String,
    pub uid: u32,
    /// The group's name, or its number when /etc/group does not name it.
    pub group: String,
    pub gid: u32,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "user {} (uid {}), group {} (gid {})",
            self.user, self.uid, self.group, self.gid
        )
    }
}

/// A user and group given by name or number, checked against /etc/passwd and /etc/group texts.
/// A user name must exist; a uid need not (then `group` is needed); without `group`, the
/// account's primary group.
pub fn resolve_in(
    user: &str,
    group: Option<&str>,
    passwd: &str,
    groups: &str,
) -> Result<Target, PrivilegeError> {
    let accounts = parse_passwd(passwd);
    let group_entries = parse_group(groups);
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (user_name, uid, primary) = if all_digits(user) {
        let uid = parse_id(user).ok_or_else(|| PrivilegeError::BadId {
            key: "user",
            value: user.to_string(),
            why: "a uid is below 4294967295",
        })?;
        match accounts.iter().find(|a| a.uid == uid) {
            Some(a) => (a.name.clone(), uid, Some(a.gid)),
            None => (uid.to_string(), uid, None),
        }
    } else {
        let a = accounts
            .iter()
            .find(|a| a.name == user)
            .ok_or_else(|| PrivilegeError::UnknownUser(user.to_string()))?;
        (a.name.clone(), a.uid, Some(a.gid))
    };
    let gid = match group {
        Some(g) if all_digits(g) => parse_id(g).ok_or_else(|| PrivilegeError::BadId {
            key: "group",
            value: g.to_string(),
            why: "a gid is below 4294967295",
        })?,
        Some(g) => {
            group_entries
                .iter()
                .find(|e| e.name == g)
                .ok_or_else(|| PrivilegeError::UnknownGroup(g.to_string()))?
                .gid
        }
        None => primary.ok_or_else(|| PrivilegeError::NoGroupFor(user.to_string()))?,
    };
    let group_name = group_entries
        .iter()
        .find(|e| e.gid == gid)
        .map_or_else(|| gid.to_string(), |e| e.name.clone());
    Ok(Target {
        user: user_name,
        uid,
        group: group_name,
        gid,
    })
}

/// [`resolve_in`] against the system's /etc/passwd and /etc/group.
pub fn resolve(user: &str, group: Option<&str>) -> Result<Target, PrivilegeError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| PrivilegeError::Read { path, source })
    };
    let passwd = read(PASSWD_PATH)?;
    // /etc/group is needed only to name the group; a system without one still works by number.
    let groups = match group {
        Some(g) if !g.bytes().all(|b| b.is_ascii_digit()) => read(GROUP_PATH)?,
        _ => std::fs::read_to_string(GROUP_PATH).unwrap_or_default(),
    };
    resolve_in(user, group, &passwd, &groups)
}

/// The credentials of the calling thread, as the kernel shows them in /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessIds {
    /// Real, effective, saved and filesystem uid.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Threads of the process.
    pub threads: usize,
    /// Inheritable, permitted, effective and ambient capability sets (bit masks).
    pub capabilities: [u64; 4],
    pub no_new_privs: bool,
}

impl ProcessIds {
    /// Root in any of its uids (a saved uid 0 can be taken back at any time).
    pub fn is_root(&self) -> bool {
        self.uid.contains(&0)
    }

    /// True when every uid and gid is the target's.
    pub fn is(&self, target: &Target) -> bool {
        self.uid.iter().all(|&u| u == target.uid) && self.gid.iter().all(|&g| g == target.gid)
    }
}

/// Parse `/proc/PID/status` (or `task/TID/status`) for the lines [`ProcessIds`] holds; a line
/// that is missing or malformed is an error (the checks must never pass by default).
pub fn parse_status(text: &str) -> Result<ProcessIds, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("no {name} line in the process status"))
    };
    let ids = |name: &str| -> Result<[u32; 4], String> {
        let v: Vec<u32> = field(name)?
            .split_whitespace()
            .map(|s| s.parse().map_err(|_| format!("bad {name} line")))
            .collect::<Result<_, _>>()?;
        v.try_into().map_err(|_| format!("bad {name} line"))
    };
    let capability = |name: &str| -> Result<u64, String> {
        u64::from_str_radix(field(name)?, 16).map_err(|_| format!("bad {name} line"))
    };
    Ok(ProcessIds {
        uid: ids("Uid")?,
        gid: ids("Gid")?,
        groups: field("Groups")?
            .split_whitespace()
            .map(|s| s.parse().map_err(|_| "bad Groups line".to_string()))
            .collect::<Result<_, _>>()?,
        threads: field("Threads")?
            .parse()
            .map_err(|_| "bad Threads line".to_string())?,
        capabilities: [
            capability("CapInh")?,
            capability("CapPrm")?,
            capability("CapEff")?,
            capability("CapAmb")?,
        ],
        no_new_privs: field("NoNewPrivs")? == "1",
    })
}

/// The calling thread's credentials and the process's thread count, from the kernel.
pub fn current() -> Result<ProcessIds, PrivilegeError> {
    let text = std::fs::read_to_string(STATUS_PATH).map_err(|source| PrivilegeError::Read {
        path: STATUS_PATH,
        source,
    })?;
    parse_status(&text).map_err(PrivilegeError::Verify)
}

/// What [`drop_privileges`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// True when the ids were changed; false when the process already ran as the target (or no
    /// target was given).
    pub switched: bool,
    /// The credentials now, read back from the kernel.
    pub now: ProcessIds,
}

/// Become `target` for good (when given), then give up every capability left unless the
/// process is still root, and set `no_new_privs`. Must run while the process has one thread:
/// refuses otherwise, before changing anything. Already running as `target` (systemd's User=
/// and Group=) is fine; another user needs root.
pub fn drop_privileges(target: Option<&Target>) -> Result<Dropped, PrivilegeError> {
    let step = |step: &'static str| {
        move |e: rustix::io::Errno| PrivilegeError::Step {
            step,
            source: e.into(),
        }
    };
    let before = current()?;
    if before.threads != 1 {
        return Err(PrivilegeError::Threads(before.threads));
    }
    let mut switched = false;
    if let Some(t) = target.filter(|t| !before.is(t)) {
        if before.uid[1] != 0 {
            return Err(PrivilegeError::NotRoot {
                target: t.to_string(),
                uid: before.uid[1],
            });
        }
        let (uid, gid) = (Uid::from_raw(t.uid), Gid::from_raw(t.gid));
        kernel::set_thread_groups(&[]).map_err(step("setgroups"))?;
        kernel::set_thread_res_gid(gid, gid, gid).map_err(step("setresgid"))?;
        kernel::set_thread_res_uid(uid, uid, uid).map_err(step("setresuid"))?;
        switched = true;
    }
    if !current()?.is_root() {
        // Switching away from root cleared them; a process started unprivileged may hold some
        // (AmbientCapabilities=), which it needed for binding only.
        kernel::clear_ambient_capability_set().map_err(step("clearing ambient capabilities"))?;
        let none = CapabilitySet::empty();
        kernel::set_capabilities(
            None,
            CapabilitySets {
                effective: none,
                permitted: none,
                inheritable: none,
            },
        )
        .map_err(step("capset"))?;
    }
    kernel::set_no_new_privs(true).map_err(step("no_new_privs"))?;
    let now = verify(target, switched)?;
    Ok(Dropped { switched, now })
}

/// Read everything back and check it: the target's ids in all four slots, no supplementary
/// group when they were changed, agreement with getuid() and friends, no way back to root, no
/// capability left, one thread.
fn verify(target: Option<&Target>, switched: bool) -> Result<ProcessIds, PrivilegeError> {
    let bad = |m: String| Err(PrivilegeError::Verify(m));
    let now = current()?;
    if now.threads != 1 {
        return bad(format!("{} threads appeared", now.threads));
    }
    if let Some(t) = target {
        if !now.is(t) {
            return bad(format!(
                "uids {:?} and gids {:?} instead of {t}",
                now.uid, now.gid
            ));
        }
        if switched && !now.groups.is_empty() {
            return bad(format!("supplementary groups {:?} left", now.groups));
        }
    }
    let (uid, euid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::geteuid().as_raw(),
    );
    let (gid, egid) = (
        rustix::process::getgid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    if [uid, euid] != [now.uid[0], now.uid[1]] || [gid, egid] != [now.gid[0], now.gid[1]] {
        return bad(format!(
            "getuid/geteuid/getgid/getegid say {uid}/{euid}/{gid}/{egid}, /proc says {:?}/{:?}",
            now.uid, now.gid
        ));
    }
    if switched {
        let groups = rustix::process::getgroups().map_err(|e| PrivilegeError::Step {
            step: "getgroups",
            source: e.into(),
        })?;
        if !groups.is_empty() {
            return bad(format!("getgroups says {} groups are left", groups.len()));
        }
    }
    if !now.is_root() {
        if kernel::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).is_ok() {
            return bad("setresuid(0, 0, 0) succeeded".into());
        }
        if !now.gid.contains(&0)
            && kernel::set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT).is_ok()
        {
            return bad("setresgid(0, 0, 0) succeeded".into());
        }
        if now.capabilities != [0; 4] {
            return bad(format!(
                "capabilities left (inheritable, permitted, effective, ambient): {:x?}",
                now.capabilities
            ));
        }
    }
    if !now.no_new_privs {
        return bad("no_new_privs is not set".into());
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
# comment:x:0:0::/:/bin/sh
root:x:0:0:root:/root:/bin/bash

nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\r
vmail:x:5000:5000::/var/mail:/usr/sbin/nologin
+nisuser::::::
-excluded::::::
:x:7:7:no name:/:/bin/sh
short:x:9
signed:x:+10:10::/:/bin/sh
spaced:x: 11:11::/:/bin/sh
minus1:x:4294967295:1::/:/bin/sh
toobig:x:4294967296:1::/:/bin/sh
vmail:x:6000:6000:second vmail, ignored::/bin/sh
twin:x:5000:100:same uid as vmail::/bin/sh
";

    const GROUP: &str = "\
root:x:0:
# mail:x:12:
mail:x:8:
nogroup:x:65534:
vmail:x:5000:postfix,dovecot
bad:x:x1:
mail2:x:8:
";

    #[test]
    fn passwd_lines_that_are_not_accounts_are_skipped() {
        let names: Vec<_> = parse_passwd(PASSWD)
            .into_iter()
            .map(|a| (a.name, a.uid, a.gid))
            .collect();
        assert_eq!(
            names,
            [
                ("root".to_string(), 0, 0),
                ("nobody".to_string(), 65534, 65534),
                ("vmail".to_string(), 5000, 5000),
                ("vmail".to_string(), 6000, 6000),
                ("twin".to_string(), 5000, 100),
            ]
        );
    }

    #[test]
    fn group_lines_that_are_not_groups_are_skipped() {
        let groups: Vec<_> = parse_group(GROUP)
            .into_iter()
            .map(|g| (g.name, g.gid))
            .collect();
        assert_eq!(
            groups,
            [
                ("root".to_string(), 0),
                ("mail".to_string(), 8),
                ("nogroup".to_string(), 65534),
                ("vmail".to_string(), 5000),
                ("mail2".to_string(), 8),
            ]
        );
    }

    #[test]
    fn ids_are_plain_decimal_numbers_below_minus_one() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("65534"), Some(65534));
        assert_eq!(parse_id("007"), Some(7));
        assert_eq!(parse_id("4294967294"), Some(u32::MAX - 1));
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "0x10",
            "4294967295",
            "4294967296",
            "1e3",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_user_name_gives_its_primary_group() {
        let t = resolve_in("vmail", None, PASSWD, GROUP).unwrap();
        assert_eq!(
            t,
            Target {
                user: "vmail".into(),
                uid: 5000,
                group: "vmail".into(),
                gid: 5000
            }
        );
        assert_eq!(
            t.to_string(),
            "user vmail (uid 5000), group vmail (gid 5000)"
        );
        // The first of two lines with one name wins, as getpwnam's does.
        let t = resolve_in("nobody", None, PASSWD, GROUP).unwrap();
        assert_eq!((t.uid, t.gid, t.group.as_str()), (65534, 65534, "nogroup"));
    }

    #[test]
    fn a_group_by_name_or_number_overrides_the_primary_group() {
        let t = resolve_in("vmail", Some("mail"), PASSWD, GROUP).unwrap();
        assert_eq!((t.uid, t.gid, t.group.as_str()), (5000, 8, "mail"));
        let t = resolve_in("vmail", Some("8"), PASSWD, GROUP).unwrap();
        assert_eq!((t.gid, t.group.as_str()), (8, "mail"));
        // A gid no group names is kept as a number.
        let t = resolve_in("vmail", Some("4242"), PASSWD, GROUP).unwrap();
        assert_eq!((t.gid, t.group.as_str()), (4242, "4242"));
    }

    #[test]
    fn numeric_users_are_accepted_with_or_without_an_account() {
        // The first account with that uid names it and gives its group.
        let t = resolve_in("5000", None, PASSWD, GROUP).unwrap();
        assert_eq!((t.user.as_str(), t.uid, t.gid), ("vmail", 5000, 5000));
        let t = resolve_in("4321", Some("nogroup"), PASSWD, GROUP).unwrap();
        assert_eq!(
            (t.user.as_str(), t.uid, t.group.as_str(), t.gid),
            ("4321", 4321, "nogroup", 65534)
        );
        let e = resolve_in("4321", None, PASSWD, GROUP).unwrap_err();
        assert!(matches!(e, PrivilegeError::NoGroupFor(_)), "{e}");
        assert!(e.to_string().contains("[server] group"), "{e}");
    }

    #[test]
    fn unknown_names_and_impossible_ids_are_refused() {
        for (user, group, expected) in [
            ("nosuchuser", None, "no such user"),
            ("", None, "no such user"),
            ("comment", None, "no such user"),
            ("nisuser", None, "no such user"),
            ("+nisuser", None, "no such user"),
            ("signed", None, "no such user"),
            ("vmail", Some("nosuchgroup"), "no such group"),
            ("vmail", Some("bad"), "no such group"),
            ("4294967295", None, "below 4294967295"),
            ("99999999999", None, "below 4294967295"),
            ("vmail", Some("4294967295"), "below 4294967295"),
        ] {
            let e = resolve_in(user, group, PASSWD, GROUP)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{user:?}/{group:?}: {e}");
        }
    }

    const STATUS: &str = "Name:\tfacteur\nUmask:\t0077\nState:\tR (running)\nTgid:\t42\n\
        Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
        FDSize:\t64\nGroups:\t\nThreads:\t1\nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n\
        CapAmb:\t0000000000000400\nNoNewPrivs:\t1\n";

    #[test]
    fn the_process_status_is_read_strictly() {
        let s = parse_status(STATUS).unwrap();
        assert_eq!(s.uid, [65534; 4]);
        assert_eq!(s.gid, [65534; 4]);
        assert!(s.groups.is_empty());
        assert_eq!(s.threads, 1);
        assert_eq!(s.capabilities, [0, 0, 0, 0x400]);
        assert!(s.no_new_privs && !s.is_root());
        let s =
            parse_status(&STATUS.replace("Uid:\t65534\t65534\t65534", "Uid:\t1\t1\t0")).unwrap();
        assert!(s.is_root(), "a saved uid 0 is root");
        let s = parse_status(&STATUS.replace("Groups:\t", "Groups:\t4 27 ")).unwrap();
        assert_eq!(s.groups, [4, 27]);
        for broken in [
            STATUS.replace("Threads:\t1\n", ""),
            STATUS.replace("Threads:\t1", "Threads:\tmany"),
            STATUS.replace("Uid:\t65534\t", "Uid:\t"),
            STATUS.replace("Gid:\t65534", "Gid:\t-1"),
            STATUS.replace("CapEff:\t0000000000000000", "CapEff:\t"),
            STATUS.replace("Groups:\t", "Groups:\tx"),
            STATUS.replace("NoNewPrivs", "NoNewPriv"),
        ] {
            assert!(parse_status(&broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn this_process_can_be_read() {
        let now = current().unwrap();
        assert_eq!(now.uid[0], rustix::process::getuid().as_raw());
        assert_eq!(now.gid[1], rustix::process::getegid().as_raw());
    }

    #[test]
    fn nothing_is_changed_while_other_threads_run() {
        // The test harness runs this test on a thread of its own, and here is one more.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || stopped.recv());
        let before = current().unwrap();
        let target = Target {
            user: "nobody".into(),
            uid: 65534,
            group: "nogroup".into(),
            gid: 65534,
        };
        let e = drop_privileges(Some(&target)).unwrap_err();
        assert!(matches!(e, PrivilegeError::Threads(n) if n >= 2), "{e}");
        let after = current().unwrap();
        assert_eq!((after.uid, after.gid), (before.uid, before.gid));
        assert_eq!(after.groups, before.groups);
        assert_eq!(after.no_new_privs, before.no_new_privs);
        drop(stop);
        let _ = helper.join().unwrap();
    }
}
