//! What Linux tells about this process's memory (`/proc/self`): `lmc bench` and `lmc ab` read
//! the peak resident set while models run.

/// A field of `/proc/self/status` in bytes (`VmHWM:`, the peak resident set), where /proc
/// tells it.
pub fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the process's peak resident set to the current one (Linux: `5` into `clear_refs`), so
/// the peak read afterwards is that of what runs next, not of compiling. False where it cannot.
/// (Memory compiling freed and the runs reuse is not counted again: the forward's own buffers
/// are counted by `lmc_abi::buffers`.)
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
