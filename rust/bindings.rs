//! The PyO3 layer: converts Python values to Rust ones, releases the GIL around all I/O, and maps
//! `Error` onto Python exceptions. No shard logic lives here.
use pyo3::buffer::PyUntypedBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyBlockingIOError, PyFileExistsError, PyIndexError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};

use crate::arrow::BinaryLayout;
use crate::chat;
use crate::error::Error;
use crate::key;
use crate::files;
use crate::inflate;
use crate::media;
use crate::shard::{Member, MemberRecord, Options, SampleRecord, ShardRecord, ShardSink};

// Named `fastwds._core.X` (their `__module__` is `fastwds._core`), so pickle finds them: an error
// raised in a worker process reaches the parent as itself.
create_exception!(fastwds._core, SampleError, PyValueError, "A sample cannot be written as given; `sample_id` names it (None when unknown).");
create_exception!(fastwds._core, DuplicateKeyError, SampleError, "Two samples of one writer map to the same key.");
create_exception!(fastwds._core, ShardPatternError, PyValueError, "The shard name pattern is not usable.");
create_exception!(fastwds._core, WriterClosedError, PyValueError, "The writer was closed (or failed) and takes no more samples.");
create_exception!(fastwds._core, ShardBusyError, PyBlockingIOError, "Another live writer is writing this shard (two writers share a pattern); `filename` is its locked `.partial` file.");

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match &err {
            Error::Io { path, source } => match source.raw_os_error() {
                // OSError(errno, strerror, filename) becomes FileNotFoundError etc. by errno.
                Some(errno) => PyOSError::new_err((errno, source.to_string(), path.display().to_string())),
                None => PyOSError::new_err(message),
            },
            Error::ShardExists { path } => PyFileExistsError::new_err((17, message, path.display().to_string())),
            Error::ShardBusy { partial, .. } => ShardBusyError::new_err((libc::EWOULDBLOCK, message, partial.display().to_string())),
            Error::InvalidPattern { .. } => ShardPatternError::new_err(message),
            Error::Closed | Error::Failed { .. } => WriterClosedError::new_err(message),
            _ => {
                let py_err = match err {
                    Error::DuplicateKey { .. } => DuplicateKeyError::new_err(message),
                    _ => SampleError::new_err(message),
                };
                Python::attach(|py| {
                    let _ = py_err.value(py).setattr("sample_id", err.sample_id());
                });
                py_err
            }
        }
    }
}

/// The values of an Arrow binary (or large binary) array, read in place: the data buffer is held
/// through the buffer protocol, so image bytes go from pyarrow's memory to the shard without
/// ever becoming Python `bytes`. Offsets and validity are decoded once, at construction
/// (`arrow::BinaryLayout`).
#[pyclass(module = "fastwds._core", name = "BinaryColumn", frozen)]
pub struct BinaryColumn {
    data: ColumnData,
    layout: BinaryLayout,
}

/// The bytes a column's values live in. The writer reads them with the GIL released, so they
/// must not change meanwhile: a read-only buffer (pyarrow's are immutable) is held as it is; a
/// writable one (a bytearray, a numpy array) is copied, since another thread could change it
/// while a shard is being written.
enum ColumnData {
    Shared(PyUntypedBuffer),
    Owned(Box<[u8]>),
}

impl ColumnData {
    fn bytes(&self) -> &[u8] {
        match self {
            ColumnData::Shared(buffer) => buffer_bytes(buffer),
            ColumnData::Owned(bytes) => bytes,
        }
    }
}

/// The bytes of a contiguous buffer.
fn buffer_bytes(buffer: &PyUntypedBuffer) -> &[u8] {
    // SAFETY: only called on buffers checked to be C-contiguous; holding the `PyUntypedBuffer`
    // keeps its exporter alive. Buffers read after the GIL is released are read-only ones
    // (see `ColumnData`), so nothing changes them while the slice is used.
    unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) }
}

impl BinaryColumn {
    /// Value `i`, or None when it is null.
    fn value(&self, i: usize) -> Option<&[u8]> {
        self.layout.value(self.data.bytes(), i)
    }
}

fn contiguous_buffer(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<PyUntypedBuffer> {
    let buffer = PyUntypedBuffer::get(obj)?;
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{what} buffer is not contiguous")));
    }
    Ok(buffer)
}

#[pymethods]
impl BinaryColumn {
    /// From the buffers of a pyarrow binary array (`array.buffers()`), its `offset` and length;
    /// `large` for 64-bit offsets. `fastwds.arrow.binary_column(array)` does this for you.
    #[new]
    #[pyo3(signature = (data, offsets, validity, offset, length, large))]
    fn new(data: &Bound<'_, PyAny>, offsets: &Bound<'_, PyAny>, validity: Option<&Bound<'_, PyAny>>, offset: usize, length: usize, large: bool) -> PyResult<Self> {
        let data = contiguous_buffer(data, "data")?;
        let offsets = contiguous_buffer(offsets, "offsets")?;
        let validity = validity.map(|bits| contiguous_buffer(bits, "validity")).transpose()?;
        let layout = BinaryLayout::parse(buffer_bytes(&offsets), validity.as_ref().map(buffer_bytes), offset, length, large, data.len_bytes())
            .map_err(PyValueError::new_err)?;
        let data = if data.readonly() { ColumnData::Shared(data) } else { ColumnData::Owned(buffer_bytes(&data).into()) };
        Ok(Self { data, layout })
    }

    fn __len__(&self) -> usize {
        self.layout.len()
    }

    /// Length in bytes of value `i` (0 when null).
    fn value_len(&self, i: usize) -> PyResult<usize> {
        if i >= self.__len__() {
            return Err(PyIndexError::new_err(format!("index {i} out of range for {} values", self.__len__())));
        }
        Ok(self.value(i).map_or(0, <[u8]>::len))
    }

    /// Value `i` as bytes (a copy), or None when it is null.
    fn get<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Option<Bound<'py, pyo3::types::PyBytes>>> {
        if i >= self.__len__() {
            return Err(PyIndexError::new_err(format!("index {i} out of range for {} values", self.__len__())));
        }
        Ok(self.value(i).map(|v| pyo3::types::PyBytes::new(py, v)))
    }
}

/// A member value from Python: `bytes`, or `(BinaryColumn, index)` referring into an Arrow array.
#[derive(FromPyObject)]
enum Payload {
    Bytes(PyBackedBytes),
    Arrow((Py<BinaryColumn>, usize)),
}

impl Payload {
    /// The bytes, readable without the GIL; None for a null Arrow value.
    fn resolve(&self) -> Option<&[u8]> {
        match self {
            Payload::Bytes(bytes) => Some(bytes),
            Payload::Arrow((column, i)) => column.get().value(*i),
        }
    }

    fn check_index(&self) -> PyResult<()> {
        if let Payload::Arrow((column, i)) = self {
            let len = column.get().layout.len();
            if *i >= len {
                return Err(PyIndexError::new_err(format!("index {i} out of range for a column of {len} values")));
            }
        }
        Ok(())
    }
}

/// What one finished shard holds: name, counts, size, sha256 and every sample's offsets.
#[pyclass(module = "fastwds._core", name = "ShardRecord", frozen)]
pub struct PyShardRecord {
    inner: ShardRecord,
}

#[pymethods]
impl PyShardRecord {
    #[getter]
    fn index(&self) -> u64 {
        self.inner.index
    }
    #[getter]
    fn path(&self) -> String {
        self.inner.path.display().to_string()
    }
    #[getter]
    fn name(&self) -> String {
        self.inner.name()
    }
    #[getter]
    fn num_samples(&self) -> usize {
        self.inner.samples.len()
    }
    /// File size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size
    }
    #[getter]
    fn sha256(&self) -> String {
        self.inner.sha256_hex()
    }
    #[getter]
    fn oversized(&self) -> bool {
        self.inner.oversized
    }
    /// Offset where the end-of-archive blocks start.
    #[getter]
    fn data_end(&self) -> u64 {
        self.inner.data_end
    }
    /// `[(key, offset, end, [(ext, data_offset, size), ...]), ...]`: `offset` is the sample's
    /// first header block, `end` the next sample's (or `data_end`).
    #[allow(clippy::type_complexity)]
    fn samples(&self) -> Vec<(String, u64, u64, Vec<(String, u64, u64)>)> {
        (0..self.inner.samples.len())
            .map(|i| {
                let s = &self.inner.samples[i];
                let members = s.members.iter().map(|m| (m.ext.clone(), m.data_offset, m.size)).collect();
                (s.key.clone(), s.offset, self.inner.sample_end(i), members)
            })
            .collect()
    }
    fn keys(&self) -> Vec<String> {
        self.inner.samples.iter().map(|s| s.key.clone()).collect()
    }
    /// Pickling (a record made in a worker process, sent to the parent that writes the index):
    /// rebuilt by `_core._shard_record` from its fields.
    #[allow(clippy::type_complexity)]
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (u64, String, u64, u64, String, bool, Vec<(String, u64, Vec<(String, u64, u64)>)>))> {
        let rebuild = py.import("fastwds._core")?.getattr("_shard_record")?;
        let r = &self.inner;
        let samples = r.samples.iter()
            .map(|s| (s.key.clone(), s.offset, s.members.iter().map(|m| (m.ext.clone(), m.data_offset, m.size)).collect()))
            .collect();
        Ok((rebuild, (r.index, r.path.display().to_string(), r.data_end, r.size, r.sha256_hex(), r.oversized, samples)))
    }
    fn __repr__(&self) -> String {
        format!("ShardRecord(name={:?}, num_samples={}, size={}, sha256={:?})", self.inner.name(), self.inner.samples.len(), self.inner.size, self.inner.sha256_hex())
    }
}

/// Low-level shard writer; `fastwds.ShardWriter` wraps it with value encoding.
#[pyclass(module = "fastwds._core", name = "ShardSink")]
pub struct PyShardSink {
    sink: ShardSink,
}

fn records(shards: Vec<ShardRecord>) -> Vec<PyShardRecord> {
    shards.into_iter().map(|inner| PyShardRecord { inner }).collect()
}

#[pymethods]
impl PyShardSink {
    #[new]
    #[pyo3(signature = (pattern, *, maxcount, maxsize, mtime=0, fsync=true, overwrite=false, start_index=0, energon_index=false, dali_index=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(pattern: &str, maxcount: u64, maxsize: u64, mtime: u64, fsync: bool, overwrite: bool, start_index: u64, energon_index: bool, dali_index: bool) -> PyResult<Self> {
        let options = Options { maxcount, maxsize, mtime, fsync, overwrite, start_index, energon_index, dali_index };
        Ok(Self { sink: ShardSink::new(pattern, options)? })
    }

    /// Write one sample: `members` is a list of `(extension, bytes)`. Returns its key.
    fn write(&mut self, py: Python<'_>, sample_id: PyBackedStr, members: Vec<(PyBackedStr, PyBackedBytes)>) -> PyResult<String> {
        let sink = &mut self.sink;
        let key = py.detach(|| {
            let members: Vec<Member> = members.iter().map(|(ext, data)| Member { ext, data }).collect();
            sink.write_sample(&sample_id, &members)
        })?;
        Ok(key)
    }

    /// Write many samples at once, column by column: `columns` is `[(extension, values)]` with
    /// one value per id: `bytes`, `(BinaryColumn, index)` (read in place from Arrow memory), or
    /// `None` to leave that member out of that sample. All or nothing: every sample is checked
    /// (members, extensions, keys, keys repeated in the batch) before any is written; the
    /// exception names the failing sample. (An I/O error part-way fails the writer.)
    fn write_batch(&mut self, py: Python<'_>, sample_ids: Vec<PyBackedStr>, columns: Vec<(PyBackedStr, Vec<Option<Payload>>)>) -> PyResult<usize> {
        for (ext, values) in &columns {
            if values.len() != sample_ids.len() {
                return Err(PyValueError::new_err(format!("column {:?} has {} values for {} sample ids", &**ext, values.len(), sample_ids.len())));
            }
            for value in values.iter().flatten() {
                value.check_index()?;
            }
        }
        let sink = &mut self.sink;
        py.detach(|| {
            let samples: Vec<(&str, Vec<Member>)> = sample_ids
                .iter()
                .enumerate()
                .map(|(row, id)| {
                    let members = columns
                        .iter()
                        .filter_map(|(ext, values)| values[row].as_ref().and_then(Payload::resolve).map(|data| Member { ext, data }))
                        .collect();
                    (&**id, members)
                })
                .collect();
            sink.write_samples(&samples)
        })?;
        Ok(sample_ids.len())
    }

    /// Finish the shard being written now, so the next sample starts a new one.
    fn finish_shard(&mut self, py: Python<'_>) -> PyResult<()> {
        let sink = &mut self.sink;
        Ok(py.detach(|| sink.finish_shard())?)
    }

    /// Samples in the shard being written (lost unless it is finished: `close`, `finish_shard`).
    #[getter]
    fn num_open(&self) -> usize {
        self.sink.open_samples()
    }

    /// Shards finished so far (not the open one, nor one still being fsynced in the background).
    #[getter]
    fn num_finished(&self) -> usize {
        self.sink.finished().len()
    }

    /// Finish the open shard; return every finished shard's record.
    fn close(&mut self, py: Python<'_>) -> PyResult<Vec<PyShardRecord>> {
        let sink = &mut self.sink;
        Ok(records(py.detach(|| sink.close())?))
    }

    /// Drop the open shard (its `.partial` file is deleted); finished shards stay. Raises if a
    /// full shard finishing in the background could not be made durable.
    fn abort(&mut self, py: Python<'_>) -> PyResult<()> {
        let sink = &mut self.sink;
        Ok(py.detach(|| sink.abort())?)
    }
}

/// Check encoded images without decoding them. Each image is `bytes`, `(BinaryColumn, index)`
/// or `None` (an empty image). For each: `("ok", format, width, height)` or
/// `(reason_code, message, 0, 0)`.
#[pyfunction]
fn inspect_images(py: Python<'_>, images: Vec<Option<Payload>>) -> PyResult<Vec<(&'static str, String, u32, u32)>> {
    for image in images.iter().flatten() {
        image.check_index()?;
    }
    Ok(py.detach(|| {
        images
            .iter()
            .map(|image| match media::inspect_image(image.as_ref().and_then(Payload::resolve).unwrap_or_default()) {
                Ok(info) => ("ok", info.format.name().to_string(), info.width, info.height),
                Err(problem) => (problem.code(), problem.to_string(), 0, 0),
            })
            .collect()
    }))
}

/// The sample JSON of a batch's conversation rows (`fastwds.sources.chat`), from Arrow string
/// columns read in place: for each row its document, or None when the Python rules must judge the
/// row (see `chat::simple_document`). `turn_starts` (one more than the rows) delimit each row's
/// turns in the flattened `role`/`from_` (the `from` field)/`content`/`value` columns (absent ones None);
/// `image_starts` each row's checks in `images`: `(format, width, height)`, None for a failed check.
#[pyfunction]
#[pyo3(signature = (ids, turn_starts, role, from_, content, value, data_source, image_starts, images, file, first_row))]
#[allow(clippy::too_many_arguments)]
fn chat_documents<'py>(py: Python<'py>, ids: Py<BinaryColumn>, turn_starts: Vec<usize>, role: Option<Py<BinaryColumn>>,
                       from_: Option<Py<BinaryColumn>>, content: Option<Py<BinaryColumn>>, value: Option<Py<BinaryColumn>>,
                       data_source: Option<Py<BinaryColumn>>, image_starts: Vec<usize>, images: Vec<Option<(String, u32, u32)>>,
                       file: &str, first_row: u64) -> PyResult<Vec<Option<Bound<'py, pyo3::types::PyBytes>>>> {
    let rows = ids.get().layout.len();
    let turn_fields = [&role, &from_, &content, &value];
    let turns = turn_fields.iter().flat_map(|f| f.as_ref().map(|c| c.get().layout.len())).next().unwrap_or(0);
    let delimits = |starts: &[usize], total: usize| {
        starts.len() == rows + 1 && starts[0] == 0 && starts.windows(2).all(|w| w[0] <= w[1]) && starts[rows] <= total
    };
    if !delimits(&turn_starts, turns) || turn_fields.iter().flat_map(|f| f.as_ref()).any(|c| c.get().layout.len() != turns)
        || !delimits(&image_starts, images.len()) || data_source.as_ref().is_some_and(|c| c.get().layout.len() != rows) {
        return Err(PyValueError::new_err("chat_documents: the columns and row boundaries do not line up"));
    }
    fn field(column: &Option<Py<BinaryColumn>>, i: usize) -> Option<&[u8]> {
        column.as_ref().and_then(|c| c.get().value(i))
    }
    let (documents, spans) = py.detach(|| {
        let mut documents = Vec::new();
        let mut spans = Vec::with_capacity(rows);
        let mut document = Vec::new();
        for r in 0..rows {
            let row = chat::ChatRow {
                id: ids.get().value(r),
                turns: (turn_starts[r]..turn_starts[r + 1])
                    .map(|t| (field(&role, t).or_else(|| field(&from_, t)), field(&content, t).or_else(|| field(&value, t))))
                    .collect(),
                data_source: field(&data_source, r),
                images: images[image_starts[r]..image_starts[r + 1]]
                    .iter()
                    .map(|check| check.as_ref().map(|(format, width, height)| chat::ImageMeta { format, width: *width, height: *height }))
                    .collect(),
                file,
                row: first_row + r as u64,
            };
            spans.push(chat::simple_document(&row, &mut document).map(|()| {
                documents.extend_from_slice(&document);
                (documents.len() - document.len(), documents.len())
            }));
        }
        (documents, spans)
    });
    Ok(spans.into_iter().map(|span| span.map(|(start, end)| pyo3::types::PyBytes::new(py, &documents[start..end]))).collect())
}

/// SFT rows' Energon sample JSON (`chat::sft_document`), from the rows' Python values: for each
/// row its document, or None when the Python rules must judge it (an id, turn or field that is
/// not exactly a `str`, `list` or `dict`, text that is not Unicode, any rule needing judgment).
/// `image_starts` and `images` as for `chat_documents`. Python objects are read, so the GIL is
/// held; walking them here still costs a fraction of normalising and dumping them in Python.
#[pyfunction]
fn sft_documents<'py>(py: Python<'py>, ids: Vec<Bound<'py, PyAny>>, conversations: Vec<Bound<'py, PyAny>>,
                      image_starts: Vec<usize>, images: Vec<Option<(String, u32, u32)>>, file: &str,
                      first_row: u64) -> PyResult<Vec<Option<Bound<'py, pyo3::types::PyBytes>>>> {
    let rows = ids.len();
    if conversations.len() != rows || image_starts.len() != rows + 1 || image_starts[0] != 0
        || image_starts.windows(2).any(|w| w[0] > w[1]) || image_starts[rows] > images.len() {
        return Err(PyValueError::new_err("sft_documents: the rows and their image boundaries do not line up"));
    }
    let mut document = Vec::new();
    let mut documents = Vec::with_capacity(rows);
    for r in 0..rows {
        let metas: Vec<Option<chat::ImageMeta>> = images[image_starts[r]..image_starts[r + 1]]
            .iter()
            .map(|check| check.as_ref().map(|(format, width, height)| chat::ImageMeta { format, width: *width, height: *height }))
            .collect();
        let built = match (exact_str(&ids[r]), python_turns(&conversations[r])) {
            (Some(Some(id)), Some(turns)) => {
                let turns: Vec<(Option<&str>, Option<&str>)> = turns.iter().map(|(role, content)| (role.as_deref(), content.as_deref())).collect();
                chat::sft_document(&id, &turns, &metas, file, first_row + r as u64, &mut document)
            }
            _ => None,
        };
        documents.push(built.map(|()| pyo3::types::PyBytes::new(py, &document)));
    }
    Ok(documents)
}

/// A value that is None (Some(None)) or exactly a `str` holding Unicode text (Some(Some)); None
/// for anything else (another type, a lone surrogate).
fn exact_str(value: &Bound<'_, PyAny>) -> Option<Option<PyBackedStr>> {
    if value.is_none() {
        return Some(None);
    }
    if !value.is_exact_instance_of::<pyo3::types::PyString>() {
        return None;
    }
    value.extract::<PyBackedStr>().ok().map(Some)
}

/// A row's turns as (role, content), with the precedence of `normalize_conversations` (`role`
/// unless None, else `from`; `content` unless None, else `value`), when the row's value is a list
/// of dicts whose fields are None or `str`; None otherwise.
fn python_turns(value: &Bound<'_, PyAny>) -> Option<Vec<(Option<PyBackedStr>, Option<PyBackedStr>)>> {
    let list = value.cast_exact::<pyo3::types::PyList>().ok()?;
    let field = |turn: &Bound<'_, pyo3::types::PyDict>, key: &str| -> Option<Option<PyBackedStr>> {
        match turn.get_item(key).ok()? {
            None => Some(None),
            Some(value) => exact_str(&value),
        }
    };
    list.iter()
        .map(|turn| {
            let turn = turn.cast_exact::<pyo3::types::PyDict>().ok()?;
            let role = match field(turn, "role")? {
                Some(role) => Some(role),
                None => field(turn, "from")?,
            };
            let content = match field(turn, "content")? {
                Some(content) => Some(content),
                None => field(turn, "value")?,
            };
            Some((role, content))
        })
        .collect()
}

/// One deflated zip member, inflated piece by piece (`fastwds.volume.DeflatedMember` drives it).
#[pyclass(module = "fastwds._core", name = "Inflater")]
pub struct PyInflater {
    inner: inflate::MemberInflater,
}

#[pymethods]
impl PyInflater {
    /// For a member the zip directory says holds `size` bytes with this CRC-32.
    #[new]
    fn new(crc: u32, size: u64) -> Self {
        Self { inner: inflate::MemberInflater::new(crc, size) }
    }

    /// Inflate from `data` (a buffer of compressed bytes; empty once the compressed data has ended) into the
    /// writable buffer `out`, without the GIL. Returns (bytes of `data` consumed, bytes written).
    /// Raises ValueError for damaged data: a bad CRC-32, a stream shorter or longer than declared.
    fn inflate(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
        let data = contiguous_buffer(data, "input")?;
        // As for BinaryColumn: a writable input could change while the GIL is released, so it is copied.
        let copy: Option<Box<[u8]>> = (!data.readonly()).then(|| buffer_bytes(&data).into());
        let input: &[u8] = copy.as_deref().unwrap_or_else(|| buffer_bytes(&data));
        let out = contiguous_buffer(out, "output")?;
        if out.readonly() {
            return Err(PyValueError::new_err("the output buffer is read-only"));
        }
        // SAFETY: a writable, contiguous buffer, kept alive by `out` for the call; it belongs to
        // the caller's read (a fresh chunk), so nothing else writes to it meanwhile.
        let target = unsafe { std::slice::from_raw_parts_mut(out.buf_ptr() as *mut u8, out.len_bytes()) };
        let target = SendSlice(target);
        let inner = &mut self.inner;
        py.detach(move || inner.inflate(input, { target }.0)).map_err(|error| PyValueError::new_err(error.to_string()))
    }

    /// Whether every declared byte was produced and the CRC-32 matched.
    #[getter]
    fn finished(&self) -> bool {
        self.inner.finished()
    }
}

/// A mutable byte slice handed to code running without the GIL (see `PyInflater::inflate`).
struct SendSlice<'a>(&'a mut [u8]);
// SAFETY: the slice points into a buffer the caller owns for the duration of the call.
unsafe impl Send for SendSlice<'_> {}

/// Read these regular files, at most `max_bytes` each, without the GIL (`fastwds.sources.sft.media`
/// turns the outcomes into its problems). Per path: `("ok", bytes)`, `("missing", None)`,
/// `("unreadable", errno)`, `("not_regular", kind)` or `("too_large", size or None if it grew)`.
/// Each file is read straight into the `bytes` object returned (one buffer per file, whatever
/// its size: a 2 GB video costs 2 GB, not 4).
#[pyfunction]
fn read_files(py: Python<'_>, paths: Vec<std::path::PathBuf>, max_bytes: u64) -> PyResult<Vec<(&'static str, Py<PyAny>)>> {
    let mut opened: Vec<Result<(std::fs::File, u64), files::FileRead>> =
        py.detach(|| paths.iter().map(|path| files::open_regular(path, max_bytes)).collect());
    // A bytes object of each file's size, left uninitialised: it is filled before anyone sees it.
    let mut buffers = Vec::with_capacity(opened.len());
    for entry in &opened {
        buffers.push(match entry {
            Ok((_, size)) => {
                let size = isize::try_from(*size).map_err(|_| PyValueError::new_err("file too large for this platform"))?;
                // SAFETY: a new bytes object of `size` bytes; its contents are written below.
                Some(unsafe { Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size))? })
            }
            Err(_) => None,
        });
    }
    let targets: Vec<Option<RawTarget>> = buffers
        .iter()
        .zip(&opened)
        .map(|(buffer, entry)| match (buffer, entry) {
            // SAFETY: PyBytes_AsString of a bytes object: its buffer of exactly `size` bytes.
            (Some(buffer), Ok((_, size))) => Some(RawTarget(unsafe { pyo3::ffi::PyBytes_AsString(buffer.as_ptr()) } as *mut u8, *size as usize)),
            _ => None,
        })
        .collect();
    let fills: Vec<Option<Result<files::Fill, i32>>> = py.detach(|| {
        opened
            .iter_mut()
            .zip(targets)
            .map(|(entry, target)| match (entry, target) {
                // SAFETY: the bytes objects were just made here, are referenced only by `buffers`
                // (alive until the end of this function) and nothing else reads or writes them.
                (Ok((file, _)), Some(target)) => Some(files::fill(file, unsafe { std::slice::from_raw_parts_mut(target.0, target.1) })),
                _ => None,
            })
            .collect()
    });
    let mut results = Vec::with_capacity(paths.len());
    for (((path, entry), buffer), filled) in paths.iter().zip(opened).zip(buffers).zip(fills) {
        let outcome = match (entry, filled) {
            (Err(outcome), _) => outcome,
            (Ok(_), Some(Ok(files::Fill::Exact))) => {
                results.push(("ok", buffer.expect("a buffer for every opened file").unbind()));
                continue;
            }
            (Ok(_), Some(Err(errno))) => files::FileRead::Unreadable(errno),
            // It changed size while being read (rare): read it again, into a buffer of its own.
            (Ok(_), _) => py.detach(|| files::read_regular_file(path, max_bytes)),
        };
        results.push(match outcome {
            files::FileRead::Data(data) => ("ok", pyo3::types::PyBytes::new(py, &data).into_any().unbind()),
            files::FileRead::Missing => ("missing", py.None()),
            files::FileRead::Unreadable(errno) => ("unreadable", errno.into_pyobject(py)?.into_any().unbind()),
            files::FileRead::NotRegular(kind) => ("not_regular", kind.into_pyobject(py)?.into_any().unbind()),
            files::FileRead::TooLarge(size) => ("too_large", size.into_pyobject(py)?.into_any().unbind()),
        });
    }
    Ok(results)
}

/// Where one file's bytes go, handed to code running without the GIL (see `read_files`).
struct RawTarget(*mut u8, usize);
// SAFETY: points into a bytes object owned by `read_files` for the whole call.
unsafe impl Send for RawTarget {}

/// A `ShardRecord` from the fields `ShardRecord.__reduce__` gives (unpickling).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn _shard_record(index: u64, path: String, data_end: u64, size: u64, sha256: &str, oversized: bool, samples: Vec<(String, u64, Vec<(String, u64, u64)>)>) -> PyResult<PyShardRecord> {
    let bad = || PyValueError::new_err(format!("not a sha256: {sha256:?}"));
    if sha256.len() != 64 {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(sha256.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    let samples = samples
        .into_iter()
        .map(|(key, offset, members)| SampleRecord {
            key,
            offset,
            members: members.into_iter().map(|(ext, data_offset, size)| MemberRecord { ext, data_offset, size }).collect(),
        })
        .collect();
    Ok(PyShardRecord { inner: ShardRecord { index, path: path.into(), samples, data_end, size, sha256: digest, oversized } })
}

/// The key a sample with this id is written under.
#[pyfunction]
fn portable_key(sample_id: &str) -> String {
    key::portable_key(sample_id)
}

/// `portable_key` of each id: one call for a whole column of ids that are not their own key
/// (planning 1M path-like ids: a Python call per id took 1.2 s).
#[pyfunction]
fn portable_keys(sample_ids: Vec<String>) -> Vec<String> {
    sample_ids.iter().map(|id| key::portable_key(id)).collect()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_KEY_LEN", key::MAX_KEY_LEN)?;
    m.add_class::<PyShardSink>()?;
    m.add_class::<PyShardRecord>()?;
    m.add_class::<BinaryColumn>()?;
    m.add_class::<PyInflater>()?;
    m.add_function(wrap_pyfunction!(portable_key, m)?)?;
    m.add_function(wrap_pyfunction!(portable_keys, m)?)?;
    m.add_function(wrap_pyfunction!(inspect_images, m)?)?;
    m.add_function(wrap_pyfunction!(chat_documents, m)?)?;
    m.add_function(wrap_pyfunction!(sft_documents, m)?)?;
    m.add_function(wrap_pyfunction!(read_files, m)?)?;
    m.add_function(wrap_pyfunction!(_shard_record, m)?)?;
    m.add("SampleError", py.get_type::<SampleError>())?;
    m.add("DuplicateKeyError", py.get_type::<DuplicateKeyError>())?;
    m.add("ShardPatternError", py.get_type::<ShardPatternError>())?;
    m.add("WriterClosedError", py.get_type::<WriterClosedError>())?;
    m.add("ShardBusyError", py.get_type::<ShardBusyError>())?;
    // Every SampleError has `sample_id`, None unless the error names a sample.
    py.get_type::<SampleError>().setattr("sample_id", py.None())?;
    Ok(())
}
