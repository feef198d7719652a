//! The memory counters of this process, from `/proc/self/status` (Linux).

/// A `kB` field of `/proc/self/status` (for example `VmRSS` or `VmHWM`), in bytes; 0 when the
/// file or the field is missing.
pub fn status_bytes(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// Resident set size now, bytes.
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS")
}

/// Peak resident set size so far (the high-water mark), bytes.
pub fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM")
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_rss() {
        assert!(super::rss_bytes() > 0);
        assert!(super::peak_rss_bytes() >= super::rss_bytes() / 2);
    }
}
