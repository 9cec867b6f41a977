//! Links libomp, the OpenMP runtime that parallel kernels call (`__kmpc_*`): the JIT resolves
//! those calls in its own process, so every program that JIT-compiles models (lmc, the tests)
//! must load it. Debian's `libomp-22-dev` puts it beside LLVM 22 (see scripts/setup.sh).

fn main() {
    let prefix = std::env::var("MLIR_SYS_220_PREFIX").unwrap_or_else(|_| "/usr/lib/llvm-22".to_string());
    println!("cargo:rerun-if-env-changed=MLIR_SYS_220_PREFIX");
    println!("cargo:rustc-link-search=native={prefix}/lib");
    println!("cargo:rustc-link-lib=dylib=omp");
    // Shared libraries from `lmc compile` link it too (src/link.rs).
    println!("cargo:rustc-env=LMC_LIBOMP_DIR={prefix}/lib");
}
