//! Runs `wrk` and reads its figures.

use std::{process::Command, time::Duration};

/// One wrk run's figures.
pub struct Run {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn check_installed() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is needed: apt-get install wrk");
        std::process::exit(2);
    }
}

pub fn run(url: &str, connections: u32, duration: Duration) -> Run {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{}s", duration.as_secs()), "--latency", url])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let non_2xx = text.lines().find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"));
    if let Some(n) = non_2xx {
        eprintln!("note: {url} answered {} non-2xx responses", n.trim());
    }
    Run { requests_per_sec: rps, p50_ms: percentile(&text, "50%"), p99_ms: percentile(&text, "99%") }
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
