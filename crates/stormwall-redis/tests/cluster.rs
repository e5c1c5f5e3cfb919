//! The shared breaker on a real three-node Redis Cluster (feature `cluster`).
#![cfg(feature = "cluster")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use stormwall_redis::{RedisStateStore, RedisStoreOptions};

struct Cluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_cluster() -> Cluster {
    let dir = std::env::temp_dir().join(format!("stormwall-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = Cluster {
        ports: Vec::new(),
        children: Vec::new(),
        dir: dir.clone(),
    };
    for _ in 0..3 {
        // Cluster nodes also listen on port + 10000: pick ports whose bus port is free too.
        let port = loop {
            let p = common::free_port();
            if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                break p;
            }
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
            ])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        cluster.ports.push(port);
        cluster.children.push(child);
    }
    for port in &cluster.ports {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let nodes: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success(), "redis-cli --cluster create");
    let started = Instant::now();
    loop {
        let info = Command::new("redis-cli")
            .args(["-p", &cluster.ports[0].to_string(), "cluster", "info"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "cluster not ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_breaker_through_a_redis_cluster() {
    let cluster = start_cluster();
    let urls: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let options = CircuitBreakerOptions::new()
        .consecutive_failures(3)
        .break_duration(Duration::from_millis(300));
    let mut breakers = Vec::new();
    for i in 0..3 {
        // Each replica subscribes through a different node.
        let mut order = nodes.clone();
        order.rotate_left(i);
        let store = RedisStateStore::connect_cluster(
            &order,
            "orders",
            &options,
            RedisStoreOptions::default(),
        )
        .await
        .unwrap();
        assert!(store.is_connected());
        breakers.push(CircuitBreaker::with_store(options.clone(), store).unwrap());
    }
    // Sharded pub/sub: the three replicas subscribe (SSUBSCRIBE) on the node that owns the
    // breaker's slot, not through whichever node they were given first.
    let channel = "stormwall:{orders}:events:0";
    let subscribers = |port: u16, kind: &str| -> u32 {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PUBSUB", kind, channel])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let sharded: Vec<u32> = cluster
        .ports
        .iter()
        .map(|&p| subscribers(p, "SHARDNUMSUB"))
        .collect();
    assert_eq!(sharded.iter().sum::<u32>(), 3, "{sharded:?}");
    assert_eq!(sharded.iter().filter(|&&n| n > 0).count(), 1, "{sharded:?}");
    for &p in &cluster.ports {
        assert_eq!(subscribers(p, "NUMSUB"), 0, "no classic subscription");
    }
    for b in &breakers {
        b.try_acquire().unwrap().record_failure();
    }
    let started = Instant::now();
    while !breakers.iter().all(|b| b.state() == CircuitState::Open) {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the trip reached every replica"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // After the break, one probe in the cluster; its success closes the circuit everywhere.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut probe = None;
    let started = Instant::now();
    while probe.is_none() {
        for b in &breakers {
            if let Ok(p) = b.try_acquire() {
                assert!(probe.is_none(), "a second probe");
                probe = Some(p);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    probe.unwrap().record_success();
    let started = Instant::now();
    while !breakers.iter().all(|b| b.state() == CircuitState::Closed) {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "closed everywhere"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
