//! Tensors owned by the host: the inputs a caller hands to a run and the outputs it gets back.
//!
//! Generated kernels read and write memory through typed pointers (and may use vector loads), so
//! the bytes of every tensor we pass must be aligned at least to the element size. A `Vec<u8>`
//! promises nothing, so storage here is a vector of 64-byte-aligned chunks: enough for any
//! element type and for a cache line.

use std::fmt;

use lmc_abi::DType;

use crate::error::RuntimeError;

/// One cache line; the unit of [`AlignedBytes`] storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

const CHUNK: usize = std::mem::size_of::<Chunk>();

/// A zero-initialised byte buffer whose start is 64-byte aligned.
#[derive(Clone)]
pub(crate) struct AlignedBytes {
    chunks: Vec<Chunk>,
    len: usize,
}

impl AlignedBytes {
    /// `None` when the memory cannot be had (an allocation failure would otherwise abort).
    fn zeroed(len: usize) -> Option<AlignedBytes> {
        let n = len.div_ceil(CHUNK);
        let mut chunks = Vec::new();
        chunks.try_reserve_exact(n).ok()?;
        chunks.resize(n, Chunk([0; CHUNK]));
        Some(AlignedBytes { chunks, len })
    }

    /// A copy of `bytes`; `None` when the memory cannot be had.
    pub(crate) fn copied(bytes: &[u8]) -> Option<AlignedBytes> {
        let mut out = AlignedBytes::zeroed(bytes.len())?;
        out.as_mut_slice().copy_from_slice(bytes);
        Some(out)
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `Chunk` is `repr(C)` around `[u8; 64]`, so it has no padding and every byte is
        // an initialised `u8`; the vector holds `chunks.len() * 64 >= len` bytes, and the slice
        // borrows `self`, so the storage outlives it.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast::<u8>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.chunks.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Number of elements of `shape`, or `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Bytes needed for a `dtype` tensor of `shape`, or `None` on overflow.
pub fn byte_size(dtype: DType, shape: &[usize]) -> Option<usize> {
    element_count(shape)?
        .checked_mul(dtype.size_bytes())
        .filter(|&n| n <= isize::MAX as usize)
}

/// A named, typed, row-major tensor in host memory. Its storage is always at least 64-byte
/// aligned, and its length always matched `shape` when it was built; `name`, `dtype` and `shape`
/// are public for convenience, and the runtime re-checks them before passing a tensor to a module.
#[derive(Clone, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    data: AlignedBytes,
}

impl fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.len)
    }
}

impl PartialEq for AlignedBytes {
    fn eq(&self, other: &AlignedBytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostTensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len)
            .finish()
    }
}

impl HostTensor {
    /// A zero-filled tensor (0.0 for floats, 0 for integers).
    pub fn zeros(name: impl Into<String>, dtype: DType, shape: impl Into<Vec<usize>>) -> Result<HostTensor, RuntimeError> {
        let name = name.into();
        let shape = shape.into();
        let len = byte_size(dtype, &shape).ok_or_else(|| {
            RuntimeError::invalid_argument(format!(
                "tensor \"{name}\": shape {shape:?} of {} is too large to allocate",
                dtype.as_str()
            ))
        })?;
        let data = AlignedBytes::zeroed(len).ok_or_else(|| {
            RuntimeError::invalid_argument(format!(
                "tensor \"{name}\": cannot allocate {len} bytes for shape {shape:?} of {}",
                dtype.as_str()
            ))
        })?;
        Ok(HostTensor { name, dtype, shape, data })
    }

    /// Copies little-endian `bytes` into a new tensor; their length must match the shape.
    pub fn from_bytes(
        name: impl Into<String>,
        dtype: DType,
        shape: impl Into<Vec<usize>>,
        bytes: &[u8],
    ) -> Result<HostTensor, RuntimeError> {
        let mut t = HostTensor::zeros(name, dtype, shape)?;
        if t.data.len != bytes.len() {
            return Err(RuntimeError::invalid_argument(format!(
                "tensor \"{}\": shape {:?} of {} needs {} bytes, but {} were given",
                t.name,
                t.shape,
                t.dtype.as_str(),
                t.data.len,
                bytes.len()
            )));
        }
        t.data.as_mut_slice().copy_from_slice(bytes);
        Ok(t)
    }

    pub fn from_f32(name: impl Into<String>, shape: impl Into<Vec<usize>>, values: Vec<f32>) -> Result<HostTensor, RuntimeError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor::from_bytes(name, DType::F32, shape, &bytes)
    }

    pub fn from_i64(name: impl Into<String>, shape: impl Into<Vec<usize>>, values: Vec<i64>) -> Result<HostTensor, RuntimeError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor::from_bytes(name, DType::I64, shape, &bytes)
    }

    pub fn from_i32(name: impl Into<String>, shape: impl Into<Vec<usize>>, values: Vec<i32>) -> Result<HostTensor, RuntimeError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor::from_bytes(name, DType::I32, shape, &bytes)
    }

    pub fn element_count(&self) -> usize {
        self.data.len / self.dtype.size_bytes()
    }

    /// The raw little-endian bytes (64-byte aligned).
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.data.as_mut_slice()
    }

    /// Whether the storage length matches `dtype` and `shape` (they are public and may have been
    /// changed since construction).
    pub fn is_consistent(&self) -> bool {
        byte_size(self.dtype, &self.shape) == Some(self.data.len)
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        (self.dtype == DType::F32).then(|| {
            // SAFETY: the storage is 64-byte aligned and `len` bytes long; every bit pattern is a
            // valid f32; the slice borrows `self`.
            unsafe { typed(self.bytes()) }
        })
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        (self.dtype == DType::I64).then(|| {
            // SAFETY: as in `as_f32`; every bit pattern is a valid i64.
            unsafe { typed(self.bytes()) }
        })
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        (self.dtype == DType::I32).then(|| {
            // SAFETY: as in `as_f32`; every bit pattern is a valid i32.
            unsafe { typed(self.bytes()) }
        })
    }

    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        if self.dtype != DType::F32 {
            return None;
        }
        // SAFETY: as in `as_f32`; the exclusive borrow of `self` makes the slice unique.
        Some(unsafe { typed_mut(self.bytes_mut()) })
    }

    pub fn as_i64_mut(&mut self) -> Option<&mut [i64]> {
        if self.dtype != DType::I64 {
            return None;
        }
        // SAFETY: as in `as_f32_mut`.
        Some(unsafe { typed_mut(self.bytes_mut()) })
    }

    pub fn as_i32_mut(&mut self) -> Option<&mut [i32]> {
        if self.dtype != DType::I32 {
            return None;
        }
        // SAFETY: as in `as_f32_mut`.
        Some(unsafe { typed_mut(self.bytes_mut()) })
    }
}

/// Views aligned bytes as plain numbers; trailing bytes that do not fill an element are dropped.
///
/// # Safety
/// `bytes` must be aligned for `T`, and every bit pattern must be a valid `T`.
unsafe fn typed<T: Copy>(bytes: &[u8]) -> &[T] {
    debug_assert_eq!(bytes.as_ptr().align_offset(std::mem::align_of::<T>()), 0);
    // SAFETY: the caller promises alignment and validity; the length is rounded down, so the
    // slice stays inside `bytes` and inherits its lifetime.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / std::mem::size_of::<T>()) }
}

/// # Safety
/// As for [`typed`].
unsafe fn typed_mut<T: Copy>(bytes: &mut [u8]) -> &mut [T] {
    debug_assert_eq!(bytes.as_ptr().align_offset(std::mem::align_of::<T>()), 0);
    // SAFETY: as in `typed`; the exclusive borrow carries over.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / std::mem::size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_aligned_and_zeroed() {
        for n in [0, 1, 7, 64, 65, 1000] {
            let t = HostTensor::zeros("t", DType::F32, vec![n]).unwrap();
            assert_eq!(t.bytes().as_ptr() as usize % 64, 0);
            assert_eq!(t.bytes().len(), 4 * n);
            assert!(t.bytes().iter().all(|&b| b == 0));
            assert_eq!(t.as_f32().unwrap().len(), n);
        }
    }

    #[test]
    fn typed_views() {
        let mut t = HostTensor::from_f32("x", [2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
        assert!(t.as_i64().is_none());
        t.as_f32_mut().unwrap()[3] = 9.0;
        assert_eq!(&t.bytes()[12..], &9.0f32.to_le_bytes());
        let i = HostTensor::from_i64("ids", vec![3], vec![1, -2, 3]).unwrap();
        assert_eq!(i.as_i64().unwrap(), &[1, -2, 3]);
        assert_eq!(i.element_count(), 3);
        let s = HostTensor::from_i32("s", [], vec![5]).unwrap();
        assert_eq!(s.as_i32().unwrap(), &[5]);
        assert!(s.is_consistent());
    }

    #[test]
    fn lengths_are_checked() {
        let e = HostTensor::from_f32("x", [2, 3], vec![0.0; 5]).unwrap_err();
        assert_eq!(e.to_string(), "tensor \"x\": shape [2, 3] of f32 needs 24 bytes, but 20 were given");
        let e = HostTensor::zeros("big", DType::I64, [usize::MAX, 2]).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        let mut t = HostTensor::zeros("t", DType::F32, [4]).unwrap();
        t.shape = vec![5];
        assert!(!t.is_consistent());
    }
}
