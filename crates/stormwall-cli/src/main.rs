//! `stormwall`: the command line.
//!
//! - `stormwall demo [--quick | --full] [--json] [--scenario NAME]...`: the order flow under
//!   injected faults, with and without resilience.
//! - `stormwall chaos --listen 127.0.0.1:8474 [--config proxies.json]`: the
//!   Toxiproxy-compatible chaos proxy.

mod dashboard;
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stormwall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Chaos { listen, config } => chaos(listen, config).await,
            Command::Demo {
                quick,
                full,
                json,
                scenarios,
                report,
                no_report,
                dashboard,
                dashboard_port,
            } => {
                demo::run(demo::DemoArgs {
                    quick,
                    full,
                    json,
                    scenarios,
                    report,
                    no_report,
                    dashboard: dashboard.then_some(dashboard_port),
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
