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

/// Links `object` into the shared library `output`, with the allocator of [`ALLOCATOR_C`]. The
/// generated code needs libc, libm and libomp (parallel kernels), found where it was when lmc
/// was built.
pub fn link_shared_library(object: &Path, output: &Path) -> Result<(), String> {
    let soname = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let allocator = object.with_extension("allocator.c");
    std::fs::write(&allocator, ALLOCATOR_C).map_err(|e| format!("cannot write {}: {e}", allocator.display()))?;
    let linked = link_with(object, &allocator, output, &soname);
    let _ = std::fs::remove_file(&allocator);
    linked
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
            .arg(format!("-L{}", env!("LMC_LIBOMP_DIR")))
            .arg(format!("-Wl,-rpath,{}", env!("LMC_LIBOMP_DIR")))
            .arg("-lomp")
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
