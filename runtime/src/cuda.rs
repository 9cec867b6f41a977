//! The device layer for modules compiled with `--target cuda`: the CUDA driver API, loaded
//! when first needed (`libcuda.so.1`, which NVIDIA's driver installs), so that lmc builds and
//! runs on machines without CUDA, and nothing from a CUDA toolkit is needed to build it.
//!
//! A CUDA module's host code calls MLIR's `mgpu*` functions (`lmc_abi::DEVICE_FUNCTIONS`); this
//! file implements them on the driver API and hands the module a table of them
//! ([`device_table`]). They cannot return errors (their C signatures are MLIR's), so the first
//! failure is recorded ([`take_error`]) and later calls do nothing until the runtime collects it
//! after the entry point returns.
//!
//! Everything runs on one stream, in order: device allocations and frees are stream-ordered
//! (`cuMemAllocAsync`/`cuMemFreeAsync`), and the host code never reads device memory, so the
//! synchronisations the lowering asks for between launches are not needed; the runtime
//! synchronises once, before it copies the outputs back.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Mutex, OnceLock};

use crate::error::RuntimeError;

type CuResult = c_int;
type CuDevicePtr = u64;
type Handle = *mut c_void;

/// The driver functions lmc uses, resolved from `libcuda`.
struct Driver {
    _lib: libloading::Library,
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut Handle, c_int) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(Handle) -> CuResult,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut Handle, *const c_void) -> CuResult,
    module_unload: unsafe extern "C" fn(Handle) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut Handle, Handle, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch_kernel: unsafe extern "C" fn(
        Handle,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Handle,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    stream_create: unsafe extern "C" fn(*mut Handle, c_uint) -> CuResult,
    stream_synchronize: unsafe extern "C" fn(Handle) -> CuResult,
    stream_wait_event: unsafe extern "C" fn(Handle, Handle, c_uint) -> CuResult,
    event_create: unsafe extern "C" fn(*mut Handle, c_uint) -> CuResult,
    event_destroy: unsafe extern "C" fn(Handle) -> CuResult,
    event_synchronize: unsafe extern "C" fn(Handle) -> CuResult,
    event_record: unsafe extern "C" fn(Handle, Handle) -> CuResult,
    mem_alloc_async: unsafe extern "C" fn(*mut CuDevicePtr, usize, Handle) -> CuResult,
    mem_free_async: unsafe extern "C" fn(CuDevicePtr, Handle) -> CuResult,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
    memcpy_async: unsafe extern "C" fn(CuDevicePtr, CuDevicePtr, usize, Handle) -> CuResult,
    memcpy_htod: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    memcpy_dtoh: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
    memset_d32_async: unsafe extern "C" fn(CuDevicePtr, c_uint, usize, Handle) -> CuResult,
    memset_d16_async: unsafe extern "C" fn(CuDevicePtr, u16, usize, Handle) -> CuResult,
    mem_host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult,
    mem_free_host: unsafe extern "C" fn(*mut c_void) -> CuResult,
    host_get_device_pointer: unsafe extern "C" fn(*mut CuDevicePtr, *mut c_void, c_uint) -> CuResult,
}

/// The driver, the device's primary context and the stream everything runs on.
pub struct Cuda {
    driver: Driver,
    context: Handle,
    stream: Handle,
    /// The device's name, for messages (`NVIDIA H200`).
    pub name: String,
}

// SAFETY: the handles are the driver's, which may be used from any thread once the context is
// current there (`Cuda::make_current`); the driver serialises what needs it.
unsafe impl Send for Cuda {}
// SAFETY: as for Send: every use goes through the driver, which is thread-safe.
unsafe impl Sync for Cuda {}

const CUDA_SUCCESS: CuResult = 0;

impl Driver {
    fn load() -> Result<Driver, String> {
        // SAFETY: loading NVIDIA's driver library runs its initialisers, which is what using CUDA
        // means; nothing of ours is passed to it.
        let lib = unsafe { libloading::Library::new("libcuda.so.1").or_else(|_| libloading::Library::new("libcuda.so")) }.map_err(|e| {
            format!(
                "no NVIDIA driver: cannot load libcuda.so.1 ({e}); run on a machine with an NVIDIA GPU and its driver, or use --device cpu"
            )
        })?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol is the driver API function of that name, whose C signature
                // (CUDA's cuda.h, API version 12) is the field's type.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| {
                    format!(
                        "the NVIDIA driver has no {}: {e} (a driver for CUDA 12 or later is needed)",
                        $name
                    )
                })?
            };
        }
        Ok(Driver {
            init: sym!("cuInit"),
            device_get_count: sym!("cuDeviceGetCount"),
            device_get: sym!("cuDeviceGet"),
            device_get_name: sym!("cuDeviceGetName"),
            primary_ctx_retain: sym!("cuDevicePrimaryCtxRetain"),
            ctx_set_current: sym!("cuCtxSetCurrent"),
            get_error_string: sym!("cuGetErrorString"),
            module_load_data: sym!("cuModuleLoadData"),
            module_unload: sym!("cuModuleUnload"),
            module_get_function: sym!("cuModuleGetFunction"),
            launch_kernel: sym!("cuLaunchKernel"),
            stream_create: sym!("cuStreamCreate"),
            stream_synchronize: sym!("cuStreamSynchronize"),
            stream_wait_event: sym!("cuStreamWaitEvent"),
            event_create: sym!("cuEventCreate"),
            event_destroy: sym!("cuEventDestroy_v2"),
            event_synchronize: sym!("cuEventSynchronize"),
            event_record: sym!("cuEventRecord"),
            mem_alloc_async: sym!("cuMemAllocAsync"),
            mem_free_async: sym!("cuMemFreeAsync"),
            mem_get_info: sym!("cuMemGetInfo_v2"),
            memcpy_async: sym!("cuMemcpyAsync"),
            memcpy_htod: sym!("cuMemcpyHtoD_v2"),
            memcpy_dtoh: sym!("cuMemcpyDtoH_v2"),
            memset_d32_async: sym!("cuMemsetD32Async"),
            memset_d16_async: sym!("cuMemsetD16Async"),
            mem_host_alloc: sym!("cuMemHostAlloc"),
            mem_free_host: sym!("cuMemFreeHost"),
            host_get_device_pointer: sym!("cuMemHostGetDevicePointer_v2"),
            _lib: lib,
        })
    }

    /// `what` failed with `code`, in the driver's words.
    fn describe(&self, what: &str, code: CuResult) -> String {
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it null).
        unsafe { (self.get_error_string)(code, &mut text) };
        let reason = if text.is_null() {
            format!("error {code}")
        } else {
            // SAFETY: a non-null result is a static NUL-terminated string of the driver's.
            unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
        };
        format!("{what} failed on the GPU: {reason}")
    }

    fn check(&self, what: &str, code: CuResult) -> Result<(), String> {
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(self.describe(what, code))
        }
    }
}

/// The GPU, set up on first use: the driver, device 0's primary context and a stream. Errors
/// say what is missing (no driver, no device).
pub fn cuda() -> Result<&'static Cuda, RuntimeError> {
    static CUDA: OnceLock<Result<Cuda, String>> = OnceLock::new();
    CUDA.get_or_init(|| {
        let driver = Driver::load()?;
        // SAFETY: driver calls with valid out-pointers to locals.
        unsafe {
            driver.check("initialising CUDA (cuInit)", (driver.init)(0))?;
            let mut count = 0;
            driver.check("counting GPUs", (driver.device_get_count)(&mut count))?;
            if count == 0 {
                return Err("the NVIDIA driver found no GPU; use --device cpu".into());
            }
            let mut device = 0;
            driver.check("opening GPU 0", (driver.device_get)(&mut device, 0))?;
            let mut name = [0 as c_char; 128];
            driver.check(
                "reading the GPU's name",
                (driver.device_get_name)(name.as_mut_ptr(), name.len() as c_int, device),
            )?;
            let name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            let mut context = std::ptr::null_mut();
            driver.check("creating a CUDA context", (driver.primary_ctx_retain)(&mut context, device))?;
            driver.check("making the CUDA context current", (driver.ctx_set_current)(context))?;
            let mut stream = std::ptr::null_mut();
            driver.check("creating a CUDA stream", (driver.stream_create)(&mut stream, 0))?;
            Ok(Cuda {
                driver,
                context,
                stream,
                name,
            })
        }
    })
    .as_ref()
    .map_err(|e| RuntimeError::library(e.clone()))
}

impl Cuda {
    /// Makes the context current on the calling thread (once per thread).
    fn make_current(&self) {
        thread_local!(static CURRENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        if !CURRENT.get() {
            // SAFETY: a context the driver gave us, alive for the process.
            let code = unsafe { (self.driver.ctx_set_current)(self.context) };
            self.record("making the CUDA context current", code);
            CURRENT.set(code == CUDA_SUCCESS);
        }
    }

    /// Records the first failure for [`take_error`].
    fn record(&self, what: &str, code: CuResult) -> bool {
        if code == CUDA_SUCCESS {
            return true;
        }
        let message = self.driver.describe(what, code);
        if let Ok(mut slot) = FIRST_ERROR.lock() {
            slot.get_or_insert(message);
        }
        false
    }

    /// Waits for everything queued on the stream; the first error, if any.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        self.make_current();
        // SAFETY: our stream.
        let code = unsafe { (self.driver.stream_synchronize)(self.stream) };
        self.record("running the model's kernels", code);
        take_error()
    }

    /// Bytes of device memory free and in total.
    pub fn memory(&self) -> Result<(usize, usize), RuntimeError> {
        self.make_current();
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers to locals.
        let code = unsafe { (self.driver.mem_get_info)(&mut free, &mut total) };
        self.driver.check("reading the GPU's memory", code).map_err(RuntimeError::library)?;
        Ok((free, total))
    }
}

/// The first failure inside a device function since the last call, if any.
static FIRST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Returns (and clears) the first failure recorded since the last call.
pub fn take_error() -> Result<(), RuntimeError> {
    let message = FIRST_ERROR.lock().ok().and_then(|mut slot| slot.take());
    match message {
        Some(m) => Err(RuntimeError::library(m)),
        None => Ok(()),
    }
}

fn failed() -> bool {
    FIRST_ERROR.lock().map(|slot| slot.is_some()).unwrap_or(true)
}

/// A buffer the generated code reads and writes: device memory, freed (in stream order) when
/// dropped, or, for a scalar, pinned host memory mapped into the device's address space.
///
/// A scalar input (a decode step's position) is read by the host code itself (to place a
/// slice) as well as by kernels: at the same address, since the driver maps pinned memory at
/// its host address (unified addressing). Nothing larger is ever read on the host.
pub struct DeviceBuffer {
    ptr: CuDevicePtr,
    bytes: usize,
    host_mapped: bool,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({} bytes)", self.bytes)
    }
}

impl DeviceBuffer {
    /// `bytes` of device memory; an error names what did not fit.
    pub fn new(bytes: usize, what: &str) -> Result<DeviceBuffer, RuntimeError> {
        let cuda = cuda()?;
        cuda.make_current();
        let mut ptr = 0;
        if bytes > 0 {
            // SAFETY: an out-pointer to a local, on our stream.
            let code = unsafe { (cuda.driver.mem_alloc_async)(&mut ptr, bytes, cuda.stream) };
            if code != CUDA_SUCCESS {
                let free = cuda
                    .memory()
                    .map(|(free, _)| format!(" ({} MiB free)", free >> 20))
                    .unwrap_or_default();
                return Err(RuntimeError::library(format!(
                    "{}{free}",
                    cuda.driver.describe(
                        &format!("allocating {} MiB on {} for {what}", bytes.div_ceil(1 << 20), cuda.name),
                        code
                    )
                )));
            }
        }
        Ok(DeviceBuffer {
            ptr,
            bytes,
            host_mapped: false,
        })
    }

    /// A copy of `data` in pinned host memory that the device reads at the same address (see
    /// the type's doc).
    pub fn host_mapped(data: &[u8], what: &str) -> Result<DeviceBuffer, RuntimeError> {
        let cuda = cuda()?;
        cuda.make_current();
        if data.len() <= PINNED_BLOCK {
            // A scalar: one of the blocks pinned before (pinning costs a system call).
            let pooled = PINNED.lock().ok().and_then(|mut free| free.pop());
            if let Some(block) = pooled {
                // SAFETY: a free pinned block of PINNED_BLOCK bytes, now ours.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), block as *mut u8, data.len()) };
                return Ok(DeviceBuffer {
                    ptr: block as CuDevicePtr,
                    bytes: PINNED_BLOCK,
                    host_mapped: true,
                });
            }
        }
        let bytes = data.len().max(PINNED_BLOCK);
        let mut host = std::ptr::null_mut();
        // SAFETY: an out-pointer to a local; flags PORTABLE (1) | DEVICEMAP (2).
        let code = unsafe { (cuda.driver.mem_host_alloc)(&mut host, bytes, 3) };
        cuda.driver
            .check(&format!("allocating pinned memory for {what}"), code)
            .map_err(RuntimeError::library)?;
        let buffer = DeviceBuffer {
            ptr: host as usize as CuDevicePtr,
            bytes,
            host_mapped: true,
        };
        let mut device = 0;
        // SAFETY: `host` is pinned memory the driver just mapped; out-pointer to a local.
        let code = unsafe { (cuda.driver.host_get_device_pointer)(&mut device, host, 0) };
        cuda.driver
            .check(&format!("mapping {what} into the GPU's address space"), code)
            .map_err(RuntimeError::library)?;
        if device != buffer.ptr {
            return Err(RuntimeError::library(format!(
                "{} maps host memory at another address on the device (no unified addressing); lmc needs a 64-bit driver with it",
                cuda.name
            )));
        }
        // SAFETY: `host` holds `bytes >= data.len()` bytes that nothing else uses yet.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), host.cast::<u8>(), data.len()) };
        Ok(buffer)
    }

    /// A device copy of `data`.
    pub fn upload(data: &[u8], what: &str) -> Result<DeviceBuffer, RuntimeError> {
        let buffer = DeviceBuffer::new(data.len(), what)?;
        if !data.is_empty() {
            let cuda = cuda()?;
            // The allocation is stream-ordered; the synchronous copy must follow it.
            cuda.synchronize()?;
            // SAFETY: `buffer` holds `data.len()` bytes; `data` is readable for as long.
            let code = unsafe { (cuda.driver.memcpy_htod)(buffer.ptr, data.as_ptr().cast(), data.len()) };
            cuda.driver
                .check(&format!("copying {what} to the GPU"), code)
                .map_err(RuntimeError::library)?;
        }
        Ok(buffer)
    }

    /// A device copy of a tensor the generated code reads or writes: a scalar in pinned host
    /// memory ([`DeviceBuffer::host_mapped`]), anything else in device memory.
    pub fn for_tensor(t: &crate::HostTensor, what: &str) -> Result<DeviceBuffer, RuntimeError> {
        if t.shape.is_empty() {
            DeviceBuffer::host_mapped(t.bytes(), what)
        } else {
            DeviceBuffer::upload(t.bytes(), what)
        }
    }

    /// Copies the buffer into `out` (as many bytes as both have), after everything queued.
    pub fn download(&self, out: &mut [u8], what: &str) -> Result<(), RuntimeError> {
        let cuda = cuda()?;
        cuda.synchronize()?;
        let n = out.len().min(self.bytes);
        if self.host_mapped {
            // SAFETY: the mapping holds at least `n` bytes, and the device is done with it.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr as usize as *const u8, out.as_mut_ptr(), n) };
            return Ok(());
        }
        if n > 0 {
            // SAFETY: both sides hold at least `n` bytes.
            let code = unsafe { (cuda.driver.memcpy_dtoh)(out.as_mut_ptr().cast(), self.ptr, n) };
            cuda.driver
                .check(&format!("copying {what} from the GPU"), code)
                .map_err(RuntimeError::library)?;
        }
        Ok(())
    }

    /// The device address, as the generated code's descriptors hold it.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr as usize as *mut u8
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        if !self.host_mapped {
            // SAFETY: a pointer cuMemAllocAsync returned, freed once.
            unsafe { free_device(self.ptr) };
            return;
        }
        if let Ok(cuda) = cuda() {
            cuda.make_current();
            // Kernels queued before the drop may still read it.
            // SAFETY: our stream.
            unsafe { (cuda.driver.stream_synchronize)(cuda.stream) };
            if self.bytes == PINNED_BLOCK {
                if let Ok(mut free) = PINNED.lock() {
                    free.push(self.ptr as usize);
                    return;
                }
            }
            // SAFETY: pinned memory cuMemHostAlloc returned, freed once.
            unsafe { (cuda.driver.mem_free_host)(self.ptr as usize as *mut c_void) };
        }
    }
}

/// The size of the pinned blocks scalars are passed in, and the free ones.
const PINNED_BLOCK: usize = 64;
static PINNED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// The table a CUDA module is bound with: one function per name of
/// `lmc_abi::DEVICE_FUNCTIONS`, in that order.
pub fn device_table() -> Vec<*const c_void> {
    lmc_abi::DEVICE_FUNCTIONS
        .iter()
        .map(|name| match *name {
            "mgpuModuleLoad" => mgpu_module_load as *const c_void,
            "mgpuModuleLoadJIT" => mgpu_module_load_jit as *const c_void,
            "mgpuModuleUnload" => mgpu_module_unload as *const c_void,
            "mgpuModuleGetFunction" => mgpu_module_get_function as *const c_void,
            "mgpuLaunchKernel" => mgpu_launch_kernel as *const c_void,
            "mgpuStreamCreate" => mgpu_stream_create as *const c_void,
            "mgpuStreamDestroy" => mgpu_stream_destroy as *const c_void,
            "mgpuStreamSynchronize" => mgpu_stream_synchronize as *const c_void,
            "mgpuStreamWaitEvent" => mgpu_stream_wait_event as *const c_void,
            "mgpuEventCreate" => mgpu_event_create as *const c_void,
            "mgpuEventDestroy" => mgpu_event_destroy as *const c_void,
            "mgpuEventSynchronize" => mgpu_event_synchronize as *const c_void,
            "mgpuEventRecord" => mgpu_event_record as *const c_void,
            "mgpuMemAlloc" => mgpu_mem_alloc as *const c_void,
            "mgpuMemFree" => mgpu_mem_free as *const c_void,
            "mgpuMemcpy" => mgpu_memcpy as *const c_void,
            "mgpuMemset32" => mgpu_memset32 as *const c_void,
            "mgpuMemset16" => mgpu_memset16 as *const c_void,
            "mgpuSetDefaultDevice" => mgpu_set_default_device as *const c_void,
            _ => std::ptr::null(),
        })
        .collect()
}

/// The set-up device, with its context current, unless something already failed.
fn live() -> Option<&'static Cuda> {
    if failed() {
        return None;
    }
    let cuda = cuda().ok()?;
    cuda.make_current();
    Some(cuda)
}

// The device functions. Their C signatures are those of MLIR's CUDA runtime wrappers
// (mlir/lib/ExecutionEngine/CudaRuntimeWrappers.cpp), which `gpu-to-llvm` calls. None panics:
// each records a failure and returns a null handle instead.

extern "C" fn mgpu_module_load(data: *const c_void, _size: usize) -> Handle {
    mgpu_module_load_jit(data, 0)
}

/// A handle the driver makes through an out-pointer (`make`), or null, with the failure
/// recorded, when it does not (or something failed before).
fn made(what: &str, make: impl FnOnce(&Cuda, *mut Handle) -> CuResult) -> Handle {
    let Some(cuda) = live() else { return std::ptr::null_mut() };
    let mut handle = std::ptr::null_mut();
    let code = make(cuda, &mut handle);
    cuda.record(what, code);
    handle
}

/// Loads a kernel module from NUL-terminated PTX; the driver compiles it for the device.
extern "C" fn mgpu_module_load_jit(data: *const c_void, _opt_level: c_int) -> Handle {
    // SAFETY: `data` is the module's embedded PTX, NUL-terminated; the out-pointer is `made`'s.
    made("loading a kernel module (PTX)", |cuda, module| unsafe {
        (cuda.driver.module_load_data)(module, data)
    })
}

extern "C" fn mgpu_module_unload(module: Handle) {
    if module.is_null() {
        return;
    }
    if let Ok(cuda) = cuda() {
        cuda.make_current();
        // SAFETY: a module mgpuModuleLoadJIT loaded, unloaded once.
        let code = unsafe { (cuda.driver.module_unload)(module) };
        cuda.record("unloading a kernel module", code);
    }
}

extern "C" fn mgpu_module_get_function(module: Handle, name: *const c_char) -> Handle {
    // SAFETY: a loaded module and a NUL-terminated kernel name from the generated code; the
    // out-pointer is `made`'s.
    made("finding a kernel", |cuda, function| unsafe {
        (cuda.driver.module_get_function)(function, module, name)
    })
}

#[allow(clippy::too_many_arguments)]
extern "C" fn mgpu_launch_kernel(
    function: Handle,
    grid_x: isize,
    grid_y: isize,
    grid_z: isize,
    block_x: isize,
    block_y: isize,
    block_z: isize,
    shared_bytes: i32,
    _stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    _param_count: usize,
) {
    let Some(cuda) = live() else { return };
    let dims = [grid_x, grid_y, grid_z, block_x, block_y, block_z];
    if dims.contains(&0) {
        // An empty loop nest (no tokens): nothing to run.
        return;
    }
    let Ok(d) = dims.map(c_uint::try_from).into_iter().collect::<Result<Vec<_>, _>>() else {
        cuda.record("launching a kernel with negative or huge sizes", 1);
        return;
    };
    // SAFETY: a kernel of a loaded module, with the argument array the generated code built
    // for it; on our stream.
    let code = unsafe {
        (cuda.driver.launch_kernel)(
            function,
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            shared_bytes.max(0) as c_uint,
            cuda.stream,
            params,
            extra,
        )
    };
    cuda.record(
        &format!("launching a kernel (grid {grid_x}x{grid_y}x{grid_z}, block {block_x}x{block_y}x{block_z})"),
        code,
    );
}

/// The one stream: every module's work is ordered on it.
extern "C" fn mgpu_stream_create() -> Handle {
    cuda().map_or(std::ptr::null_mut(), |c| c.stream)
}

extern "C" fn mgpu_stream_destroy(_stream: Handle) {}

/// Nothing to wait for: work is ordered on the one stream and the host reads no device memory
/// until the runtime synchronises (see the module's doc).
extern "C" fn mgpu_stream_synchronize(_stream: Handle) {}

extern "C" fn mgpu_stream_wait_event(_stream: Handle, event: Handle) {
    let Some(cuda) = live() else { return };
    // SAFETY: an event mgpuEventCreate made, on our stream.
    let code = unsafe { (cuda.driver.stream_wait_event)(cuda.stream, event, 0) };
    cuda.record("waiting for an event", code);
}

extern "C" fn mgpu_event_create() -> Handle {
    // SAFETY: the out-pointer is `made`'s; flag 2 is CU_EVENT_DISABLE_TIMING.
    made("creating an event", |cuda, event| unsafe { (cuda.driver.event_create)(event, 2) })
}

extern "C" fn mgpu_event_destroy(event: Handle) {
    if event.is_null() {
        return;
    }
    if let Ok(cuda) = cuda() {
        // SAFETY: an event mgpuEventCreate made, destroyed once.
        let code = unsafe { (cuda.driver.event_destroy)(event) };
        cuda.record("destroying an event", code);
    }
}

extern "C" fn mgpu_event_synchronize(event: Handle) {
    let Some(cuda) = live() else { return };
    // SAFETY: an event mgpuEventCreate made.
    let code = unsafe { (cuda.driver.event_synchronize)(event) };
    cuda.record("waiting for an event", code);
}

extern "C" fn mgpu_event_record(event: Handle, _stream: Handle) {
    let Some(cuda) = live() else { return };
    // SAFETY: an event mgpuEventCreate made, on our stream.
    let code = unsafe { (cuda.driver.event_record)(event, cuda.stream) };
    cuda.record("recording an event", code);
}

/// A device buffer for the generated code's temporaries (stream-ordered). Host-shared
/// (managed) memory is never asked for: the lowering allocates only device buffers.
extern "C" fn mgpu_mem_alloc(bytes: u64, _stream: Handle, _host_shared: u8) -> *mut c_void {
    let Some(cuda) = live() else { return std::ptr::null_mut() };
    if bytes == 0 {
        return std::ptr::null_mut();
    }
    let mut ptr = 0;
    // SAFETY: an out-pointer to a local, on our stream.
    let code = unsafe { (cuda.driver.mem_alloc_async)(&mut ptr, bytes as usize, cuda.stream) };
    if !cuda.record(
        &format!("allocating {} MiB of device memory for a temporary", bytes.div_ceil(1 << 20)),
        code,
    ) {
        return std::ptr::null_mut();
    }
    ptr as usize as *mut c_void
}

extern "C" fn mgpu_mem_free(ptr: *mut c_void, _stream: Handle) {
    // SAFETY: a pointer mgpuMemAlloc returned, freed once.
    unsafe { free_device(ptr as usize as CuDevicePtr) };
}

/// Frees device memory in stream order (after the work queued before).
///
/// # Safety
/// `ptr` is null or came from `cuMemAllocAsync` and is not freed already.
unsafe fn free_device(ptr: CuDevicePtr) {
    if ptr == 0 {
        return;
    }
    if let Ok(cuda) = cuda() {
        cuda.make_current();
        // SAFETY: the caller's.
        let code = unsafe { (cuda.driver.mem_free_async)(ptr, cuda.stream) };
        cuda.record("freeing device memory", code);
    }
}

extern "C" fn mgpu_memcpy(dst: *mut c_void, src: *mut c_void, bytes: usize, _stream: Handle) {
    let Some(cuda) = live() else { return };
    // SAFETY: device buffers of the generated code, each at least `bytes` long (unified
    // addressing tells the driver where each is).
    let code = unsafe { (cuda.driver.memcpy_async)(dst as usize as CuDevicePtr, src as usize as CuDevicePtr, bytes, cuda.stream) };
    cuda.record("copying device memory", code);
}

extern "C" fn mgpu_memset32(dst: *mut c_void, value: c_uint, count: usize, _stream: Handle) {
    let Some(cuda) = live() else { return };
    // SAFETY: a device buffer of at least `count` 32-bit words.
    let code = unsafe { (cuda.driver.memset_d32_async)(dst as usize as CuDevicePtr, value, count, cuda.stream) };
    cuda.record("filling device memory", code);
}

extern "C" fn mgpu_memset16(dst: *mut c_void, value: u16, count: usize, _stream: Handle) {
    let Some(cuda) = live() else { return };
    // SAFETY: a device buffer of at least `count` 16-bit words.
    let code = unsafe { (cuda.driver.memset_d16_async)(dst as usize as CuDevicePtr, value, count, cuda.stream) };
    cuda.record("filling device memory", code);
}

/// lmc uses GPU 0 only.
extern "C" fn mgpu_set_default_device(_device: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_device_function() {
        let table = device_table();
        assert_eq!(table.len(), lmc_abi::DEVICE_FUNCTIONS.len());
        for (name, f) in lmc_abi::DEVICE_FUNCTIONS.iter().zip(&table) {
            assert!(!f.is_null(), "{name} has no implementation");
        }
    }
}
