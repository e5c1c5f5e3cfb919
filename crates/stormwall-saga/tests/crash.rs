//! A saga interrupted between steps by killing the process that runs it: a new process
//! resumes it to completion; no completed step runs again. The processes are this test
//! binary run as children (`saga_child`); their steps write to an effects log that, like
//! a real target, applies each idempotency key once — and a calls log that records every
//! invocation.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stormwall::Pipeline;
use stormwall_saga::{
    Orchestrator, OrchestratorOptions, SagaDefinition, SagaStatus, SqliteStore, StepContext,
};

fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
    f.sync_all().unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A step: logs the call, applies the effect once per key, and — in the child that is
/// to be killed — hangs in `hang_at`.
fn step(
    dir: PathBuf,
    name: &'static str,
    hang_at: Option<&'static str>,
) -> impl Fn(
    StepContext,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send>>
       + Send
       + Sync
       + Clone
       + 'static {
    move |ctx: StepContext| {
        let dir = dir.clone();
        Box::pin(async move {
            append(
                &dir.join("calls.log"),
                &format!("{name} {}", ctx.idempotency_key),
            );
            if hang_at == Some(name) {
                std::future::pending::<()>().await;
            }
            let effects = dir.join("effects.log");
            let effect = format!("{name} {}", ctx.idempotency_key);
            if !lines(&effects).contains(&effect) {
                append(&effects, &effect);
            }
            Ok(json!(name))
        })
    }
}

fn orchestrator(
    dir: &Path,
    hang_at: Option<&'static str>,
) -> Orchestrator<SqliteStore, impl stormwall::pipeline::Strategy<Value, String>> {
    let d = dir.to_path_buf();
    let order = SagaDefinition::new("order")
        .step(
            "inventory",
            step(d.clone(), "inventory", hang_at),
            step(d.clone(), "release", None),
        )
        .step(
            "payment",
            step(d.clone(), "payment", hang_at),
            step(d.clone(), "refund", None),
        )
        .step_without_compensation("shipping", step(d.clone(), "shipping", hang_at));
    Orchestrator::new(
        SqliteStore::open(dir.join("sagas.db")).unwrap(),
        Pipeline::builder().build().unwrap(),
        OrchestratorOptions {
            // The same replica, restarted: it takes its sagas back at once.
            owner: "replica-1".into(),
            ..Default::default()
        },
    )
    .register(order)
    .unwrap()
}

/// The child: starts (hanging in `payment`, to be killed) or resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_child() {
    let Ok(dir) = std::env::var("STORMWALL_SAGA_DIR") else {
        return; // run directly: nothing to do
    };
    let dir = PathBuf::from(dir);
    match std::env::var("STORMWALL_SAGA_MODE").as_deref() {
        Ok("start") => {
            orchestrator(&dir, Some("payment"))
                .start("order", "order-42", json!({"sku": "lamp"}))
                .await
                .unwrap();
            unreachable!("the payment step hangs until the process is killed");
        }
        _ => {
            let resumed = orchestrator(&dir, None).resume_all().await.unwrap();
            assert_eq!(resumed.len(), 1);
            assert_eq!(resumed[0].1.status, SagaStatus::Completed);
        }
    }
}

fn child(dir: &Path, mode: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "saga_child", "--nocapture", "--test-threads=1"])
        .env("STORMWALL_SAGA_DIR", dir)
        .env("STORMWALL_SAGA_MODE", mode)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_killed_between_steps_is_resumed_by_a_new_process() {
    let dir = std::env::temp_dir().join(format!("stormwall-saga-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let mut first = child(&dir, "start");
    // Kill it once it is inside the second step (the first one persisted).
    let started = Instant::now();
    while !lines(&dir.join("calls.log"))
        .iter()
        .any(|l| l.starts_with("payment"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the child reached the payment step"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let state = orchestrator(&dir, None).status("order-42").await.unwrap();
    assert_eq!(state.status, SagaStatus::Running);
    assert_eq!(state.completed.len(), 1, "inventory persisted, payment not");

    let status = child(&dir, "resume").wait().unwrap();
    assert!(status.success(), "the resuming process finished the saga");

    let state = orchestrator(&dir, None).status("order-42").await.unwrap();
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(
        lines(&dir.join("effects.log")),
        [
            "inventory order-42:inventory",
            "payment order-42:payment",
            "shipping order-42:shipping"
        ],
        "each effect once, in order"
    );
    let calls = lines(&dir.join("calls.log"));
    assert_eq!(
        calls.iter().filter(|l| l.starts_with("inventory")).count(),
        1,
        "the persisted step did not run again: {calls:?}"
    );
    // The interrupted step ran again with the same key (the target applied it once).
    assert_eq!(calls.iter().filter(|l| l.starts_with("payment")).count(), 2);
    std::fs::remove_dir_all(&dir).ok();
}
