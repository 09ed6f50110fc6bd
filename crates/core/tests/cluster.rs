//! redlayer-core against a real 3-master Redis Cluster.
#![cfg(feature = "cluster")]

use std::time::{Duration, Instant};

use redlayer_core::{KeyPart, Redis, keys::cluster_slot};
use redlayer_testkit::RedisCluster;

static MOVE_TOKEN: &str = include_str!("scripts/move_token.lua");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_key_scripts_share_a_slot_and_never_fail_with_crossslot() {
    let cluster = RedisCluster::start();
    let redis = Redis::connect_cluster(cluster.urls()).await.unwrap();
    assert!(redis.is_cluster());
    let script = redis::Script::new(MOVE_TOKEN);
    let mut conn = redis.connection().await.unwrap();

    // Ids spread over every node; each pair of keys still shares a slot.
    let mut slots = std::collections::HashSet::new();
    for i in 0..30 {
        let id = KeyPart::client(format!("user-{i}"));
        let from = redis.keys().key_with("demo", &id, "from");
        let to = redis.keys().key_with("demo", &id, "to");
        assert_eq!(cluster_slot(&from), cluster_slot(&to));
        slots.insert(cluster_slot(&from) / 5462);
        let _: () = redis::cmd("SET").arg(&from).arg(1).query_async(&mut conn).await.unwrap();
        let moved: i64 = script.key(&from).key(&to).invoke_async(&mut conn).await.unwrap();
        assert_eq!(moved, 1, "key pair {from} / {to}");
    }
    assert_eq!(slots.len(), 3, "the ids landed on all three masters");

    // Without the hash tag the same script is refused: the test above can fail.
    let err = script.key("plain-from-a").key("plain-to-b").invoke_async::<i64>(&mut conn).await.unwrap_err();
    assert!(err.to_string().to_uppercase().contains("CROSSSLOT"), "{err}");

    // Every master has forgotten its scripts: EVALSHA reloads them.
    for node in cluster.nodes() {
        node.cli(&["SCRIPT", "FLUSH"]);
    }
    let id = KeyPart::client("after-flush");
    let (from, to) = (redis.keys().key_with("demo", &id, "from"), redis.keys().key_with("demo", &id, "to"));
    let _: () = redis::cmd("SET").arg(&from).arg(1).query_async(&mut conn).await.unwrap();
    let moved: i64 = script.key(&from).key(&to).invoke_async(&mut conn).await.unwrap();
    assert_eq!(moved, 1);
    assert!(cluster.command_calls("evalsha") >= 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_is_used_again() {
    let mut cluster = RedisCluster::start();
    let redis = Redis::builder().timeout(Duration::from_millis(500)).connect_cluster(cluster.urls()).await.unwrap();
    let keys: Vec<String> = (0..30).map(|i| redis.keys().key("c", &KeyPart::client(format!("k{i}")))).collect();
    let incr_all = |redis: Redis, keys: Vec<String>| async move {
        let mut ok = 0;
        for key in &keys {
            let Ok(mut conn) = redis.connection().await else { continue };
            if redis::cmd("INCR").arg(key).query_async::<i64>(&mut conn).await.is_ok() {
                ok += 1;
            }
        }
        ok
    };
    assert_eq!(incr_all(redis.clone(), keys.clone()).await, 30);

    cluster.node_mut(1).kill();
    let started = Instant::now();
    let during = incr_all(redis.clone(), keys.clone()).await;
    assert!(during < 30, "keys on the dead master fail");
    assert!(started.elapsed() < Duration::from_secs(30 * 2), "bounded by the timeouts");

    cluster.node_mut(1).restart();
    cluster.wait_ok(Duration::from_secs(20));
    let back = Instant::now();
    while incr_all(redis.clone(), keys.clone()).await < 30 {
        assert!(back.elapsed() < Duration::from_secs(10), "cluster handle did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("cluster recovered {:?} after the master was back", back.elapsed());
}

/// With the whole cluster gone (connections refused), calls fail at once
/// once the handle's connections are found dead, not at the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_is_gone_fails_fast() {
    let mut cluster = RedisCluster::start();
    let timeout = Duration::from_millis(300);
    let redis = Redis::builder().timeout(timeout).connect_cluster(cluster.urls()).await.unwrap();
    let key = redis.keys().key("c", &KeyPart::client("gone"));
    let incr = || async {
        let mut conn = redis.connection().await?;
        redis::cmd("INCR").arg(&key).query_async::<i64>(&mut conn).await.map_err(redlayer_core::Error::from)
    };
    incr().await.unwrap();
    for node in 0..3 {
        cluster.node_mut(node).kill();
    }
    let mut fast = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let err = incr().await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(started.elapsed() < timeout + Duration::from_millis(200), "waited {:?}", started.elapsed());
        fast += usize::from(started.elapsed() < timeout / 3);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fast >= 10, "only {fast} of 20 calls failed fast with the cluster gone");
}

const SCRIPT_TIMEOUT: Duration = Duration::from_millis(500);

/// A cluster handle and 30 keys spread over the slots, each called through a
/// one-key script; every call is bounded by the handle's timeout.
struct ScriptProbe {
    redis: Redis,
    keys: Vec<String>,
}

impl ScriptProbe {
    /// Connects and checks that every key's script runs.
    async fn new(cluster: &RedisCluster, name: &str) -> Self {
        let redis = Redis::builder().timeout(SCRIPT_TIMEOUT).connect_cluster(cluster.urls()).await.unwrap();
        let keys = (0..30).map(|i| redis.keys().key(name, &KeyPart::client(format!("k{i}")))).collect();
        let probe = ScriptProbe { redis, keys };
        assert_eq!(probe.ok().await, 30);
        probe
    }

    /// How many of the keys' scripts ran.
    async fn ok(&self) -> usize {
        let script = redis::Script::new("return redis.call('INCR', KEYS[1])");
        let mut ok = 0;
        for key in &self.keys {
            let started = Instant::now();
            let result = async {
                let mut conn = self.redis.connection().await?;
                script.key(key).invoke_async::<i64>(&mut conn).await.map_err(redlayer_core::Error::from)
            }
            .await;
            // A NOSCRIPT reload is a second and third command: three timeouts at most.
            let bound = 3 * SCRIPT_TIMEOUT + Duration::from_millis(500);
            assert!(started.elapsed() < bound, "a call took {:?}", started.elapsed());
            ok += usize::from(result.is_ok());
        }
        ok
    }

    /// Calls every key again until all run, within `within`: how long that
    /// took, and whether some failed first.
    async fn until_all_run(&self, within: Duration) -> (Duration, bool) {
        let started = Instant::now();
        let mut failed = false;
        loop {
            let ok = self.ok().await;
            if ok == self.keys.len() {
                return (started.elapsed(), failed);
            }
            failed = true;
            assert!(started.elapsed() < within, "{ok} of 30 scripts ran {:?} after the change", started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A master dies and its replica takes over. The promoted replica has never
/// loaded the scripts (Redis does not replicate its script cache), so this is
/// also the `NOSCRIPT` reload on a changed topology: every slot serves scripts
/// again within a bounded time, and no call hangs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_again_after_a_failover_to_a_replica() {
    let mut cluster = RedisCluster::start_with_replicas();
    let probe = ScriptProbe::new(&cluster, "f").await;
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    cluster.node_mut(masters[0]).kill();
    let (took, failed_meanwhile) = probe.until_all_run(Duration::from_secs(30)).await;
    println!("scripts ran on every slot {took:?} after the master was killed");
    assert!(failed_meanwhile, "the killed master's slots failed until its replica took over");
    // The killed master is not counted: three masters means its replica took over.
    let promoted = cluster.masters();
    assert_eq!(promoted.len(), 3, "a replica took over: {promoted:?}");
}

/// A replica is gone (the masters are fine) and the masters forget their
/// scripts: the reload (sent to every node) must not fail for the dead
/// replica's sake, or every script call would fail until it came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_reload_with_a_replica_down() {
    let mut cluster = RedisCluster::start_with_replicas();
    let probe = ScriptProbe::new(&cluster, "r").await;
    let masters = cluster.masters();
    let replica = (0..cluster.nodes().len()).find(|i| !masters.contains(i)).unwrap();
    cluster.node_mut(replica).kill();
    for &m in &masters {
        cluster.nodes()[m].cli(&["SCRIPT", "FLUSH"]);
    }
    let (took, _) = probe.until_all_run(Duration::from_secs(15)).await;
    println!("scripts reloaded {took:?} after the flush, a replica down");
}

/// One node's URL is enough: `Redis::connect` on a cluster node gives a
/// cluster handle (one `REDIS_URL` for both kinds of deployment), which
/// reaches every slot and follows a failover of the very node it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_url_connects_to_the_whole_cluster() {
    let mut cluster = RedisCluster::start_with_replicas();
    let first = cluster.masters()[0];
    let url = cluster.urls()[first].clone();
    let redis = Redis::builder().timeout(Duration::from_millis(500)).connect(&url).await.unwrap();
    assert!(redis.is_cluster());
    let keys: Vec<String> = (0..30).map(|i| redis.keys().key("c", &KeyPart::client(format!("k{i}")))).collect();
    let incr_all = || async {
        let mut ok = 0;
        for key in &keys {
            let Ok(mut conn) = redis.connection().await else { continue };
            ok += usize::from(redis::cmd("INCR").arg(key).query_async::<i64>(&mut conn).await.is_ok());
        }
        ok
    };
    assert_eq!(incr_all().await, keys.len(), "every slot is reached through one node's URL");
    let on_first = keys.iter().filter(|k| cluster.nodes()[first].cli(&["EXISTS", k]).trim() == "1").count();
    assert!(on_first > 0 && on_first < keys.len(), "{on_first} of the keys on the node named");

    // That node dies: once its replica has taken over, every key works again.
    cluster.node_mut(first).kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while incr_all().await < keys.len() {
        assert!(Instant::now() < deadline, "keys still failing 30 s after the node named by the URL died");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Concurrent `INCR`s of `keys`: which succeeded.
async fn incr_each(redis: &Redis, keys: &[String]) -> Vec<bool> {
    let calls = keys.iter().map(|key| {
        let (redis, key) = (redis.clone(), key.clone());
        tokio::spawn(async move {
            let mut conn = redis.connection().await?;
            redis::cmd("INCR").arg(&key).query_async::<i64>(&mut conn).await.map_err(redlayer_core::Error::from)
        })
    });
    let calls: Vec<_> = calls.collect();
    let mut ok = Vec::new();
    for call in calls {
        ok.push(matches!(call.await, Ok(Ok(_))));
    }
    ok
}

/// One master frozen (`SIGSTOP`), then dead: until the cluster itself gives
/// up on it (its node timeout, 2 s here), the keys of the other masters keep
/// working through the handle, as they do on Redis; only the lost master's
/// keys fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lost_master_fails_only_its_own_keys() {
    for frozen in [true, false] {
        let mut cluster = RedisCluster::start();
        let redis = Redis::builder().timeout(Duration::from_millis(300)).connect_cluster(cluster.urls()).await.unwrap();
        let keys: Vec<String> = (0..30).map(|i| redis.keys().key("c", &KeyPart::client(format!("k{i}")))).collect();
        assert!(incr_each(&redis, &keys).await.iter().all(|ok| *ok));
        let lost: Vec<bool> = keys.iter().map(|k| cluster.nodes()[1].cli(&["EXISTS", k]).trim() == "1").collect();
        assert!(lost.iter().any(|l| *l) && !lost.iter().all(|l| *l));

        let started = Instant::now();
        match frozen {
            true => cluster.nodes()[1].pause(),
            false => cluster.node_mut(1).kill(),
        }
        if !frozen {
            // An application starting now connects, and reaches the healthy masters.
            let late = Redis::builder().timeout(Duration::from_millis(300)).connect_cluster(cluster.urls()).await;
            let ok = incr_each(&late.expect("connect with a master dead"), &keys).await;
            assert!(ok.iter().zip(&lost).all(|(ok, lost)| *ok || *lost), "{ok:?}");
        }
        let (mut rounds, mut others_failed) = (0, 0);
        // Well within the node timeout (2 s): the cluster still serves the other slots.
        while started.elapsed() < Duration::from_millis(800) {
            let ok = incr_each(&redis, &keys).await;
            others_failed += ok.iter().zip(&lost).filter(|(ok, lost)| !**ok && !**lost).count();
            rounds += 1;
        }
        if frozen {
            cluster.nodes()[1].resume();
        }
        assert!(rounds >= 2, "{rounds} rounds");
        assert_eq!(others_failed, 0, "frozen: {frozen}: calls to the healthy masters failed over {rounds} rounds");
    }
}

/// A master frozen for good (a hung process, a partition): once its replica
/// has taken over, its keys work again through the same handle. Nothing
/// answers for the frozen node, so no redirection ever says where its slots
/// went: the handle's new connection, made while the old one kept serving
/// the other masters, finds the new topology. An application starting while
/// the master is frozen connects too (every new cluster connection waits
/// for the frozen node up to its connect timeout, longer than a command's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_masters_keys_move_to_its_replica() {
    let cluster = RedisCluster::start_with_replicas();
    let redis = Redis::builder().timeout(Duration::from_millis(300)).connect_cluster(cluster.urls()).await.unwrap();
    let keys: Vec<String> = (0..30).map(|i| redis.keys().key("c", &KeyPart::client(format!("k{i}")))).collect();
    assert!(incr_each(&redis, &keys).await.iter().all(|ok| *ok));
    let frozen = cluster.masters()[0];
    cluster.nodes()[frozen].pause();
    let started = Instant::now();
    let late = Redis::builder().timeout(Duration::from_millis(300)).connect_cluster(cluster.urls()).await;
    let late = late.expect("connect_cluster with a master frozen");
    println!("connected {:?} after a master froze", started.elapsed());
    let mut failed_meanwhile = false;
    // The first handle is called one key after another, as steady traffic
    // would: the healthy masters' answers come between the lost one's timeouts.
    let one_by_one = |redis: Redis, keys: Vec<String>| async move {
        let mut ok = Vec::new();
        for key in &keys {
            let answer = async {
                let mut conn = redis.connection().await?;
                redis::cmd("INCR").arg(key).query_async::<i64>(&mut conn).await.map_err(redlayer_core::Error::from)
            };
            ok.push(answer.await.is_ok());
        }
        ok
    };
    for (i, handle) in [&redis, &late].into_iter().enumerate() {
        loop {
            let ok = match i {
                0 => one_by_one(handle.clone(), keys.clone()).await,
                _ => incr_each(handle, &keys).await,
            };
            if ok.iter().all(|ok| *ok) {
                break;
            }
            failed_meanwhile = true;
            assert!(started.elapsed() < Duration::from_secs(30), "keys still failing 30 s after a master froze");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("every key worked again on both handles {:?} after a master froze", started.elapsed());
    assert!(failed_meanwhile, "the frozen master's keys failed until its replica took over");
    cluster.nodes()[frozen].resume();
}
