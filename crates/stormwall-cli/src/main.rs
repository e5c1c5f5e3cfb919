//! `stormwall`: the command line.
//!
//! - `stormwall demo [--quick | --full] [--json] [--scenario NAME]...`: the order flow under
//!   injected faults, with and without resilience.
//! - `stormwall proxy --config stormwall.toml`: the resilience sidecar; `stormwall check
//!   --config stormwall.toml` validates a configuration.
//! - `stormwall chaos --listen 127.0.0.1:8474 [--config proxies.json]`: the
//!   Toxiproxy-compatible chaos proxy.

mod demo;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "stormwall",
    version,
    about = "Resilience toolkit: chaos proxy, sidecar, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the resilience sidecar: a reverse proxy with a pipeline per route.
    Proxy {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Checks a sidecar configuration file without starting anything.
    Check {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Runs the order flow (payment, inventory, notification behind chaos proxies) under
    /// injected faults, with and without stormwall, and compares.
    Demo {
        /// Shorter: fewer orders, timings × 1/50 (for tests).
        #[arg(long, conflicts_with = "full")]
        quick: bool,
        /// The seeds' timings as written (slow).
        #[arg(long)]
        full: bool,
        /// Print the result as JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Run only these scenarios: healthy, payment-latency, inventory-down,
        /// payment-failing-50, notification-down, recovery.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// Where to write the HTML report. Default: stormwall-demo-report.html.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Write no HTML report.
        #[arg(long)]
        no_report: bool,
        /// Serve the live dashboard while the demo runs (and after, until Ctrl-C).
        #[arg(long)]
        dashboard: bool,
        /// The dashboard's port (another is picked, and said, if it is taken).
        #[arg(long, default_value_t = 9901)]
        dashboard_port: u16,
        /// With the dashboard: start the scenarios only once a browser has the dashboard's
        /// live stream open, so it sees every transition as it happens (implies
        /// --dashboard).
        #[arg(long)]
        dashboard_wait: bool,
        /// Keep inventory's stale-on-error cache on this Redis (redis://host:port) instead
        /// of in memory.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
    },
    /// Runs the chaos proxy: Toxiproxy's HTTP API, TCP proxies with toxics.
    Chaos {
        /// Address of the HTTP API.
        #[arg(long, default_value = "127.0.0.1:8474")]
        listen: String,
        /// Proxies to create at start, in Toxiproxy's populate format (a JSON array).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // STORMWALL_WORKER_THREADS: the runtime's worker threads (default: one per core). One
    // means tokio's current-thread scheduler: everything on the main thread, no work
    // stealing or cross-thread wake-ups (the sidecar's fastest single-core setting).
    let threads = std::env::var("STORMWALL_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    if let Some(n) = threads.filter(|n| *n > 1) {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stormwall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Chaos { listen, config } => chaos(listen, config).await,
            Command::Proxy { config } => proxy(config).await,
            Command::Check { config } => check(&config).map(|routes| {
                println!("{}: OK ({routes} routes)", config.display());
            }),
            Command::Demo {
                quick,
                full,
                json,
                scenarios,
                report,
                no_report,
                dashboard,
                dashboard_port,
                dashboard_wait,
                redis,
            } => {
                demo::run(demo::DemoArgs {
                    quick,
                    full,
                    json,
                    scenarios,
                    report,
                    no_report,
                    dashboard: (dashboard || dashboard_wait).then_some(dashboard_port),
                    dashboard_wait,
                    redis,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("stormwall: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn chaos(listen: String, config: Option<PathBuf>) -> Result<(), String> {
    let server = stormwall_chaos::ChaosServer::new();
    if let Some(path) = config {
        let proxies = server
            .populate_file(&path)
            .await
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        for p in &proxies {
            tracing::info!(name = %p.name, listen = %p.listen, upstream = %p.upstream, "proxy created");
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    tracing::info!(address = %listen, "chaos proxy API listening (Toxiproxy {})", stormwall_chaos::TOXIPROXY_API_VERSION);
    tokio::select! {
        served = server.serve(listener) => served.map_err(|e| format!("API server: {e}")),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn read_config(path: &std::path::Path) -> Result<stormwall_proxy::Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    stormwall_proxy::Config::parse_with_env(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the file and builds every route (so strategy options are checked too).
fn check(path: &std::path::Path) -> Result<usize, String> {
    let config = read_config(path)?;
    for route in &config.route {
        stormwall_proxy::Route::build(route, None)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(config.route.len())
}

async fn proxy(path: PathBuf) -> Result<(), String> {
    let config = read_config(&path)?;
    let (listen, admin) = (config.server.listen.clone(), config.server.admin.clone());
    let proxy =
        stormwall_proxy::Proxy::new(config).map_err(|e| format!("{}: {e}", path.display()))?;
    let reload = {
        let (proxy, path) = (proxy.clone(), path.clone());
        std::sync::Arc::new(move || -> Result<(), String> {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            proxy.reload(&text).map_err(|e| e.to_string())
        })
    };
    let listener = stormwall_proxy::bind(&proxy.server_config())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let admin_listener = tokio::net::TcpListener::bind(&admin)
        .await
        .map_err(|e| format!("server.admin {admin}: {e}"))?;
    let listen = listener
        .local_addr()
        .map_or(listen, |addr| addr.to_string());
    tracing::info!(%listen, %admin, "stormwall proxy listening");
    let admin_router = stormwall_proxy::admin_router(proxy.clone(), reload.clone());
    tokio::spawn(async move { axum::serve(admin_listener, admin_router).await });
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| e.to_string())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let serving = proxy.clone().serve(listener);
    tokio::pin!(serving);
    loop {
        tokio::select! {
            served = &mut serving => return served.map_err(|e| e.to_string()),
            _ = hangup.recv() => {
                if let Err(e) = reload() {
                    tracing::warn!(error = %e, "reload refused; the old configuration keeps serving");
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => {
                // Readiness goes false first; requests in flight may finish (new ones are
                // still served meanwhile, as load balancers take a moment to notice).
                proxy.start_draining();
                let grace = proxy_drain_timeout(&proxy);
                let drained = proxy.drained(grace).await;
                tracing::info!(drained, "stormwall proxy: stopped");
                return Ok(());
            }
        }
    }
}

fn proxy_drain_timeout(proxy: &stormwall_proxy::Proxy) -> std::time::Duration {
    proxy.drain_timeout()
}
