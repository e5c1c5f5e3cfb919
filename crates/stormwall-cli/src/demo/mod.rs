//! `stormwall demo`: the seeds' order flow on loopback, each dependency behind a chaos
//! proxy, run with and without stormwall under the same load, scenario by scenario.
//!
//! Timings are the seeds' (attempt 10 s, total 30 s, +2 s latency, ...) times a scale:
//! 1/20 by default (a run takes well under a minute), 1/50 with `--quick`, 1 with `--full`.

mod flow;
mod report;
mod scenarios;
mod services;

use flow::{Dependencies, Load, RunRecord, Setup};
use scenarios::Scenario;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use stormwall_chaos::{ChaosServer, ProxySpec};

/// The seeds' timings, scaled.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// 1.0 = as written in the seeds.
    pub scale: f64,
}

impl Timings {
    /// `seconds` of the seeds' time, scaled.
    pub fn scaled(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds * self.scale)
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct DemoArgs {
    pub quick: bool,
    pub full: bool,
    pub json: bool,
    /// Scenario names; empty = all.
    pub scenarios: Vec<String>,
    /// Where to write the HTML report; `None` = `stormwall-demo-report.html`.
    pub report: Option<PathBuf>,
    pub no_report: bool,
    /// Serve the live dashboard on this port (another if taken) while the demo runs, and
    /// after it until Ctrl-C.
    pub dashboard: Option<u16>,
    /// Start the scenarios once a browser has the dashboard's stream open.
    pub dashboard_wait: bool,
    /// Keep inventory's cache on this Redis (`redis://…`) instead of in memory.
    pub redis: Option<String>,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub orders: usize,
    pub accepted: usize,
    /// Accepted / orders (an order accepted with its payment queued counts).
    pub success_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The slowest order.
    pub max_ms: f64,
    /// Attempts the order service made to the dependency under fault.
    pub calls_to_failing_dependency: u64,
    /// Requests that dependency actually served.
    pub served_by_failing_dependency: u64,
    pub fallbacks: u64,
    /// Inventory answers served stale from the cache (stale-on-error) while inventory
    /// failed.
    pub served_stale: u64,
    /// The oldest of those answers, and the median age (ms).
    pub stale_age_max_ms: f64,
    pub stale_age_p50_ms: f64,
    /// Inventory answers that were the documented default ("in stock"): the item had never
    /// been cached. Not counted in `served_stale`.
    pub inventory_defaults: u64,
    /// Payments kept in the durable queue when the payment service failed (the order was
    /// accepted as PaymentPending).
    pub payments_queued: u64,
    /// Of those, charged by the queue's worker once the service answered again.
    pub payments_charged_later: u64,
    /// Of those, still in the queue when the demo stopped waiting for it to drain.
    pub payments_pending: u64,
    /// Of those, dead-lettered after every attempt failed.
    /// `payments_queued = payments_charged_later + payments_pending + payments_dead`.
    pub payments_dead: u64,
    /// Why some payments are left (pending or dead); `null` when every one was charged.
    pub payments_left: Option<String>,
}

/// One scenario, both ways.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: &'static str,
    pub title: &'static str,
    pub failing_dependency: Option<&'static str>,
    pub without_resilience: RunStats,
    pub with_resilience: RunStats,
    /// The recommended setup: breakers on all three dependencies, hedged inventory reads, a
    /// retry budget.
    pub recommended: RunStats,
}

/// The client's name in the table: `plain`, `stormwall` (the seeds' setup),
/// `stormwall (recommended)`.
pub fn client_name(setup: Option<Setup>) -> &'static str {
    match setup {
        None => "plain",
        Some(Setup::Seeds) => "stormwall",
        Some(Setup::Recommended) => "stormwall (recommended)",
    }
}

/// The whole demo's result (what `--json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct DemoResult {
    pub scale: f64,
    pub orders_per_run: u64,
    pub scenarios: Vec<ScenarioResult>,
    /// True when Ctrl-C stopped the demo early (the results so far are kept).
    pub interrupted: bool,
    pub report: Option<String>,
}

const DEPENDENCIES: [&str; 3] = ["payment", "inventory", "notification"];

/// Parses the scenario names; an unknown one is a usage error naming it.
pub fn parse_scenarios(names: &[String]) -> Result<Vec<Scenario>, String> {
    if names.is_empty() {
        return Ok(Scenario::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Scenario::parse(n).ok_or_else(|| {
                let known: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {n:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// Runs the demo and prints its result.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let scenarios = parse_scenarios(&args.scenarios)?;
    let t = Timings {
        scale: if args.full {
            1.0
        } else if args.quick {
            0.02
        } else {
            0.05
        },
    };
    let shape = Load {
        orders: if args.quick { 60 } else { 200 },
        interval: t.scaled(0.25),
        concurrency: 64,
    };
    // The payment queues' SQLite files: in one directory, removed on every way out (the
    // guard is dropped when `run` returns: done, failed or interrupted).
    let ctrl_c = interrupt();
    tokio::pin!(ctrl_c);
    let files = TempDir::create().map_err(|e| format!("creating the demo's directory: {e}"))?;
    let services = services::start()
        .await
        .map_err(|e| format!("starting the mock services: {e}"))?;
    let chaos = ChaosServer::new();
    let mut proxies = Vec::new();
    for (name, service) in DEPENDENCIES.iter().zip(&services) {
        let proxy = chaos
            .create(ProxySpec::new(*name, service.addr.to_string()))
            .await
            .map_err(|e| format!("starting the chaos proxy for {name}: {e}"))?;
        proxies.push(proxy.listen);
    }
    let dashboard = match args.dashboard {
        None => None,
        Some(port) => {
            let listener = stormwall_proxy::dashboard::bind(port)
                .await
                .map_err(|e| format!("--dashboard-port {port}: {e}"))?;
            let url = format!(
                "http://{}/dashboard",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            let board = stormwall_proxy::dashboard::Dashboard::new();
            let router = board.router();
            tokio::spawn(async move { axum::serve(listener, router).await });
            // On stdout at once: a test (or a person) opens it while the demo runs.
            println!("dashboard: {url}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            Some(board)
        }
    };
    let progress = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(scenarios.len() as u64 * 3 * shape.orders);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg:28} [{bar:30}] {pos}/{len} orders",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    };
    let mut results = Vec::new();
    let mut records = Vec::new();
    let mut interrupted = false;
    if let Some(board) = dashboard.as_ref().filter(|_| args.dashboard_wait) {
        eprintln!("stormwall: waiting for a browser on the dashboard's live stream");
        tokio::select! {
            () = board.wait_for_stream_client() => {}
            _ = &mut ctrl_c => interrupted = true,
        }
    }
    'scenarios: for scenario in scenarios.into_iter().filter(|_| !interrupted) {
        let mut runs = Vec::new();
        for setup in [None, Some(Setup::Seeds), Some(Setup::Recommended)] {
            progress.set_message(format!("{} ({})", scenario.title(), client_name(setup)));
            let listener = dashboard
                .clone()
                .map(|d| d as std::sync::Arc<dyn stormwall::telemetry::EventListener>);
            let one = run_once(
                scenario,
                setup,
                &chaos,
                &proxies,
                &services,
                &t,
                shape,
                &progress,
                listener,
                &files.0,
                args.redis.as_deref(),
            );
            let record = tokio::select! {
                record = one => record?,
                _ = &mut ctrl_c => {
                    interrupted = true;
                    break 'scenarios;
                }
            };
            runs.push(record);
        }
        let recommended = runs.pop().unwrap_or_default();
        let with = runs.pop().unwrap_or_default();
        let without = runs.pop().unwrap_or_default();
        results.push(ScenarioResult {
            name: scenario.name(),
            title: scenario.title(),
            failing_dependency: scenario.failing().map(|i| DEPENDENCIES[i]),
            without_resilience: stats(&without, scenario),
            with_resilience: stats(&with, scenario),
            recommended: stats(&recommended, scenario),
        });
        records.push((scenario, [without, with, recommended]));
    }
    progress.finish_and_clear();
    let mut result = DemoResult {
        scale: t.scale,
        orders_per_run: shape.orders,
        scenarios: results,
        interrupted,
        report: None,
    };
    if !args.no_report {
        let path = args
            .report
            .clone()
            .unwrap_or_else(|| PathBuf::from("stormwall-demo-report.html"));
        std::fs::write(&path, report::html(&result, &records))
            .map_err(|e| format!("writing the report {}: {e}", path.display()))?;
        result.report = Some(path.display().to_string());
    }
    if args.json {
        let text = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", report::table(&result, report::use_colour()));
        if let Some(path) = &result.report {
            println!("report: {path}");
        }
        if interrupted {
            println!("interrupted: the results above are the scenarios that finished");
        }
    }
    if dashboard.is_some() && !interrupted {
        eprintln!("stormwall: the dashboard keeps serving; Ctrl-C to exit");
        let _ = ctrl_c.await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    scenario: Scenario,
    setup: Option<Setup>,
    chaos: &ChaosServer,
    proxies: &[String],
    services: &[services::Service; 3],
    t: &Timings,
    shape: Load,
    progress: &indicatif::ProgressBar,
    listener: Option<std::sync::Arc<dyn stormwall::telemetry::EventListener>>,
    files: &std::path::Path,
    redis: Option<&str>,
) -> Result<RunRecord, String> {
    let deps = Dependencies::new(proxies[0].clone(), proxies[1].clone(), proxies[2].clone());
    let changer = scenario
        .inject(chaos, t, deps.at_payment.subscribe(), shape.orders)
        .await
        .map_err(|e| format!("injecting {}: {e}", scenario.name()))?;
    let served_before = services.each_ref().map(|s| s.served());
    let (orders, breaker, payments) = if let Some(setup) = setup {
        let run = format!("{}-{}-{setup:?}", std::process::id(), scenario.name());
        let cache = flow::StockCache::new(redis, &run)?;
        flow::run_resilient(&deps, t, shape, progress, listener, files, cache, setup).await?
    } else {
        let orders = flow::run_plain(&deps, t, shape, progress).await;
        (orders, Vec::new(), flow::Deferrals::default())
    };
    if let Some(changer) = changer {
        changer.abort();
    }
    let served_after = services.each_ref().map(|s| s.served());
    Ok(RunRecord {
        orders,
        breaker,
        calls: deps.calls(),
        served: [0, 1, 2].map(|i| served_after[i] - served_before[i]),
        payments,
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed at once (from then
/// on neither signal kills the process before the demo has cleaned up).
fn interrupt() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        if let (Some(mut int), Some(mut term)) = signals {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A directory of the demo's temporary files, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!("stormwall-demo-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // On Ctrl-C a queue's writer thread may still be closing its database (SQLite
        // removes its -wal and -shm files as it closes): a file that comes or goes while the
        // directory is emptied makes the removal fail, and the directory stayed behind (seen
        // once, on a loaded machine). Once it is gone nothing creates it again, so try again
        // until it is, for at most a second.
        for _ in 0..100 {
            match std::fs::remove_dir_all(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn stats(run: &RunRecord, scenario: Scenario) -> RunStats {
    let mut latencies: Vec<_> = run.orders.iter().map(|o| o.latency).collect();
    latencies.sort();
    let accepted = run.orders.iter().filter(|o| o.accepted).count();
    let mut stale: Vec<Duration> = run
        .orders
        .iter()
        .filter_map(|o| match o.stock {
            flow::StockAnswer::Stale(age) => Some(age),
            _ => None,
        })
        .collect();
    stale.sort();
    let failing = scenario.failing();
    RunStats {
        orders: run.orders.len(),
        accepted,
        success_rate: if run.orders.is_empty() {
            0.0
        } else {
            accepted as f64 / run.orders.len() as f64
        },
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
        calls_to_failing_dependency: failing.map_or(0, |i| run.calls[i]),
        served_by_failing_dependency: failing.map_or(0, |i| run.served[i]),
        fallbacks: run.orders.iter().map(|o| u64::from(o.fallbacks)).sum(),
        served_stale: stale.len() as u64,
        stale_age_max_ms: stale.last().map_or(0.0, |a| a.as_secs_f64() * 1000.0),
        stale_age_p50_ms: percentile(&stale, 0.5),
        inventory_defaults: run
            .orders
            .iter()
            .filter(|o| o.stock == flow::StockAnswer::Default)
            .count() as u64,
        payments_queued: run.payments.queued,
        payments_charged_later: run.payments.charged_later,
        payments_pending: run.payments.pending,
        payments_dead: run.payments.dead,
        payments_left: run.payments.left.clone(),
    }
}
