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

/// CPU time (user + system) process `pid` (`"self"` for this one) has used, seconds; 0 when
/// it cannot be read. `/proc/<pid>/stat` counts in USER_HZ, 100 per second on Linux.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
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
        let start = super::cpu_seconds("self");
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(super::cpu_seconds("self") > start, "{x}");
        assert_eq!(super::cpu_seconds("no-such-process"), 0.0);
    }
}
