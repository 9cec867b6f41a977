//! Object file → shared library, with the system C compiler driver as the linker.

use std::path::Path;
use std::process::Command;

/// The drivers tried, in order. `LMC_CC` names another one (a debugging aid, not configuration).
fn linkers() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(cc) = std::env::var("LMC_CC") {
        v.push(cc);
    }
    v.extend(["cc", "clang-22", "gcc", "clang"].map(String::from));
    v
}

/// The buffer allocator of a shared library: malloc and free under the names the generated code
/// calls (`use-generic-functions`), hidden so that the library always uses its own. (In the JIT
/// those names are `lmc_abi::buffers`, which keeps buffers for the next forward; a library may
/// be loaded by a process that exports no such functions, `lmc run --lib` among them.)
const ALLOCATOR_C: &str = "#include <stdlib.h>
__attribute__((visibility(\"hidden\"))) void *_mlir_memref_to_llvm_alloc(size_t n) { return malloc(n); }
__attribute__((visibility(\"hidden\"))) void _mlir_memref_to_llvm_free(void *p) { free(p); }
";

/// The OpenMP runtime that parallel kernels call, where lmc was built against it: used when the
/// running process cannot say which file it loaded ([`crate::llvm::openmp_runtime`]).
const LIBOMP_BUILT_AGAINST: &str = concat!(env!("LMC_LIBOMP_DIR"), "/libomp.so.5");

/// The OpenMP runtime file a generated library links and carries: the one this process runs.
fn openmp_runtime() -> std::path::PathBuf {
    crate::llvm::openmp_runtime().unwrap_or_else(|| std::path::PathBuf::from(LIBOMP_BUILT_AGAINST))
}

/// Links `object` into the shared library `output`, with the allocator of [`ALLOCATOR_C`]. The
/// generated code needs libc, libm and libomp (parallel kernels). The library looks for libomp
/// beside itself (`$ORIGIN`) before the system's paths, and a copy is put there: no path of
/// the machine that compiled it is recorded, so the directory can be moved to another machine.
pub fn link_shared_library(object: &Path, output: &Path) -> Result<(), String> {
    let soname = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let allocator = object.with_extension("allocator.c");
    std::fs::write(&allocator, ALLOCATOR_C).map_err(|e| format!("cannot write {}: {e}", allocator.display()))?;
    let linked = link_with(object, &allocator, output, &soname);
    let _ = std::fs::remove_file(&allocator);
    linked?;
    copy_openmp_beside(output)
}

/// Puts libomp beside `library` (unless an identical copy is there), written under a temporary
/// name and renamed, so a library already loaded from that directory never sees half a file.
fn copy_openmp_beside(library: &Path) -> Result<(), String> {
    let source = openmp_runtime();
    let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = match library.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Under its own file name: its soname, which the library records.
    let dest = dir.join(&name);
    let bytes = std::fs::read(&source).map_err(|e| format!("cannot read the OpenMP runtime {}: {e}", source.display()))?;
    if std::fs::read(&dest).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    let partial = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&partial, &bytes)
        .and_then(|()| std::fs::rename(&partial, &dest))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            format!("cannot write {}: {e}", dest.display())
        })
}

fn link_with(object: &Path, allocator: &Path, output: &Path, soname: &str) -> Result<(), String> {
    let mut tried = Vec::new();
    for cc in linkers() {
        let result = Command::new(&cc)
            .arg("-shared")
            .arg("-fPIC")
            .arg("-O2")
            .arg("-o")
            .arg(output)
            .arg(object)
            .arg(allocator)
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-lm")
            .arg("-Wl,-rpath,$ORIGIN")
            .arg(openmp_runtime())
            .output();
        match result {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(format!(
                    "linking {} with {cc} failed:\n{}",
                    output.display(),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
            Err(_) => tried.push(cc),
        }
    }
    Err(format!(
        "no C compiler driver found to link {} (tried {}); install gcc or clang",
        output.display(),
        tried.join(", ")
    ))
}
