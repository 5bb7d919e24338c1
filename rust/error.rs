//! The one error type of the core. Bindings map it onto Python exceptions (see bindings.rs).
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error, always with the path it happened on.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },

    /// A finished shard is already there and overwriting was not asked for.
    #[error("{path}: a finished shard already exists (pass overwrite=True to replace it)")]
    ShardExists { path: PathBuf },

    /// Another live writer holds the shard's `.partial` file (its lock): two writers share a
    /// pattern. Nothing of this writer was written into that shard.
    #[error("another writer is writing {path} (a live process holds the lock of its .partial file); give each writer a pattern (or start_shard) of its own")]
    ShardBusy { path: PathBuf, partial: PathBuf },

    #[error("invalid shard pattern {pattern:?}: {reason}")]
    InvalidPattern { pattern: String, reason: String },

    #[error("sample {id:?}: invalid extension {ext:?}: {reason}")]
    InvalidExtension { id: String, ext: String, reason: &'static str },

    #[error("sample {id:?}: extension {ext:?} appears twice (webdataset and HF datasets reject that, Energon keeps only one)")]
    DuplicateExtension { id: String, ext: String },

    #[error("sample {id:?}: has no members")]
    EmptySample { id: String },

    #[error("sample {id:?}: key {key:?} was already written by sample {previous:?}; keys must be unique in a dataset")]
    DuplicateKey { id: String, key: String, previous: String },

    #[error("sample {id:?}: member {name:?} is {size} bytes; a ustar member holds at most 8 GiB - 1")]
    MemberTooLarge { id: String, name: String, size: u64 },

    #[error("member name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("the shard writer is closed")]
    Closed,

    #[error("the shard writer failed earlier and takes no more samples ({reason}); its unfinished shard was removed")]
    Failed { reason: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// The sample id an error is about, for Python's `SampleError.sample_id`.
    pub fn sample_id(&self) -> Option<&str> {
        match self {
            Error::InvalidExtension { id, .. }
            | Error::DuplicateExtension { id, .. }
            | Error::EmptySample { id }
            | Error::DuplicateKey { id, .. }
            | Error::MemberTooLarge { id, .. } => Some(id),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
