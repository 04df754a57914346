//! The process's limit on open files, raised at start to what `max_connections` needs.
//!
//! Each session holds a socket, its maildrop's lock file and `cur/` directory, and a message file
//! while it streams one, so 10,000 sessions (the default `max_connections`) need about 40,000
//! descriptors. Many systems start processes
//! with a soft limit of 1,024 and a much higher hard limit: the server raises its soft limit
//! itself (any process may, up to the hard limit), and says so in the log when even the hard
//! limit is too low, with the setting that fixes it. Past the limit, `accept` fails with EMFILE
//! and the listener waits a moment before trying again: connections queue, nothing crashes.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors for what is not a session: listeners, the log, the users file, index files.
const BASE_DESCRIPTORS: u64 = 64;

/// Descriptors one session may hold at once: a socket, a lock file, the `cur/` directory
/// handle and a message file (during RETR or TOP).
const PER_SESSION: u64 = 4;

/// The descriptors `max_connections` sessions may need: a socket, a lock file, a directory
/// handle and a message file each.
pub fn descriptors_needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(PER_SESSION)
        .saturating_add(BASE_DESCRIPTORS)
}

/// The most sessions an open-file limit of `limit` descriptors can carry (`None`: unlimited):
/// the inverse of [`descriptors_needed`].
pub fn sessions_within(limit: Option<u64>) -> usize {
    match limit {
        None => usize::MAX,
        Some(l) => {
            usize::try_from(l.saturating_sub(BASE_DESCRIPTORS) / PER_SESSION).unwrap_or(usize::MAX)
        }
    }
}

/// The hard limit on open files (`None`: unlimited): what the soft limit can be raised to.
pub fn hard_open_files() -> Option<u64> {
    getrlimit(Resource::Nofile).maximum
}

/// What [`raise_open_files`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit before (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now.
    pub now: Option<u64>,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
    /// What was needed.
    pub needed: u64,
}

impl OpenFiles {
    /// True when the limit now in force is below what was needed.
    pub fn short(&self) -> bool {
        self.now.is_some_and(|n| n < self.needed)
    }
}

/// Raises the soft limit on open files to `needed`, or to the hard limit if that is lower; never
/// lowers it. Returns what it found and did; an error of `setrlimit` leaves the limit as it was.
pub fn raise_open_files(needed: u64) -> std::io::Result<OpenFiles> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut found = OpenFiles {
        before: current,
        now: current,
        hard: maximum,
        needed,
    };
    let Some(soft) = current else {
        return Ok(found); // unlimited already
    };
    if soft >= needed {
        return Ok(found);
    }
    let target = maximum.map_or(needed, |hard| hard.min(needed));
    if target <= soft {
        return Ok(found);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum,
        },
    )?;
    found.now = getrlimit(Resource::Nofile).current;
    Ok(found)
}

/// Raises the limit for `max_connections` and logs what happened: a warning with the fix when
/// the limit stays too low.
pub fn prepare_open_files(max_connections: usize) {
    let needed = descriptors_needed(max_connections);
    match raise_open_files(needed) {
        Ok(found) if found.short() => tracing::warn!(
            limit = found.now,
            needed,
            max_connections,
            "the open-file limit is too low for max_connections: sessions past it wait in the \
             listen queue; raise the hard limit (systemd: LimitNOFILE={needed}; shell: ulimit -Hn)"
        ),
        Ok(found) if found.now != found.before => {
            tracing::info!(
                from = found.before,
                to = found.now,
                "raised the open-file limit"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, needed, "cannot raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_need_a_socket_and_a_file_each() {
        assert_eq!(descriptors_needed(10_000), 40_064);
        assert_eq!(descriptors_needed(usize::MAX), u64::MAX);
    }

    #[test]
    fn the_sessions_a_limit_carries() {
        assert_eq!(sessions_within(Some(40_064)), 10_000);
        assert_eq!(sessions_within(Some(40_067)), 10_000);
        assert_eq!(sessions_within(Some(20_000)), 4_984);
        assert_eq!(sessions_within(Some(10)), 0);
        assert_eq!(sessions_within(None), usize::MAX);
        for n in [0, 1, 255, 4_984, 10_000] {
            assert_eq!(sessions_within(Some(descriptors_needed(n))), n);
        }
    }

    #[test]
    fn the_soft_limit_is_raised_to_what_is_needed_and_never_lowered() {
        let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
        let Some(soft) = current else {
            return; // unlimited: nothing to raise
        };
        // Asking for less than the current limit changes nothing.
        let found = raise_open_files(soft / 2).unwrap();
        assert_eq!((found.before, found.now), (Some(soft), Some(soft)));
        assert!(!found.short());
        // Asking for a little more raises it, within the hard limit.
        let want = soft + 16;
        let found = raise_open_files(want).unwrap();
        let expected = maximum.map_or(want, |hard| hard.min(want));
        assert_eq!(found.now, Some(expected.max(soft)));
        assert_eq!(getrlimit(Resource::Nofile).current, found.now);
        assert_eq!(
            getrlimit(Resource::Nofile).maximum,
            maximum,
            "the hard limit is kept"
        );
        // More than the hard limit: raised to the hard limit, and reported short.
        if let Some(hard) = maximum {
            let found = raise_open_files(hard.saturating_add(1)).unwrap();
            assert_eq!(found.now, Some(hard));
            assert!(found.short());
        }
    }
}
