//! The process's own figures (memory, CPU, threads, open files, start time), read from
//! `/proc/self` when `/metrics` renders. Where `/proc` is missing (not Linux) nothing is
//! rendered; a figure that cannot be read is left out, never guessed.
//!
//! The kernel reports CPU times and the start time in clock ticks of `USER_HZ`, which
//! is 100 on every architecture Cairn builds for (the kernel's ABI fixes it, whatever
//! the kernel's internal `HZ`).

use std::fmt::Write;
use std::path::Path;

use crate::metrics::{
    PROCESS_CPU_SECONDS_TOTAL, PROCESS_MAX_FDS, PROCESS_OPEN_FDS, PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_START_TIME_SECONDS, PROCESS_THREADS, PROCESS_VIRTUAL_MEMORY_BYTES,
};

/// Clock ticks per second of `/proc`'s times.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` tells about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ProcessSample {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/self/stat` that matter here.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    cpu_ticks: u64,
    threads: u64,
    start_ticks: u64,
    virtual_bytes: u64,
}

impl ProcessSample {
    /// Reads `/proc/self` (and `/proc/stat` for the boot time).
    pub(crate) fn read() -> Self {
        let proc = Path::new("/proc");
        let read = |path: &str| std::fs::read_to_string(proc.join(path)).ok();
        let stat = read("self/stat").as_deref().and_then(parse_stat);
        let boot_time = read("stat").as_deref().and_then(parse_boot_time);
        Self {
            resident_bytes: read("self/status")
                .as_deref()
                .and_then(parse_resident_bytes),
            virtual_bytes: stat.map(|stat| stat.virtual_bytes),
            cpu_seconds: stat.map(|stat| stat.cpu_ticks as f64 / USER_HZ),
            threads: stat.map(|stat| stat.threads),
            open_fds: std::fs::read_dir(proc.join("self/fd"))
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: read("self/limits").as_deref().and_then(parse_max_fds),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(stat, boot)| boot as f64 + stat.start_ticks as f64 / USER_HZ),
        }
    }

    /// Appends the sample in the Prometheus text format.
    pub(crate) fn render(&self, out: &mut String) {
        let figures: [(&str, &str, &str, Option<f64>); 7] = [
            (
                PROCESS_RESIDENT_MEMORY_BYTES,
                "gauge",
                "Resident memory of the process, in bytes.",
                self.resident_bytes.map(|v| v as f64),
            ),
            (
                PROCESS_VIRTUAL_MEMORY_BYTES,
                "gauge",
                "Virtual memory of the process, in bytes.",
                self.virtual_bytes.map(|v| v as f64),
            ),
            (
                PROCESS_CPU_SECONDS_TOTAL,
                "counter",
                "CPU time the process used, user and system, in seconds.",
                self.cpu_seconds,
            ),
            (
                PROCESS_THREADS,
                "gauge",
                "Threads of the process.",
                self.threads.map(|v| v as f64),
            ),
            (
                PROCESS_OPEN_FDS,
                "gauge",
                "File descriptors the process has open.",
                self.open_fds.map(|v| v as f64),
            ),
            (
                PROCESS_MAX_FDS,
                "gauge",
                "The most file descriptors the process may open (its soft limit).",
                self.max_fds.map(|v| v as f64),
            ),
            (
                PROCESS_START_TIME_SECONDS,
                "gauge",
                "When the process started, in seconds since the Unix epoch.",
                self.start_time_seconds,
            ),
        ];
        for (name, kind, help, value) in figures {
            let Some(value) = value else { continue };
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    }
}

/// `/proc/self/stat`: `pid (comm) state ppid …`; `comm` may hold spaces and
/// parentheses, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
    })
}

/// `VmRSS:   12345 kB` of `/proc/self/status`.
fn parse_resident_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let kilobytes: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => kilobytes.checked_mul(1024),
        _ => None,
    }
}

/// `btime 1700000000` of `/proc/stat`: the boot time, in seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|seconds| seconds.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits` (`None` when unlimited).
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as the kernel prints it.
        let text = "4242 (cairn (x) y) S 1 4242 4242 0 -1 4194560 3000 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 987654321 2500 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17923 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 325,
                threads: 9,
                start_ticks: 123456,
                virtual_bytes: 987654321,
            })
        );
        assert_eq!(parse_stat("4242 (cairn) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_limits_and_boot_time_are_parsed() {
        let status = "Name:\tcairn\nVmPeak:\t  200000 kB\nVmRSS:\t   51200 kB\nThreads:\t9\n";
        assert_eq!(parse_resident_bytes(status), Some(51200 * 1024));
        assert_eq!(parse_resident_bytes("Name:\tcairn\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 42\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn a_sample_renders_each_known_figure_once_and_leaves_out_the_unknown() {
        let sample = ProcessSample {
            resident_bytes: Some(1024),
            cpu_seconds: Some(1.5),
            ..ProcessSample::default()
        };
        let mut text = String::new();
        sample.render(&mut text);
        assert!(text.contains("# TYPE cairn_process_cpu_seconds_total counter\n"));
        assert!(text.contains("\ncairn_process_cpu_seconds_total 1.5\n"));
        assert!(text.contains("\ncairn_process_resident_memory_bytes 1024\n"));
        assert!(!text.contains("cairn_process_open_fds"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_running_with_memory_cpu_and_files() {
        let sample = ProcessSample::read();
        assert!(
            sample
                .resident_bytes
                .is_some_and(|bytes| bytes > 1024 * 1024)
        );
        assert!(sample.cpu_seconds.is_some());
        assert!(sample.threads.is_some_and(|threads| threads >= 1));
        assert!(sample.open_fds.is_some_and(|fds| fds >= 3));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = sample.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 24.0 * 3600.0,
            "{started} vs {now}"
        );
    }
}
