//! Turning a sealed shard into a finished one: fsync, sidecar indexes, its final name, fsync of
//! the directory. A file with a shard's final name is always a complete archive.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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

/// Open the `.partial` file a shard is written into, and hold it exclusively: an `flock` of its
/// own open file, kept until the shard has its final name (or the `.partial` is removed). A
/// second writer of the same shard is refused (`Error::ShardBusy`) instead of writing into, and
/// renaming, the same file. The kernel drops the lock of a process that dies, so the `.partial`
/// of a killed writer is simply taken over (and truncated). On file systems without `flock` the
/// file is used unlocked, as before.
pub fn claim_partial(partial: &Path, shard: &Path) -> Result<File> {
    let busy = || Error::ShardBusy { path: shard.to_path_buf(), partial: partial.to_path_buf() };
    let io_err = |e| Error::io(partial, e);
    // Retried only when the name changed hands while we waited for nothing (see below).
    for _ in 0..64 {
        // Not truncated on open: the file may be a live writer's, which we must not touch.
        let file = OpenOptions::new().write(true).create(true).truncate(false).open(partial).map_err(io_err)?;
        if !lock_exclusive(&file).map_err(io_err)? {
            return Err(busy());
        }
        // Locked; but is `partial` still the file we opened? A writer finishing it may have given
        // it its final name between our open and our lock (then it is a finished shard now).
        match same_file(&file, partial).map_err(io_err)? {
            Claim::Ours => {
                file.set_len(0).map_err(io_err)?;
                return Ok(file);
            }
            Claim::Moved => continue,
            // A second name of a finished shard: its writer was killed between publishing it by
            // a hard link and removing the `.partial` name. Drop that name, never the shard.
            Claim::Linked => {
                match fs::remove_file(partial) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(e)),
                }
                continue;
            }
        }
    }
    Err(busy())
}

enum Claim {
    Ours,
    Moved,
    Linked,
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> io::Result<Claim> {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
            Ok(if ours.nlink() > 1 { Claim::Linked } else { Claim::Ours })
        }
        Ok(_) => Ok(Claim::Moved),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Claim::Moved),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, _path: &Path) -> io::Result<Claim> {
    Ok(Claim::Ours)
}

/// `flock(LOCK_EX | LOCK_NB)`: true if taken, false if another open file holds it.
#[cfg(unix)]
fn lock_exclusive(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a file descriptor we own, for the lifetime of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(code) if code == libc::EWOULDBLOCK || code == libc::EAGAIN => return Ok(false),
            // No flock on this file system (some network and FUSE ones): unlocked, as before.
            Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => return Ok(true),
            _ => return Err(error),
        }
    }
}

#[cfg(not(unix))]
fn lock_exclusive(_file: &File) -> io::Result<bool> {
    Ok(true)
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
/// written for a shard that then cannot take its name are removed again, as is the `.partial`.
/// `file` (and so the `.partial`'s lock, see `claim_partial`) stays open until the shard has its
/// name or its `.partial` is removed: no other writer can take the file over in between.
pub fn finalize(file: File, record: ShardRecord, partial: &Path, options: &Options) -> Result<ShardRecord> {
    if let Err(e) = publish_locked(&file, &record, partial, options) {
        let _ = fs::remove_file(partial);
        return Err(e);
    }
    drop(file);
    if options.fsync {
        sync_parent_dir(&record.path)?;
    }
    Ok(record)
}

fn publish_locked(file: &File, record: &ShardRecord, partial: &Path, options: &Options) -> Result<()> {
    if options.fsync {
        file.sync_all().map_err(|e| Error::io(partial, e))?;
    }
    if !options.overwrite && record.path.exists() {
        return Err(Error::ShardExists { path: record.path.clone() });
    }
    let mut sidecars = Vec::new();
    let published = write_sidecars(record, options, &mut sidecars).and_then(|()| publish(partial, &record.path, options));
    if let Err(e) = published {
        for path in &sidecars {
            let _ = fs::remove_file(path);
        }
        return Err(e);
    }
    Ok(())
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
