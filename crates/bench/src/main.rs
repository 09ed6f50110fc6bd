//! redlayer's load scenarios. Starts its own redis-server and axum servers on
//! loopback, drives each with `wrk` (from Debian: `apt-get install wrk`), in
//! interleaved rounds, and writes the medians to BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p redlayer-bench -- [--rounds 5] [--seconds 3] [--connections 32] [--out BENCHMARKS.md]
//! ```
//!
//! Run it alone on the machine: the figures are ratios within one run.

mod scenarios;
mod wrk;

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use scenarios::Scenario;

struct Args {
    rounds: usize,
    seconds: u64,
    connections: u32,
    out: String,
}

fn parse_args() -> Args {
    let mut args = Args { rounds: 5, seconds: 3, connections: 32, out: "BENCHMARKS.md".into() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => args.rounds = value.parse().expect("--rounds N"),
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--connections" => args.connections = value.parse().expect("--connections N"),
            "--out" => args.out = value,
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    wrk::check_installed();
    let redis_server = redlayer_testkit::RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let scenarios: Vec<Scenario> = runtime.block_on(scenarios::start_all(&redis_server.url()));

    let mut results: BTreeMap<&str, Vec<wrk::Run>> = BTreeMap::new();
    for round in 1..=args.rounds {
        for scenario in &scenarios {
            let run = wrk::run(&scenario.url, args.connections, Duration::from_secs(args.seconds));
            eprintln!("round {round}: {:<40} {:>9.0} req/s", scenario.name, run.requests_per_sec);
            results.entry(scenario.name).or_default().push(run);
        }
    }

    let floor = median(results[scenarios::FLOOR].iter().map(|r| r.requests_per_sec).collect());
    let mut table = String::new();
    writeln!(table, "| scenario | req/s | p50 ms | p99 ms | vs floor |").unwrap();
    writeln!(table, "|---|---:|---:|---:|---:|").unwrap();
    for scenario in &scenarios {
        let runs = &results[scenario.name];
        let rps = median(runs.iter().map(|r| r.requests_per_sec).collect());
        let p50 = median(runs.iter().map(|r| r.p50_ms).collect());
        let p99 = median(runs.iter().map(|r| r.p99_ms).collect());
        writeln!(table, "| {} | {:.1}k | {:.2} | {:.2} | {:.2} |", scenario.name, rps / 1000.0, p50, p99, rps / floor)
            .unwrap();
    }
    let command = format!(
        "cargo run --release -p redlayer-bench -- --rounds {} --seconds {} --connections {}",
        args.rounds, args.seconds, args.connections
    );
    let doc = format!(
        "# Benchmarks\n\n\
         Produced by `{command}` on the project's 2-core machine: `wrk -t1 -c{c} -d{s}s` against axum servers on \
         loopback, one redis-server 7 started by the benchmark, scenarios interleaved in {r} rounds, medians shown. \
         Compare ratios within this table only; single rounds vary by 10-20%.\n\n\
         The floor is an axum handler doing one `INCR` through the redlayer handle: every layer is compared with it.\n\n\
         {table}\n\
         ## Scenarios\n\n{list}",
        c = args.connections,
        s = args.seconds,
        r = args.rounds,
        list = scenarios.iter().map(|s| format!("- **{}**: {}\n", s.name, s.about)).collect::<String>(),
    );
    std::fs::write(&args.out, doc).expect("write BENCHMARKS.md");
    println!("{table}");
    println!("wrote {}", args.out);
    drop(runtime);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
