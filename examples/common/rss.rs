//! Resident memory of this process, for the examples and benches that
//! report it (one reader, included by path where needed).

/// Resident set size in bytes, from `VmRSS` in `/proc/self/status` (Linux;
/// kB there, so no page-size assumption); 0 where it cannot be read.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}
