//! `stormwall chaos`: the binary serves the API and loads a populate file at start; a bad
//! file stops it with an error naming the file.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

#[test]
fn chaos_serves_the_api_with_the_proxies_of_its_config() {
    let dir = std::env::temp_dir().join(format!("stormwall-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxies.json");
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        &config,
        format!(
            r#"[{{"name": "db", "listen": "127.0.0.1:0", "upstream": "{}"}}]"#,
            upstream.local_addr().unwrap()
        ),
    )
    .unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args(["chaos", "--listen", &api, "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut body = None;
    while started.elapsed() < Duration::from_secs(10) {
        body = get(&api, "/proxies");
        if body.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let body: serde_json::Value = serde_json::from_str(&body.expect("the API answered")).unwrap();
    assert_eq!(body["db"]["enabled"], true, "{body}");
    assert_eq!(
        body["db"]["upstream"],
        upstream.local_addr().unwrap().to_string()
    );
}

#[test]
fn chaos_with_a_bad_config_fails_naming_the_file_and_the_field() {
    let dir = std::env::temp_dir().join(format!("stormwall-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.json");
    std::fs::write(&config, r#"[{"name": "db"}]"#).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args(["chaos", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.json") && stderr.contains("upstream"),
        "{stderr}"
    );
}
