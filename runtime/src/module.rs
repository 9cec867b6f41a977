//! A generated module, loaded and checked: the only place the runtime resolves symbols.
//!
//! A module comes either from a shared library that `lmc compile` wrote or from the compiler's
//! JIT. Either way the runtime sees the same three kinds of symbol (see `lmc_abi`), so both paths
//! meet in [`Module::from_symbols`], which takes a symbol lookup and an owner to keep the code
//! alive. That keeps this crate free of any compiler dependency: the JIT hands us pointers, not
//! its engine's types.
//!
//! The ABI version is checked before anything else is read, because a module from another ABI
//! may lay out its manifest or its arguments differently; the manifest is then checked for
//! internal consistency so the binding and running code can rely on it.

use std::any::Any;
use std::ffi::{c_char, c_void, CStr};
use std::fmt;
use std::path::Path;

use lmc_abi::{Manifest, ABI_VERSION, ABI_VERSION_SYMBOL, MANIFEST_SYMBOL};

use crate::error::{ErrorKind, RuntimeError};
use crate::validate::check_manifest;

/// An entry point: `void lmc_<entry>(void **args)`.
pub(crate) type EntryFn = unsafe extern "C" fn(*mut *mut c_void);

type AbiVersionFn = unsafe extern "C" fn() -> u32;
/// `lmc_device_init`/`lmc_device_fini` of a CUDA module.
type DeviceHookFn = unsafe extern "C" fn();
/// `lmc_device_bind(table)`.
type DeviceBindFn = unsafe extern "C" fn(*const *const c_void);
type ManifestFn = unsafe extern "C" fn() -> *const c_char;

/// A loaded generated module: its manifest and its entry points, with whatever owns their code
/// (a `libloading::Library`, a JIT engine) kept alive alongside.
///
/// Loading a module runs code from it, and running one trusts that it follows the ABI: only
/// load modules that lmc generated.
pub struct Module {
    manifest: Manifest,
    manifest_json: String,
    /// Entry name → function, in manifest order.
    entries: Vec<(String, EntryFn)>,
    /// What to call the module in messages: the library path, or "the JIT-compiled module".
    source: String,
    /// A CUDA module's `lmc_device_fini`, called when the module is dropped (its kernels were
    /// loaded onto the device when it was resolved).
    device_fini: Option<DeviceHookFn>,
    // Declared last so it is dropped last: the function pointers above point into it.
    _owner: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("source", &self.source)
            .field("model", &self.manifest.model)
            .field("entries", &self.entries.iter().map(|e| &e.0).collect::<Vec<_>>())
            .finish()
    }
}

/// What symbol resolution produced, before an owner is attached.
struct Resolved {
    manifest: Manifest,
    manifest_json: String,
    entries: Vec<(String, EntryFn)>,
    device_fini: Option<DeviceHookFn>,
}

impl Module {
    /// Loads a shared library that `lmc compile` produced.
    pub fn open_library(path: &Path) -> Result<Module, RuntimeError> {
        let source = path.display().to_string();
        // SAFETY: loading a library runs its initialisers. The caller asked for this file to be
        // loaded as an lmc module; lmc-generated libraries have no initialisers with side effects.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| RuntimeError::library(format!("cannot load {source}: {e}")))?;
        let lookup = |name: &str| -> Option<*const c_void> {
            // SAFETY: we only read the symbol's address here; its type is asserted later, where
            // the ABI defines it, and the pointer is used only while `lib` is alive (it moves into
            // the module below).
            let sym = unsafe { lib.get::<*const c_void>(name.as_bytes()) }.ok()?;
            Some(*sym)
        };
        // SAFETY: `lookup` returns addresses from `lib`, which we keep alive in the module for as
        // long as the pointers are used.
        let resolved = unsafe { resolve(&lookup, &source) }?;
        Ok(Module::assemble(resolved, source, Box::new(lib)))
    }

    /// Builds a module from symbols resolved by someone else (the JIT).
    ///
    /// # Safety
    /// Every non-null pointer `lookup` returns must be the address of a function with the C
    /// signature the ABI gives that symbol, and must stay valid as long as `keepalive` lives.
    pub unsafe fn from_symbols(
        lookup: &dyn Fn(&str) -> Option<*const c_void>,
        keepalive: Box<dyn Any + Send + Sync>,
    ) -> Result<Module, RuntimeError> {
        let source = "the JIT-compiled module".to_string();
        // SAFETY: forwarded from our caller's contract.
        let resolved = unsafe { resolve(lookup, &source) }?;
        Ok(Module::assemble(resolved, source, keepalive))
    }

    fn assemble(r: Resolved, source: String, owner: Box<dyn Any + Send + Sync>) -> Module {
        Module {
            manifest: r.manifest,
            manifest_json: r.manifest_json,
            entries: r.entries,
            source,
            device_fini: r.device_fini,
            _owner: owner,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest exactly as the module exported it.
    pub fn manifest_json(&self) -> &str {
        &self.manifest_json
    }

    /// The library path, or "the JIT-compiled module".
    pub fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn entry(&self, name: &str) -> Result<EntryFn, RuntimeError> {
        self.entries.iter().find(|(n, _)| n == name).map(|&(_, f)| f).ok_or_else(|| {
            let names: Vec<&str> = self.entries.iter().map(|(n, _)| n.as_str()).collect();
            RuntimeError::invalid_argument(format!(
                "{} has no entry point \"{name}\" (it has: {})",
                self.source,
                names.join(", ")
            ))
        })
    }
}

/// Checks the ABI version, reads and checks the manifest, and resolves every entry.
///
/// # Safety
/// As for [`Module::from_symbols`]; the pointers must stay valid while the result is used.
unsafe fn resolve(lookup: &dyn Fn(&str) -> Option<*const c_void>, source: &str) -> Result<Resolved, RuntimeError> {
    let version_ptr = lookup(ABI_VERSION_SYMBOL).filter(|p| !p.is_null()).ok_or_else(|| {
        RuntimeError::library(format!(
            "{source} does not export {ABI_VERSION_SYMBOL}; is it a module that lmc generated?"
        ))
    })?;
    // SAFETY: by the caller's contract the symbol is `uint32_t lmc_abi_version(void)`; fn
    // pointers and data pointers have the same size on every platform we support.
    let version_fn = unsafe { std::mem::transmute::<*const c_void, AbiVersionFn>(version_ptr) };
    // SAFETY: the ABI says the function takes nothing and only returns a constant.
    let version = unsafe { version_fn() };

    let manifest_ptr = lookup(MANIFEST_SYMBOL).filter(|p| !p.is_null());
    let manifest_text = match manifest_ptr {
        // SAFETY: by the caller's contract the symbol is `const char *lmc_manifest(void)`.
        Some(p) => Some(unsafe { read_manifest(p, source) }?),
        None => None,
    };

    if version != ABI_VERSION {
        // Another ABI may use another manifest schema, so fish out only the generator.
        let generator = manifest_text
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| v.get("generator")?.as_str().map(str::to_string));
        let by = generator.map(|g| format!(" (by {g})")).unwrap_or_default();
        return Err(RuntimeError::new(
            ErrorKind::AbiMismatch,
            format!(
                "{source} was built for lmc ABI {version}{by}; this runtime speaks ABI \
                 {ABI_VERSION}: recompile it with this lmc ({})",
                lmc_abi::generator_string()
            ),
        ));
    }

    let manifest_json = manifest_text.ok_or_else(|| RuntimeError::library(format!("{source} does not export {MANIFEST_SYMBOL}")))?;
    let manifest =
        Manifest::from_json(&manifest_json).map_err(|e| RuntimeError::library(format!("{source} has an unreadable manifest: {e}")))?;
    if manifest.abi_version != ABI_VERSION {
        return Err(RuntimeError::library(format!(
            "{source} exports ABI version {version}, but its manifest says {}; the library is \
             corrupt",
            manifest.abi_version
        )));
    }
    check_manifest(&manifest, source)?;

    let mut entries = Vec::with_capacity(manifest.entries.len());
    for entry in &manifest.entries {
        let ptr = lookup(&entry.symbol).filter(|p| !p.is_null()).ok_or_else(|| {
            RuntimeError::library(format!(
                "{source} lists entry point \"{}\" but does not export its symbol {}",
                entry.name, entry.symbol
            ))
        })?;
        // SAFETY: by the caller's contract an entry symbol is `void f(void **args)`.
        let f = unsafe { std::mem::transmute::<*const c_void, EntryFn>(ptr) };
        entries.push((entry.name.clone(), f));
    }
    let device_fini = match manifest.device {
        lmc_abi::Device::Cpu => None,
        // SAFETY: forwarded from our caller's contract.
        lmc_abi::Device::Cuda => Some(unsafe { start_on_device(lookup, source) }?),
    };
    Ok(Resolved {
        manifest,
        manifest_json,
        entries,
        device_fini,
    })
}

/// Binds a CUDA module to the device layer and loads its kernels onto the GPU; returns its
/// `lmc_device_fini`. Fails, saying what is missing, without a GPU or driver.
///
/// # Safety
/// As for [`Module::from_symbols`]: the device symbols must have the ABI's signatures.
unsafe fn start_on_device(lookup: &dyn Fn(&str) -> Option<*const c_void>, source: &str) -> Result<DeviceHookFn, RuntimeError> {
    let cuda = crate::cuda::cuda().map_err(|e| RuntimeError::library(format!("{source} runs on an NVIDIA GPU: {}", e.message())))?;
    let symbol = |name: &str| {
        lookup(name)
            .filter(|p| !p.is_null())
            .ok_or_else(|| RuntimeError::library(format!("{source} is a CUDA module but does not export {name}")))
    };
    let (bind, init, fini) = (
        symbol(lmc_abi::DEVICE_BIND_SYMBOL)?,
        symbol(lmc_abi::DEVICE_INIT_SYMBOL)?,
        symbol(lmc_abi::DEVICE_FINI_SYMBOL)?,
    );
    // SAFETY: the caller promises the ABI's signatures for these symbols.
    let (bind, init, fini) = unsafe {
        (
            std::mem::transmute::<*const c_void, DeviceBindFn>(bind),
            std::mem::transmute::<*const c_void, DeviceHookFn>(init),
            std::mem::transmute::<*const c_void, DeviceHookFn>(fini),
        )
    };
    // The module keeps the table's address: it must live as long as the process.
    static TABLE: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| crate::cuda::device_table().into_iter().map(|p| p as usize).collect());
    // SAFETY: the table has one function per name of DEVICE_FUNCTIONS, with MLIR's signatures,
    // and lives for the process; init then loads the module's kernels through it.
    unsafe {
        bind(table.as_ptr().cast());
        init();
    }
    cuda.synchronize()
        .map_err(|e| RuntimeError::library(format!("{source}: loading its kernels onto {}: {}", cuda.name, e.message())))?;
    Ok(fini)
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Some(fini) = self.device_fini {
            // SAFETY: the module's own `lmc_device_fini`, whose code `_owner` still holds; it
            // unloads the kernels `lmc_device_init` loaded.
            unsafe { fini() };
            let _ = crate::cuda::take_error();
        }
    }
}

/// Calls `lmc_manifest` and copies the string out.
///
/// # Safety
/// `ptr` must be the address of `const char *lmc_manifest(void)`.
unsafe fn read_manifest(ptr: *const c_void, source: &str) -> Result<String, RuntimeError> {
    // SAFETY: the caller promises the signature.
    let f = unsafe { std::mem::transmute::<*const c_void, ManifestFn>(ptr) };
    // SAFETY: the ABI says it takes nothing and returns a static string.
    let text = unsafe { f() };
    if text.is_null() {
        return Err(RuntimeError::library(format!(
            "{source}: {MANIFEST_SYMBOL} returned a null pointer"
        )));
    }
    // SAFETY: the ABI promises a NUL-terminated string that lives as long as the module.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str()
        .map(str::to_string)
        .map_err(|e| RuntimeError::library(format!("{source}: the manifest is not valid UTF-8: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    //! A hand-written "generated module": Rust functions with the ABI's C signatures, exposed
    //! through `from_symbols`, so the whole load/bind/run path is tested without a compiler.

    use super::*;
    use lmc_abi::{DType, Dim, Entry, TensorSpec};
    use std::ffi::CString;
    use std::sync::OnceLock;

    /// The test manifest: `out[b, t, :] = table[ids[b, t], :] * scale[0]`.
    pub(crate) fn gather_manifest(abi_version: u32) -> Manifest {
        let mut m = crate::validate::tests::bert_like();
        m.abi_version = abi_version;
        m.params.push(TensorSpec {
            name: "scale".into(),
            dtype: DType::F32,
            shape: vec![Dim::Static(1)],
            index_bound: None,
            packing: None,
            default: None,
        });
        m.entries = vec![Entry {
            name: "forward".into(),
            symbol: "test_forward".into(),
        }];
        m
    }

    fn manifest_cstring(abi: u32) -> &'static CString {
        static V1: OnceLock<CString> = OnceLock::new();
        static V2: OnceLock<CString> = OnceLock::new();
        let cell = if abi == ABI_VERSION { &V1 } else { &V2 };
        cell.get_or_init(|| {
            let mut m = gather_manifest(abi);
            m.generator = "lmc 0.3.0".into();
            CString::new(m.to_json()).unwrap()
        })
    }

    unsafe extern "C" fn version_ok() -> u32 {
        ABI_VERSION
    }

    unsafe extern "C" fn version_next() -> u32 {
        ABI_VERSION + 1
    }

    unsafe extern "C" fn manifest_ok() -> *const c_char {
        manifest_cstring(ABI_VERSION).as_ptr()
    }

    unsafe extern "C" fn manifest_next() -> *const c_char {
        manifest_cstring(ABI_VERSION + 1).as_ptr()
    }

    /// Reads one descriptor: (aligned pointer, sizes, strides).
    unsafe fn desc(arg: *mut c_void, rank: usize) -> (*mut u8, Vec<i64>, Vec<i64>) {
        let d = arg as *const i64;
        // SAFETY: the runtime lays out [allocated, aligned, offset, sizes.., strides..].
        unsafe {
            let aligned = *d.add(1) as usize as *mut u8;
            assert_eq!(*d.add(2), 0, "offset");
            assert_eq!(*d, *d.add(1), "allocated == aligned");
            let sizes = (0..rank).map(|i| *d.add(3 + i)).collect();
            let strides = (0..rank).map(|i| *d.add(3 + rank + i)).collect();
            (aligned, sizes, strides)
        }
    }

    /// args: table [10, 4], scale [1], input_ids [B, T], token_type_ids [B, T], out [B, T, 4].
    unsafe extern "C" fn test_forward(args: *mut *mut c_void) {
        // SAFETY: the runtime passes five descriptors matching the manifest.
        unsafe {
            let (table, ts, tst) = desc(*args, 2);
            assert_eq!((ts, tst), (vec![10, 4], vec![4, 1]));
            let (scale, _, _) = desc(*args.add(1), 1);
            let (ids, is, ist) = desc(*args.add(2), 2);
            assert_eq!(ist, vec![is[1], 1]);
            let (types, _, _) = desc(*args.add(3), 2);
            let (out, os, ost) = desc(*args.add(4), 3);
            assert_eq!(os, vec![is[0], is[1], 4]);
            assert_eq!(ost, vec![is[1] * 4, 4, 1]);
            let table = table as *const f32;
            let scale = *(scale as *const f32);
            let (ids, types, out) = (ids as *const i64, types as *const i64, out as *mut f32);
            for i in 0..(is[0] * is[1]) as usize {
                let row = *ids.add(i) as usize;
                for h in 0..4 {
                    *out.add(i * 4 + h) = *table.add(row * 4 + h) * scale + *types.add(i) as f32;
                }
            }
        }
    }

    pub(crate) fn lookup_ok(name: &str) -> Option<*const c_void> {
        match name {
            "lmc_abi_version" => Some(version_ok as *const c_void),
            "lmc_manifest" => Some(manifest_ok as *const c_void),
            "test_forward" => Some(test_forward as *const c_void),
            _ => None,
        }
    }

    pub(crate) fn test_module() -> Module {
        // SAFETY: `lookup_ok` returns functions with the ABI's signatures, static in this binary.
        unsafe { Module::from_symbols(&lookup_ok, Box::new(())) }.unwrap()
    }

    #[test]
    fn loads_through_from_symbols() {
        let m = test_module();
        assert_eq!(m.manifest().model, "bert-tiny");
        assert!(m.manifest_json().contains("\"generator\""));
        assert!(m.entry("forward").is_ok());
        let e = m.entry("backward").unwrap_err().to_string();
        assert_eq!(e, "the JIT-compiled module has no entry point \"backward\" (it has: forward)");
    }

    #[test]
    fn abi_mismatch_names_both_versions_and_the_generator() {
        let lookup = |name: &str| match name {
            "lmc_abi_version" => Some(version_next as *const c_void),
            "lmc_manifest" => Some(manifest_next as *const c_void),
            _ => None,
        };
        // SAFETY: the functions have the ABI's signatures.
        let e = unsafe { Module::from_symbols(&lookup, Box::new(())) }.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AbiMismatch);
        let want = format!(
            "the JIT-compiled module was built for lmc ABI {} (by lmc 0.3.0); this runtime \
             speaks ABI {ABI_VERSION}: recompile it with this lmc",
            ABI_VERSION + 1
        );
        assert!(e.to_string().starts_with(&want), "{e}");
    }

    #[test]
    fn missing_symbols() {
        let none = |_: &str| None;
        // SAFETY: nothing is returned, so nothing is called.
        let e = unsafe { Module::from_symbols(&none, Box::new(())) }.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Library);
        assert!(e.to_string().contains("does not export lmc_abi_version"), "{e}");
        let no_entry = |name: &str| match name {
            "test_forward" => None,
            other => lookup_ok(other),
        };
        // SAFETY: as in `test_module`.
        let e = unsafe { Module::from_symbols(&no_entry, Box::new(())) }.unwrap_err();
        assert!(
            e.to_string()
                .contains("lists entry point \"forward\" but does not export its symbol test_forward"),
            "{e}"
        );
    }

    #[test]
    fn open_library_reports_missing_files() {
        let e = Module::open_library(Path::new("/nonexistent/libmodel.so")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Library);
        assert!(e.to_string().starts_with("cannot load /nonexistent/libmodel.so: "), "{e}");
    }
}
