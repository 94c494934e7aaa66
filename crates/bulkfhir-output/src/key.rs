use std::fmt;
use std::str::FromStr;

use crate::OutputError;

/// The longest key accepted, in bytes; S3 and GCS cap object names at 1024 bytes, and the store's
/// prefix comes on top.
const MAX_KEY_LEN: usize = 900;
/// The longest segment accepted, in bytes; most filesystems cap a file name at 255 bytes, and the
/// local backend appends `#<n>` to staged uploads.
const MAX_SEGMENT_LEN: usize = 200;

/// A relative object key below the store's root, e.g. `jobs/0193.../Observation-1.ndjson`.
///
/// Built only through [`OutputKey::parse`] (or [`OutputKey::join`]): `/`-separated segments of
/// `[A-Za-z0-9._-]`, no empty segments, no `.` or `..`, no leading or trailing `/`.
/// The restricted alphabet means a key maps to the same name on every backend without escaping,
/// and never collides with the `name#<digits>` files the local backend stages uploads in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutputKey(String);

impl OutputKey {
    /// Checks `raw` against the key grammar.
    pub fn parse(raw: &str) -> Result<Self, OutputError> {
        let refuse = |reason: &str| {
            let shown: String = raw.chars().take(120).collect();
            Err(OutputError::InvalidKey(format!("{shown:?}: {reason}")))
        };
        if raw.is_empty() {
            return refuse("the key is empty");
        }
        if raw.len() > MAX_KEY_LEN {
            return refuse("the key is longer than 900 bytes");
        }
        if raw.starts_with('/') {
            return refuse("the key must be relative (no leading '/')");
        }
        for segment in raw.split('/') {
            if segment.is_empty() {
                return refuse("the key has an empty segment");
            }
            if segment == "." || segment == ".." {
                return refuse("'.' and '..' segments are not allowed");
            }
            if segment.len() > MAX_SEGMENT_LEN {
                return refuse("a segment is longer than 200 bytes");
            }
            if !segment.bytes().all(is_key_byte) {
                return refuse("segments may contain only A-Z, a-z, 0-9, '.', '_' and '-'");
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key below `self` named by `child` (one or more segments), e.g. a file inside a job's
    /// directory.
    pub fn join(&self, child: &str) -> Result<Self, OutputError> {
        Self::parse(&format!("{}/{child}", self.0))
    }

    /// The key as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's segments, in order.
    pub(crate) fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

impl fmt::Display for OutputKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for OutputKey {
    type Err = OutputError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl AsRef<str> for OutputKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
