//! The version of the LLVM lmc is linked with, as LLVM itself reports it (`lmc --version`).

/// `22.1.8`: the major, minor and patch version of the linked LLVM.
pub fn llvm_version() -> String {
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    format!("{major}.{minor}.{patch}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_reports_its_version() {
        let v = super::llvm_version();
        assert_eq!(v.split('.').count(), 3, "{v}");
        assert!(v.split('.').all(|p| p.parse::<u32>().is_ok()), "{v}");
    }
}
