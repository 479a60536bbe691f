//! Counters of a process read from Linux's /proc, for the benchmarks.

use std::time::Duration;

/// utime + stime (fields 14 and 15) of a `/proc/.../stat` file (`/proc/self/stat`,
/// `/proc/thread-self/stat`, `/proc/<pid>/stat`), at 100 clock ticks a second: coarse, so
/// measure over seconds. Zero when the file cannot be read.
pub fn stat_cpu(path: &str) -> Duration {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            let after_comm = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = after_comm.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 10))
        })
        .unwrap_or(Duration::ZERO)
}

/// The number after `key` (e.g. `"VmHWM:"` in `status`, in kB; `"write_bytes:"` in `io`, in
/// bytes) in `/proc/self/<file>`; 0 if absent.
pub fn self_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(self_field("status", "VmHWM:") > 0, "a running process has a peak RSS");
        assert_eq!(self_field("status", "NoSuchKey:"), 0);
        // Ticks are too coarse to assert on this process; a missing file is zero.
        assert_eq!(stat_cpu("/proc/self/no-such-file"), Duration::ZERO);
    }
}
