//! `stormwall check --config`: a good file passes; a bad one fails naming the key.

use std::process::Command;

fn check(text: &str) -> (bool, String, String) {
    // One file per call: tests run in parallel.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "stormwall-check-{}-{call}.toml",
        std::process::id(),
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

/// The example file the HTTP handler and the registry read too.
#[test]
fn the_shared_example_file_passes() {
    let (ok, stdout, stderr) = check(include_str!("../../../examples/stormwall.toml"));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("OK (2 routes)"), "{stdout}");
}

/// `STORMWALL__<PIPELINE>__<KEY>` overrides a key of the file, and is checked like it.
#[test]
fn environment_overrides_are_applied_and_checked() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/stormwall.toml");
    let run = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_stormwall"))
            .args(["check", "--config"])
            .arg(&path)
            .env("STORMWALL__PAYMENT__RETRY__MAX_RETRIES", value)
            .output()
            .unwrap()
    };
    let out = run("5");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("0");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pipelines.payment.strategies[2].retry.max_retries")
            && stderr.contains("STORMWALL__PAYMENT__RETRY__MAX_RETRIES"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_each_bad_config_naming_the_key() {
    let cases = [
        (
            GOOD.replace("http://127.0.0.1:7001", "http://user:secret@127.0.0.1:7001"),
            "route[payment].upstream",
        ),
        (
            GOOD.replace("127.0.0.1:8080", "not an address"),
            "server.listen",
        ),
        (
            GOOD.replace("127.0.0.1:8080", "127.0.0.1:99999"),
            "server.listen",
        ),
        (
            GOOD.replace(
                "listen = \"127.0.0.1:8080\"",
                "listen = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:8080\"",
            ),
            "server.admin",
        ),
        (
            GOOD.replace("retry =", "timeout = { total = \"-1s\" }\nretry ="),
            "route[payment].timeout.total",
        ),
        (
            GOOD.replace("retry =", "timeout = { total = \"0s\" }\nretry ="),
            "route[payment].timeout.total",
        ),
        (
            GOOD.replace(
                "listen = \"127.0.0.1:8080\"",
                "listen = \"127.0.0.1:8080\"\nidle_timeout = \"soon\"",
            ),
            "server.idle_timeout",
        ),
    ];
    for (text, key) in cases {
        let (ok, _, stderr) = check(&text);
        assert!(!ok, "{key} passed");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    // An upstream with a path is a prefix (documented), not an error.
    let (ok, _, stderr) =
        check(&GOOD.replace("http://127.0.0.1:7001", "http://127.0.0.1:7001/v2/api"));
    assert!(ok, "{stderr}");
}
