//! Reading media files for `convert sft`: many at once with the GIL released once per group, where
//! Python paid four system calls and as many GIL hand-offs per file (open, fstat, read, close).
//! Only regular files are read: a FIFO would block forever and a device like /dev/zero never ends,
//! so files are opened non-blocking and checked with fstat before any read.
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What reading one media file gave.
#[derive(Debug, PartialEq)]
pub enum FileRead {
    Data(Vec<u8>),
    Missing,
    /// The errno of the failed open, fstat or read.
    Unreadable(i32),
    /// Not a regular file: "a folder", "a FIFO", "a device" or "a socket".
    NotRegular(&'static str),
    /// Larger than the limit: its size, or None when it grew past the limit while being read.
    TooLarge(Option<u64>),
}

fn errno(error: &io::Error) -> i32 {
    error.raw_os_error().unwrap_or(libc::EIO)
}

/// Open `path` for reading if it is a regular file of at most `max_bytes`: the file and its size.
pub fn open_regular(path: &Path, max_bytes: u64) -> Result<(File, u64), FileRead> {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(FileRead::Missing),
        Err(error) => return Err(FileRead::Unreadable(errno(&error))),
    };
    let metadata = file.metadata().map_err(|error| FileRead::Unreadable(errno(&error)))?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        return Err(FileRead::NotRegular(if kind.is_dir() {
            "a folder"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "a socket"
        }));
    }
    let size = metadata.len();
    if size > max_bytes {
        return Err(FileRead::TooLarge(Some(size)));
    }
    Ok((file, size))
}

/// How filling a buffer of the file's size went.
#[derive(Debug, PartialEq)]
pub enum Fill {
    Exact,
    /// The file changed size while being read: read it again with `read_regular_file`.
    Changed,
}

/// Read exactly `out.len()` bytes (the size fstat gave) into `out`, and check nothing follows.
pub fn fill(file: &mut File, out: &mut [u8]) -> Result<Fill, i32> {
    match file.read_exact(out) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(Fill::Changed),
        Err(error) => return Err(errno(&error)),
    }
    let mut probe = Vec::new();
    read_up_to(file, &mut probe, 1).map_err(|error| errno(&error))?;
    Ok(if probe.is_empty() { Fill::Exact } else { Fill::Changed })
}

/// The bytes of the regular file at `path`, at most `max_bytes` of them, in a new buffer (the
/// bindings read into Python's own buffer with `open_regular` + `fill`, and use this when the
/// file changed size meanwhile).
pub fn read_regular_file(path: &Path, max_bytes: u64) -> FileRead {
    let (mut file, size) = match open_regular(path, max_bytes) {
        Ok(opened) => opened,
        Err(outcome) => return outcome,
    };
    // Its size and one byte more, to see it grow; then up to one byte past the limit.
    let mut data = Vec::with_capacity(size as usize + 1);
    if let Err(error) = read_up_to(&mut file, &mut data, size + 1) {
        return FileRead::Unreadable(errno(&error));
    }
    if data.len() as u64 > size {
        if let Err(error) = read_up_to(&mut file, &mut data, max_bytes + 1) {
            return FileRead::Unreadable(errno(&error));
        }
        if data.len() as u64 > max_bytes {
            return FileRead::TooLarge(None);
        }
    }
    FileRead::Data(data)
}

fn read_up_to(file: &mut File, data: &mut Vec<u8>, limit: u64) -> io::Result<()> {
    let wanted = limit.saturating_sub(data.len() as u64);
    file.take(wanted).read_to_end(data).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jpg");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_regular_file(&path, 10), FileRead::Data(b"0123456789".to_vec()));
        assert_eq!(read_regular_file(&path, 9), FileRead::TooLarge(Some(10)));
        assert_eq!(read_regular_file(&dir.path().join("none"), 10), FileRead::Missing);
        assert_eq!(read_regular_file(dir.path(), 10), FileRead::NotRegular("a folder"));
        assert_eq!(read_regular_file(Path::new("/dev/zero"), 10), FileRead::NotRegular("a device"));
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert_eq!(read_regular_file(&fifo, 10), FileRead::NotRegular("a FIFO")); // without blocking
        assert_eq!(read_regular_file(&dir.path().join("a.jpg/x"), 10), FileRead::Unreadable(libc::ENOTDIR));
    }

    #[test]
    fn fill_sees_a_file_that_changed_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"abcdef").unwrap();
        let (mut file, size) = open_regular(&path, 100).unwrap();
        let mut out = vec![0u8; size as usize];
        assert_eq!(fill(&mut file, &mut out), Ok(Fill::Exact));
        assert_eq!(out, b"abcdef");
        let (mut file, _) = open_regular(&path, 100).unwrap();
        std::fs::write(&path, b"abcdefgh").unwrap(); // grew after fstat
        assert_eq!(fill(&mut file, &mut out), Ok(Fill::Changed));
        let (mut file, _) = open_regular(&path, 100).unwrap();
        std::fs::write(&path, b"abc").unwrap(); // shrank after fstat
        assert_eq!(fill(&mut file, &mut out), Ok(Fill::Changed));
    }
}
