//! `stormwall check --config`: a good file passes; a bad one fails naming the key.

use std::process::Command;

fn check(text: &str) -> (bool, String, String) {
    let path = std::env::temp_dir().join(format!(
        "stormwall-check-{}-{}.toml",
        std::process::id(),
        text.len()
    ));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[route]]
name = "payment"
match = { path_prefix = "/payment" }
upstream = "http://127.0.0.1:7001"
retry = { max_retries = 3, delay = "200ms" }
circuit_breaker = { failure_ratio = 0.5, minimum_throughput = 10, sampling_duration = "10s", break_duration = "30s" }
"#;

#[test]
fn a_good_file_passes_and_a_bad_one_names_the_key() {
    let (ok, stdout, _) = check(GOOD);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("OK (1 routes)"), "{stdout}");
    // Invalid strategy option: caught by building the route.
    let (ok, _, stderr) = check(&GOOD.replace("failure_ratio = 0.5", "failure_ratio = 1.5"));
    assert!(!ok);
    assert!(
        stderr.contains("route[payment].circuit_breaker.failure_ratio"),
        "{stderr}"
    );
    let (ok, _, stderr) = check(&GOOD.replace("retry =", "retries ="));
    assert!(!ok);
    assert!(stderr.contains("retries"), "{stderr}");
}
