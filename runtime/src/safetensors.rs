//! Our own reader and writer for the safetensors format.
//!
//! Weights arrive as safetensors files that someone else wrote, often large and sometimes damaged
//! (a truncated download, a half-written shard). We read them ourselves rather than through the
//! `safetensors` crate so that every failure names the file and the tensor at fault and says what
//! probably happened, and so that nothing in the header is trusted before it is checked: offsets
//! are bounds- and overlap-checked, sizes are overflow-checked, duplicate keys (which a plain JSON
//! map silently collapses) are rejected.
//!
//! The format: an 8-byte little-endian header length `N`, `N` bytes of UTF-8 JSON mapping each
//! tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the first
//! byte after the header) plus an optional `__metadata__` string map, then the data.
//!
//! Files are memory-mapped read-only, so opening a multi-gigabyte checkpoint costs only the
//! header parse; tensors are borrowed straight from the mapping.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use lmc_abi::DType;
use memmap2::Mmap;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::{ErrorKind, RuntimeError};
use crate::tensor::HostTensor;

/// The largest header we accept, the same limit the reference implementation uses: a larger
/// "length" almost always means the file is not safetensors at all.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A problem with a weights (or inputs) file. `Display` always starts with the file's path and,
/// where one tensor is at fault, names it.
#[derive(Debug)]
pub struct WeightsError {
    path: PathBuf,
    tensor: Option<String>,
    message: String,
    source: Option<io::Error>,
}

impl WeightsError {
    fn file(path: &Path, message: impl Into<String>) -> WeightsError {
        WeightsError {
            path: path.to_path_buf(),
            tensor: None,
            message: message.into(),
            source: None,
        }
    }

    fn tensor(path: &Path, tensor: &str, message: impl Into<String>) -> WeightsError {
        WeightsError {
            path: path.to_path_buf(),
            tensor: Some(tensor.to_string()),
            message: message.into(),
            source: None,
        }
    }

    fn io(path: &Path, what: &str, source: io::Error) -> WeightsError {
        WeightsError {
            path: path.to_path_buf(),
            tensor: None,
            message: format!("{what}: {source}"),
            source: Some(source),
        }
    }

    /// The file at fault.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor at fault, if the problem is with one tensor.
    pub fn tensor_name(&self) -> Option<&str> {
        self.tensor.as_deref()
    }

    /// The message without the path and tensor prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        if let Some(t) = &self.tensor {
            write!(f, "tensor \"{t}\": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for WeightsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<WeightsError> for RuntimeError {
    fn from(e: WeightsError) -> RuntimeError {
        RuntimeError::new(ErrorKind::Weights, e.to_string())
    }
}

/// A tensor's element type as the file names it. Only the [`DType`]s cross the ABI; the others
/// are kept by name so that a mismatch can be reported ("has dtype BF16, the model expects F32")
/// instead of failing to open the whole file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StDType {
    Supported(DType),
    Other(String),
}

impl StDType {
    pub fn from_name(name: &str) -> StDType {
        match DType::from_safetensors_name(name) {
            Some(d) => StDType::Supported(d),
            None => StDType::Other(name.to_string()),
        }
    }

    /// The name in the safetensors header (`F32`, `BF16`, ...).
    pub fn name(&self) -> &str {
        match self {
            StDType::Supported(d) => d.safetensors_name(),
            StDType::Other(s) => s,
        }
    }

    /// The dtype if the runtime can pass it to a module.
    pub fn as_dtype(&self) -> Option<DType> {
        match self {
            StDType::Supported(d) => Some(*d),
            StDType::Other(_) => None,
        }
    }

    /// Bits per element for the dtypes the safetensors format defines; `None` for a name it does
    /// not (yet) define, whose byte length then cannot be checked.
    pub fn bits(&self) -> Option<usize> {
        match self {
            StDType::Supported(d) => Some(d.size_bytes() * 8),
            StDType::Other(name) => match name.as_str() {
                "F4" => Some(4),
                "F6_E2M3" | "F6_E3M2" => Some(6),
                "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => Some(8),
                "I16" | "U16" | "F16" | "BF16" => Some(16),
                "U32" => Some(32),
                "F64" | "U64" | "C64" => Some(64),
                _ => None,
            },
        }
    }
}

impl fmt::Display for StDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor's header entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: StDType,
    pub shape: Vec<usize>,
    /// Byte range within the data section (the `data_offsets` of the header).
    pub range: Range<usize>,
}

/// A tensor borrowed from an open file.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    path: &'a Path,
    info: &'a TensorInfo,
    bytes: &'a [u8],
}

impl<'a> TensorRef<'a> {
    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    pub fn dtype(&self) -> &'a StDType {
        &self.info.dtype
    }

    pub fn shape(&self) -> &'a [usize] {
        &self.info.shape
    }

    /// The tensor's raw little-endian bytes, straight from the mapping (no alignment promised).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The values of a floating-point tensor as f32: F32 as stored, BF16 and F16 widened
    /// (exactly); `None` for another dtype.
    pub fn f32_values(&self) -> Option<Vec<f32>> {
        match &self.info.dtype {
            StDType::Other(name) => crate::widen::Half::from_name(name).map(|h| h.widen(self.bytes)),
            d if d.as_dtype() == Some(DType::F32) => Some(
                self.bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Copies the tensor into an aligned [`HostTensor`]; fails if its dtype cannot cross the ABI.
    pub fn to_host(&self) -> Result<HostTensor, WeightsError> {
        let Some(dtype) = self.info.dtype.as_dtype() else {
            return Err(WeightsError::tensor(
                self.path,
                &self.info.name,
                format!(
                    "has dtype {}, which lmc cannot pass to a model (supported: F32, I64, I32)",
                    self.info.dtype
                ),
            ));
        };
        HostTensor::from_bytes(self.info.name.clone(), dtype, self.info.shape.clone(), self.bytes)
            .map_err(|e| WeightsError::tensor(self.path, &self.info.name, e.to_string()))
    }
}

enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open, fully validated safetensors file. Every [`TensorInfo`] it hands out lies inside the
/// file and overlaps no other.
pub struct SafeTensorsFile {
    path: PathBuf,
    backing: Backing,
    /// Offset of the data section within the file.
    data_start: usize,
    /// In header order.
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafeTensorsFile {
    /// Maps `path` read-only and validates its header.
    pub fn open(path: &Path) -> Result<SafeTensorsFile, WeightsError> {
        let file = File::open(path).map_err(|e| WeightsError::io(path, "cannot open", e))?;
        let len = file
            .metadata()
            .map_err(|e| WeightsError::io(path, "cannot read file metadata", e))?
            .len();
        if len < 8 {
            // Also keeps empty files away from mmap, which rejects zero-length mappings.
            return Err(too_short(path, len as usize));
        }
        // SAFETY: the mapping is read-only and lives inside `Backing`, which outlives every slice
        // we hand out (they borrow `self`). The remaining hazard, another process truncating or
        // rewriting the file while it is mapped, is inherent to memory-mapping and accepted by
        // every checkpoint loader; we never write through the mapping ourselves.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| WeightsError::io(path, "cannot map", e))?;
        SafeTensorsFile::parse(path.to_path_buf(), Backing::Mapped(mmap))
    }

    /// Validates an in-memory file; `path` only labels errors. Handy for fuzzing and tests.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<SafeTensorsFile, WeightsError> {
        SafeTensorsFile::parse(path.into(), Backing::Owned(bytes))
    }

    fn parse(path: PathBuf, backing: Backing) -> Result<SafeTensorsFile, WeightsError> {
        let (data_start, tensors) = parse_layout(&path, backing.bytes())?;
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafeTensorsFile {
            path,
            backing,
            data_start,
            tensors,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, in header order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.iter()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Whether the tensors' bytes live in memory the file owns (an in-memory file, such as
    /// random weights), not in a mapping of a file on disk.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.backing, Backing::Owned(_))
    }

    /// Frees an in-memory file's bytes once the tensors it holds have been copied out (see
    /// [`SafeTensorsFile::is_in_memory`]): afterwards it only names its tensors, and
    /// [`SafeTensorsFile::get`] finds none. A mapped file keeps its mapping.
    pub fn free_in_memory_bytes(&mut self) {
        if let Backing::Owned(bytes) = &mut self.backing {
            *bytes = Vec::new();
            self.by_name.clear();
        }
    }

    /// Tells the kernel that the mapped pages wholly inside tensor `name` will not be read
    /// again (a packed copy replaced it), so that they stop counting as this process's
    /// memory. They stay valid: a later read maps them from the file again.
    pub fn release_mapped(&self, name: &str) {
        let (Backing::Mapped(map), Some(&i)) = (&self.backing, self.by_name.get(name)) else {
            return;
        };
        let range = &self.tensors[i].range;
        let (start, end) = (self.data_start + range.start, self.data_start + range.end);
        // 4 KiB pages; where they are larger, the advice fails and the pages stay resident.
        let page = 4096;
        let first = start.div_ceil(page) * page;
        let last = end / page * page;
        if last > first {
            // SAFETY: the mapping is read-only and private, and nothing ever wrote it, so
            // MADV_DONTNEED only drops pages that the next access reads from the file again,
            // with the same bytes: no reference into the mapping sees a change. A failure only
            // leaves the pages resident.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first) };
        }
    }

    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let info = &self.tensors[*self.by_name.get(name)?];
        let bytes = self.backing.bytes();
        // In bounds: `parse_layout` checked every range against the data section.
        let bytes = &bytes[self.data_start + info.range.start..self.data_start + info.range.end];
        Some(TensorRef {
            path: &self.path,
            info,
            bytes,
        })
    }
}

fn too_short(path: &Path, len: usize) -> WeightsError {
    WeightsError::file(
        path,
        format!(
            "the file is {len} bytes, too short to hold the 8-byte header length; \
             is it an empty or truncated download?"
        ),
    )
}

/// The header entry for one tensor, before validation.
#[derive(serde::Deserialize)]
struct RawTensorInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// The header's key/value pairs in file order, duplicates kept (a `HashMap` or `serde_json::Map`
/// would silently keep only the last one).
struct HeaderPairs(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for HeaderPairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HeaderPairs, D::Error> {
        struct PairsVisitor;

        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = HeaderPairs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object mapping tensor names to {dtype, shape, data_offsets}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderPairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        // Free-form; we only need to know it was there (for duplicate checks).
                        map.next_value::<IgnoredAny>()?;
                        pairs.push((key, serde_json::Value::Null));
                    } else {
                        let value = map.next_value::<serde_json::Value>()?;
                        pairs.push((key, value));
                    }
                }
                Ok(HeaderPairs(pairs))
            }
        }

        deserializer.deserialize_map(PairsVisitor)
    }
}

/// Checks the whole file and returns the data section's offset and the tensors in header order.
fn parse_layout(path: &Path, bytes: &[u8]) -> Result<(usize, Vec<TensorInfo>), WeightsError> {
    if bytes.len() < 8 {
        return Err(too_short(path, bytes.len()));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    let available = (bytes.len() - 8) as u64;
    if header_len > available {
        return Err(WeightsError::file(
            path,
            format!(
                "the header length field says {header_len} bytes, but only {available} bytes \
                 follow it; the file is truncated or not a safetensors file"
            ),
        ));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(WeightsError::file(
            path,
            format!(
                "the header length field says {header_len} bytes, more than the \
                 {MAX_HEADER_BYTES}-byte limit; is this a safetensors file?"
            ),
        ));
    }
    // Both fit in usize: header_len <= available < bytes.len().
    let data_start = 8 + header_len as usize;
    let header = std::str::from_utf8(&bytes[8..data_start]).map_err(|e| {
        WeightsError::file(
            path,
            format!(
                "the header is not valid UTF-8 (bad byte at header offset {}); \
                 is this a safetensors file?",
                e.valid_up_to()
            ),
        )
    })?;
    let mut de = serde_json::Deserializer::from_str(header);
    let pairs = HeaderPairs::deserialize(&mut de)
        .and_then(|p| de.end().map(|()| p))
        .map_err(|e| WeightsError::file(path, format!("the header is not valid: {e}")))?;

    let data_len = bytes.len() - data_start;
    let mut seen: HashMap<&str, ()> = HashMap::with_capacity(pairs.0.len());
    let mut tensors = Vec::with_capacity(pairs.0.len());
    for (name, value) in &pairs.0 {
        if seen.insert(name, ()).is_some() {
            let what = if name == "__metadata__" {
                "the header has two \"__metadata__\" entries".to_string()
            } else {
                format!("tensor \"{name}\" appears twice in the header")
            };
            return Err(WeightsError::file(path, what));
        }
        if name == "__metadata__" {
            continue;
        }
        let raw: RawTensorInfo =
            serde_json::from_value(value.clone()).map_err(|e| WeightsError::tensor(path, name, format!("malformed header entry: {e}")))?;
        tensors.push(check_tensor(path, name, raw, data_len)?);
    }
    check_overlaps(path, &tensors)?;
    Ok((data_start, tensors))
}

fn check_tensor(path: &Path, name: &str, raw: RawTensorInfo, data_len: usize) -> Result<TensorInfo, WeightsError> {
    let err = |message: String| WeightsError::tensor(path, name, message);
    let dtype = StDType::from_name(&raw.dtype);
    let shape = raw
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| err(format!("shape {:?} does not fit in memory", raw.shape)))?;
    let [begin, end] = raw.data_offsets;
    if begin > end {
        return Err(err(format!("data_offsets [{begin}, {end}) end before they begin")));
    }
    if end > data_len as u64 {
        return Err(err(format!(
            "data [{begin}, {end}) runs past the end of the data ({data_len} bytes); \
             the file is truncated?"
        )));
    }
    // Both fit in usize now: end <= data_len.
    let range = begin as usize..end as usize;
    let span = range.end - range.start;
    if let Some(bits) = dtype.bits() {
        let needed = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(bits))
            .filter(|b| b % 8 == 0)
            .map(|b| b / 8);
        if needed != Some(span) {
            let needed = match needed {
                Some(n) => format!("{n} bytes"),
                None => "a size that overflows or is not a whole number of bytes".to_string(),
            };
            return Err(err(format!(
                "shape {shape:?} of {dtype} needs {needed}, but data_offsets [{begin}, {end}) \
                 span {span} bytes"
            )));
        }
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        range,
    })
}

fn check_overlaps(path: &Path, tensors: &[TensorInfo]) -> Result<(), WeightsError> {
    // Empty tensors occupy no bytes, so they overlap nothing wherever their offsets point.
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| !t.range.is_empty()).collect();
    order.sort_by_key(|t| (t.range.start, t.range.end));
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.range.end > b.range.start {
            return Err(WeightsError::tensor(
                path,
                &b.name,
                format!(
                    "data [{}, {}) overlaps tensor \"{}\" (data [{}, {}))",
                    b.range.start, b.range.end, a.name, a.range.start, a.range.end
                ),
            ));
        }
    }
    Ok(())
}

/// Writes a standard safetensors file holding `tensors` (name, dtype, shape, little-endian
/// bytes), laid out in the given order, readable by Python's `safetensors`.
pub fn write_safetensors(path: &Path, tensors: &[(&str, DType, &[usize], &[u8])]) -> io::Result<()> {
    let mut out = io::BufWriter::new(File::create(path)?);
    write_safetensors_to(&mut out, tensors)?;
    out.flush()
}

/// Writes the safetensors file holding `tensors` to `out`, a tensor at a time: nothing is
/// gathered into one buffer, so saving a model takes no memory beside its tensors.
pub fn write_safetensors_to(out: &mut impl Write, tensors: &[(&str, DType, &[usize], &[u8])]) -> io::Result<()> {
    out.write_all(&safetensors_header(tensors)?)?;
    for &(_, _, _, bytes) in tensors {
        out.write_all(bytes)?;
    }
    Ok(())
}

/// The bytes of a safetensors file holding `tensors`, in order (see [`write_safetensors`]).
pub fn safetensors_bytes(tensors: &[(&str, DType, &[usize], &[u8])]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(tensors.iter().map(|t| t.3.len()).sum::<usize>() + 4096);
    write_safetensors_to(&mut out, tensors)?;
    Ok(out)
}

/// A safetensors file's start: the header's length (u64, little-endian) and the JSON header
/// describing `tensors`, padded so the data that follows is 8-byte aligned.
fn safetensors_header(tensors: &[(&str, DType, &[usize], &[u8])]) -> io::Result<Vec<u8>> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let mut seen = HashMap::new();
    // `format: pt` is what transformers checks for when it loads a checkpoint.
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut offset = 0usize;
    for &(name, dtype, shape, bytes) in tensors {
        if name == "__metadata__" {
            return Err(invalid("a tensor cannot be named \"__metadata__\"".to_string()));
        }
        if seen.insert(name, ()).is_some() {
            return Err(invalid(format!("tensor \"{name}\" is given twice")));
        }
        let needed = shape.iter().try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d));
        if needed != Some(bytes.len()) {
            return Err(invalid(format!(
                "tensor \"{name}\": shape {shape:?} of {} needs {} bytes, but {} were given",
                dtype.safetensors_name(),
                needed.map_or("an overflowing number of".to_string(), |n| n.to_string()),
                bytes.len()
            )));
        }
        let end = offset + bytes.len();
        header.push(',');
        header.push_str(&serde_json::to_string(name).map_err(io::Error::other)?);
        header.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            dtype.safetensors_name(),
            serde_json::to_string(shape).map_err(io::Error::other)?,
        ));
        offset = end;
    }
    header.push('}');
    // Padding keeps the data section 8-byte aligned in the mapping, so no tensor needs a copy.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("lmc-runtime-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Builds a file from a raw header and data, bypassing the writer's checks.
    fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn parse_err(bytes: Vec<u8>) -> String {
        SafeTensorsFile::from_bytes("w.safetensors", bytes).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_through_the_writer() {
        let dir = TempDir::new("st-roundtrip");
        let path = dir.path("w.safetensors");
        let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b: Vec<u8> = [7i64, -8].iter().flat_map(|x| x.to_le_bytes()).collect();
        let c: Vec<u8> = 9i32.to_le_bytes().to_vec();
        write_safetensors(
            &path,
            &[
                ("layer.\"weird\" name", DType::F32, &[2, 3], &a),
                ("ids", DType::I64, &[2], &b),
                ("scalar", DType::I32, &[], &c),
                ("empty", DType::F32, &[0, 4], &[]),
            ],
        )
        .unwrap();
        let raw = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "header is padded to a multiple of 8");

        let f = SafeTensorsFile::open(&path).unwrap();
        let names: Vec<&str> = f.tensors().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["layer.\"weird\" name", "ids", "scalar", "empty"]);
        let t = f.get("layer.\"weird\" name").unwrap();
        assert_eq!(t.dtype(), &StDType::Supported(DType::F32));
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.bytes(), &a[..]);
        assert_eq!(f.get("ids").unwrap().bytes(), &b[..]);
        assert_eq!(f.get("scalar").unwrap().shape(), &[] as &[usize]);
        assert_eq!(f.get("scalar").unwrap().bytes(), &c[..]);
        assert!(f.get("empty").unwrap().bytes().is_empty());
        assert!(f.get("missing").is_none());
        let host = f.get("ids").unwrap().to_host().unwrap();
        assert_eq!(host.as_i64().unwrap(), &[7, -8]);
    }

    #[test]
    fn writer_rejects_wrong_lengths_and_duplicates() {
        let dir = TempDir::new("st-writer");
        let path = dir.path("w.safetensors");
        let e = write_safetensors(&path, &[("x", DType::F32, &[3], &[0u8; 8])]).unwrap_err();
        assert!(e.to_string().contains("tensor \"x\""), "{e}");
        assert!(e.to_string().contains("needs 12 bytes"), "{e}");
        let e = write_safetensors(&path, &[("x", DType::F32, &[1], &[0u8; 4]), ("x", DType::F32, &[1], &[0u8; 4])]).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn empty_and_short_files() {
        let dir = TempDir::new("st-empty");
        let path = dir.path("empty.safetensors");
        std::fs::write(&path, b"").unwrap();
        let e = SafeTensorsFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("empty.safetensors"), "{e}");
        assert!(e.contains("0 bytes"), "{e}");
        assert!(parse_err(vec![1, 2, 3]).contains("3 bytes"));
        let e = SafeTensorsFile::open(&dir.path("nope.safetensors")).unwrap_err().to_string();
        assert!(e.contains("nope.safetensors: cannot open"), "{e}");
    }

    #[test]
    fn header_length_past_the_end() {
        let mut bytes = raw_file("{}", &[]);
        bytes[0] = 200;
        let e = parse_err(bytes);
        assert!(e.starts_with("w.safetensors: "), "{e}");
        assert!(e.contains("says 200 bytes, but only 2 bytes follow"), "{e}");
    }

    #[test]
    fn header_length_over_the_limit() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(parse_err(bytes).contains("truncated or not a safetensors"));
    }

    #[test]
    fn truncated_data() {
        let header = r#"{"embeddings.word_embeddings.weight":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
        let e = parse_err(raw_file(header, &[0u8; 3000]));
        assert_eq!(
            e,
            "w.safetensors: tensor \"embeddings.word_embeddings.weight\": data [0, 4000) runs \
             past the end of the data (3000 bytes); the file is truncated?"
        );
    }

    #[test]
    fn reversed_offsets() {
        let header = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#;
        let e = parse_err(raw_file(header, &[0u8; 8]));
        assert!(e.contains("tensor \"a\": data_offsets [8, 4) end before they begin"), "{e}");
    }

    #[test]
    fn overlapping_tensors() {
        let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                        "b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]},
                        "z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}"#;
        let e = parse_err(raw_file(header, &[0u8; 24]));
        assert!(e.contains("tensor \"b\": data [8, 24) overlaps tensor \"a\" (data [0, 16))"), "{e}");
    }

    #[test]
    fn length_does_not_match_shape() {
        let header = r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#;
        let e = parse_err(raw_file(header, &[0u8; 24]));
        assert!(
            e.contains("tensor \"w\": shape [2, 3] of F32 needs 24 bytes, but data_offsets [0, 20) span 20 bytes"),
            "{e}"
        );
        let header = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}}"#;
        let e = parse_err(raw_file(header, &[]));
        assert!(e.contains("overflows"), "{e}");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                        "w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let e = parse_err(raw_file(header, &[0u8; 8]));
        assert!(e.contains("tensor \"w\" appears twice in the header"), "{e}");
        let header = r#"{"__metadata__":{},"__metadata__":{}}"#;
        assert!(parse_err(raw_file(header, &[])).contains("two \"__metadata__\""));
    }

    #[test]
    fn non_utf8_header() {
        let mut bytes = raw_file("{\"a\u{e9}\":1}", &[]);
        // Turn the 2-byte é into an invalid sequence.
        bytes[8 + 3] = 0xff;
        let e = parse_err(bytes);
        assert!(e.contains("not valid UTF-8 (bad byte at header offset 3)"), "{e}");
    }

    #[test]
    fn malformed_headers() {
        let e = parse_err(raw_file("[1, 2]", &[]));
        assert!(e.contains("the header is not valid"), "{e}");
        assert!(e.contains("a JSON object"), "{e}");
        let e = parse_err(raw_file("{} x", &[]));
        assert!(e.contains("trailing characters"), "{e}");
        let e = parse_err(raw_file(r#"{"w":{"shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]));
        assert!(e.contains("tensor \"w\": malformed header entry: missing field `dtype`"), "{e}");
        let e = parse_err(raw_file(r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, &[0; 4]));
        assert!(e.contains("tensor \"w\": malformed header entry"), "{e}");
    }

    #[test]
    fn metadata_is_skipped_and_padding_allowed() {
        let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}    "#;
        let f = SafeTensorsFile::from_bytes("w.safetensors", raw_file(header, &7i32.to_le_bytes())).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f.get("w").unwrap().to_host().unwrap().as_i32().unwrap(), &[7]);
    }

    #[test]
    fn unsupported_dtypes_are_listed_as_other() {
        let header = r#"{"h":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},
                        "q":{"dtype":"F4","shape":[3],"data_offsets":[4,4]},
                        "n":{"dtype":"NEWTYPE","shape":[3],"data_offsets":[4,9]}}"#;
        let e = parse_err(raw_file(header, &[0u8; 9]));
        assert!(
            e.contains("tensor \"q\": shape [3] of F4 needs a size that overflows or is not a whole number of bytes"),
            "{e}"
        );

        let header = r#"{"h":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},
                        "n":{"dtype":"NEWTYPE","shape":[3],"data_offsets":[4,9]}}"#;
        let f = SafeTensorsFile::from_bytes("w.safetensors", raw_file(header, &[0u8; 9])).unwrap();
        let h = f.get("h").unwrap();
        assert_eq!(h.dtype(), &StDType::Other("BF16".into()));
        assert_eq!(h.dtype().as_dtype(), None);
        assert_eq!(f.get("n").unwrap().dtype().name(), "NEWTYPE");
        let e = h.to_host().unwrap_err().to_string();
        assert!(e.contains("tensor \"h\": has dtype BF16"), "{e}");

        let header = r#"{"h":{"dtype":"BF16","shape":[3],"data_offsets":[0,4]}}"#;
        let e = parse_err(raw_file(header, &[0u8; 4]));
        assert!(e.contains("shape [3] of BF16 needs 6 bytes"), "{e}");
    }
}
