//! Shard rotation and crash-safe shard files.
//!
//! A shard is written to `<name>.partial`, hashed while it is written, fsynced, and only then
//! renamed to its final name, so a file with the final name is always a complete archive. Its
//! sidecar indexes are renamed into place before the shard itself: a finished shard never lacks
//! the indexes that were asked for.
//!
//! When a shard fills up, its fsync and rename run on a thread of their own while the next shard
//! is written (one at a time), so the writer does not stop for the disk between shards; errors
//! from that thread surface at the next write, `finish_shard` or `close`.
use std::collections::HashMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use crate::error::{Error, Result};
use crate::hashed_file::HashedFile;
use crate::key::{normalize_extension, portable_key};
pub use crate::pattern::ShardPattern;
use crate::publish::{claim_partial, finalize, partial_path_of};
pub use crate::publish::PARTIAL_SUFFIX;
use crate::tar::{self, BLOCK, END_OF_ARCHIVE, MAX_MEMBER_SIZE};

const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];

#[derive(Clone, Debug)]
pub struct Options {
    /// Most samples in one shard.
    pub maxcount: u64,
    /// Most bytes in one shard file, end-of-archive blocks included. A sample larger than this
    /// on its own still gets written, alone in its shard (`ShardRecord::oversized`).
    pub maxsize: u64,
    /// The mtime stored in every header: fixed so reruns give identical bytes.
    pub mtime: u64,
    /// fsync the shard and its directory before and after the rename (durability after a
    /// power loss; turning it off only trades that for speed).
    pub fsync: bool,
    /// Replace finished shards that are already there instead of refusing.
    pub overwrite: bool,
    /// Number of the first shard.
    pub start_index: u64,
    /// Write Energon's `X.tar.idx` beside every shard.
    pub energon_index: bool,
    /// Write DALI's `X.idx` (wds2idx v1.2) beside every shard.
    pub dali_index: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            maxcount: 100_000,
            maxsize: 3_000_000_000,
            mtime: 0,
            fsync: true,
            overwrite: false,
            start_index: 0,
            energon_index: false,
            dali_index: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub ext: String,
    /// Offset of the member's data (just after its header block).
    pub data_offset: u64,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleRecord {
    pub key: String,
    /// Offset of the sample's first header block.
    pub offset: u64,
    pub members: Vec<MemberRecord>,
}

#[derive(Clone, Debug)]
pub struct ShardRecord {
    pub index: u64,
    pub path: PathBuf,
    pub samples: Vec<SampleRecord>,
    /// End of the last member's padded data: where the end-of-archive blocks start.
    pub data_end: u64,
    /// Size of the finished file.
    pub size: u64,
    pub sha256: [u8; 32],
    /// Holds one sample that alone is larger than `maxsize`.
    pub oversized: bool,
}

impl ShardRecord {
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Offset just past sample `i` (the next sample's first header, or `data_end`).
    pub fn sample_end(&self, i: usize) -> u64 {
        self.samples.get(i + 1).map_or(self.data_end, |s| s.offset)
    }
}

struct OpenShard {
    index: u64,
    final_path: PathBuf,
    partial_path: PathBuf,
    out: HashedFile,
    position: u64,
    samples: Vec<SampleRecord>,
    oversized: bool,
    /// A second descriptor of the `.partial` file: its lock (`publish::claim_partial`) holds
    /// until this goes, whatever happens to `out`. The `.partial` is always removed before.
    lock: File,
}

/// A sample checked and laid out by `ShardSink::prepare`, ready to be appended.
struct Prepared<'a> {
    key: String,
    parts: Vec<(String, &'a [u8])>,
    headers: Vec<[u8; 512]>,
    span: u64,
}

/// A member as the caller hands it over: extension and payload.
pub struct Member<'a> {
    pub ext: &'a str,
    pub data: &'a [u8],
}

/// Writes samples into a sequence of shards named by a pattern.
pub struct ShardSink {
    pattern: ShardPattern,
    options: Options,
    next_index: u64,
    open: Option<OpenShard>,
    finished: Vec<ShardRecord>,
    /// The full shard being fsynced and renamed in the background, if any.
    finishing: Option<JoinHandle<Result<ShardRecord>>>,
    /// key -> the id it came from, when they differ (to name both ids in a collision report).
    seen_keys: HashMap<String, Option<String>>,
    state: State,
}

/// Where a sink is in its life. Only `Open` takes samples; a failed sink remembers why, so a
/// later `close` reports the failure instead of returning the shards finished before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Open,
    /// Closed by `close` or `abort`: the finished shards are complete.
    Closed,
    /// A write or a shard's finishing failed: the unfinished shard was dropped.
    Failed(String),
}

/// `s3` for `s3://bucket/...`: a URL, not a path (a local folder named `s3:` is never meant).
fn url_scheme(pattern: &str) -> Option<&str> {
    let (scheme, _) = pattern.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// Write the end-of-archive blocks and collect the shard's hash: every byte is written. On
/// failure the `.partial` is removed (while still locked: no other writer's file is removed).
fn seal(open: OpenShard) -> Result<(File, ShardRecord)> {
    let OpenShard { index, final_path, partial_path, mut out, position, samples, oversized, lock } = open;
    let sealed = match out.write_all(&END_OF_ARCHIVE) {
        Ok(()) => out.finish(),
        Err(e) => Err(e),
    };
    let (file, sha256) = match sealed {
        Ok(sealed) => sealed,
        Err(e) => {
            let _ = fs::remove_file(&partial_path);
            drop(lock);
            return Err(Error::io(&partial_path, e));
        }
    };
    drop(lock); // `file` is the same open file: it holds the lock from here
    let record = ShardRecord {
        index,
        path: final_path,
        data_end: position,
        size: position + END_OF_ARCHIVE.len() as u64,
        sha256,
        samples,
        oversized,
    };
    Ok((file, record))
}

impl ShardSink {
    pub fn new(pattern: &str, options: Options) -> Result<Self> {
        if let Some(scheme) = url_scheme(pattern) {
            return Err(Error::InvalidPattern {
                pattern: pattern.to_string(),
                reason: format!(
                    "{scheme}:// is not a local path, and the shard writer writes local files only (it would make a \
                     folder named {scheme:?}); write to a local folder and upload the finished shards \
                     (`fastwds convert` writes s3:// itself)"
                ),
            });
        }
        let pattern = ShardPattern::parse(pattern)?;
        if options.maxcount == 0 {
            return Err(Error::InvalidPattern { pattern: pattern.path(0).display().to_string(), reason: "maxcount must be at least 1".into() });
        }
        Ok(Self {
            next_index: options.start_index,
            pattern,
            options,
            open: None,
            finished: Vec::new(),
            finishing: None,
            seen_keys: HashMap::new(),
            state: State::Open,
        })
    }

    pub fn finished(&self) -> &[ShardRecord] {
        &self.finished
    }

    /// Samples in the shard being written.
    pub fn open_samples(&self) -> usize {
        self.open.as_ref().map_or(0, |s| s.samples.len())
    }

    /// Write one sample with id `id`; members are written sorted by extension.
    /// Returns the key the sample was written under.
    pub fn write_sample(&mut self, id: &str, members: &[Member]) -> Result<String> {
        self.check_open()?;
        // Everything about the sample is checked before any byte of it is written.
        let prepared = self.prepare(id, members)?;
        self.write_prepared(id, prepared)
    }

    /// Write these samples, all or none: every one is checked (members, extensions, sizes, keys,
    /// keys repeated within the batch) before the first is written, so a bad sample anywhere
    /// leaves the batch unwritten. An I/O error part-way fails the sink, as for `write_sample`.
    pub fn write_samples(&mut self, samples: &[(&str, Vec<Member>)]) -> Result<usize> {
        self.check_open()?;
        let mut batch: HashMap<String, &str> = HashMap::with_capacity(samples.len());
        let mut prepared = Vec::with_capacity(samples.len());
        for (id, members) in samples {
            let sample = self.prepare(id, members)?;
            if let Some(previous) = batch.insert(sample.key.clone(), id) {
                return Err(Error::DuplicateKey { id: id.to_string(), key: sample.key, previous: previous.to_string() });
            }
            prepared.push((*id, sample));
        }
        // Laid out once: the checks above built every header, which are the ones written.
        for (id, sample) in prepared {
            self.write_prepared(id, sample)?;
        }
        Ok(samples.len())
    }

    /// Check a sample and lay out its members (sorted, with their headers), writing nothing.
    fn prepare<'a>(&self, id: &str, members: &[Member<'a>]) -> Result<Prepared<'a>> {
        if members.is_empty() {
            return Err(Error::EmptySample { id: id.to_string() });
        }
        let key = portable_key(id);
        if let Some(previous) = self.seen_keys.get(&key) {
            let previous = previous.clone().unwrap_or_else(|| key.clone());
            return Err(Error::DuplicateKey { id: id.to_string(), key, previous });
        }
        let mut parts: Vec<(String, &'a [u8])> = Vec::with_capacity(members.len());
        for m in members {
            parts.push((normalize_extension(id, m.ext)?, m.data));
        }
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = parts.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::DuplicateExtension { id: id.to_string(), ext: w[0].0.clone() });
        }
        let mut headers = Vec::with_capacity(parts.len());
        let mut span = 0u64;
        for (ext, data) in &parts {
            let name = format!("{key}.{ext}");
            let size = data.len() as u64;
            if size > MAX_MEMBER_SIZE {
                return Err(Error::MemberTooLarge { id: id.to_string(), name, size });
            }
            headers.push(tar::header(&name, size, self.options.mtime)?);
            span += tar::member_span(size);
        }
        Ok(Prepared { key, parts, headers, span })
    }

    fn write_prepared(&mut self, id: &str, prepared: Prepared) -> Result<String> {
        if self.finishing.as_ref().is_some_and(|f| f.is_finished()) {
            self.collect_finishing()?; // a shard finished in the background: its error surfaces here
        }
        let Prepared { key, parts, headers, span } = prepared;
        let end_blocks = END_OF_ARCHIVE.len() as u64;
        if let Some(open) = &self.open {
            if open.position + span + end_blocks > self.options.maxsize {
                self.rotate()?;
            }
        }
        if self.open.is_none() {
            self.open_shard().map_err(|e| self.fail(e))?;
        }
        let result = self.append(&key, &parts, &headers, span + end_blocks > self.options.maxsize);
        if let Err(e) = result {
            // The open shard is in an unknown state: drop it, and refuse further writes.
            return Err(self.fail(e));
        }
        self.seen_keys.insert(key.clone(), (key != id).then(|| id.to_string()));
        // A full shard starts finishing at once rather than when the next sample comes: a
        // pause between samples must not hold back a shard that is already complete.
        if self.open_samples() as u64 >= self.options.maxcount {
            self.rotate()?;
        }
        Ok(key)
    }

    fn append(&mut self, key: &str, parts: &[(String, &[u8])], headers: &[[u8; 512]], oversized: bool) -> Result<()> {
        let open = self.open.as_mut().expect("a shard is open");
        let io_err = |e| Error::io(&open.partial_path, e);
        let offset = open.position;
        let mut members = Vec::with_capacity(parts.len());
        for ((ext, data), header) in parts.iter().zip(headers) {
            let size = data.len() as u64;
            let pad = tar::padding(size) as usize;
            open.out.write_all(header).map_err(io_err)?;
            open.out.write_all(data).map_err(io_err)?;
            open.out.write_all(&ZEROS[..pad]).map_err(io_err)?;
            members.push(MemberRecord { ext: ext.clone(), data_offset: open.position + BLOCK, size });
            open.position += tar::member_span(size);
        }
        open.samples.push(SampleRecord { key: key.to_string(), offset, members });
        open.oversized |= oversized;
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let index = self.next_index;
        let final_path = self.pattern.path(index);
        if !self.options.overwrite && final_path.exists() {
            return Err(Error::ShardExists { path: final_path });
        }
        if let Some(dir) = final_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let partial_path = partial_path_of(&final_path);
        // A `.partial` left by a crashed run is ours to replace; one a live writer holds is not.
        let file = claim_partial(&partial_path, &final_path)?;
        let made = file.try_clone().and_then(|lock| Ok((lock, HashedFile::new(file, self.options.fsync)?)));
        let (lock, out) = match made {
            Ok(made) => made,
            Err(e) => {
                let _ = fs::remove_file(&partial_path);
                return Err(Error::io(&partial_path, e));
            }
        };
        self.open = Some(OpenShard { index, final_path, partial_path, out, position: 0, samples: Vec::new(), oversized: false, lock });
        self.next_index += 1;
        Ok(())
    }

    /// Complete the open shard (if any): end blocks, flush, fsync, sidecars, rename. Returns
    /// when it is done, and any shard finishing in the background with it.
    pub fn finish_shard(&mut self) -> Result<()> {
        self.collect_finishing()?;
        let Some(open) = self.open.take() else { return Ok(()) };
        let partial = open.partial_path.clone();
        // Both remove the `.partial` themselves if they fail.
        let result = seal(open).and_then(|(file, record)| finalize(file, record, &partial, &self.options));
        match result {
            Ok(record) => {
                self.finished.push(record);
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Record a failure: the open shard is dropped and the sink refuses everything but `abort`.
    /// A shard finishing in the background is waited for (it was complete; keep it if it made it).
    fn fail(&mut self, error: Error) -> Error {
        self.drop_open_shard();
        if let Some(handle) = self.finishing.take() {
            if let Ok(Ok(record)) = handle.join() {
                self.finished.push(record);
            }
        }
        self.state = State::Failed(error.to_string());
        error
    }

    fn drop_open_shard(&mut self) {
        if let Some(open) = self.open.take() {
            // Removed while still locked: the name cannot belong to another writer yet.
            let _ = fs::remove_file(&open.partial_path);
            drop(open);
        }
    }

    fn check_open(&self) -> Result<()> {
        match &self.state {
            State::Open => Ok(()),
            State::Closed => Err(Error::Closed),
            State::Failed(reason) => Err(Error::Failed { reason: reason.clone() }),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Finish a full shard: its last bytes are written here, its fsync and rename happen on a
    /// background thread while the next shard is written. Without fsync there is nothing to wait
    /// for, so it is finished at once.
    fn rotate(&mut self) -> Result<()> {
        if !self.options.fsync {
            return self.finish_shard();
        }
        self.collect_finishing()?; // one shard in the background at a time
        let Some(open) = self.open.take() else { return Ok(()) };
        let partial = open.partial_path.clone();
        let (file, record) = seal(open).map_err(|e| self.fail(e))?;
        // Holds the lock should the thread not start (its closure, and `file`, are dropped then).
        let keep = file.try_clone();
        let options = self.options.clone();
        let thread_partial = partial.clone();
        // finalize removes the `.partial` itself if it fails.
        let spawned = thread::Builder::new()
            .name("fastwds-finish".into())
            .spawn(move || finalize(file, record, &thread_partial, &options));
        match spawned {
            Ok(handle) => {
                self.finishing = Some(handle);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&partial);
                drop(keep);
                Err(self.fail(Error::io(&partial, e)))
            }
        }
    }

    /// Wait for the shard finishing in the background, if any, and record it. If it failed, the
    /// open shard is dropped too and the sink refuses further writes, as after any write error.
    fn collect_finishing(&mut self) -> Result<()> {
        let Some(handle) = self.finishing.take() else { return Ok(()) };
        let result = handle.join().unwrap_or_else(|_| {
            Err(Error::io(".", std::io::Error::other("the thread finishing a shard panicked")))
        });
        match result {
            Ok(record) => {
                self.finished.push(record);
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Finish the open shard and refuse further writes. Returns every finished shard; after a
    /// failure, the failure again (the shards finished before it are not the whole output).
    pub fn close(&mut self) -> Result<Vec<ShardRecord>> {
        match &self.state {
            State::Open => {
                self.finish_shard()?;
                self.state = State::Closed;
            }
            State::Closed => {}
            State::Failed(reason) => return Err(Error::Failed { reason: reason.clone() }),
        }
        Ok(std::mem::take(&mut self.finished))
    }

    /// Drop the open shard without finishing it (its `.partial` file is removed) and refuse
    /// further writes. Finished shards stay. A full shard still finishing in the background is
    /// waited for; if it could not be made durable, that error is returned (its samples are lost).
    pub fn abort(&mut self) -> Result<()> {
        self.drop_open_shard();
        if self.state == State::Open {
            self.state = State::Closed;
        }
        let Some(handle) = self.finishing.take() else { return Ok(()) };
        match handle.join() {
            Ok(Ok(record)) => {
                self.finished.push(record);
                Ok(())
            }
            Ok(Err(e)) => {
                self.state = State::Failed(e.to_string());
                Err(e)
            }
            Err(_) => {
                let e = Error::io(".", std::io::Error::other("the thread finishing a shard panicked"));
                self.state = State::Failed(e.to_string());
                Err(e)
            }
        }
    }
}

impl Drop for ShardSink {
    fn drop(&mut self) {
        // Never leave a half-written shard behind, whatever path dropped us. Nobody is left to
        // return an error to, but a shard that was lost must not go unmentioned.
        if let Err(e) = self.abort() {
            eprintln!("fastwds: a finished shard could not be made durable: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn opts(maxcount: u64, maxsize: u64) -> Options {
        Options { maxcount, maxsize, fsync: false, ..Options::default() }
    }

    fn write_n(sink: &mut ShardSink, n: usize, size: usize) {
        let data = vec![7u8; size];
        for i in 0..n {
            sink.write_sample(&format!("s{i:04}"), &[Member { ext: "bin", data: &data }]).unwrap();
        }
    }

    #[test]
    fn rotates_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), opts(3, u64::MAX)).unwrap();
        write_n(&mut sink, 7, 10);
        let shards = sink.close().unwrap();
        assert_eq!(shards.iter().map(|s| s.samples.len()).collect::<Vec<_>>(), vec![3, 3, 1]);
        for s in &shards {
            assert_eq!(fs::metadata(&s.path).unwrap().len(), s.size);
            assert!(!partial_path_of(&s.path).exists());
        }
    }

    #[test]
    fn rotates_by_bytes_and_isolates_oversized_samples() {
        let dir = tempfile::tempdir().unwrap();
        // One 1000-byte member spans 512 + 1024 bytes; 2 of them + end blocks = 4096.
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), opts(100, 4096)).unwrap();
        write_n(&mut sink, 3, 1000);
        let big = vec![1u8; 5000];
        sink.write_sample("big", &[Member { ext: "bin", data: &big }]).unwrap();
        write_n_from(&mut sink, 10, 1, 1000);
        let shards = sink.close().unwrap();
        let counts: Vec<_> = shards.iter().map(|s| s.samples.len()).collect();
        assert_eq!(counts, vec![2, 1, 1, 1]);
        assert!(shards[2].oversized && !shards[1].oversized);
        for s in shards.iter().filter(|s| !s.oversized) {
            assert!(s.size <= 4096);
        }
    }

    fn write_n_from(sink: &mut ShardSink, start: usize, n: usize, size: usize) {
        let data = vec![7u8; size];
        for i in start..start + n {
            sink.write_sample(&format!("s{i:04}"), &[Member { ext: "bin", data: &data }]).unwrap();
        }
    }

    #[test]
    fn never_writes_an_empty_shard() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), opts(2, u64::MAX)).unwrap();
        write_n(&mut sink, 2, 1);
        assert_eq!(sink.close().unwrap().len(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn shards_finished_in_the_background_match_inline_finishing() {
        // fsync on: full shards are fsynced and renamed on a background thread. The records,
        // their order and every byte must be what finishing inline (fsync off) gives.
        let mut outputs = Vec::new();
        for fsync in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let options = Options { maxcount: 3, fsync, energon_index: true, dali_index: true, ..Options::default() };
            let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), options).unwrap();
            write_n(&mut sink, 10, 700);
            let records = sink.close().unwrap();
            assert_eq!(records.iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
            let mut names: Vec<String> = fs::read_dir(dir.path()).unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            assert!(!names.iter().any(|n| n.ends_with(PARTIAL_SUFFIX)), "{names:?}");
            assert_eq!(names.len(), 12, "4 shards with 2 indexes each: {names:?}");
            let files: Vec<Vec<u8>> = names.iter().map(|n| fs::read(dir.path().join(n)).unwrap()).collect();
            for record in &records {
                assert_eq!(record.sha256, <[u8; 32]>::from(Sha256::digest(fs::read(&record.path).unwrap())));
            }
            outputs.push((names, files));
        }
        assert_eq!(outputs[0], outputs[1]);
    }

    #[test]
    fn abort_keeps_a_shard_finishing_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options { maxcount: 2, fsync: true, ..Options::default() };
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), options).unwrap();
        write_n(&mut sink, 3, 100); // shard 0 full (finishing in the background), shard 1 open
        sink.abort().unwrap();
        assert_eq!(sink.finished().len(), 1);
        assert!(dir.path().join("s-000.tar").exists());
        assert!(!dir.path().join("s-001.tar").exists());
        assert!(!dir.path().join("s-001.tar.partial").exists());
    }

    #[test]
    fn offsets_and_hash_match_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), opts(10, u64::MAX)).unwrap();
        sink.write_sample("a", &[Member { ext: "txt", data: b"hello" }, Member { ext: "JSON", data: b"{}" }]).unwrap();
        sink.write_sample("b.c", &[Member { ext: "txt", data: b"x" }]).unwrap();
        let shard = sink.close().unwrap().remove(0);
        let bytes = fs::read(&shard.path).unwrap();
        assert_eq!(shard.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));
        let a = &shard.samples[0];
        assert_eq!(a.members.iter().map(|m| m.ext.as_str()).collect::<Vec<_>>(), vec!["json", "txt"]);
        assert_eq!(&bytes[0..6], b"a.json");
        let txt = &a.members[1];
        assert_eq!(&bytes[txt.data_offset as usize..][..5], b"hello");
        assert_eq!(shard.samples[1].offset, 2048);
        assert!(shard.samples[1].key.ends_with(&portable_key("b.c")[1..]));
        assert_eq!(shard.data_end + 1024, bytes.len() as u64);
        assert!(bytes[shard.data_end as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn refuses_bad_samples_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), opts(10, u64::MAX)).unwrap();
        let dup = [Member { ext: "jpg", data: b"1" }, Member { ext: "JPG", data: b"2" }];
        assert!(matches!(sink.write_sample("a", &dup), Err(Error::DuplicateExtension { .. })));
        assert!(matches!(sink.write_sample("a", &[]), Err(Error::EmptySample { .. })));
        sink.write_sample("a", &[Member { ext: "txt", data: b"1" }]).unwrap();
        assert!(matches!(sink.write_sample("a", &[Member { ext: "txt", data: b"1" }]), Err(Error::DuplicateKey { .. })));
        assert_eq!(sink.close().unwrap()[0].samples.len(), 1);
        assert!(matches!(sink.write_sample("z", &[Member { ext: "txt", data: b"1" }]), Err(Error::Closed)));
    }

    #[test]
    fn refuses_to_replace_a_finished_shard_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("s-%03d.tar");
        let mut first = ShardSink::new(pattern.to_str().unwrap(), opts(10, u64::MAX)).unwrap();
        write_n(&mut first, 1, 1);
        first.close().unwrap();
        let mut second = ShardSink::new(pattern.to_str().unwrap(), opts(10, u64::MAX)).unwrap();
        let data = [Member { ext: "bin", data: b"1" }];
        assert!(matches!(second.write_sample("x", &data), Err(Error::ShardExists { .. })));
        let mut third = ShardSink::new(pattern.to_str().unwrap(), Options { overwrite: true, ..opts(10, u64::MAX) }).unwrap();
        third.write_sample("x", &data).unwrap();
        assert_eq!(third.close().unwrap().len(), 1);
    }

    #[test]
    fn a_second_writer_of_a_shard_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("s-%03d.tar");
        let mut first = ShardSink::new(pattern.to_str().unwrap(), opts(2, u64::MAX)).unwrap();
        write_n(&mut first, 1, 10);
        let mut second = ShardSink::new(pattern.to_str().unwrap(), Options { overwrite: true, ..opts(2, u64::MAX) }).unwrap();
        let refused = second.write_sample("x", &[Member { ext: "bin", data: b"theirs" }]);
        assert!(matches!(refused, Err(Error::ShardBusy { .. })), "{refused:?}");
        drop(second); // its failure must not remove the first writer's file
        write_n_from(&mut first, 1, 3, 10);
        let records = first.close().unwrap();
        assert_eq!(records.iter().map(|r| r.samples.len()).collect::<Vec<_>>(), vec![2, 2]);
        for r in &records {
            assert_eq!(r.sha256, <[u8; 32]>::from(Sha256::digest(fs::read(&r.path).unwrap())));
        }
    }

    #[test]
    fn a_stale_partial_is_taken_over_and_a_linked_one_never_truncates_its_shard() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("s-%03d.tar");
        // A killed writer's leftover, unlocked: taken over and truncated.
        fs::write(dir.path().join("s-000.tar.partial"), vec![9u8; 5000]).unwrap();
        let mut sink = ShardSink::new(pattern.to_str().unwrap(), opts(1, u64::MAX)).unwrap();
        write_n(&mut sink, 1, 10);
        let shard = sink.close().unwrap().remove(0);
        assert_eq!(fs::metadata(&shard.path).unwrap().len(), shard.size);
        // Killed between its hard link and removing the `.partial` name: that name is dropped.
        let finished = fs::read(&shard.path).unwrap();
        fs::hard_link(&shard.path, dir.path().join("s-000.tar.partial")).unwrap();
        let mut again = ShardSink::new(pattern.to_str().unwrap(), Options { overwrite: true, ..opts(2, u64::MAX) }).unwrap();
        again.write_sample("other", &[Member { ext: "bin", data: b"new" }]).unwrap();
        // The finished shard is intact while its replacement is being written.
        assert_eq!(fs::read(&shard.path).unwrap(), finished);
        again.close().unwrap();
        assert!(!dir.path().join("s-000.tar.partial").exists());
    }

    #[test]
    fn a_batch_with_a_bad_sample_writes_none_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), opts(2, u64::MAX)).unwrap();
        sink.write_sample("seen", &[Member { ext: "txt", data: b"0" }]).unwrap();
        let ok = || vec![Member { ext: "txt", data: b"1" }];
        for bad in [
            vec![("a", ok()), ("b", ok()), ("c", ok()), ("seen", ok())], // a key already written
            vec![("a", ok()), ("b", ok()), ("c", ok()), ("a", ok())],    // a key twice in the batch
            vec![("a", ok()), ("b", ok()), ("c", ok()), ("d", vec![])],  // an empty sample
        ] {
            assert!(sink.write_samples(&bad).is_err());
            assert_eq!(sink.open_samples() + sink.finished().iter().map(|r| r.samples.len()).sum::<usize>(), 1);
        }
        assert_eq!(sink.write_samples(&[("a", ok()), ("b", ok()), ("c", ok())]).unwrap(), 3);
        assert_eq!(sink.close().unwrap().iter().map(|r| r.samples.len()).collect::<Vec<_>>(), vec![2, 2]);
    }

    #[test]
    fn url_patterns_are_refused() {
        for url in ["s3://bucket/s-%03d.tar", "gs://b/s.tar", "http://host/s-%d.tar"] {
            assert!(matches!(ShardSink::new(url, Options::default()), Err(Error::InvalidPattern { .. })), "{url}");
        }
        assert!(url_scheme("out/a:b/s-%03d.tar").is_none());
    }

    #[test]
    fn abort_and_drop_leave_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), opts(10, u64::MAX)).unwrap();
            write_n(&mut sink, 3, 100);
            assert!(dir.path().join("s-000.tar.partial").exists());
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn close_after_a_failure_reports_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), opts(2, u64::MAX)).unwrap();
        write_n(&mut sink, 3, 10); // shard 0 finished, shard 1 open
        // The next shard's name is taken by a directory: opening it fails, and so must close.
        fs::create_dir(dir.path().join("s-002.tar.partial")).unwrap();
        write_n_from(&mut sink, 3, 1, 10);
        let failed = sink.write_sample("z", &[Member { ext: "bin", data: b"1" }]);
        assert!(matches!(failed, Err(Error::Io { .. })), "{failed:?}");
        assert!(matches!(sink.state(), State::Failed(_)));
        assert!(matches!(sink.close(), Err(Error::Failed { .. })));
        assert!(matches!(sink.close(), Err(Error::Failed { .. })), "a second close must not succeed either");
        assert!(!dir.path().join("s-001.tar.partial").exists());
    }

    #[test]
    fn an_existing_shard_and_its_index_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options { energon_index: true, ..opts(10, u64::MAX) };
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), options).unwrap();
        write_n(&mut sink, 1, 10);
        // Another writer finishes the same shard name first.
        fs::write(dir.path().join("s-000.tar"), b"theirs").unwrap();
        fs::write(dir.path().join("s-000.tar.idx"), b"their index").unwrap();
        assert!(matches!(sink.close(), Err(Error::ShardExists { .. })));
        assert_eq!(fs::read(dir.path().join("s-000.tar")).unwrap(), b"theirs");
        assert_eq!(fs::read(dir.path().join("s-000.tar.idx")).unwrap(), b"their index");
        assert!(!dir.path().join("s-000.tar.partial").exists());
    }

    #[test]
    fn sidecars_go_when_the_shard_cannot_take_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options { energon_index: true, dali_index: true, overwrite: true, ..opts(10, u64::MAX) };
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), options).unwrap();
        write_n(&mut sink, 1, 10);
        // A non-empty directory where the shard should go: the rename fails.
        fs::create_dir_all(dir.path().join("s-000.tar/inside")).unwrap();
        assert!(matches!(sink.close(), Err(Error::Io { .. })));
        assert!(!dir.path().join("s-000.tar.idx").exists());
        assert!(!dir.path().join("s-000.idx").exists());
        assert!(!dir.path().join("s-000.tar.partial").exists());
    }

    #[test]
    fn abort_reports_a_background_shard_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options { maxcount: 2, fsync: true, energon_index: true, ..Options::default() };
        let mut sink = ShardSink::new(dir.path().join("s-%03d.tar").to_str().unwrap(), options).unwrap();
        // Shard 0's index cannot be written (a directory holds its name), in the background.
        fs::create_dir_all(dir.path().join("s-000.tar.idx/inside")).unwrap();
        write_n(&mut sink, 3, 10);
        assert!(matches!(sink.abort(), Err(Error::Io { .. })));
        assert!(matches!(sink.close(), Err(Error::Failed { .. })));
        assert!(!dir.path().join("s-000.tar").exists());
        assert!(!dir.path().join("s-000.tar.partial").exists());
    }
}
