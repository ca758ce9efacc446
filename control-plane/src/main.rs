//! `ferry-control`: the control plane binary.
//!
//! `serve` runs the xDS server (the gateway's resources generated from the
//! model in `--data-dir`, or a static `--xds-snapshot` file) and the REST
//! API; `apply`, `get` and `delete` are that API's clients
//! (docs/serving.md). Subcommands that land with later issues say so
//! instead of pretending.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_control_plane::app::{self, ServeConfig};
use ferry_control_plane::cli;

#[path = "cli/autoscale.rs"]
mod autoscale_cli;

#[derive(Parser)]
#[command(name = "ferry-control", version, about = "Ferry control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve xDS (ADS, state of the world and delta) and the REST API.
    Serve(ServeArgs),
    /// Run everything locally (control plane, process scaler, gateway on
    /// 127.0.0.1:8080) and apply the manifests in DIR.
    Up(ferry_control_plane::up::UpArgs),
    /// Create or update Services, Brokers and Triggers from manifests.
    Apply(cli::ApplyArgs),
    /// Show services, revisions, routes, configurations, brokers, triggers.
    Get(cli::GetArgs),
    /// Delete services, brokers or triggers.
    Delete(cli::DeleteArgs),
    /// Autoscaler tools (`autoscale simulate SCENARIO.json`).
    Autoscale(autoscale_cli::AutoscaleArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// YAML file of listeners, routes and clusters to serve instead of the
    /// model's resources; reloaded when it changes (docs/xds.md).
    #[arg(long, value_name = "FILE")]
    xds_snapshot: Option<PathBuf>,
    /// Where the model's store lives (created if missing). Default
    /// ./ferry-data; with --xds-snapshot and no --data-dir, the model is
    /// kept in memory only.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Domain of service hosts: `{name}.{namespace}.{domain}`.
    #[arg(long, value_name = "DOMAIN", default_value = app::DEFAULT_DOMAIN)]
    domain: String,
    /// Address of the gateway listener served over xDS.
    #[arg(long, value_name = "ADDR", default_value = app::DEFAULT_GATEWAY_LISTEN)]
    gateway_listen: SocketAddr,
    /// Address of the xDS gRPC server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// Address of the REST API (`/v1/xds/nodes`, `/metrics`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    api_listen: SocketAddr,
    /// Brokers and Triggers (Knative eventing.knative.dev/v1 manifests) to
    /// apply to the store at start, as `apply -f FILE` would.
    #[arg(long, value_name = "FILE")]
    broker_config: Option<PathBuf>,
    /// Address of the broker ingress (`POST /{namespace}/{broker}`),
    /// bound once a Broker exists.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    broker_listen: SocketAddr,
    /// The gateway proxy triggers deliver through to `ref` subscribers
    /// (Ferry Services); default: the --gateway-listen address.
    #[arg(long, value_name = "ADDR")]
    broker_gateway: Option<SocketAddr>,
    /// Keep the broker's event logs in NATS JetStream at this URL (e.g.
    /// nats://127.0.0.1:4222) instead of the embedded log in --data-dir.
    #[arg(long, value_name = "URL")]
    broker_nats: Option<String>,
    /// Run revisions' instances: `process` (local processes with
    /// `ferry-proxy` sidecars, autoscaled from their load reports) or
    /// `none` (serve the model only; revisions stay at zero).
    #[arg(long, value_enum, default_value = "none")]
    scaler: ferry_control_plane::scaler::ScalerKind,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins if set.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Up(a) => ferry_control_plane::up::run(a),
        Command::Apply(a) => cli::run_apply(a),
        Command::Get(a) => cli::run_get(a),
        Command::Delete(a) => cli::run_delete(a),
        Command::Autoscale(a) => autoscale_cli::run(a),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let runtime = match app::process_runtime(&args.log) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| app::DEFAULT_DATA_DIR.into());
    let mut cfg = ServeConfig::model(data_dir, args.xds_listen, args.api_listen);
    cfg.memory_store = args.xds_snapshot.is_some() && args.data_dir.is_none();
    cfg.xds_snapshot = args.xds_snapshot;
    cfg.domain = args.domain;
    cfg.gateway_listen = args.gateway_listen;
    cfg.broker_config = args.broker_config;
    cfg.broker_listen = args.broker_listen;
    cfg.broker_nats = args.broker_nats;
    cfg.broker_gateway = args.broker_gateway;
    cfg.scaler = args.scaler;
    match runtime.block_on(app::serve(cfg, stop_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ferry-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
