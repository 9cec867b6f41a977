//! The C API, for hosts that are not written in Rust; declared in `include/lmc_runtime.h`.
//!
//! The C side cannot see Rust types, panics or `Result`s, so every function here returns a
//! status code, checks every pointer it is given, converts C data into checked [`HostTensor`]s
//! before anything else sees it, and catches panics at the boundary (unwinding into C is
//! undefined behaviour). The message of the last failure is kept per thread, like `errno`, and
//! read with `lmc_last_error`.
//!
//! Keep this file and the header in step: the constants and `LmcTensor` are checked against the
//! header by the tests below.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use lmc_abi::{DType, ABI_VERSION};

use crate::error::RuntimeError;
use crate::generate::Decoder;
use crate::model::{LoadedModel, WeightsSource};
use crate::module::Module;
use crate::tensor::{byte_size, HostTensor};

pub const LMC_OK: i32 = 0;
pub const LMC_ERR_INVALID_ARGUMENT: i32 = 1;
pub const LMC_ERR_WEIGHTS: i32 = 2;
pub const LMC_ERR_ABI_MISMATCH: i32 = 3;
pub const LMC_ERR_LIBRARY: i32 = 4;
pub const LMC_ERR_INPUT: i32 = 5;
pub const LMC_ERR_INTERNAL: i32 = 6;

pub const LMC_F32: i32 = 0;
pub const LMC_I64: i32 = 1;
pub const LMC_I32: i32 = 2;

/// The largest rank the C API accepts; more is certainly a garbage `rank` field.
pub const LMC_MAX_RANK: i32 = 8;

/// More inputs than this is certainly a garbage `n_inputs`.
const MAX_INPUTS: usize = 1 << 16;

/// A tensor crossing the C API: inputs given to `lmc_model_run`, outputs read back with
/// `lmc_outputs_get`. Data is little-endian, contiguous and row-major.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LmcTensor {
    pub name: *const c_char,
    /// `LMC_F32`, `LMC_I64` or `LMC_I32`.
    pub dtype: i32,
    pub rank: i32,
    /// `rank` sizes.
    pub shape: *const i64,
    pub data: *const c_void,
    pub data_bytes: usize,
}

/// A loaded model with its weights bound (opaque to C).
pub struct LmcModel {
    model: LoadedModel,
    manifest: CString,
}

/// The outputs of one run, owning everything an `LmcTensor` read from it points to (opaque to C).
pub struct LmcOutputs {
    tensors: Vec<HostTensor>,
    names: Vec<CString>,
    shapes: Vec<Vec<i64>>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with an interior NUL would be cut short in C; make it visible instead.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn dtype_code(d: DType) -> i32 {
    match d {
        DType::F32 => LMC_F32,
        DType::I64 => LMC_I64,
        DType::I32 => LMC_I32,
    }
}

fn dtype_from_code(code: i32) -> Option<DType> {
    match code {
        LMC_F32 => Some(DType::F32),
        LMC_I64 => Some(DType::I64),
        LMC_I32 => Some(DType::I32),
        _ => None,
    }
}

/// Runs `body`, turning its error or panic into a status code and the thread's last error.
fn guard(body: impl FnOnce() -> Result<(), RuntimeError>) -> i32 {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => LMC_OK,
        Ok(Err(e)) => {
            set_last_error(e.message());
            e.kind().status_code()
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(&format!("internal error: the lmc runtime panicked: {what}"));
            LMC_ERR_INTERNAL
        }
    }
}

fn null_arg(func: &str, arg: &str) -> RuntimeError {
    RuntimeError::invalid_argument(format!("{func}: `{arg}` is NULL"))
}

/// # Safety
/// `p` must be null or point to a NUL-terminated string.
unsafe fn c_path(p: *const c_char, func: &str, arg: &str) -> Result<PathBuf, RuntimeError> {
    if p.is_null() {
        return Err(null_arg(func, arg));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| RuntimeError::invalid_argument(format!("{func}: `{arg}` is not UTF-8")))
    }
}

/// The message of the calling thread's last failed call, or "" if its last call succeeded. The
/// string stays valid until the thread's next call into the API.
#[no_mangle]
pub extern "C" fn lmc_last_error() -> *const c_char {
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

/// The ABI version of modules this runtime can load.
#[no_mangle]
pub extern "C" fn lmc_runtime_abi_version() -> u32 {
    ABI_VERSION
}

/// Loads a module library, binds its weights (a `.safetensors` file or a model directory; NULL
/// for a module without parameters) and stores the model in `*out` (NULL on failure).
///
/// # Safety
/// The paths must be NULL or NUL-terminated strings; `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lmc_model_open(library_path: *const c_char, weights_path: *const c_char, out: *mut *mut LmcModel) -> i32 {
    const F: &str = "lmc_model_open";
    guard(|| {
        if out.is_null() {
            return Err(null_arg(F, "out"));
        }
        // SAFETY: `out` is non-null and the caller promises it is writable.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: the caller promises NUL-terminated strings.
        let library = unsafe { c_path(library_path, F, "library_path") }?;
        let weights = if weights_path.is_null() {
            WeightsSource::None
        } else {
            // SAFETY: as above.
            WeightsSource::Path(unsafe { c_path(weights_path, F, "weights_path") }?)
        };
        let model = Module::open_library(&library)?.bind_weights(weights)?;
        let boxed = Box::new(LmcModel::new(model)?);
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(boxed) };
        Ok(())
    })
}

impl LmcModel {
    fn new(model: LoadedModel) -> Result<LmcModel, RuntimeError> {
        let manifest = CString::new(model.module().manifest_json()).map_err(|_| RuntimeError::internal("the manifest holds a NUL byte"))?;
        Ok(LmcModel { model, manifest })
    }
}

/// Frees a model from `lmc_model_open`; NULL is ignored.
///
/// # Safety
/// `model` must be NULL or a pointer from `lmc_model_open` not yet freed, and no run may be in
/// progress on it.
#[no_mangle]
pub unsafe extern "C" fn lmc_model_free(model: *mut LmcModel) {
    if model.is_null() {
        return;
    }
    // Nothing to report from a void function; a panic in a destructor is only contained.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller passes a pointer from `Box::into_raw` in `lmc_model_open`, once.
        drop(unsafe { Box::from_raw(model) });
    }));
}

/// The model's manifest as JSON, owned by the model; NULL if `model` is NULL.
///
/// # Safety
/// `model` must be NULL or a live pointer from `lmc_model_open`.
#[no_mangle]
pub unsafe extern "C" fn lmc_model_manifest(model: *const LmcModel) -> *const c_char {
    if model.is_null() {
        return std::ptr::null();
    }
    // SAFETY: non-null, and the caller promises a live model.
    unsafe { (*model).manifest.as_ptr() }
}

/// Runs the model's `forward` entry on `n_inputs` inputs (any order) and stores the outputs in
/// `*out` (NULL on failure).
///
/// # Safety
/// `model` must be a live model; `inputs` must point to `n_inputs` tensors whose pointers are
/// valid as their fields describe; `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn lmc_model_run(
    model: *const LmcModel,
    inputs: *const LmcTensor,
    n_inputs: usize,
    out: *mut *mut LmcOutputs,
) -> i32 {
    const F: &str = "lmc_model_run";
    guard(|| {
        if out.is_null() {
            return Err(null_arg(F, "out"));
        }
        // SAFETY: non-null, and the caller promises it is writable.
        unsafe { *out = std::ptr::null_mut() };
        if model.is_null() {
            return Err(null_arg(F, "model"));
        }
        // SAFETY: the caller promises `n_inputs` tensors whose pointers are valid.
        let tensors = unsafe { host_tensors_from_c(inputs, n_inputs, F) }?;
        // SAFETY: non-null, and the caller promises a live model.
        let model = unsafe { &*model };
        let outputs = model.model.run(&tensors)?;
        let boxed = Box::new(LmcOutputs::new(outputs)?);
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(boxed) };
        Ok(())
    })
}

/// The decoding state of one batch of sequences: the caches of a decode step (opaque to C).
pub struct LmcDecoder {
    decoder: Decoder,
}

/// Starts decoding `batch` sequences with a decode-step model (a library from `lmc compile
/// --decode N`): allocates its caches, zero-filled, and stores the decoder in `*out` (NULL on
/// failure). A forward's library is refused.
///
/// # Safety
/// `model` must be NULL or a live model; `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lmc_decoder_new(model: *const LmcModel, batch: usize, out: *mut *mut LmcDecoder) -> i32 {
    const F: &str = "lmc_decoder_new";
    guard(|| {
        if out.is_null() {
            return Err(null_arg(F, "out"));
        }
        // SAFETY: non-null, and the caller promises it is writable.
        unsafe { *out = std::ptr::null_mut() };
        if model.is_null() {
            return Err(null_arg(F, "model"));
        }
        // SAFETY: non-null, and the caller promises a live model.
        let model = unsafe { &*model };
        let boxed = Box::new(LmcDecoder {
            decoder: Decoder::new(&model.model, batch)?,
        });
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(boxed) };
        Ok(())
    })
}

/// Gives the decoder inputs it passes whole to every step: an encoder-decoder's context (the
/// outputs of its context library, `lmc compile --decode` writes it as `*.context.so`) and the
/// encoder's mask. The tensors are copied; a later call replaces them all.
///
/// # Safety
/// `decoder` must be NULL or live; `inputs` must point to `n_inputs` tensors whose pointers are
/// valid as their fields describe.
#[no_mangle]
pub unsafe extern "C" fn lmc_decoder_set_context(decoder: *mut LmcDecoder, inputs: *const LmcTensor, n_inputs: usize) -> i32 {
    const F: &str = "lmc_decoder_set_context";
    guard(|| {
        if decoder.is_null() {
            return Err(null_arg(F, "decoder"));
        }
        // SAFETY: the caller promises `n_inputs` tensors whose pointers are valid.
        let tensors = unsafe { host_tensors_from_c(inputs, n_inputs, F) }?;
        // SAFETY: non-null, and the caller promises a live decoder.
        let decoder = unsafe { &mut (*decoder).decoder };
        decoder.set_context(tensors);
        Ok(())
    })
}

/// Runs `n` new tokens of every sequence (`tokens`: batch × n values, row-major) at the
/// decoder's next positions, and stores their logits, `[batch, n, vocabulary]`, as the one
/// tensor of `*out` (NULL on failure). The first step is the prompt. Decoding past the
/// capacity the library was compiled with, or with another model than the decoder's, is an
/// error that leaves the decoder as it was.
///
/// # Safety
/// `model` and `decoder` must be NULL or live; `tokens` must be NULL or point to batch × n
/// values; `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lmc_decoder_step(
    model: *const LmcModel,
    decoder: *mut LmcDecoder,
    tokens: *const i64,
    n: usize,
    out: *mut *mut LmcOutputs,
) -> i32 {
    const F: &str = "lmc_decoder_step";
    guard(|| {
        if out.is_null() {
            return Err(null_arg(F, "out"));
        }
        // SAFETY: non-null, and the caller promises it is writable.
        unsafe { *out = std::ptr::null_mut() };
        if model.is_null() {
            return Err(null_arg(F, "model"));
        }
        if decoder.is_null() {
            return Err(null_arg(F, "decoder"));
        }
        if tokens.is_null() {
            return Err(null_arg(F, "tokens"));
        }
        // SAFETY: non-null, and the caller promises live objects.
        let (model, decoder) = unsafe { (&*model, &mut (*decoder).decoder) };
        let count = decoder
            .batch()
            .checked_mul(n)
            .filter(|&c| c <= MAX_INPUTS * MAX_INPUTS)
            .ok_or_else(|| RuntimeError::invalid_argument(format!("{F}: n is {n}; is it uninitialised?")))?;
        // SAFETY: non-null; the caller promises batch × n values.
        let tokens = unsafe { std::slice::from_raw_parts(tokens, count) };
        let logits = decoder.step(&model.model, tokens, n)?;
        let boxed = Box::new(LmcOutputs::new(vec![logits])?);
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(boxed) };
        Ok(())
    })
}

/// The next position a decoder writes (the tokens it has run so far); -1 if `decoder` is NULL.
///
/// # Safety
/// `decoder` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn lmc_decoder_position(decoder: *const LmcDecoder) -> i64 {
    if decoder.is_null() {
        return -1;
    }
    // SAFETY: non-null, and the caller promises a live decoder.
    unsafe { (*decoder).decoder.position() }
}

/// Frees a decoder and its caches; NULL is ignored.
///
/// # Safety
/// `decoder` must be NULL or a pointer from `lmc_decoder_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn lmc_decoder_free(decoder: *mut LmcDecoder) {
    if decoder.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller passes a pointer from `Box::into_raw` in `lmc_decoder_new`, once.
        drop(unsafe { Box::from_raw(decoder) });
    }));
}

/// Checks an array of C tensors and copies them into [`HostTensor`]s.
///
/// # Safety
/// `inputs` must be NULL or point to `n_inputs` tensors whose pointers are valid as their
/// fields describe.
unsafe fn host_tensors_from_c(inputs: *const LmcTensor, n_inputs: usize, func: &str) -> Result<Vec<HostTensor>, RuntimeError> {
    if n_inputs > MAX_INPUTS {
        return Err(RuntimeError::invalid_argument(format!(
            "{func}: n_inputs is {n_inputs}; is it uninitialised?"
        )));
    }
    let given: &[LmcTensor] = if n_inputs == 0 {
        &[]
    } else if inputs.is_null() {
        return Err(null_arg(func, "inputs"));
    } else {
        // SAFETY: non-null, and the caller promises `n_inputs` tensors (bounded above).
        unsafe { std::slice::from_raw_parts(inputs, n_inputs) }
    };
    given
        .iter()
        .enumerate()
        // SAFETY: the caller promises each tensor's pointers are valid.
        .map(|(i, t)| unsafe { host_tensor_from_c(t, i, func) })
        .collect()
}

/// Checks one C tensor and copies it into a [`HostTensor`].
///
/// # Safety
/// `t`'s pointers must be valid for what its fields describe.
unsafe fn host_tensor_from_c(t: &LmcTensor, i: usize, func: &str) -> Result<HostTensor, RuntimeError> {
    let bad = |msg: String| RuntimeError::invalid_argument(format!("{func}: inputs[{i}]: {msg}"));
    if t.name.is_null() {
        return Err(bad("`name` is NULL".to_string()));
    }
    // SAFETY: non-null; the caller promises a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(t.name) }
        .to_str()
        .map_err(|e| bad(format!("`name` is not valid UTF-8 ({e})")))?;
    let bad = |msg: String| RuntimeError::invalid_argument(format!("{func}: inputs[{i}] (\"{name}\"): {msg}"));
    let dtype =
        dtype_from_code(t.dtype).ok_or_else(|| bad(format!("dtype code {} is not LMC_F32 (0), LMC_I64 (1) or LMC_I32 (2)", t.dtype)))?;
    if !(0..=LMC_MAX_RANK).contains(&t.rank) {
        return Err(bad(format!("rank {} is outside 0..={LMC_MAX_RANK}", t.rank)));
    }
    let rank = t.rank as usize;
    let dims: &[i64] = if rank == 0 {
        &[]
    } else if t.shape.is_null() {
        return Err(bad(format!("rank is {rank} but `shape` is NULL")));
    } else {
        // SAFETY: non-null; the caller promises `rank` sizes.
        unsafe { std::slice::from_raw_parts(t.shape, rank) }
    };
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| bad(format!("shape {dims:?} has a negative size")))?;
    let needed = byte_size(dtype, &shape).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    if needed != t.data_bytes {
        return Err(bad(format!(
            "shape {shape:?} of {} needs {needed} bytes, but data_bytes is {}",
            dtype.as_str(),
            t.data_bytes
        )));
    }
    let data: &[u8] = if needed == 0 {
        &[]
    } else if t.data.is_null() {
        return Err(bad(format!("`data` is NULL but data_bytes is {needed}")));
    } else {
        // SAFETY: non-null; the caller promises `data_bytes` readable bytes (any alignment).
        unsafe { std::slice::from_raw_parts(t.data.cast::<u8>(), needed) }
    };
    HostTensor::from_bytes(name, dtype, shape, data)
}

impl LmcOutputs {
    fn new(tensors: Vec<HostTensor>) -> Result<LmcOutputs, RuntimeError> {
        let names = tensors
            .iter()
            .map(|t| CString::new(t.name.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| RuntimeError::internal("an output name holds a NUL byte"))?;
        // Sizes fit: each output was allocated, so its byte size is at most isize::MAX.
        let shapes = tensors.iter().map(|t| t.shape.iter().map(|&d| d as i64).collect()).collect();
        Ok(LmcOutputs { tensors, names, shapes })
    }
}

/// The number of outputs; 0 if `outputs` is NULL.
///
/// # Safety
/// `outputs` must be NULL or a live pointer from `lmc_model_run`.
#[no_mangle]
pub unsafe extern "C" fn lmc_outputs_count(outputs: *const LmcOutputs) -> usize {
    if outputs.is_null() {
        return 0;
    }
    // SAFETY: non-null, and the caller promises it is live.
    unsafe { (*outputs).tensors.len() }
}

/// Describes output `index` in `*out`; the pointers stay valid until `lmc_outputs_free`.
///
/// # Safety
/// `outputs` must be NULL or live; `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lmc_outputs_get(outputs: *const LmcOutputs, index: usize, out: *mut LmcTensor) -> i32 {
    const F: &str = "lmc_outputs_get";
    guard(|| {
        if outputs.is_null() {
            return Err(null_arg(F, "outputs"));
        }
        if out.is_null() {
            return Err(null_arg(F, "out"));
        }
        // SAFETY: non-null, and the caller promises it is live.
        let o = unsafe { &*outputs };
        let n = o.tensors.len();
        let t = o
            .tensors
            .get(index)
            .ok_or_else(|| RuntimeError::invalid_argument(format!("{F}: index {index} is out of range; there are {n} outputs")))?;
        let desc = LmcTensor {
            name: o.names[index].as_ptr(),
            dtype: dtype_code(t.dtype),
            rank: t.shape.len() as i32,
            shape: o.shapes[index].as_ptr(),
            data: t.bytes().as_ptr().cast(),
            data_bytes: t.bytes().len(),
        };
        // SAFETY: non-null, and the caller promises it is writable.
        unsafe { out.write(desc) };
        Ok(())
    })
}

/// Frees outputs from `lmc_model_run`; NULL is ignored.
///
/// # Safety
/// `outputs` must be NULL or a pointer from `lmc_model_run` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn lmc_outputs_free(outputs: *mut LmcOutputs) {
    if outputs.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller passes a pointer from `Box::into_raw` in `lmc_model_run`, once.
        drop(unsafe { Box::from_raw(outputs) });
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::module::tests::test_module;
    use crate::safetensors::tests::TempDir;
    use crate::safetensors::write_safetensors;

    const HEADER: &str = include_str!("../include/lmc_runtime.h");

    fn last_error() -> String {
        // SAFETY: `lmc_last_error` returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(lmc_last_error()) }.to_str().unwrap().to_string()
    }

    fn header_define(name: &str) -> i32 {
        let line = HEADER
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name) && l.starts_with("#define"))
            .unwrap_or_else(|| panic!("{name} is not #defined in the header"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    #[test]
    fn header_constants_match() {
        for (name, value) in [
            ("LMC_OK", LMC_OK),
            ("LMC_ERR_INVALID_ARGUMENT", LMC_ERR_INVALID_ARGUMENT),
            ("LMC_ERR_WEIGHTS", LMC_ERR_WEIGHTS),
            ("LMC_ERR_ABI_MISMATCH", LMC_ERR_ABI_MISMATCH),
            ("LMC_ERR_LIBRARY", LMC_ERR_LIBRARY),
            ("LMC_ERR_INPUT", LMC_ERR_INPUT),
            ("LMC_ERR_INTERNAL", LMC_ERR_INTERNAL),
            ("LMC_F32", LMC_F32),
            ("LMC_I64", LMC_I64),
            ("LMC_I32", LMC_I32),
            ("LMC_MAX_RANK", LMC_MAX_RANK),
            ("LMC_RUNTIME_ABI_VERSION", ABI_VERSION as i32),
        ] {
            assert_eq!(header_define(name), value, "{name}");
        }
        for (kind, name) in [
            (ErrorKind::InvalidArgument, "LMC_ERR_INVALID_ARGUMENT"),
            (ErrorKind::Weights, "LMC_ERR_WEIGHTS"),
            (ErrorKind::AbiMismatch, "LMC_ERR_ABI_MISMATCH"),
            (ErrorKind::Library, "LMC_ERR_LIBRARY"),
            (ErrorKind::Input, "LMC_ERR_INPUT"),
            (ErrorKind::Internal, "LMC_ERR_INTERNAL"),
        ] {
            assert_eq!(kind.status_code(), header_define(name), "{name}");
        }
        for f in [
            "lmc_last_error",
            "lmc_runtime_abi_version",
            "lmc_model_open",
            "lmc_model_free",
            "lmc_model_manifest",
            "lmc_model_run",
            "lmc_outputs_count",
            "lmc_outputs_get",
            "lmc_outputs_free",
        ] {
            assert!(HEADER.contains(&format!("{f}(")), "{f} is not declared in the header");
        }
    }

    /// Compiles a C program against the header that prints the struct layout, and compares it
    /// with Rust's. Skipped where no C compiler is installed.
    #[test]
    fn header_struct_layout_matches() {
        let dir = TempDir::new("capi-layout");
        let src = dir.path("layout.c");
        let exe = dir.path("layout");
        std::fs::write(
            &src,
            "#include <stdio.h>\n#include <stddef.h>\n#include \"lmc_runtime.h\"\n\
             int main(void) { printf(\"%zu %zu %zu %zu %zu %zu %zu\", sizeof(LmcTensor), \
             offsetof(LmcTensor, name), offsetof(LmcTensor, dtype), offsetof(LmcTensor, rank), \
             offsetof(LmcTensor, shape), offsetof(LmcTensor, data), \
             offsetof(LmcTensor, data_bytes)); return 0; }\n",
        )
        .unwrap();
        let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
        let status = std::process::Command::new("cc")
            .args(["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I", include])
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status();
        let Ok(status) = status else {
            eprintln!("no C compiler; skipping the header layout check");
            return;
        };
        assert!(status.success(), "the header does not compile as C99");
        let out = std::process::Command::new(&exe).output().unwrap();
        let c = String::from_utf8(out.stdout).unwrap();
        let rust = format!(
            "{} {} {} {} {} {} {}",
            std::mem::size_of::<LmcTensor>(),
            std::mem::offset_of!(LmcTensor, name),
            std::mem::offset_of!(LmcTensor, dtype),
            std::mem::offset_of!(LmcTensor, rank),
            std::mem::offset_of!(LmcTensor, shape),
            std::mem::offset_of!(LmcTensor, data),
            std::mem::offset_of!(LmcTensor, data_bytes),
        );
        assert_eq!(c, rust);
    }

    #[test]
    fn open_checks_pointers_and_reports_errors() {
        let mut m: *mut LmcModel = std::ptr::dangling_mut();
        // SAFETY: null paths are allowed; `m` is writable.
        let rc = unsafe { lmc_model_open(std::ptr::null(), std::ptr::null(), &mut m) };
        assert_eq!(rc, LMC_ERR_INVALID_ARGUMENT);
        assert!(m.is_null());
        assert_eq!(last_error(), "lmc_model_open: `library_path` is NULL");

        let lib = c"/nonexistent/libmodel.so";
        // SAFETY: valid strings; `m` is writable.
        let rc = unsafe { lmc_model_open(lib.as_ptr(), std::ptr::null(), &mut m) };
        assert_eq!(rc, LMC_ERR_LIBRARY);
        assert!(last_error().starts_with("cannot load /nonexistent/libmodel.so"));

        // SAFETY: null `out` is reported, not written.
        let rc = unsafe { lmc_model_open(lib.as_ptr(), std::ptr::null(), std::ptr::null_mut()) };
        assert_eq!(rc, LMC_ERR_INVALID_ARGUMENT);

        assert_eq!(lmc_runtime_abi_version(), ABI_VERSION);
        // SAFETY: null is allowed.
        unsafe {
            lmc_model_free(std::ptr::null_mut());
            lmc_outputs_free(std::ptr::null_mut());
            assert!(lmc_model_manifest(std::ptr::null()).is_null());
            assert_eq!(lmc_outputs_count(std::ptr::null()), 0);
        }
    }

    fn c_model() -> (*mut LmcModel, TempDir) {
        let dir = TempDir::new("capi-run");
        let path = dir.path("w.safetensors");
        let table: Vec<u8> = (0..40).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let scale = 1.0f32.to_le_bytes();
        write_safetensors(
            &path,
            &[
                ("embeddings.word_embeddings.weight", DType::F32, &[10, 4], &table),
                ("scale", DType::F32, &[1], &scale),
            ],
        )
        .unwrap();
        let model = test_module().bind_weights(WeightsSource::Path(path)).unwrap();
        (Box::into_raw(Box::new(LmcModel::new(model).unwrap())), dir)
    }

    #[test]
    fn run_through_the_c_api() {
        let (model, _dir) = c_model();
        let ids = [2i64, 1];
        let types = [0i32, 0];
        let shape = [1i64, 2];
        let inputs = [
            LmcTensor {
                name: c"input_ids".as_ptr(),
                dtype: LMC_I64,
                rank: 2,
                shape: shape.as_ptr(),
                data: ids.as_ptr().cast(),
                data_bytes: 16,
            },
            LmcTensor {
                name: c"token_type_ids".as_ptr(),
                dtype: LMC_I32,
                rank: 2,
                shape: shape.as_ptr(),
                data: types.as_ptr().cast(),
                data_bytes: 8,
            },
        ];
        let mut outs: *mut LmcOutputs = std::ptr::null_mut();
        // SAFETY: every pointer is valid as described.
        unsafe {
            let json = CStr::from_ptr(lmc_model_manifest(model)).to_str().unwrap();
            assert!(json.contains("\"bert-tiny\""));
            assert_eq!(lmc_model_run(model, inputs.as_ptr(), 2, &mut outs), LMC_OK, "{}", last_error());
            assert_eq!(last_error(), "");
            assert_eq!(lmc_outputs_count(outs), 1);
            let mut t = std::mem::zeroed::<LmcTensor>();
            assert_eq!(lmc_outputs_get(outs, 0, &mut t), LMC_OK);
            assert_eq!(CStr::from_ptr(t.name).to_str().unwrap(), "last_hidden_state");
            assert_eq!((t.dtype, t.rank), (LMC_F32, 3));
            assert_eq!(std::slice::from_raw_parts(t.shape, 3), &[1, 2, 4]);
            assert_eq!(t.data_bytes, 32);
            let v = std::slice::from_raw_parts(t.data.cast::<f32>(), 8);
            assert_eq!(v, &[8.0, 9.0, 10.0, 11.0, 4.0, 5.0, 6.0, 7.0]);
            assert_eq!(lmc_outputs_get(outs, 1, &mut t), LMC_ERR_INVALID_ARGUMENT);
            assert_eq!(last_error(), "lmc_outputs_get: index 1 is out of range; there are 1 outputs");
            lmc_outputs_free(outs);

            // Validation of the C description itself.
            let mut bad = inputs;
            bad[0].data_bytes = 15;
            assert_eq!(lmc_model_run(model, bad.as_ptr(), 2, &mut outs), LMC_ERR_INVALID_ARGUMENT);
            assert!(outs.is_null());
            assert_eq!(
                last_error(),
                "lmc_model_run: inputs[0] (\"input_ids\"): shape [1, 2] of i64 needs 16 \
                 bytes, but data_bytes is 15"
            );
            let mut bad = inputs;
            bad[1].dtype = 7;
            assert_eq!(lmc_model_run(model, bad.as_ptr(), 2, &mut outs), LMC_ERR_INVALID_ARGUMENT);
            assert!(last_error().contains("dtype code 7"));
            let mut bad = inputs;
            bad[1].rank = 9;
            assert_eq!(lmc_model_run(model, bad.as_ptr(), 2, &mut outs), LMC_ERR_INVALID_ARGUMENT);
            assert!(last_error().contains("rank 9 is outside 0..=8"));
            let neg = [1i64, -2];
            let mut bad = inputs;
            bad[1].shape = neg.as_ptr();
            assert_eq!(lmc_model_run(model, bad.as_ptr(), 2, &mut outs), LMC_ERR_INVALID_ARGUMENT);
            assert!(last_error().contains("negative size"));
            let mut bad = inputs;
            bad[0].data = std::ptr::null();
            assert_eq!(lmc_model_run(model, bad.as_ptr(), 2, &mut outs), LMC_ERR_INVALID_ARGUMENT);
            assert!(last_error().contains("`data` is NULL"));
            let bytes = [0xffu8, 0];
            let mut bad = inputs;
            bad[0].name = bytes.as_ptr().cast();
            assert_eq!(lmc_model_run(model, bad.as_ptr(), 2, &mut outs), LMC_ERR_INVALID_ARGUMENT);
            assert!(last_error().contains("inputs[0]: `name` is not valid UTF-8"));

            // Model-level validation comes back as LMC_ERR_INPUT.
            assert_eq!(lmc_model_run(model, inputs.as_ptr(), 1, &mut outs), LMC_ERR_INPUT);
            assert!(last_error().starts_with("missing input \"token_type_ids\""));
            assert_eq!(lmc_model_run(model, std::ptr::null(), 2, &mut outs), LMC_ERR_INVALID_ARGUMENT);
            assert_eq!(
                lmc_model_run(std::ptr::null(), inputs.as_ptr(), 2, &mut outs),
                LMC_ERR_INVALID_ARGUMENT
            );
            assert_eq!(last_error(), "lmc_model_run: `model` is NULL");
            lmc_model_free(model);
        }
    }

    /// Builds a fake generated module from C with the system compiler: `y = x * w[0]`, with
    /// `x`, `y: f32 [N]`, `N <= 4`. `None` where no C compiler is installed.
    fn build_c_module(dir: &TempDir, name: &str, abi_version: u32) -> Option<PathBuf> {
        use lmc_abi::{Bound, Dim, Entry, Manifest, SymbolSpec, TensorSpec};
        let spec = |name: &str, shape: Vec<Dim>| TensorSpec {
            name: name.into(),
            dtype: DType::F32,
            shape,
            index_bound: None,
            packing: None,
            default: None,
        };
        let n = || Dim::Symbol("N".into());
        let manifest = Manifest {
            abi_version,
            generator: "lmc 9.9.9".into(),
            model: "scale".into(),
            config: vec![],
            symbols: vec![SymbolSpec {
                name: "N".into(),
                max: Some(Bound {
                    limit: 4,
                    reason: "a test limit".into(),
                }),
            }],
            params: vec![spec("w", vec![Dim::Static(1)])],
            inputs: vec![spec("x", vec![n()])],
            outputs: vec![spec("y", vec![n()])],
            entries: vec![Entry {
                name: "forward".into(),
                symbol: "lmc_forward".into(),
            }],
            decode: None,
            device: Default::default(),
        };
        let json = manifest.to_json().replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let src = format!(
            "#include <stdint.h>\n\
             typedef struct {{ float *alloc; float *aligned; int64_t offset; int64_t size; \
             int64_t stride; }} D1;\n\
             uint32_t lmc_abi_version(void) {{ return {abi_version}; }}\n\
             const char *lmc_manifest(void) {{ return \"{json}\"; }}\n\
             void lmc_forward(void **args) {{\n\
               D1 *w = args[0], *x = args[1], *y = args[2];\n\
               for (int64_t i = 0; i < x->size; i++) y->aligned[i] = x->aligned[i] * w->aligned[0];\n\
             }}\n"
        );
        let c = dir.path(&format!("{name}.c"));
        let so = dir.path(&format!("lib{name}.so"));
        std::fs::write(&c, src).unwrap();
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&c)
            .status()
            .ok()?;
        assert!(status.success(), "the fake module does not compile");
        Some(so)
    }

    fn c_string(p: &std::path::Path) -> CString {
        CString::new(p.to_str().unwrap()).unwrap()
    }

    /// The whole C path on a real shared library: dlopen, ABI check, weights, run, outputs.
    #[test]
    fn shared_library_end_to_end() {
        let dir = TempDir::new("capi-so");
        let Some(lib) = build_c_module(&dir, "scale", ABI_VERSION) else {
            eprintln!("no C compiler; skipping the shared-library test");
            return;
        };
        let weights = dir.path("w.safetensors");
        write_safetensors(&weights, &[("w", DType::F32, &[1], &3.0f32.to_le_bytes())]).unwrap();
        let (lib_c, weights_c) = (c_string(&lib), c_string(&weights));
        let x = [1.0f32, 2.0];
        let shape = [2i64];
        let input = LmcTensor {
            name: c"x".as_ptr(),
            dtype: LMC_F32,
            rank: 1,
            shape: shape.as_ptr(),
            data: x.as_ptr().cast(),
            data_bytes: 8,
        };
        let mut m: *mut LmcModel = std::ptr::null_mut();
        let mut outs: *mut LmcOutputs = std::ptr::null_mut();
        // SAFETY: every pointer is valid as described.
        unsafe {
            let rc = lmc_model_open(lib_c.as_ptr(), weights_c.as_ptr(), &mut m);
            assert_eq!(rc, LMC_OK, "{}", last_error());
            assert_eq!(lmc_model_run(m, &input, 1, &mut outs), LMC_OK, "{}", last_error());
            let mut y = std::mem::zeroed::<LmcTensor>();
            assert_eq!(lmc_outputs_get(outs, 0, &mut y), LMC_OK);
            assert_eq!(std::slice::from_raw_parts(y.data.cast::<f32>(), 2), &[3.0, 6.0]);
            lmc_outputs_free(outs);

            let long = [0.0f32; 5];
            let shape5 = [5i64];
            let big = LmcTensor {
                shape: shape5.as_ptr(),
                data: long.as_ptr().cast(),
                data_bytes: 20,
                ..input
            };
            assert_eq!(lmc_model_run(m, &big, 1, &mut outs), LMC_ERR_INPUT);
            assert_eq!(
                last_error(),
                "N = 5 (dimension 0 of input \"x\") exceeds the model's limit of 4 (a test limit)"
            );
            lmc_model_free(m);

            let rc = lmc_model_open(lib_c.as_ptr(), std::ptr::null(), &mut m);
            assert_eq!(rc, LMC_ERR_WEIGHTS);
            assert!(last_error().starts_with("parameter \"w\" (F32 [1]) is not in the weights"));
        }

        let Some(old) = build_c_module(&dir, "old", ABI_VERSION + 1) else {
            return;
        };
        let old_c = c_string(&old);
        let mut m: *mut LmcModel = std::ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe { lmc_model_open(old_c.as_ptr(), weights_c.as_ptr(), &mut m) };
        assert_eq!(rc, LMC_ERR_ABI_MISMATCH);
        let want = format!(
            "{} was built for lmc ABI {} (by lmc 9.9.9); this runtime speaks ABI {ABI_VERSION}: \
             recompile it with this lmc",
            old.display(),
            ABI_VERSION + 1
        );
        assert!(last_error().starts_with(&want), "{}", last_error());
    }

    #[test]
    fn panics_become_internal_errors() {
        let rc = guard(|| panic!("boom"));
        assert_eq!(rc, LMC_ERR_INTERNAL);
        assert_eq!(last_error(), "internal error: the lmc runtime panicked: boom");
    }
}
