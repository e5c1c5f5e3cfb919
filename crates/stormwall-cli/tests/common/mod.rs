//! `stormwall proxy` as a process, for the tests that drive it from outside (`proxy_command`,
//! `proxy_options`): started on free loopback ports from a configuration file it can be
//! told to reload, its log kept in a file, killed when dropped.

// Each test file uses what it needs of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A configuration: `[server]` on `listen` and `admin`, then `rest` (keys before its first
/// table are more `[server]` keys).
pub fn config_text(listen: SocketAddr, admin: SocketAddr, rest: &str) -> String {
    format!("[server]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\n{rest}")
}

/// One `stormwall proxy` process; killed when dropped (its files removed).
pub struct Sidecar {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    file: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Sidecar {
    /// Starts the proxy on free ports with [`config_text`]`(listen, admin, rest)`, `env` set
    /// for the process, its standard error in a file ([`log_text`](Self::log_text)). Does
    /// not wait for it: see [`ready`](Self::ready).
    pub fn spawn(rest: &str, env: &[(&str, &str)]) -> Sidecar {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = std::env::temp_dir();
        let tag = format!("{}-{}", std::process::id(), listen.port());
        let file = dir.join(format!("stormwall-sidecar-{tag}.toml"));
        let log = dir.join(format!("stormwall-sidecar-{tag}.log"));
        std::fs::write(&file, config_text(listen, admin, rest)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_stormwall"))
            .args(["proxy", "--config"])
            .arg(&file)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Sidecar {
            child,
            listen,
            admin,
            file,
            log,
        }
    }

    /// Waits (up to 30 s) until the proxy and its admin API answer.
    pub async fn ready(self) -> Sidecar {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(self.admin, "/health/live").await
            || TcpStream::connect(self.listen).await.is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the sidecar did not start: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log (standard error), without colours.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut plain = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find('\u{1b}') {
            plain.push_str(&rest[..at]);
            rest = &rest[at..];
            rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
        }
        plain.push_str(rest);
        plain
    }

    /// Peak resident memory of the process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Sends the signal `name` (`HUP`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Writes the configuration file anew, on the same addresses (for a reload).
    pub fn rewrite(&self, rest: &str) {
        self.rewrite_at(self.listen, self.admin, rest);
    }

    /// Writes the configuration file anew with other addresses (for a reload).
    pub fn rewrite_at(&self, listen: SocketAddr, admin: SocketAddr, rest: &str) {
        std::fs::write(&self.file, config_text(listen, admin, rest)).unwrap();
    }
}

/// Whether a GET of `path` at `addr` gets an HTTP answer.
async fn answers(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let head = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.is_ok() && raw.starts_with(b"HTTP/1.1 ")
}
