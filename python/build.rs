//! The extension finds the OpenMP runtime beside itself: the wheel carries libomp.so.5 in the
//! package directory (python/lmc/libomp.so.5), under its own soname, so that the libraries of
//! `lmc compile` that a Python program loads (which need `libomp.so.5`) share the one runtime
//! this process already runs, whichever lmc built them.

fn main() {
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN");
}
