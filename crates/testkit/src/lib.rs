//! Real `redis-server` processes for tests: a standalone server or a
//! 3-master cluster (optionally with a replica per master) on free loopback ports, which a test can kill, restart on
//! the same port, pause (`SIGSTOP`) and resume. Processes and their temporary
//! directories are removed on drop, also when the test panics.
//!
//! There is no mock: if `redis-server` is missing, starting one panics with a
//! message saying how to install it (`scripts/test` does it for you).
//!
//! ```no_run
//! let mut server = redlayer_testkit::RedisServer::start();
//! let url = server.url();
//! server.kill();
//! server.restart();
//! # let _ = url;
//! ```
#![deny(missing_docs, unsafe_code)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

const MISSING: &str = "redis-server was not found on PATH. Install it with `scripts/test` \
     (which runs `apt-get install redis-server redis-tools` when missing) or your package manager.";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// One `redis-server` process on a loopback port.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    cluster: bool,
}

impl RedisServer {
    /// Starts a standalone server on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    fn start_with(cluster: bool) -> Self {
        let mut last_error = String::new();
        for _ in 0..10 {
            let port = free_port(cluster);
            let dir = std::env::temp_dir().join(format!(
                "redlayer-test-{}-{}-{port}",
                std::process::id(),
                NEXT_DIR.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir for redis-server");
            let mut server = RedisServer { port, dir, child: None, cluster };
            if server.spawn() {
                return server;
            }
            last_error = std::fs::read_to_string(server.dir.join("stderr.log")).unwrap_or_default();
            if let Ok(log) = std::fs::read_to_string(server.dir.join("redis.log")) {
                last_error.push_str(log.lines().rev().take(5).collect::<Vec<_>>().join("\n").as_str());
            }
        }
        panic!("could not start redis-server on a free port after 10 attempts; the last one said: {last_error}");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"]);
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        // Tests may switch active expiry off (`DEBUG SET-ACTIVE-EXPIRE 0`):
        // Redis 7 refuses `DEBUG` unless enabled, and Redis 6 knows no such option.
        if server_major_version() >= 7 {
            cmd.args(["--enable-debug-command", "local"]);
        }
        // Refused options and the like are reported on stderr, before the log file opens.
        let stderr =
            std::fs::File::create(self.dir.join("stderr.log")).map(Stdio::from).unwrap_or_else(|_| Stdio::null());
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{MISSING}"),
            Err(e) => panic!("could not run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false; // port taken, most likely
            }
            if ping(self.port) {
                // Another test's server may hold the port (it was free when
                // picked): only our own child counts.
                let ours = self.child.as_ref().map(|c| c.id());
                if ours.is_some() && server_pid(self.port) == ours {
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server with `SIGKILL` and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`])
    /// and waits until it answers. Its data is gone, as after a crash without
    /// persistence; a cluster node keeps its identity and slots.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Freezes the server with `SIGSTOP`: it keeps its socket but answers nothing.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "STOP").expect("send SIGSTOP");
        }
    }

    /// Resumes a paused server with `SIGCONT`.
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "CONT").expect("send SIGCONT");
        }
    }

    /// Runs one command with `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli was not found; scripts/test installs redis-tools");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The number of calls of `command` (lowercase, e.g. `"evalsha"`) this
    /// server has executed, from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]);
        let needle = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The total number of commands this server has executed (`INFO stats`).
    pub fn total_commands(&self) -> u64 {
        let info = self.cli(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters, each a real `redis-server`; with
/// [`RedisCluster::start_with_replicas`], each master has a replica that takes
/// over when the master dies.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, assigns all 16384 slots with
    /// `redis-cli --cluster create`, and waits until every node says `cluster_state:ok`.
    pub fn start() -> Self {
        Self::start_replicated(0)
    }

    /// Starts three masters and one replica of each (six servers), and waits
    /// until every node says `cluster_state:ok` and every replica is in sync.
    /// A killed master is replaced by its replica after about 2 s (the
    /// nodes' `cluster-node-timeout`). See [`RedisCluster::masters`].
    pub fn start_with_replicas() -> Self {
        let cluster = Self::start_replicated(1);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Three masters, and three replicas connected to theirs and in sync.
        let ready = || {
            let roles: Vec<String> = cluster.nodes.iter().map(|n| n.cli(&["ROLE"])).collect();
            let masters = roles.iter().filter(|r| r.starts_with("master")).count();
            let synced = roles.iter().filter(|r| r.starts_with("slave") && r.contains("connected")).count();
            masters == 3 && synced == 3
        };
        while !ready() {
            assert!(Instant::now() < deadline, "replicas did not sync with their masters");
            thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn start_replicated(replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas)).map(|_| RedisServer::start_with(true)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli was not found; scripts/test installs redis-tools");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(20));
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok` and knows
    /// every other node (so that all of them agree on who serves which slot).
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let all_ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains(&known)
            });
            if all_ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not reach cluster_state:ok");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The indices (in [`RedisCluster::nodes`]) of the running nodes that are
    /// masters now (after a failover, a former replica is one).
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some() && self.nodes[i].cli(&["ROLE"]).starts_with("master"))
            .collect()
    }

    /// Waits until the replicas of the master at `index` have received all
    /// of its writes so far (their replication offset reached its own).
    pub fn wait_replicated(&self, index: usize, within: Duration) {
        let master = &self.nodes[index];
        let deadline = Instant::now() + within;
        loop {
            let text = master.cli(&["INFO", "replication"]);
            let target: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("master_repl_offset:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no master_repl_offset from node {index}: {text}"));
            // `slave0:ip=..,port=..,state=online,offset=N,lag=0`
            let offsets: Vec<u64> = text
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("ip="))
                .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")))
                .filter_map(|v| v.trim().parse().ok())
                .collect();
            if !offsets.is_empty() && offsets.iter().all(|&o| o >= target) {
                return;
            }
            assert!(Instant::now() < deadline, "replicas of node {index} stayed behind {target}: {offsets:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The nodes' URLs, to hand to a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, to kill, pause or restart.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The sum of [`RedisServer::command_calls`] over all nodes.
    pub fn command_calls(&self, command: &str) -> u64 {
        self.nodes.iter().map(|n| n.command_calls(command)).sum()
    }
}

/// The major version of the `redis-server` on `PATH` (`v=7.0.15` → 7), 0 when unknown.
fn server_major_version() -> u32 {
    static VERSION: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = Command::new("redis-server").arg("--version").output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.split("v=").nth(1).and_then(|v| v.split('.').next()).and_then(|major| major.parse().ok()).unwrap_or(0)
    })
}

fn signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other(format!("kill -{sig} {pid} failed"))) }
}

/// A free loopback port for a server (and, for a cluster node, its bus at
/// port + 10000). Taken below the kernel's range of ephemeral ports when it
/// leaves room (10000 up to that range's start − 10000): an outgoing
/// connection (a client, `redis-cli`, a cluster bus link) is never given a
/// port a killed server is about to take again.
fn free_port(cluster: bool) -> u16 {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let bindable = |port: u32| TcpListener::bind(("127.0.0.1", port as u16)).is_ok();
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let (first, last) = (10_000u32, ephemeral_start.min(65_536).saturating_sub(10_001));
    if last > first + 1_000 {
        let span = last - first;
        // Spread over the range: by process (test binaries run one after
        // another) and by call (tests of one binary run side by side).
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = std::process::id().wrapping_mul(7_919).wrapping_add(call.wrapping_mul(97)) % span;
        for i in 0..span {
            let port = first + (start + i) % span;
            if bindable(port) && (!cluster || bindable(port + 10_000)) {
                return port as u16;
            }
        }
    }
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        // A cluster node also listens on port + 10000 for its bus.
        if !cluster || (port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()) {
            return port;
        }
    }
}

/// The `process_id` that the server on `port` reports in `INFO server`.
fn server_pid(port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1)
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
    }
    None
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
