//! Process resource readings from Linux /proc: resident set size (VmRSS in
//! `/proc/PID/status`) and CPU time (utime + stime, fields 14 and 15 of
//! `/proc/PID/stat`, proc(5)). The parsers are pure and tested; `sample`
//! does the reading.

use std::io;

/// Clock ticks per second of utime/stime. Linux reports them in USER_HZ,
/// which is 100 on every architecture it exposes to user space (the
/// workspace forbids the `unsafe` a `sysconf` call would need).
pub const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Resident set size, KiB.
    pub rss_kb: u64,
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
}

impl Sample {
    /// CPU seconds between `self` (earlier) and `later`.
    pub fn cpu_s_until(&self, later: &Sample) -> f64 {
        later.cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / TICKS_PER_SEC
    }
}

/// The `VmRSS:` value of a `/proc/PID/status` text, in KiB.
pub fn parse_vm_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the comm come field 3 (state) onwards: utime is field 14, the
    // 12th word here; stime the 13th.
    let mut words = after_comm.split_whitespace().skip(11);
    let utime: u64 = words.next()?.parse().ok()?;
    let stime: u64 = words.next()?.parse().ok()?;
    Some(utime + stime)
}

fn read(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
}

fn malformed(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected format of {path}"),
    )
}

/// Reads `pid`'s RSS and CPU time.
pub fn sample(pid: u32) -> io::Result<Sample> {
    sample_path(&pid.to_string())
}

/// Reads this process's RSS and CPU time.
pub fn sample_self() -> io::Result<Sample> {
    sample_path("self")
}

fn sample_path(pid: &str) -> io::Result<Sample> {
    let status_path = format!("/proc/{pid}/status");
    let stat_path = format!("/proc/{pid}/stat");
    let rss_kb = parse_vm_rss_kb(&read(&status_path)?).ok_or_else(|| malformed(&status_path))?;
    let cpu_ticks = parse_cpu_ticks(&read(&stat_path)?).ok_or_else(|| malformed(&stat_path))?;
    Ok(Sample { rss_kb, cpu_ticks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tmosquitto\nVmPeak:\t   9000 kB\nVmRSS:\t    6144 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_kb(status), Some(6144));
        assert_eq!(parse_vm_rss_kb("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_odd_comm() {
        let stat = "4242 (we ird) name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    150 25 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        assert_eq!(parse_cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn cpu_seconds_between_samples_use_user_hz() {
        let a = Sample {
            rss_kb: 1,
            cpu_ticks: 100,
        };
        let b = Sample {
            rss_kb: 1,
            cpu_ticks: 350,
        };
        assert_eq!(a.cpu_s_until(&b), 2.5);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample_self().unwrap();
        assert!(s.rss_kb > 0);
    }
}
