//! Toxiproxy's official Python client (`toxiproxy-python` from PyPI) drives the chaos
//! proxy unmodified.
//!
//! The client lives in a virtualenv: `STORMWALL_TOXIPROXY_PYTHON` names its interpreter
//! (`scripts/test` makes it); without it the test makes one in the target directory. It
//! fails, never skips, when it cannot.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("STORMWALL_TOXIPROXY_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("toxiproxy-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 must be installed to run Toxiproxy's Python client");
        assert!(made.success(), "python3 -m venv {venv:?} failed");
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "toxiproxy-python",
        ])
        .status()
        .expect("pip");
    assert!(installed.success(), "pip install toxiproxy-python failed");
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_drives_the_proxy() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let (_server, api) = start_api().await;
    let upstream = echo_server().await;
    let other = echo_server().await;
    let (host, port) = api.rsplit_once(':').unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/toxiproxy_client.py"
    );
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([host, port, &upstream.to_string(), &other.to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "the Python client failed:\n{stdout}\n{stderr}"
    );
}
