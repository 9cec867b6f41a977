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

/// Links `object` into the shared library `output`. The generated code needs libc, libm and
/// libomp (parallel kernels), found where it was when lmc was built.
pub fn link_shared_library(object: &Path, output: &Path) -> Result<(), String> {
    let soname = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tried = Vec::new();
    for cc in linkers() {
        let result = Command::new(&cc)
            .arg("-shared")
            .arg("-o")
            .arg(output)
            .arg(object)
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
