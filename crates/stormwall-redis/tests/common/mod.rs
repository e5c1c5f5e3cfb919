//! A real `redis-server` on a free loopback port, stopped when dropped.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server (installed by `scripts/test`); panics with a clear message if it
    /// cannot.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "stormwall-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a command with redis-cli; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` replicas of the breaker `name`: separate stores and connections, same options.
pub async fn replicas(
    redis: &RedisServer,
    name: &str,
    options: &stormwall::circuit_breaker::CircuitBreakerOptions,
    n: usize,
) -> Vec<
    stormwall::circuit_breaker::CircuitBreaker<
        stormwall::pipeline::OnError,
        stormwall_redis::RedisStateStore,
    >,
> {
    let mut breakers = Vec::new();
    for _ in 0..n {
        let store = stormwall_redis::RedisStateStore::connect(
            &redis.url(),
            name,
            options,
            stormwall_redis::RedisStoreOptions::default(),
        )
        .await
        .unwrap();
        assert!(store.is_connected());
        breakers.push(
            stormwall::circuit_breaker::CircuitBreaker::with_store(options.clone(), store).unwrap(),
        );
    }
    breakers
}
