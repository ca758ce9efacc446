//! `ferry-proxy`: CLI, logging, the control runtime, exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferry_proxy::app::{App, Options, XdsFlags};
use ferry_proxy::config::{self, duration::parse_duration};

#[derive(Parser)]
#[command(
    name = "ferry-proxy",
    version,
    about = "Ferry data plane: HTTP/1.1, HTTP/2 and TCP proxy"
)]
struct Cli {
    /// Config file to run (YAML; see docs/config.md). With xDS it holds the
    /// static part of the config and may be omitted.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present_any = ["validate", "xds"]
    )]
    config: Option<PathBuf>,
    /// ADS server (`http://host:port`) to take listeners, routes, clusters
    /// and endpoints from.
    #[arg(long, value_name = "URL")]
    xds: Option<String>,
    /// This proxy's node id, as the control plane knows it.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// This proxy's node cluster (service) name.
    #[arg(long, value_name = "NAME")]
    node_cluster: Option<String>,
    /// Incremental (delta) xDS instead of state of the world.
    #[arg(long)]
    xds_delta: bool,
    /// Keep the last accepted xDS resources in DIR: a proxy restarted while
    /// the control plane is down starts serving them.
    #[arg(long, value_name = "DIR")]
    xds_cache: Option<PathBuf>,
    /// Control plane to stream per-second load reports to (`http://host:port`):
    /// the queue-proxy and activator roles' concurrency, for the autoscaler.
    #[arg(long, value_name = "URL")]
    report_to: Option<String>,
    /// This proxy's name in load reports (the instance's pod name).
    #[arg(long, value_name = "NAME", default_value = "ferry-proxy")]
    pod_name: String,
    /// Check a config file, print every error with its field path, and exit
    /// (0 valid, 1 invalid).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    validate: Option<PathBuf>,
    /// Admin server address (overrides the file's `admin.address`).
    #[arg(long, value_name = "IP:PORT")]
    admin: Option<SocketAddr>,
    /// Worker threads (default: the number of cores).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often the config file is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    watch_interval: Duration,
    /// Access-log destination (stdout, stderr or a file), overriding the
    /// file's `access_log`.
    #[arg(long, value_name = "PATH")]
    access_log: Option<String>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    if let Some(path) = &cli.validate {
        return match config::load_file(path) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                println!("{errors}");
                ExitCode::FAILURE
            }
        };
    }

    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let concurrency = cli
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = Options {
        config: cli.config,
        xds: XdsFlags {
            server: cli.xds,
            node_id: cli.node_id,
            node_cluster: cli.node_cluster,
            delta: cli.xds_delta,
            cache_dir: cli.xds_cache,
        },
        report: cli
            .report_to
            .map(|target| ferry_proxy::report::ReportOptions {
                target,
                pod: cli.pod_name,
            }),
        admin: cli.admin,
        concurrency,
        drain_timeout: cli.drain_timeout,
        access_log: cli.access_log,
        watch_interval: cli.watch_interval,
    };

    // The control runtime: admin, reloads, DNS, signals. Requests never run
    // here; they run on the worker threads.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ferry-control")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match App::start(opts).await {
            Ok(app) => {
                app.run().await;
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("ferry-proxy: {e}");
                }
                ExitCode::FAILURE
            }
        }
    })
}
