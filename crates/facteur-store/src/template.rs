//! The maildir path template: `%u` (user), `%n` (local part), `%d` (domain), `%h` (home), `%%`.
//!
//! A user name comes from the network, so it must never steer the path outside the place the
//! template gives it. The rule is checked on the result, segment by segment: every path segment
//! that a user name went into (even an empty substitution) must be a plain name, never empty,
//! "." or "..", and the user name may hold no '/', '\\' or control character at all. The home
//! directory comes from the user database, which the administrator owns, and is used as it is.

use std::path::PathBuf;

use super::StoreError;

/// One '/'-separated piece of the expanded path.
struct Segment {
    text: String,
    /// A user-derived substitution (`%u`, `%n`, `%d`) went into this segment.
    from_user: bool,
}

/// Expands `template` for `user`.
pub(crate) fn expand(
    template: &str,
    user: &str,
    home: Option<&str>,
) -> Result<PathBuf, StoreError> {
    let bad_template = |reason| StoreError::BadTemplate {
        template: template.to_owned(),
        reason,
    };
    if template.is_empty() {
        return Err(bad_template("the template is empty"));
    }
    check_user(user)?;
    let (local, domain) = match user.rfind('@') {
        Some(at) => (&user[..at], &user[at + 1..]),
        None => (user, ""),
    };

    let mut segments = vec![Segment {
        text: String::new(),
        from_user: false,
    }];
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        // Never `None`: `segments` starts with one element and only grows.
        let Some(current) = segments.last_mut() else {
            break;
        };
        match c {
            '/' => segments.push(Segment {
                text: String::new(),
                from_user: false,
            }),
            '%' => match chars.next() {
                Some('%') => current.text.push('%'),
                Some(code @ ('u' | 'n' | 'd')) => {
                    current.text.push_str(match code {
                        'u' => user,
                        'n' => local,
                        _ => domain,
                    });
                    current.from_user = true;
                }
                Some('h') => {
                    let home = home.ok_or_else(|| StoreError::NoHome(user.to_owned()))?;
                    let mut parts = home.split('/');
                    if let Some(first) = parts.next() {
                        current.text.push_str(first);
                    }
                    for part in parts {
                        segments.push(Segment {
                            text: part.to_owned(),
                            from_user: false,
                        });
                    }
                }
                Some(_) => return Err(bad_template("unknown %-escape (use %u %n %d %h or %%)")),
                None => return Err(bad_template("the template ends with a lone '%'")),
            },
            _ => current.text.push(c),
        }
    }

    if segments
        .iter()
        .any(|s| s.from_user && matches!(s.text.as_str(), "" | "." | ".."))
    {
        return Err(StoreError::BadUser(user.to_owned()));
    }
    let path: Vec<&str> = segments.iter().map(|s| s.text.as_str()).collect();
    Ok(PathBuf::from(path.join("/")))
}

/// True if the template gives each user a place of their own: it holds `%u`, `%n` or `%h`.
/// Without one (`/var/mail/shared`, or `/var/mail/%d` alone) several users share a maildrop.
pub(crate) fn per_user(template: &str) -> bool {
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('u' | 'n' | 'h') => return true,
                Some(_) => {} // "%%", "%d", or an error expand() reports
                None => break,
            }
        }
    }
    false
}

/// The checks on the whole user name, whatever the template uses.
fn check_user(user: &str) -> Result<(), StoreError> {
    let bad = user.is_empty()
        || user == "."
        || user == ".."
        || user
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        Err(StoreError::BadUser(user.to_owned()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(template: &str, user: &str, home: Option<&str>) -> String {
        expand(template, user, home)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn is_bad_user(template: &str, user: &str) -> bool {
        matches!(
            expand(template, user, Some("/home/x")),
            Err(StoreError::BadUser(_))
        )
    }

    #[test]
    fn expands_every_escape() {
        assert_eq!(
            ok("/var/mail/%d/%n/Maildir", "bob@example.org", None),
            "/var/mail/example.org/bob/Maildir"
        );
        assert_eq!(
            ok("/var/mail/%u", "bob@example.org", None),
            "/var/mail/bob@example.org"
        );
        assert_eq!(
            ok("%h/Maildir", "bob", Some("/home/bob")),
            "/home/bob/Maildir"
        );
        assert_eq!(ok("/m/100%%/%u", "bob", None), "/m/100%/bob");
        // The domain is what follows the last '@'.
        assert_eq!(ok("/m/%d/%n", "a@b@c.org", None), "/m/c.org/a@b");
        assert_eq!(ok("/m/%n", "bob", None), "/m/bob");
        // An empty domain is fine inside a segment that has other text.
        assert_eq!(ok("/m/%n%d", "bob", None), "/m/bob");
    }

    #[test]
    fn rejects_names_that_could_escape() {
        for user in [
            "", ".", "..", "../etc", "a/b", "/abs", "a\\b", "a\0b", "a\nb", "a\rb", "a\tb",
            "\u{7f}", "\u{85}",
        ] {
            assert!(is_bad_user("/var/mail/%u/Maildir", user), "{user:?}");
        }
        // Domain or local part that is empty, "." or ".." when the template uses it.
        for user in [
            "bob@..",
            "bob@.",
            "bob@",
            "..@example.org",
            ".@x",
            "@example.org",
        ] {
            assert!(is_bad_user("/var/mail/%d/%n/Maildir", user), "{user:?}");
        }
        // A user name without a domain cannot fill a %d segment.
        assert!(is_bad_user("/var/mail/%d/%n", "bob"));
        // Pieces that combine into "..".
        assert!(is_bad_user("/var/mail/%n%d", ".@."));
        // But an unused part does not matter.
        assert_eq!(ok("/var/mail/%n", "bob@..", None), "/var/mail/bob");
        // Dots inside a name are fine.
        assert_eq!(ok("/var/mail/%u", "bob.smith", None), "/var/mail/bob.smith");
    }

    proptest::proptest! {
        #[test]
        fn no_user_name_leaves_the_template(user in "[./\\\\@a\\x00\\n%]{0,8}") {
            for template in ["/base/%d/%n/Maildir", "/base/%u", "/base/%n%d", "/base/%n.%d"] {
                if let Ok(path) = expand(template, &user, None) {
                    proptest::prop_assert!(path.starts_with("/base"));
                    for c in path.components().skip(2) {
                        proptest::prop_assert!(
                            matches!(c, std::path::Component::Normal(_)),
                            "{:?} from {:?}", path, user
                        );
                    }
                    let depth = template.matches('/').count();
                    proptest::prop_assert_eq!(path.components().count(), depth + 1);
                }
            }
        }
    }

    #[test]
    fn a_template_without_a_user_part_is_shared() {
        for t in ["/var/mail/%u", "/m/%d/%n", "%h/Maildir", "/m/%n.%d"] {
            assert!(per_user(t), "{t}");
        }
        for t in [
            "/var/mail/shared",
            "/m/%d/Maildir",
            "/m/%%u",
            "/m/100%%",
            "/m/%",
        ] {
            assert!(!per_user(t), "{t}");
        }
    }

    #[test]
    fn template_errors() {
        assert!(matches!(
            expand("/m/%x", "bob", None),
            Err(StoreError::BadTemplate { .. })
        ));
        assert!(matches!(
            expand("/m/%", "bob", None),
            Err(StoreError::BadTemplate { .. })
        ));
        assert!(matches!(
            expand("", "bob", None),
            Err(StoreError::BadTemplate { .. })
        ));
        assert!(matches!(
            expand("%h/Maildir", "bob", None),
            Err(StoreError::NoHome(u)) if u == "bob"
        ));
        // The message names the user.
        let e = expand("/m/%u", "a/b", None).unwrap_err().to_string();
        assert!(e.contains("\"a/b\""), "{e}");
    }
}
