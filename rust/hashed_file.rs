//! A buffered file writer that computes the sha256 of everything written, on a second thread.
//!
//! Hashing inline costs about as much as the write itself (sha256 runs at ~1.7 GB/s even with
//! SHA-NI), so full chunks are handed to a hasher thread after they are written: the next chunk
//! is filled and written while the previous one is hashed. Chunks come back for reuse, so memory
//! stays at a few chunks. Every byte is hashed exactly once, as written; nothing is re-read.
use std::fs::File;
use std::io::{self, Write};
use std::mem;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};

use sha2::{Digest, Sha256};

const CHUNK: usize = 4 << 20;
/// Each chunk goes to the kernel in `write` calls of this size, not in one call. Measured on
/// Linux 6.18 (ext4 on a virtio disk, 12k x 61 kB samples, `fastwds bench write`, 8 interleaved
/// fresh-process rounds): 32 KiB writes took 0.48-0.75 s, 64 KiB 0.47-1.97 s, 256 KiB-4 MiB
/// writes 0.6-2.3 s, with the writing thread busy in the kernel, not waiting for the disk. The
/// kernel sizes page-cache folios by the write's length; up to 32 KiB they stay at or below
/// order 3 (PAGE_ALLOC_COSTLY_ORDER), the allocations the kernel keeps cheap. ~30,000 system
/// calls per GB cost far less than the sha256 of that GB.
const WRITE_PIECE: usize = 32 << 10;
/// Chunks waiting for the hasher before the writer waits for it (back-pressure).
const HASH_QUEUE: usize = 3;

pub struct HashedFile {
    file: File,
    /// Start disk writeback of every chunk as it is written (see `start_writeback`).
    write_through: bool,
    written: u64,
    buffer: Vec<u8>,
    to_hasher: SyncSender<Vec<u8>>,
    // Mutex only to make the writer Sync (Python objects must be); it is never contended.
    recycled: Mutex<Receiver<Vec<u8>>>,
    hasher: JoinHandle<[u8; 32]>,
}

impl HashedFile {
    /// `write_through`: the file will be fsynced when finished, so start writing each chunk to
    /// disk right away instead of leaving it all for the final fsync.
    pub fn new(file: File, write_through: bool) -> io::Result<Self> {
        let (to_hasher, chunks) = sync_channel::<Vec<u8>>(HASH_QUEUE);
        let (give_back, recycled) = sync_channel::<Vec<u8>>(HASH_QUEUE + 1);
        let hasher = thread::Builder::new().name("fastwds-sha256".into()).spawn(move || {
            let mut sha = Sha256::new();
            for mut chunk in chunks {
                sha.update(&chunk);
                chunk.clear();
                let _ = give_back.try_send(chunk); // the writer may be gone; then it's dropped
            }
            sha.finalize().into()
        })?;
        Ok(Self {
            file,
            write_through,
            written: 0,
            buffer: Vec::with_capacity(CHUNK),
            to_hasher,
            recycled: Mutex::new(recycled),
            hasher,
        })
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        for piece in self.buffer.chunks(WRITE_PIECE) {
            self.file.write_all(piece)?;
        }
        if self.write_through {
            start_writeback(&self.file, self.written, self.buffer.len() as u64);
        }
        self.written += self.buffer.len() as u64;
        let reused = self.recycled.get_mut().ok().and_then(|r| r.try_recv().ok());
        let next = reused.unwrap_or_else(|| Vec::with_capacity(CHUNK));
        let full = mem::replace(&mut self.buffer, next);
        self.to_hasher.send(full).map_err(|_| io::Error::other("the sha256 thread stopped"))
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = CHUNK - self.buffer.len();
            let (now, later) = data.split_at(room.min(data.len()));
            self.buffer.extend_from_slice(now);
            data = later;
            if self.buffer.len() == CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    /// Write what is buffered and return the file with the sha256 of all bytes written.
    pub fn finish(mut self) -> io::Result<(File, [u8; 32])> {
        self.flush_chunk()?;
        let Self { file, to_hasher, hasher, .. } = self;
        drop(to_hasher); // ends the hasher's loop
        let digest = hasher.join().map_err(|_| io::Error::other("the sha256 thread panicked"))?;
        Ok((file, digest))
    }
}

/// Ask the kernel to start writing a just-written range to disk, without waiting for it. The
/// final fsync then waits only for what is still in flight, so disk time overlaps the work on the
/// next chunks instead of following all of it (what RocksDB's `bytes_per_sync` does).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor this File owns. Failure only loses the head start
    // (the fsync still makes the data durable), so its result is ignored.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn hash_and_bytes_match_for_any_write_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut out = HashedFile::new(File::create(&path).unwrap(), true).unwrap();
        let mut expected = Vec::new();
        // Sizes around and across the chunk boundary, including one larger than a chunk.
        for (i, size) in [0, 1, 511, CHUNK - 600, 1000, CHUNK, 3 * CHUNK + 7, 12].into_iter().enumerate() {
            let data = vec![i as u8; size];
            out.write_all(&data).unwrap();
            expected.extend_from_slice(&data);
        }
        let (file, digest) = out.finish().unwrap();
        drop(file);
        assert_eq!(fs::read(&path).unwrap(), expected);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&expected)));
    }
}
