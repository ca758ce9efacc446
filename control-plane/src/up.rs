//! `ferry-control up DIR`: the whole platform on one machine, for the demo.
//!
//! Starts, in this process, the control plane (`app::serve` with the
//! process scaler and the live scale lines), then a gateway `ferry-proxy`
//! that takes the model's resources over xDS (every node gets the gateway's
//! listener, routes and revision clusters, so `--node-id gateway` is just
//! a name), applies every manifest in DIR through the REST API, prints
//! what to try, and stops everything it started on Ctrl-C or SIGTERM: the
//! gateway first (it drains), then the control plane, whose scaler drains
//! every instance.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::app::{self, ServeConfig};
use crate::cli::{self, ApplyArgs, ServerArgs};
use crate::scaler::ScalerKind;

/// How long `up` waits for its own servers to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Directory (or file) of manifests to apply, e.g. examples/hello.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where the model's store and the instances' logs live.
    #[arg(long, value_name = "DIR", default_value = app::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Domain of service hosts: `{name}.{namespace}.{domain}`.
    #[arg(long, value_name = "DOMAIN", default_value = app::DEFAULT_DOMAIN)]
    pub domain: String,
    /// Where the gateway listens.
    #[arg(long, value_name = "ADDR", default_value = app::DEFAULT_GATEWAY_LISTEN)]
    pub gateway_listen: SocketAddr,
    /// The gateway's admin server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub gateway_admin: SocketAddr,
    /// The xDS and load-report gRPC server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18000")]
    pub xds_listen: SocketAddr,
    /// The REST API (`ferry-control get … --server http://ADDR`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub api_listen: SocketAddr,
    /// The eventing broker's ingress (bound once a Broker is applied).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    pub broker_listen: SocketAddr,
    /// A cluster-wide autoscaler setting, `KEY=VALUE` (Knative's
    /// `config-autoscaler` keys, e.g. `scale-to-zero-grace-period=10s`,
    /// `stable-window=20s`); repeatable.
    #[arg(long = "autoscaler", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub autoscaler: Vec<(String, String)>,
    /// Log filter for the control plane's own logs (stderr); the live
    /// scale lines go to stdout whatever it is.
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    pub log: String,
}

pub fn run(args: UpArgs) -> ExitCode {
    let runtime = match app::process_runtime(&args.log) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(up(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-control up: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    if !args.dir.exists() {
        anyhow::bail!("{}: no such file or directory", args.dir.display());
    }
    tokio::fs::create_dir_all(&args.data_dir)
        .await
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut cfg = ServeConfig::model(args.data_dir.clone(), args.xds_listen, args.api_listen);
    cfg.domain = args.domain.clone();
    cfg.gateway_listen = args.gateway_listen;
    cfg.broker_listen = args.broker_listen;
    cfg.scaler = ScalerKind::Process;
    cfg.live_scaling = true;
    cfg.autoscaler = args.autoscaler.iter().cloned().collect();

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut server = tokio::spawn(app::serve(cfg, async move {
        let _ = stop_rx.await;
    }));

    // The API answering means the store is open and xDS is bound (serve
    // binds both before it serves either).
    let api = format!("http://{}", args.api_listen);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if server.is_finished() {
            return match server.await {
                Ok(Ok(())) => Err(anyhow::anyhow!("the control plane stopped at once")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("the control plane failed: {e}")),
            };
        }
        if tokio::net::TcpStream::connect(args.api_listen)
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the API on {} did not come up", args.api_listen);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The gateway of a previous `up` that was killed outright is still
    // holding the gateway port: stop it first.
    let run_dir = args.data_dir.join("run");
    crate::scaler::process::kill_orphans(&run_dir).await;
    let _ = tokio::fs::create_dir_all(&run_dir).await;
    let mut gateway = start_gateway(&args).await?;
    crate::scaler::process::record_pids(&run_dir.join("gateway.pids"), &[gateway.id()]).await;
    let gateway_started = Instant::now();

    // `apply` is the CLI's own code (its output is the demo's), on a
    // thread of its own: it runs its own runtime.
    let apply_args = ApplyArgs {
        files: vec![args.dir.clone()],
        namespace: None,
        server: ServerArgs {
            server: api.clone(),
        },
    };
    let applied = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || cli::run_apply(apply_args))
            .join()
            .unwrap_or(ExitCode::FAILURE)
    })
    .await
    .unwrap_or(ExitCode::FAILURE);
    if applied != ExitCode::SUCCESS {
        eprintln!("ferry-control up: some manifests were not applied (see above)");
    }

    wait_gateway_ready(args.gateway_admin, gateway_started).await;
    print_hints(&args, &api).await;

    let result = tokio::select! {
        _ = stop_signal() => Ok(()),
        ended = &mut server => match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("the control plane stopped on its own")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("the control plane failed: {e}")),
        },
        status = gateway.wait() => Err(anyhow::anyhow!(
            "the gateway exited ({}); see {}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            args.data_dir.join("gateway.log").display()
        )),
    };
    println!("stopping: the gateway, then every instance, then the control plane");
    terminate(&mut gateway, Duration::from_secs(6)).await;
    let _ = stop_tx.send(());
    if !server.is_finished() {
        match tokio::time::timeout(Duration::from_secs(30), &mut server).await {
            Ok(Ok(Err(e))) => tracing::error!("{e:#}"),
            Ok(_) => {}
            Err(_) => server.abort(),
        }
    }
    result
}

/// The gateway proxy, over xDS from this control plane, reporting load
/// (and activation demand) to it.
async fn start_gateway(args: &UpArgs) -> anyhow::Result<Child> {
    let bin = std::env::var_os("FERRY_PROXY_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("ferry-proxy")))
        })
        .unwrap_or_else(|| PathBuf::from("ferry-proxy"));
    let help = Command::new(&bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} (build it with `cargo build`, or set FERRY_PROXY_BIN)",
                bin.display()
            )
        })?;
    let reports = String::from_utf8_lossy(&help.stdout).contains("--report-to");
    let log_path = args.data_dir.join("gateway.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log2 = log.try_clone()?;
    let xds = format!("http://{}", args.xds_listen);
    let mut cmd = Command::new(&bin);
    cmd.arg("--xds")
        .arg(&xds)
        .arg("--node-id")
        .arg("gateway")
        .arg("--admin")
        .arg(args.gateway_admin.to_string());
    if reports {
        cmd.arg("--report-to")
            .arg(&xds)
            .arg("--pod-name")
            .arg("gateway");
    } else {
        tracing::warn!("this ferry-proxy has no --report-to: the gateway cannot report demand");
    }
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: Ctrl-C reaches `up`, which stops the
        // gateway in order.
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("starting the gateway {}", bin.display()))
}

/// Waits (bounded) for the gateway's `/ready`: its first xDS config applied.
async fn wait_gateway_ready(admin: SocketAddr, since: Instant) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{admin}/ready");
    while since.elapsed() < START_TIMEOUT {
        if let Ok(uri) = uri.parse::<http::Uri>() {
            if let Ok(r) = client.get(uri).await {
                if r.status().is_success() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ferry-control up: the gateway is not ready yet (see its log)");
}

/// `GET` a JSON document from the API (`Null` on any failure: hints are
/// best effort).
async fn get_json(api: &str, path: &str) -> serde_json::Value {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let Ok(uri) = format!("{api}{path}").parse::<http::Uri>() else {
        return serde_json::Value::Null;
    };
    let Ok(resp) = client.get(uri).await else {
        return serde_json::Value::Null;
    };
    match resp.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

async fn print_hints(args: &UpArgs, api: &str) {
    let gw = args.gateway_listen;
    let services = get_json(api, "/v1/services").await;
    let mut hosts: Vec<(String, Option<String>)> = Vec::new();
    for s in services["items"].as_array().into_iter().flatten() {
        let name = s["metadata"]["name"].as_str().unwrap_or_default();
        let ns = s["metadata"]["namespace"].as_str().unwrap_or("default");
        if name.is_empty() {
            continue;
        }
        hosts.push((format!("{name}.{ns}.{}", args.domain), None));
        for t in s["status"]["traffic"].as_array().into_iter().flatten() {
            if let (Some(tag), Some(rev)) = (t["tag"].as_str(), t["revisionName"].as_str()) {
                hosts.push((
                    format!("{tag}-{name}.{ns}.{}", args.domain),
                    Some(format!("tag {tag} → {rev} only")),
                ));
            }
        }
    }
    println!();
    println!(
        "Ferry is up: gateway http://{gw}, API {api}, xDS + load reports {}",
        args.xds_listen
    );
    println!(
        "Instance logs: {}",
        args.data_dir.join("instances").display()
    );
    println!();
    println!("Try:");
    let main_host = hosts
        .first()
        .map(|(h, _)| h.clone())
        .unwrap_or_else(|| format!("hello.default.{}", args.domain));
    for (host, note) in &hosts {
        match note {
            Some(n) => println!("  curl -H 'Host: {host}' http://{gw}/        # {n}"),
            None => println!("  curl -H 'Host: {host}' http://{gw}/"),
        }
    }
    if hosts.is_empty() {
        println!("  curl -H 'Host: {main_host}' http://{gw}/");
    }
    println!("  # scale up: 50 concurrent clients, each request taking 100 ms in the app");
    println!("  wrk -c 50 -t 2 -d 60s -H 'Host: {main_host}' 'http://{gw}/?sleep=100'");
    // The cluster-wide values (a revision's `window` annotation overrides
    // the stable window); unparsable settings already stopped the start.
    let global =
        crate::autoscaler::GlobalConfig::from_map(&args.autoscaler.iter().cloned().collect())
            .unwrap_or_default();
    println!(
        "  # scale to zero: leave it idle for the stable window ({} s) + grace ({} s),",
        global.stable_window.as_secs(),
        global.scale_to_zero_grace_period.as_secs()
    );
    println!("  # then the cold start: the gateway holds the request until an instance is ready");
    println!("  time curl -H 'Host: {main_host}' http://{gw}/");
    println!("  ferry-control get revisions --server {api}");
    println!();
    println!("Scale changes appear below (desired / ready / concurrency per revision). Ctrl-C stops everything.");
    println!();
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        // `kill` rather than libc: the workspace forbids unsafe code.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .status()
            .await;
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
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
