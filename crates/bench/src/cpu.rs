//! CPU time from `/proc/<pid>/stat` (user + system, in clock ticks of 10 ms):
//! the benchmark's redis-server, this process (every server under test), and
//! its waited-for children (wrk), so that each scenario's costs per request
//! can be shown beside its throughput.

/// Seconds of CPU the process `pid` has used so far; `None` off Linux or
/// when the process is gone.
pub fn seconds(pid: u32) -> Option<f64> {
    Some(stat(&pid.to_string())?.0)
}

/// Seconds of CPU used so far by this process, and by its children that
/// ended and were waited for.
pub fn own_and_children() -> Option<(f64, f64)> {
    stat("self")
}

fn stat(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3:
    // utime, stime, cutime and cstime are fields 14 to 17 of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<f64> = rest.split_whitespace().skip(11).take(4).filter_map(|f| f.parse().ok()).collect();
    let [utime, stime, cutime, cstime] = fields[..] else { return None };
    Some(((utime + stime) / TICKS_PER_SECOND, (cutime + cstime) / TICKS_PER_SECOND))
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Microseconds of CPU per operation, from the CPU seconds used over some
/// runs and the operations they made.
pub fn micros_per_op(cpu_seconds: f64, operations: u64) -> Option<f64> {
    (operations > 0).then(|| cpu_seconds * 1e6 / operations as f64)
}
