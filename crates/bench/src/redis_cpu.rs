//! The CPU time the benchmark's redis-server has used, from
//! `/proc/<pid>/stat` (user + system, in clock ticks of 10 ms), so that each
//! scenario's Redis cost per request can be shown beside its throughput.

/// Seconds of CPU the process `pid` has used so far; `None` off Linux or
/// when the process is gone.
pub fn seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3:
    // utime is field 14 and stime field 15 of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Microseconds of Redis CPU per operation, from the CPU seconds used over
/// some runs and the operations they made.
pub fn micros_per_op(cpu_seconds: f64, operations: u64) -> Option<f64> {
    (operations > 0).then(|| cpu_seconds * 1e6 / operations as f64)
}
