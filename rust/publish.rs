//! Turning a sealed shard into a finished one: fsync, sidecar indexes, its final name, fsync of
//! the directory. A file with a shard's final name is always a complete archive.
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::index;
use crate::shard::{Options, ShardRecord};

pub const PARTIAL_SUFFIX: &str = ".partial";

pub fn partial_path_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

pub fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Write `bytes` to `path` through a `.partial` file and a rename.
pub fn write_file_atomically(path: &Path, bytes: &[u8], fsync: bool) -> Result<()> {
    let partial = partial_path_of(path);
    let mut f = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&partial, e))?;
    if fsync {
        f.sync_all().map_err(|e| Error::io(&partial, e))?;
    }
    fs::rename(&partial, path).map_err(|e| Error::io(path, e))
}

/// Make a sealed shard durable and give it its final name: fsync, sidecar indexes, rename,
/// fsync of the directory. Needs nothing but its arguments, so it can run on another thread.
/// Nothing is written beside a shard that is already there (unless `overwrite`), and sidecars
/// written for a shard that then cannot take its name are removed again.
pub fn finalize(file: File, record: ShardRecord, partial: &Path, options: &Options) -> Result<ShardRecord> {
    if options.fsync {
        file.sync_all().map_err(|e| Error::io(partial, e))?;
    }
    drop(file);
    if !options.overwrite && record.path.exists() {
        return Err(Error::ShardExists { path: record.path });
    }
    let mut sidecars = Vec::new();
    let published = write_sidecars(&record, options, &mut sidecars).and_then(|()| publish(partial, &record.path, options));
    if let Err(e) = published {
        for path in &sidecars {
            let _ = fs::remove_file(path);
        }
        return Err(e);
    }
    if options.fsync {
        sync_parent_dir(&record.path)?;
    }
    Ok(record)
}

fn write_sidecars(record: &ShardRecord, options: &Options, written: &mut Vec<PathBuf>) -> Result<()> {
    if options.energon_index {
        let path = index::energon_index_path(&record.path);
        write_file_atomically(&path, &index::energon_tar_idx(record), options.fsync)?;
        written.push(path);
    }
    if options.dali_index {
        let path = index::dali_index_path(&record.path);
        write_file_atomically(&path, index::dali_idx(record).as_bytes(), options.fsync)?;
        written.push(path);
    }
    Ok(())
}

/// Give the complete file its final name. Without `overwrite` a hard link makes the name only if
/// it is free, atomically (a shard that appeared meanwhile is never replaced); file systems
/// without hard links fall back to a rename after the existence check above.
fn publish(partial: &Path, target: &Path, options: &Options) -> Result<()> {
    if !options.overwrite {
        match fs::hard_link(partial, target) {
            Ok(()) => return fs::remove_file(partial).map_err(|e| Error::io(partial, e)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::ShardExists { path: target.to_path_buf() })
            }
            Err(_) => {} // no hard links here (some network and FUSE file systems): rename
        }
    }
    fs::rename(partial, target).map_err(|e| Error::io(target, e))
}
