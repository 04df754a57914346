//! The file names of a snapshot's messages, in one block of memory.
//!
//! A snapshot names each of its messages' files in `cur/`. As a vector of `OsString`s, that is
//! an allocation of its own per message beside 24 octets of vector, for names of 30 to 60
//! octets: here, every name's octets go one after another into one buffer, with 8 octets per
//! message saying where its name is. A name changed later (the file was renamed by another
//! program) goes at the end of the buffer; a message deleted has no name.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Where a name is: its start in the buffer (the high 48 bits) and its length (the low 16).
type Span = u64;

/// A message without a name (deleted, or gone).
const NONE: Span = u64::MAX;

/// The longest name kept: a file name is at most 255 octets on Linux (`NAME_MAX`); a longer
/// one names no file, so the message is kept without a name (it has vanished).
const MAX_NAME: usize = u16::MAX as usize - 1;

/// The names of a snapshot's messages, by position; `None` for a message that has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Names {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

impl Names {
    /// Room for `messages` names of `octets` octets in all.
    pub(crate) fn with_capacity(messages: usize, octets: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(octets),
            spans: Vec::with_capacity(messages),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// Appends the name of one more message.
    pub(crate) fn push(&mut self, name: Option<&OsStr>) {
        let span = self.store(name);
        self.spans.push(span);
    }

    /// `None` past the end; `Some(None)` for a message without a name.
    pub(crate) fn get(&self, index: usize) -> Option<Option<&OsStr>> {
        self.spans.get(index).map(|&span| self.name(span))
    }

    /// Gives message `index` this name (or none); nothing past the end.
    pub(crate) fn set(&mut self, index: usize, name: Option<&OsStr>) {
        if index < self.spans.len() {
            let span = self.store(name);
            self.spans[index] = span;
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Option<&OsStr>> + '_ {
        self.spans.iter().map(|&span| self.name(span))
    }

    /// Keeps the messages for which `keep(position)` is true, in order.
    pub(crate) fn retain_positions(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut i = 0;
        self.spans.retain(|_| {
            i += 1;
            keep(i - 1)
        });
    }

    fn name(&self, span: Span) -> Option<&OsStr> {
        if span == NONE {
            return None;
        }
        let start = usize::try_from(span >> 16).ok()?;
        let len = (span & 0xffff) as usize;
        let bytes = self.bytes.get(start..start.checked_add(len)?)?;
        Some(OsStr::from_bytes(bytes))
    }

    fn store(&mut self, name: Option<&OsStr>) -> Span {
        let Some(name) = name.map(OsStr::as_bytes) else {
            return NONE;
        };
        let start = self.bytes.len() as u64;
        if name.len() > MAX_NAME || start >= 1 << 48 {
            return NONE;
        }
        self.bytes.extend_from_slice(name);
        (start << 16) | name.len() as u64
    }
}

impl<'a> FromIterator<Option<&'a OsStr>> for Names {
    fn from_iter<I: IntoIterator<Item = Option<&'a OsStr>>>(iter: I) -> Self {
        let mut names = Names::default();
        for name in iter {
            names.push(name);
        }
        names
    }
}

impl From<Vec<Option<OsString>>> for Names {
    fn from(names: Vec<Option<OsString>>) -> Self {
        names.iter().map(Option::as_deref).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn names_are_kept_changed_and_dropped_by_position() {
        let mut names = Names::with_capacity(3, 64);
        names.push(Some(os("1700000000.M1P1.host:2,S")));
        names.push(None);
        names.push(Some(os("1700000002.M3P1.host:2,")));
        assert_eq!(names.len(), 3);
        assert_eq!(names.get(0), Some(Some(os("1700000000.M1P1.host:2,S"))));
        assert_eq!(names.get(1), Some(None));
        assert_eq!(names.get(3), None);
        names.set(0, Some(os("1700000000.M1P1.host:2,RS")));
        names.set(2, None);
        names.set(9, Some(os("ignored")));
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            [Some(os("1700000000.M1P1.host:2,RS")), None, None]
        );
        names.retain_positions(|i| i != 1);
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            [Some(os("1700000000.M1P1.host:2,RS")), None]
        );
    }

    #[test]
    fn odd_names_keep_their_octets_and_overlong_ones_name_nothing() {
        let odd = OsStr::from_bytes(b"a\xff\n:2,");
        let long = "x".repeat(MAX_NAME + 1);
        let names: Names = [Some(odd), Some(os("")), Some(os(&long))]
            .into_iter()
            .collect();
        assert_eq!(names.get(0), Some(Some(odd)));
        assert_eq!(names.get(1), Some(Some(os(""))));
        assert_eq!(names.get(2), Some(None));
    }
}
