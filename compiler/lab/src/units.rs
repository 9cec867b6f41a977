//! How the command line writes quantities for people: counts, durations, sizes. `ab`, `bench`
//! and the report files share these, so the same number reads the same everywhere.

/// `1.23M`, `45.6K`, `789`.
pub fn fmt_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000_000 => format!("{:.2}T", n as f64 / 1e12),
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// `12.3 MiB`, `512 KiB`, `96 B`.
pub fn fmt_bytes(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= 1048576.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// `123 ms`, `4.56 ms`, `789.0 µs`.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{:.1} µs", ms * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_short() {
        assert_eq!(fmt_count(108_890_000), "108.89M");
        assert_eq!(fmt_count(829_300), "829.3K");
        assert_eq!(fmt_count(42), "42");
        assert_eq!(fmt_bytes(113_246_208), "108.0 MiB");
        assert_eq!(fmt_bytes(147_456), "144 KiB");
        assert_eq!(fmt_bytes(96), "96 B");
        assert_eq!(fmt_ms(1482.4), "1482 ms");
        assert_eq!(fmt_ms(12.4), "12.40 ms");
        assert_eq!(fmt_ms(0.25), "250.0 µs");
    }
}
