//! Tensors in and out through DLPack (<https://dmlc.github.io/dlpack/latest/>), the exchange
//! protocol numpy (≥ 1.23) and torch both speak: an input is any object with `__dlpack__`,
//! copied once into the runtime's aligned buffer (as the C API copies); an output is a
//! [`Tensor`] whose `__dlpack__` hands its buffer over without a copy, so `numpy.from_dlpack` and
//! `torch.from_dlpack` make arrays that own the runtime's memory.
//!
//! Inputs are read through the unversioned protocol (capsules named `dltensor`), which every
//! producer gives when asked without `max_version`. Outputs go out versioned (DLPack 1.0,
//! `dltensor_versioned`, writable) to consumers that ask for it (numpy ≥ 2, recent torch), so
//! that their arrays are writable, and unversioned to the others.

use std::ffi::{c_void, CStr};

use lmc_abi::DType;
use lmc_runtime::HostTensor;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::InputError;

const DLTENSOR: &CStr = c"dltensor";
const USED_DLTENSOR: &CStr = c"used_dltensor";
const DLTENSOR_VERSIONED: &CStr = c"dltensor_versioned";
/// `kDLCPU`, and `kDLCUDAHost` (pinned host memory, readable as host memory).
const DL_CPU: i32 = 1;
const DL_CUDA_HOST: i32 = 3;

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// DLPack 1.0's managed tensor: a version and flags (none set: writable, not a copy) before the
/// tensor.
#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

fn dl_dtype(dtype: DType) -> DLDataType {
    let (code, bits) = match dtype {
        DType::F32 => (2, 32),
        DType::I64 => (0, 64),
        DType::I32 => (0, 32),
    };
    DLDataType { code, bits, lanes: 1 }
}

/// numpy's name of a DLPack dtype, for messages.
fn dtype_name(t: DLDataType) -> String {
    let kind = match t.code {
        0 => "int",
        1 => "uint",
        2 => "float",
        4 => "bfloat",
        5 => "complex",
        6 => "bool",
        _ => "dtype code ",
    };
    let bits = if t.code == 6 { String::new() } else { t.bits.to_string() };
    let lanes = if t.lanes == 1 { String::new() } else { format!("x{}", t.lanes) };
    format!("{kind}{bits}{lanes}")
}

/// Copies the tensor that `obj` exports through `__dlpack__` into a runtime tensor named `name`.
/// It must be on the host, row-major and contiguous, and of a dtype lmc's models take (float32,
/// int64, int32); the Python half makes numpy arrays and torch tensors contiguous first.
pub fn host_tensor(py: Python<'_>, name: &str, obj: &Bound<'_, PyAny>) -> PyResult<HostTensor> {
    if !obj.hasattr("__dlpack__")? {
        return Err(InputError::new_err(format!(
            "input \"{name}\": a {} is not a tensor; pass a numpy array or a torch tensor",
            obj.get_type().name()?
        )));
    }
    let capsule = obj.call_method0("__dlpack__")?;
    // SAFETY: `capsule` is a live object; a capsule of another name (or no capsule) is reported
    // by a null pointer with a Python error set.
    let managed = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), DLTENSOR.as_ptr()) }.cast::<DLManagedTensor>();
    if managed.is_null() {
        return Err(PyErr::take(py).unwrap_or_else(|| InputError::new_err(format!("input \"{name}\": __dlpack__ gave no DLPack capsule"))));
    }
    // SAFETY: a `dltensor` capsule holds a DLManagedTensor that stays valid until its deleter
    // runs; this function is its one consumer (the capsule is renamed below, as the protocol
    // says, so that its destructor leaves it alone), and it calls the deleter after copying.
    let copied = unsafe { copy_out(name, &(*managed).dl_tensor) };
    // SAFETY: as above.
    unsafe {
        ffi::PyCapsule_SetName(capsule.as_ptr(), USED_DLTENSOR.as_ptr());
        if let Some(deleter) = (*managed).deleter {
            deleter(managed);
        }
    }
    copied
}

/// # Safety
/// `t` must describe a live tensor: `shape` (and `strides`, when not null) hold `ndim` values,
/// and `data + byte_offset` the elements they describe.
unsafe fn copy_out(name: &str, t: &DLTensor) -> PyResult<HostTensor> {
    if t.device.device_type != DL_CPU && t.device.device_type != DL_CUDA_HOST {
        return Err(InputError::new_err(format!(
            "input \"{name}\" is on a device (DLPack device type {}); lmc's Python API takes host tensors: move it with .cpu()",
            t.device.device_type
        )));
    }
    let dtype = match (t.dtype.code, t.dtype.bits, t.dtype.lanes) {
        (2, 32, 1) => DType::F32,
        (0, 64, 1) => DType::I64,
        (0, 32, 1) => DType::I32,
        _ => {
            return Err(InputError::new_err(format!(
                "input \"{name}\" is {}; lmc's models take float32, int64 or int32 tensors",
                dtype_name(t.dtype)
            )))
        }
    };
    let ndim = usize::try_from(t.ndim).map_err(|_| InputError::new_err(format!("input \"{name}\": negative rank {}", t.ndim)))?;
    let dims: &[i64] = if ndim == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(t.shape, ndim) }
    };
    let mut shape = Vec::with_capacity(ndim);
    for &d in dims {
        shape.push(usize::try_from(d).map_err(|_| InputError::new_err(format!("input \"{name}\": negative size in shape {dims:?}")))?);
    }
    if !t.strides.is_null() && ndim > 0 {
        let strides = unsafe { std::slice::from_raw_parts(t.strides, ndim) };
        let mut expected: i64 = 1;
        for axis in (0..ndim).rev() {
            // A size-1 axis may have any stride: it is never stepped over.
            if dims[axis] != 1 && strides[axis] != expected {
                return Err(InputError::new_err(format!(
                    "input \"{name}\" is not contiguous (strides {strides:?} for shape {dims:?}); make it so first (numpy.ascontiguousarray, Tensor.contiguous)"
                )));
            }
            expected = expected.saturating_mul(dims[axis]);
        }
    }
    let len = lmc_runtime::tensor::byte_size(dtype, &shape)
        .ok_or_else(|| InputError::new_err(format!("input \"{name}\": shape {shape:?} is too large")))?;
    let bytes: &[u8] = if len == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(t.data.cast::<u8>().add(t.byte_offset as usize), len) }
    };
    HostTensor::from_bytes(name, dtype, shape, bytes).map_err(crate::errors::runtime_error)
}

/// An output of a call: a runtime tensor that hands its buffer to numpy or torch through DLPack
/// (once: the array made from it owns the buffer from then on).
#[pyclass(module = "lmc._lmc")]
pub struct Tensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    data: Option<HostTensor>,
}

impl Tensor {
    pub fn new(t: HostTensor) -> Tensor {
        Tensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: Some(t),
        }
    }
}

/// A managed tensor of one protocol version: its capsule's name, and how it is made around a
/// DLTensor with its deleter.
trait Managed: Sized {
    const CAPSULE: &'static CStr;
    fn new(dl_tensor: DLTensor) -> Self;
    fn dl_tensor(&mut self) -> &mut DLTensor;
    fn set_manager_ctx(&mut self, ctx: *mut c_void);
    /// # Safety
    /// `managed` must be a live managed tensor of this kind, not yet deleted.
    unsafe fn delete(managed: *mut Self);
}

impl Managed for DLManagedTensor {
    const CAPSULE: &'static CStr = DLTENSOR;
    fn new(dl_tensor: DLTensor) -> Self {
        DLManagedTensor {
            dl_tensor,
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(delete_exported::<DLManagedTensor>),
        }
    }
    fn dl_tensor(&mut self) -> &mut DLTensor {
        &mut self.dl_tensor
    }
    fn set_manager_ctx(&mut self, ctx: *mut c_void) {
        self.manager_ctx = ctx;
    }
    unsafe fn delete(managed: *mut Self) {
        // SAFETY: the caller promises a live managed tensor.
        unsafe {
            if let Some(deleter) = (*managed).deleter {
                deleter(managed);
            }
        }
    }
}

/// DLPack 1.0's, writable (no flags set).
impl Managed for DLManagedTensorVersioned {
    const CAPSULE: &'static CStr = DLTENSOR_VERSIONED;
    fn new(dl_tensor: DLTensor) -> Self {
        DLManagedTensorVersioned {
            version: DLPackVersion { major: 1, minor: 0 },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(delete_exported::<DLManagedTensorVersioned>),
            flags: 0,
            dl_tensor,
        }
    }
    fn dl_tensor(&mut self) -> &mut DLTensor {
        &mut self.dl_tensor
    }
    fn set_manager_ctx(&mut self, ctx: *mut c_void) {
        self.manager_ctx = ctx;
    }
    unsafe fn delete(managed: *mut Self) {
        // SAFETY: the caller promises a live managed tensor.
        unsafe {
            if let Some(deleter) = (*managed).deleter {
                deleter(managed);
            }
        }
    }
}

/// What a DLPack consumer holds: the tensor (kept alive until the deleter runs), the shape it
/// reads, and the managed tensor pointing into both. `managed` comes first, so a pointer to it
/// is a pointer to the whole.
#[repr(C)]
struct Exported<M> {
    managed: M,
    tensor: HostTensor,
    shape: Vec<i64>,
}

unsafe extern "C" fn delete_exported<M: Managed>(managed: *mut M) {
    // SAFETY: `managed` is the first field of the `Box<Exported<M>>` that `export` leaked; the
    // protocol calls the deleter once.
    unsafe { drop(Box::from_raw(managed.cast::<Exported<M>>())) };
}

unsafe extern "C" fn destroy_capsule<M: Managed>(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with the capsule being destroyed. A capsule still under its
    // first name was never consumed, so its tensor is freed here; a consumed one (renamed
    // `used_...`) belongs to its consumer.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, M::CAPSULE.as_ptr()) == 1 {
            M::delete(ffi::PyCapsule_GetPointer(capsule, M::CAPSULE.as_ptr()).cast::<M>());
        }
    }
}

/// Hands `tensor` over in a capsule of the protocol version `M`, without copying its buffer.
fn export<M: Managed>(py: Python<'_>, tensor: HostTensor) -> PyResult<Py<PyAny>> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    let dl_tensor = DLTensor {
        data: std::ptr::null_mut(),
        device: DLDevice {
            device_type: DL_CPU,
            device_id: 0,
        },
        ndim: shape.len() as i32,
        dtype: dl_dtype(tensor.dtype),
        shape: std::ptr::null_mut(),
        strides: std::ptr::null_mut(),
        byte_offset: 0,
    };
    let raw = Box::into_raw(Box::new(Exported {
        managed: M::new(dl_tensor),
        tensor,
        shape,
    }));
    // SAFETY: `raw` is a live box, leaked until the deleter runs; its buffers are on the heap and
    // do not move, so the managed tensor may point into them and back to the box.
    unsafe {
        let e = &mut *raw;
        let data = e.tensor.bytes_mut().as_mut_ptr().cast();
        let dims = e.shape.as_mut_ptr();
        e.managed.dl_tensor().data = data;
        e.managed.dl_tensor().shape = dims;
        e.managed.set_manager_ctx(raw.cast());
        let managed: *mut M = &raw mut e.managed;
        let capsule = ffi::PyCapsule_New(managed.cast(), M::CAPSULE.as_ptr(), Some(destroy_capsule::<M>));
        if capsule.is_null() {
            M::delete(managed);
            return Err(PyErr::fetch(py));
        }
        Ok(Bound::from_owned_ptr(py, capsule).unbind())
    }
}

#[pymethods]
impl Tensor {
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// `float32`, `int64` or `int32`, as numpy names them.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.dtype {
            DType::F32 => "float32",
            DType::I64 => "int64",
            DType::I32 => "int32",
        }
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }

    fn __repr__(&self) -> String {
        format!("<lmc Tensor {} {} {:?}>", self.name, self.dtype(), self.shape)
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (DL_CPU, 0)
    }

    /// The tensor as a DLPack capsule, its buffer handed over (a second call fails): DLPack 1.0
    /// when `max_version` allows it, the unversioned protocol otherwise.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__(
        &mut self,
        py: Python<'_>,
        stream: Option<Bound<'_, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        // A host tensor has no stream to synchronise with, and is never copied.
        let _ = (stream, copy);
        if dl_device.is_some_and(|d| d.0 != DL_CPU) {
            return Err(PyBufferError::new_err("lmc's outputs are host tensors; export them to the CPU"));
        }
        let tensor = self
            .data
            .take()
            .ok_or_else(|| PyBufferError::new_err(format!("output \"{}\" was already handed over through DLPack", self.name)))?;
        match max_version {
            Some((major, _)) if major >= 1 => export::<DLManagedTensorVersioned>(py, tensor),
            _ => export::<DLManagedTensor>(py, tensor),
        }
    }
}
