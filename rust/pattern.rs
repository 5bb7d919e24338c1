//! Shard names from a pattern.
use std::path::PathBuf;

use crate::error::{Error, Result};

/// How shards are named.
/// - `dir/name-%06d.tar`: numbered shards (one printf-style `%d` or `%0Nd`).
/// - `dir/name.tar` (no `%`): one shard; should the byte cap force more, they are named
///   `name-1.tar`, `name-2.tar`, ... A converter task names its shard this way, so tasks need not
///   know how many shards the others write.
#[derive(Clone, Debug)]
pub enum ShardPattern {
    Numbered { prefix: String, width: usize, suffix: String },
    Single { stem: String },
}

impl ShardPattern {
    pub fn parse(pattern: &str) -> Result<Self> {
        let bad = |reason: &str| Err(Error::InvalidPattern { pattern: pattern.to_string(), reason: reason.to_string() });
        let Some(stem) = pattern.strip_suffix(".tar") else {
            return bad("shards are uncompressed tar files; the pattern must end in .tar");
        };
        let Some(start) = pattern.find('%') else {
            if stem.is_empty() || stem.ends_with('/') {
                return bad("needs a file name before .tar");
            }
            return Ok(Self::Single { stem: stem.to_string() });
        };
        let rest = &pattern[start + 1..];
        let Some(d) = rest.find('d') else { return bad("use %d (or %06d) for the shard number") };
        let spec = &rest[..d];
        // `%6d` would pad with spaces, which break DALI's index loading: only zero padding.
        if !spec.bytes().all(|b| b.is_ascii_digit()) || (!spec.is_empty() && !spec.starts_with('0')) {
            return bad("only %d and %0Nd are supported");
        }
        let suffix = &rest[d + 1..];
        if suffix.contains('%') {
            return bad("only one % field is supported");
        }
        let width = if spec.is_empty() { 0 } else { spec.parse().unwrap_or(0) };
        Ok(Self::Numbered { prefix: pattern[..start].to_string(), width, suffix: suffix.to_string() })
    }

    /// Path of the `n`-th shard this writer writes (counting from `start_index`).
    pub fn path(&self, index: u64) -> PathBuf {
        PathBuf::from(match self {
            Self::Numbered { prefix, width, suffix } => format!("{prefix}{index:0width$}{suffix}"),
            Self::Single { stem } if index == 0 => format!("{stem}.tar"),
            Self::Single { stem } => format!("{stem}-{index}.tar"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_parsing() {
        assert_eq!(ShardPattern::parse("a/s-%06d.tar").unwrap().path(7), PathBuf::from("a/s-000007.tar"));
        assert_eq!(ShardPattern::parse("s%d.tar").unwrap().path(12), PathBuf::from("s12.tar"));
        let single = ShardPattern::parse("a/task-000003.tar").unwrap();
        assert_eq!(single.path(0), PathBuf::from("a/task-000003.tar"));
        assert_eq!(single.path(2), PathBuf::from("a/task-000003-2.tar"));
        for bad in ["s-%06d.tar.gz", "s-%s.tar", "%d-%d.tar", "s-%6d.tar", "a/.tar", ".tar"] {
            assert!(ShardPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
