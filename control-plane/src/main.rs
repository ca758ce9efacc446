//! `ferry-control`: the control plane binary.
//!
//! `serve` runs the xDS server (and the REST API) from a static snapshot
//! file. The other subcommands (up, apply, get, delete, autoscale) land with
//! the serving model, autoscaler and eventing issues; until then they say
//! so instead of pretending.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_control_plane::app::{self, ServeConfig};

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
    /// (not implemented yet) Run the whole local mesh.
    Up(Later),
    /// (not implemented yet) Create or update model objects from a manifest.
    Apply(Later),
    /// (not implemented yet) Show model objects.
    Get(Later),
    /// (not implemented yet) Delete model objects.
    Delete(Later),
    /// (not implemented yet) Autoscaler tools (`autoscale simulate`).
    Autoscale(Later),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// YAML file of listeners, routes and clusters to serve; reloaded when
    /// it changes (see docs/xds.md for the schema).
    #[arg(long, value_name = "FILE")]
    xds_snapshot: PathBuf,
    /// Address of the xDS gRPC server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// Address of the REST API (`/v1/xds/nodes`, `/metrics`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    api_listen: SocketAddr,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins if set.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
}

/// Arguments of a subcommand that does not exist yet, accepted so the
/// message below is what the user sees rather than a parse error.
#[derive(clap::Args)]
struct Later {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, _rest) = match cli.command {
        Command::Serve(args) => return serve(args),
        Command::Up(l) => ("up", l.rest),
        Command::Apply(l) => ("apply", l.rest),
        Command::Get(l) => ("get", l.rest),
        Command::Delete(l) => ("delete", l.rest),
        Command::Autoscale(l) => ("autoscale", l.rest),
    };
    eprintln!(
        "ferry-control {name}: not implemented yet; it lands with a later issue \
         (only `serve` exists today)"
    );
    ExitCode::from(2)
}

fn serve(args: ServeArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferry-control: bad --log filter {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-control")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-control: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = ServeConfig::new(args.xds_snapshot, args.xds_listen, args.api_listen);
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
