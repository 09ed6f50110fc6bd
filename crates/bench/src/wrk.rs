//! Runs `wrk` and reads its figures.

use std::{path::PathBuf, process::Command, time::Duration};

/// One wrk run's figures.
pub struct Run {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Responses wrk counted in the run.
    pub requests: u64,
    /// Of those, responses with a status outside 2xx/3xx.
    pub non_2xx: u64,
}

pub fn check_installed() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is needed: apt-get install wrk");
        std::process::exit(2);
    }
}

/// Runs `wrk -t1 -c<connections> -d<duration> --latency [-s script] url`;
/// `lua` is the script's text, if any.
pub fn run(url: &str, lua: Option<&str>, connections: u32, duration: Duration) -> Run {
    let script = lua.map(|text| {
        let path: PathBuf = std::env::temp_dir().join(format!("redlayer-bench-{}.lua", std::process::id()));
        std::fs::write(&path, text).expect("write wrk script");
        path
    });
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{}s", duration.as_secs()), "--latency"]);
    if let Some(path) = &script {
        cmd.arg("-s").arg(path);
    }
    let out = cmd.arg(url).output().expect("run wrk");
    if let Some(path) = &script {
        let _ = std::fs::remove_file(path);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}\n{}", String::from_utf8_lossy(&out.stderr)));
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or(0);
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Run { requests_per_sec: rps, p50_ms: percentile(&text, "50%"), p99_ms: percentile(&text, "99%"), requests, non_2xx }
}

fn percentile(text: &str, which: &str) -> f64 {
    text.lines().filter_map(|l| l.trim().strip_prefix(which)).find_map(|v| to_ms(v.trim())).unwrap_or(f64::NAN)
}

fn to_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}
