//! `stormwall demo --quick --json`: the result has its shape, and resilience improved the
//! success rate wherever a dependency was failing.

use std::process::Command;

#[test]
fn quick_json_demo_shows_resilience_improving_the_failure_scenarios() {
    let output = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args(["demo", "--quick", "--json", "--no-report"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["interrupted"], false);
    let scenarios = result["scenarios"].as_array().unwrap();
    let names: Vec<_> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "healthy",
            "payment-latency",
            "inventory-down",
            "payment-failing-50",
            "notification-down",
            "recovery"
        ]
    );
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        let (plain, resilient, recommended) = (
            &s["without_resilience"],
            &s["with_resilience"],
            &s["recommended"],
        );
        for run in [plain, resilient, recommended] {
            for field in [
                "orders",
                "accepted",
                "success_rate",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "calls_to_failing_dependency",
                "served_by_failing_dependency",
                "fallbacks",
                "payments_queued",
                "payments_charged_later",
                "payments_pending",
                "payments_dead",
                "served_stale",
                "stale_age_max_ms",
                "stale_age_p50_ms",
                "inventory_defaults",
            ] {
                assert!(run[field].is_number(), "{name}: {field} in {run}");
            }
            assert_eq!(run["orders"], result["orders_per_run"]);
            // Every queued payment is accounted for, and what is left is explained.
            let count = |field: &str| run[field].as_u64().unwrap();
            assert_eq!(
                count("payments_queued"),
                count("payments_charged_later")
                    + count("payments_pending")
                    + count("payments_dead"),
                "{name}: {run}"
            );
            let left = count("payments_pending") + count("payments_dead");
            assert_eq!(run["payments_left"].is_string(), left > 0, "{name}: {run}");
        }
        let (before, after) = (
            plain["success_rate"].as_f64().unwrap(),
            resilient["success_rate"].as_f64().unwrap(),
        );
        match name {
            "healthy" | "payment-latency" => {
                assert_eq!((before, after), (1.0, 1.0), "{name}")
            }
            _ => {
                assert!(
                    after > before && after >= 0.95,
                    "{name}: stormwall {after} vs plain {before}"
                );
                let best = recommended["success_rate"].as_f64().unwrap();
                assert!(best >= 0.95, "{name}: recommended {best}");
            }
        }
    }
    // The recommended setup has breakers on inventory and notification: a dead one is
    // called far less than with the seeds' setup (retried on every order).
    for i in [2, 4] {
        let calls = |run: &str| scenarios[i][run]["calls_to_failing_dependency"].as_u64();
        assert!(
            calls("recommended") < calls("with_resilience"),
            "{}: {:?} vs {:?}",
            scenarios[i]["name"],
            calls("recommended"),
            calls("with_resilience")
        );
    }
    // Inventory down after its first quarter: stormwall served the popular items' last good
    // answers from the cache (each some time old), and the default for items never cached.
    let inventory = &scenarios[2]["with_resilience"];
    let stale = inventory["served_stale"].as_u64().unwrap();
    let defaults = inventory["inventory_defaults"].as_u64().unwrap();
    assert!(stale > 0 && defaults > 0, "{inventory}");
    assert!(
        inventory["stale_age_max_ms"].as_f64().unwrap() > 0.0,
        "{inventory}"
    );
    // No stale answer, and no default, while every dependency answered — in time: on a
    // machine loaded enough to hold an order past inventory's attempt timeout (5 s scaled by
    // --quick's 1/50: 100 ms), stormwall rightly stops waiting for it, and then a stale answer
    // is what it should give (seen under stress-ng --cpu 2: 11 stale of 60, orders of
    // several hundred ms). Every stale answer needs at least one timed-out attempt, so an
    // order that took as long.
    for run in ["without_resilience", "with_resilience"] {
        let healthy = &scenarios[0][run];
        if healthy["max_ms"].as_f64().unwrap() < 100.0 {
            assert_eq!(healthy["served_stale"], 0, "{healthy}");
            assert_eq!(healthy["inventory_defaults"], 0, "{healthy}");
        }
    }
    // Notification's fallback logs (and the order continues).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("notification failed: the order continues without it"),
        "{stderr}"
    );
    // A dead dependency is called far less once stormwall's breaker opens.
    let recovery = &scenarios[5];
    // Its failed payments were queued durably and, once it was back, every one charged.
    let queued = recovery["with_resilience"]["payments_queued"]
        .as_u64()
        .unwrap();
    assert!(queued > 0);
    assert_eq!(
        recovery["with_resilience"]["payments_charged_later"].as_u64(),
        Some(queued)
    );
    assert!(
        recovery["with_resilience"]["calls_to_failing_dependency"].as_u64()
            < recovery["without_resilience"]["calls_to_failing_dependency"].as_u64()
    );
}

#[test]
fn an_unknown_scenario_is_a_usage_error_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args(["demo", "--quick", "--scenario", "meteor-strike"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("meteor-strike") && stderr.contains("payment-latency"),
        "{stderr}"
    );
}

#[test]
fn the_html_report_is_written_with_a_chart_per_scenario() {
    let dir = std::env::temp_dir().join(format!("stormwall-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.html");
    let output = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args(["demo", "--quick", "--scenario", "recovery", "--report"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("report: ") && stdout.contains("payment down, then back"),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "latency and breaker charts"
    );
    assert!(html.contains("payment down, then back"));
}

/// The demo's directory of temporary files under `tmp` (it is named after the process).
fn demo_files(tmp: &std::path::Path, pid: u32) -> std::path::PathBuf {
    tmp.join(format!("stormwall-demo-{pid}"))
}

#[test]
fn ctrl_c_stops_the_demo_writes_the_partial_report_and_removes_its_temporary_files() {
    use std::io::Read;
    let dir = std::env::temp_dir().join(format!("stormwall-demo-int-{}", std::process::id()));
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let path = dir.join("partial.html");
    // The default scale takes seconds per scenario: time enough to interrupt it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args(["demo", "--scenario", "recovery", "--report"])
        .arg(&path)
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Interrupted while the stormwall run's payment queue (SQLite) is open.
    let files = demo_files(&tmp, child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let queue_open = || {
        std::fs::read_dir(&files).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".db"))
        })
    };
    while !queue_open() {
        assert!(
            std::time::Instant::now() < deadline,
            "the payment queue's file appears in {}",
            files.display()
        );
        assert!(child.try_wait().unwrap().is_none(), "the demo is running");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exits cleanly: {status:?}");
    assert!(stdout.contains("\ninterrupted"), "{stdout}");
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.contains("interrupted: partial"));
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn a_dashboard_port_in_use_is_replaced_by_a_free_one_and_said() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args([
            "demo",
            "--quick",
            "--no-report",
            "--scenario",
            "healthy",
            "--dashboard",
        ])
        .args(["--dashboard-port", &port.to_string()])
        // With a dashboard the demo serves until Ctrl-C: the test stops it once it has said
        // which port it took.
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = output;
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains(&format!("port {port} is in use")), "{line:?}");
}
