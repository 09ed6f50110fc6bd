//! redlayer's load scenarios. Starts its own redis-server and axum servers on
//! loopback, drives each with `wrk` (from Debian: `apt-get install wrk`), in
//! interleaved rounds, and writes the medians to BENCHMARKS.md. The lock
//! scenarios run in this process (32 tasks, no HTTP), in the same rounds.
//!
//! ```text
//! cargo run --release -p redlayer-bench -- [--rounds 5] [--seconds 3] [--connections 32] [--out BENCHMARKS.md] [--only NAME[,NAME]]
//! ```
//!
//! `--only` keeps the scenarios whose crate (`core`, `session`, `lock`, `stack`,
//! `idempotency`, `ratelimit`, `cache`) is NAME or whose name contains NAME;
//! the floor, axum hello and the raw lock baselines always run. Build with
//! `--features peers` to add tower-sessions, tower_governor, rslock and
//! tower-http-cache.
//!
//! Run it alone on the machine: the figures are ratios within one run.
//! Before the rounds every scenario's request is sent once and its status
//! checked (`BENCH_DEBUG=1` prints those answers and the wrk scripts).

mod cpu;
mod http;
mod scenarios;
mod wrk;

use std::{fmt::Write as _, time::Duration};

use scenarios::{FLOOR, HELLO, Scenario, lock};

/// The values of `--only` that select a whole crate's scenarios.
const GROUPS: [&str; 7] = ["core", "session", "lock", "idempotency", "ratelimit", "cache", "stack"];

struct Args {
    rounds: usize,
    seconds: u64,
    connections: u32,
    out: String,
    only: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args { rounds: 5, seconds: 3, connections: 32, out: "BENCHMARKS.md".into(), only: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "redlayer-bench [--rounds N (5)] [--seconds N (3)] [--connections N (32)] [--out FILE (BENCHMARKS.md)] \
                 [--only GROUP|NAME,...]\ngroups: {}",
                GROUPS.join(", ")
            );
            std::process::exit(0);
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => args.rounds = value.parse().expect("--rounds N"),
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--connections" => args.connections = value.parse().expect("--connections N"),
            "--out" => args.out = value,
            "--only" => args.only.extend(value.split(',').map(|s| s.trim().to_ascii_lowercase())),
            other => panic!("unknown flag {other} (flags: --rounds --seconds --connections --out --only)"),
        }
    }
    assert!(args.rounds > 0 && args.seconds > 0, "--rounds and --seconds must be at least 1");
    args
}

impl Args {
    fn selected(&self, group: &str, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.only.is_empty()
            || self.only.iter().any(|o| o == group || (!GROUPS.contains(&o.as_str()) && name.contains(o.as_str())))
    }
}

/// A wrk scenario's runs over all rounds, and the CPU seconds redis-server,
/// this process (the servers) and wrk used during them.
#[derive(Default)]
struct Runs {
    runs: Vec<wrk::Run>,
    redis_cpu: f64,
    server_cpu: f64,
    wrk_cpu: f64,
}

fn main() {
    let args = parse_args();
    wrk::check_installed();
    let redis_server = redlayer_testkit::RedisServer::start();
    let url = redis_server.url();
    let redis_pid = redis_server.pid().expect("redis-server pid");
    let redis_cpu = || cpu::seconds(redis_pid).unwrap_or(0.0);
    let own_cpu = || cpu::own_and_children().unwrap_or((0.0, 0.0));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");

    let (scenarios, locks, stampede) = runtime.block_on(async {
        let handle = redlayer::Redis::connect(&url).await.expect("redlayer handle");
        let mut scenarios = scenarios::start_all(&url).await;
        scenarios.retain(|s| s.name == FLOOR || s.name == HELLO || args.selected(s.group, s.name));
        let mut locks = lock::start(&url, &handle).await;
        let any_lock = locks.iter().any(|l| l.name != lock::RAW && args.selected("lock", l.name));
        locks.retain(|l| {
            any_lock && (l.name == lock::RAW || l.name == lock::RAW_SHARED || args.selected("lock", l.name))
        });
        probe(&scenarios).await;
        let stampede = match args.selected("cache", "cache stampede") {
            true => Some(scenarios::cache::stampede(&url).await),
            false => None,
        };
        (scenarios, locks, stampede)
    });

    let duration = Duration::from_secs(args.seconds);
    let mut results: Vec<Runs> = scenarios.iter().map(|_| Runs::default()).collect();
    let mut lock_results: Vec<Vec<f64>> = locks.iter().map(|_| Vec::new()).collect();
    // Redis CPU seconds and cycles made, per lock scenario.
    let mut lock_costs: Vec<(f64, u64)> = locks.iter().map(|_| (0.0, 0)).collect();
    for round in 1..=args.rounds {
        for (i, scenario) in scenarios.iter().enumerate() {
            let lua = scenario.wrk_lua(&format!("r{round}s{i}p{}", std::process::id()));
            let (cpu_before, (own_before, wrk_before)) = (redis_cpu(), own_cpu());
            let run = wrk::run(&scenario.url(), lua.as_deref(), args.connections, duration);
            let (own_after, wrk_after) = own_cpu();
            results[i].redis_cpu += redis_cpu() - cpu_before;
            results[i].server_cpu += own_after - own_before;
            results[i].wrk_cpu += wrk_after - wrk_before;
            eprintln!("round {round}: {:<48} {:>9.0} req/s", scenario.name, run.requests_per_sec);
            results[i].runs.push(run);
        }
        for (i, scenario) in locks.iter().enumerate() {
            let cpu_before = redis_cpu();
            let (cycles, made) = runtime.block_on(scenario.run(duration));
            lock_costs[i].0 += redis_cpu() - cpu_before;
            lock_costs[i].1 += made;
            eprintln!("round {round}: {:<48} {:>9.0} cycles/s", scenario.name, cycles);
            lock_results[i].push(cycles);
        }
    }

    let mut checks: Vec<String> = stampede.into_iter().collect();
    for (scenario, runs) in scenarios.iter().zip(&results) {
        if let Some(check) = &scenario.check {
            let sent = runs.runs.iter().map(|r| r.requests).sum();
            checks.push(runtime.block_on(check.after(sent)));
        }
    }

    let doc = render(&args, &scenarios, &results, &locks, &lock_results, &lock_costs, &checks);
    std::fs::write(&args.out, &doc).expect("write BENCHMARKS.md");
    println!("{doc}");
    println!("wrote {}", args.out);
    drop(runtime);
}

/// Sends each scenario's request once and checks its status, so that a
/// figure is never that of an error page; then runs the checks' `before`.
async fn probe(scenarios: &[Scenario]) {
    let mut wrong = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        let res = scenario.request.send(&scenario.addr, &format!("probe-{i}-{}", std::process::id())).await;
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!("probe {}: {res:?}\n{:?}", scenario.name, scenario.wrk_lua("debug"));
        }
        if res.status != scenario.expect {
            wrong.push(format!("{}: expected {}, got {}: {res:?}", scenario.name, scenario.expect, res.status));
        }
        if let Some(check) = &scenario.check {
            check.before().await;
        }
    }
    assert!(wrong.is_empty(), "scenarios answering the wrong status:\n{}", wrong.join("\n"));
}

fn render(
    args: &Args,
    scenarios: &[Scenario],
    results: &[Runs],
    locks: &[lock::LockScenario],
    lock_results: &[Vec<f64>],
    lock_costs: &[(f64, u64)],
    checks: &[String],
) -> String {
    let cost = |cpu: f64, ops: u64| cpu::micros_per_op(cpu, ops).map_or("-".to_owned(), |us| format!("{us:.1}"));
    let rps_of = |name: &str| {
        let i = scenarios.iter().position(|s| s.name == name).expect("baseline scenario");
        median(results[i].runs.iter().map(|r| r.requests_per_sec).collect())
    };
    let (floor, hello) = (rps_of(FLOOR), rps_of(HELLO));

    let mut table = String::new();
    writeln!(
        table,
        "| scenario | req/s | p50 ms | p99 ms | vs floor | vs hello | Redis CPU µs/req | server CPU µs/req | \
         wrk CPU µs/req | answer |"
    )
    .unwrap();
    writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|").unwrap();
    for (scenario, all) in scenarios.iter().zip(results) {
        let runs = &all.runs;
        let rps = median(runs.iter().map(|r| r.requests_per_sec).collect());
        let p50 = median(runs.iter().map(|r| r.p50_ms).collect());
        let p99 = median(runs.iter().map(|r| r.p99_ms).collect());
        let total: u64 = runs.iter().map(|r| r.requests).sum();
        let non_2xx: u64 = runs.iter().map(|r| r.non_2xx).sum();
        let unexpected = if scenario.expect < 400 { non_2xx } else { total - non_2xx };
        let answer = if unexpected == 0 {
            scenario.expect.to_string()
        } else {
            eprintln!("WARNING: {}: {unexpected} of {total} responses were not {}", scenario.name, scenario.expect);
            format!("{} (**{unexpected} of {total} other**)", scenario.expect)
        };
        writeln!(
            table,
            "| {} | {:.1}k | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {answer} |",
            scenario.name,
            rps / 1000.0,
            p50,
            p99,
            rps / floor,
            rps / hello,
            cost(all.redis_cpu, total),
            cost(all.server_cpu, total),
            cost(all.wrk_cpu, total),
        )
        .unwrap();
    }

    // The same comparisons round by round: both sides of a ratio ran minutes
    // apart at most, so a host that is busier in one round than in another
    // moves each round's ratio less than it moves the medians above.
    let rounds_of = |name: &str| {
        let i = scenarios.iter().position(|s| s.name == name).expect("scenario");
        results[i].runs.iter().map(|r| r.requests_per_sec).collect::<Vec<f64>>()
    };
    let (floor_rounds, hello_rounds) = (rounds_of(FLOOR), rounds_of(HELLO));
    let mut per_round = String::new();
    for scenario in scenarios.iter().filter(|s| s.name != FLOOR && s.name != HELLO) {
        let own = rounds_of(scenario.name);
        writeln!(
            per_round,
            "| {} | {} | {} |",
            scenario.name,
            round_ratios(&own, &floor_rounds),
            round_ratios(&own, &hello_rounds)
        )
        .unwrap();
    }

    let mut pairs = String::new();
    for scenario in scenarios {
        for &other in scenario.versus.iter().filter(|&&o| scenarios.iter().any(|s| s.name == o)) {
            let ratio = rps_of(scenario.name) / rps_of(other);
            let rounds = round_ratios(&rounds_of(scenario.name), &rounds_of(other));
            writeln!(pairs, "- {} vs {}: {ratio:.2} (round by round: {rounds})", scenario.name, other).unwrap();
        }
    }
    if !pairs.is_empty() {
        table = format!("{table}\n{pairs}");
    }
    if !per_round.is_empty() {
        table = format!(
            "{table}\nThe same ratios taken within each round (that round's floor and hello), as the median of the \
             rounds and, in brackets, the lowest and highest round:\n\n\
             | scenario | vs floor, by round | vs hello, by round |\n|---|---:|---:|\n{per_round}"
        );
    }

    let mut lock_table = String::new();
    if !locks.is_empty() {
        let median_of = |name: &str| {
            let i = locks.iter().position(|l| l.name == name).expect("raw lock scenario");
            median(lock_results[i].clone())
        };
        let (raw, shared) = (median_of(lock::RAW), median_of(lock::RAW_SHARED));
        writeln!(
            lock_table,
            "| scenario ({} tasks, in-process) | cycles/s | vs raw floor | vs raw floor, by round | vs raw, one shared \
             connection | Redis CPU µs/cycle |",
            lock::TASKS
        )
        .unwrap();
        writeln!(lock_table, "|---|---:|---:|---:|---:|---:|").unwrap();
        let raw_rounds = &lock_results[locks.iter().position(|l| l.name == lock::RAW).expect("raw lock scenario")];
        for ((scenario, cycles), &(cpu, made)) in locks.iter().zip(lock_results).zip(lock_costs) {
            let c = median(cycles.clone());
            writeln!(
                lock_table,
                "| {} | {:.1}k | {:.2} | {} | {:.2} | {} |",
                scenario.name,
                c / 1000.0,
                c / raw,
                round_ratios(cycles, raw_rounds),
                c / shared,
                cost(cpu, made)
            )
            .unwrap();
        }
        lock_table = format!(
            "## Locks\n\nUncontended acquire + release cycles per second: {} tasks in the benchmark process, each \
             on its own lock name, for {} s per round, interleaved with the HTTP scenarios.\n\n{lock_table}\n",
            lock::TASKS,
            args.seconds
        );
    }

    let mut command = format!(
        "cargo run --release -p redlayer-bench{} -- --rounds {} --seconds {} --connections {}",
        if cfg!(feature = "peers") { " --features peers" } else { "" },
        args.rounds,
        args.seconds,
        args.connections
    );
    if !args.only.is_empty() {
        command += &format!(" --only {}", args.only.join(","));
    }
    let checks = if checks.is_empty() {
        String::new()
    } else {
        format!("## Checks\n\n{}\n", checks.iter().map(|c| format!("- {c}\n")).collect::<String>())
    };
    let list: String = scenarios
        .iter()
        .map(|s| (s.name, s.about))
        .chain(locks.iter().map(|l| (l.name, l.about)))
        .map(|(name, about)| format!("- **{name}**: {about}\n"))
        .collect();
    format!(
        "# Benchmarks\n\n\
         Produced by `{command}` on the project's 2-core machine: `wrk -t1 -c{c} -d{s}s` against axum servers on \
         loopback, one redis-server 7 started by the benchmark, scenarios interleaved in {r} rounds, medians shown. \
         Compare ratios within this table only; single rounds vary by 10-20%.\n\n\
         The floor is an axum handler doing one `INCR` through the redlayer handle: every layer is compared with it, \
         and with axum hello (the machine's ceiling). \"answer\" is the status every response had (checked by a \
         probe before the rounds and by wrk's count of non-2xx answers during them). \"Redis CPU µs/req\" is the \
         CPU time redis-server used during the scenario's runs (from `/proc`, user + system, so the loopback \
         socket work too) divided by the requests answered; \"server CPU\" is the same for the benchmark process \
         (every server under test, mostly kernel time in socket calls) and \"wrk CPU\" for wrk. The three share \
         the machine's 2 cores, so each layer's throughput follows its total CPU per request.\n\n\
         {table}\n{lock_table}{checks}## Scenarios\n\n{list}{peers}",
        peers = if cfg!(feature = "peers") {
            ""
        } else {
            "\nPeer crates (tower-sessions + fred, tower_governor, rslock, tower-http-cache) on the same routes run when the benchmark \
             is built with `--features peers`.\n"
        },
        c = args.connections,
        s = args.seconds,
        r = args.rounds,
    )
}

/// `a / b` round by round: "median (lowest to highest)".
fn round_ratios(a: &[f64], b: &[f64]) -> String {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let (low, high) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
    format!("{:.2} ({low:.2} to {high:.2})", median(ratios))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
