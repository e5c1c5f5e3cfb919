//! The live dashboard in a real browser: headless Chromium (Debian's `chromium`, which
//! `scripts/test` installs) loads it while the demo runs a scenario where the payment
//! dependency goes down, and sees the payment circuit turn open. A screenshot is kept in
//! the target directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The browser: `STORMWALL_CHROMIUM`, else `chromium` on the path.
fn chromium() -> PathBuf {
    std::env::var_os("STORMWALL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

fn headless(profile: &Path) -> Command {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
            // Stop loading (and print) after 4 s: the event stream never ends by itself.
            "--timeout=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Runs `attempt` up to five times, a second apart, until it gives a result: a browser
/// on a loaded machine sometimes quits at once without output.
fn until<T>(mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..5 {
        if let Some(result) = attempt() {
            return Some(result);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    None
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_dashboard_shows_the_payment_circuit_opening_in_headless_chromium() {
    // The demo: payment down for a while, then back; it keeps serving after the run.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_stormwall"))
        .args([
            "demo",
            "--quick",
            "--no-report",
            "--dashboard",
            "--dashboard-port",
            "0",
            "--scenario",
            "recovery",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let demo = Killed(demo);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .trim()
        .strip_prefix("dashboard: ")
        .unwrap_or_else(|| panic!("the first line names the dashboard: {first:?}"))
        .to_owned();
    // Wait for the scenario to finish (its row in the table): the dashboard then holds the
    // whole history, so the check does not race the breaker.
    for line in lines.by_ref() {
        if line.unwrap().contains("payment down, then back") {
            break;
        }
    }
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&artifacts).unwrap();
    // One browser run prints the DOM (once the page rendered what arrived while loading)
    // and saves a screenshot.
    let screenshot = artifacts.join("dashboard.png");
    let started = Instant::now();
    let mut last = String::new();
    let dom = until(|| {
        let out = headless(&artifacts.join("profile"))
            .arg("--dump-dom")
            .arg(format!("--screenshot={}", screenshot.display()))
            .arg(&url)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} must be installed (scripts/test does): {e}",
                    chromium().display()
                )
            });
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        last = format!(
            "status {}; stderr {}; page:\n{dom}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The scenario's name is printed as it starts: the page may be loaded before the
        // payment circuit has opened, so load it again until it has (or five tries pass).
        (dom.contains("route-payment") && dom.contains("payment: closed → open")).then_some(dom)
    })
    .unwrap_or_else(|| {
        panic!("chromium printed the page with the payment circuit open; last try: {last}")
    });
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        dom.contains("payment: closed → open"),
        "the payment circuit turned open:\n{dom}"
    );
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 1000),
        "a screenshot at {}",
        screenshot.display()
    );
    drop(demo);
}
