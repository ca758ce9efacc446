//! `ferry-control apply | get | delete`: the client side of the model's
//! REST API (`crate::api::model`), kubectl-shaped.
//!
//! ```text
//! ferry-control apply -f FILE|DIR [-f ...] [-n NS]
//! ferry-control get services|revisions|routes|configurations|brokers|triggers [NAME] [-n NS | -A] [-o table|yaml|json|name]
//! ferry-control delete service|broker|trigger NAME... [-n NS]   |   delete -f FILE|DIR
//! ```
//! Every command takes `--server http://127.0.0.1:9090`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::model::manifest;
use crate::model::meta;
use crate::model::Kind;

/// The API's default address, as `serve --api-listen` defaults it.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9090";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of the control plane's REST API.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ApplyArgs {
    /// Manifest file (YAML, multi-document, or JSON), or a directory of
    /// them (`*.yaml`, `*.yml`, `*.json`, not recursive); `-` is stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// Namespace for objects whose manifest names none.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// services | revisions | routes | configurations | brokers | triggers
    /// (singular and kubectl short names work: ksvc, rev, rt, cfg).
    pub resource: String,
    /// One object by name; all of them when absent.
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = meta::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// table (default), yaml, json or name.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DeleteArgs {
    /// service | broker | trigger (and their plurals).
    pub resource: Option<String>,
    pub names: Vec<String>,
    /// Delete every object these manifests describe instead.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR")]
    pub files: Vec<PathBuf>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A failure to report and exit 1 on.
#[derive(Debug)]
struct CliError(String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> CliError {
        CliError(e.to_string())
    }
}

fn runtime_then<F>(f: F) -> ExitCode
where
    F: std::future::Future<Output = Result<bool, CliError>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(CliError(m)) => {
            eprintln!("error: {m}");
            ExitCode::FAILURE
        }
    }
}

pub fn run_apply(args: ApplyArgs) -> ExitCode {
    runtime_then(apply(args))
}

pub fn run_get(args: GetArgs) -> ExitCode {
    runtime_then(get(args))
}

pub fn run_delete(args: DeleteArgs) -> ExitCode {
    runtime_then(delete(args))
}

// === HTTP ===

struct Api {
    base: String,
    client: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// An answer: status and JSON body (`Null` if not JSON) and the apply
/// outcome header.
struct Answer {
    status: StatusCode,
    body: Value,
    outcome: Option<String>,
}

impl Api {
    fn new(server: &str) -> Result<Api, CliError> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(CliError(format!(
                "--server {server:?}: expected an http:// URL such as {DEFAULT_SERVER}"
            )));
        }
        Ok(Api {
            base,
            client: HyperClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        let uri = format!("{}{path}", self.base);
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| CliError(format!("bad request URI {uri:?}: {e}")))?;
        let resp = match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req)).await {
            Err(_) => {
                return Err(CliError(format!(
                    "the Ferry API at {} did not answer within {REQUEST_TIMEOUT:?}",
                    self.base
                )))
            }
            Ok(Err(e)) => {
                // The root cause ("Connection refused") says the most.
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                let cause = cause.to_string();
                return Err(CliError(format!(
                    "cannot reach the Ferry API at {}: {cause} (is `ferry-control serve` \
                     running? --server points elsewhere)",
                    self.base
                )));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let outcome = resp
            .headers()
            .get(crate::api::model::APPLY_RESULT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError(format!("reading the answer from {}: {e}", self.base)))?
            .to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            outcome,
        })
    }
}

/// The message of an error answer (a `Status` object), or a generic one.
fn error_message(a: &Answer) -> String {
    a.body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("the server answered {}", a.status))
}

// === apply ===

/// One object read from a manifest.
struct Doc {
    source: String,
    kind: Kind,
    namespace: String,
    name: String,
    body: Value,
}

fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(p.clone());
        } else if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CliError(format!("reading directory {}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension()
                            .and_then(|x| x.to_str())
                            .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"))
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(CliError(format!(
                    "no manifests (*.yaml, *.yml, *.json) in {}",
                    p.display()
                )));
            }
            out.extend(entries);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn read_source(path: &Path) -> Result<String, CliError> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError(format!("reading stdin: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError(format!("reading {}: {e}", path.display())))
    }
}

/// Reads every document of every file; any error stops before anything
/// is sent, so a typo never half-applies a directory.
fn read_docs(paths: &[PathBuf], namespace: Option<&str>) -> Result<Vec<Doc>, CliError> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for file in manifest_files(paths)? {
        let source = file.display().to_string();
        let text = read_source(&file)?;
        let values = match manifest::documents(&text) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{source}: {e}"));
                continue;
            }
        };
        for (i, value) in values.into_iter().enumerate() {
            let at = format!("{source} (document {})", i + 1);
            let kind = match manifest::kind_of(&value) {
                Ok(k) => k,
                Err(e) => {
                    errors.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let meta_ns = value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            let ns = match (meta_ns, namespace) {
                (Some(m), Some(n)) if m != n => {
                    errors.push(format!(
                        "{at}: the namespace of the object ({m:?}) does not match -n {n:?}"
                    ));
                    continue;
                }
                (Some(m), _) => m.to_string(),
                (None, Some(n)) => n.to_string(),
                (None, None) => meta::DEFAULT_NAMESPACE.to_string(),
            };
            let name = match value.pointer("/metadata/name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => {
                    errors.push(format!("{at}: metadata.name: missing field"));
                    continue;
                }
            };
            docs.push(Doc {
                source: at,
                kind,
                namespace: ns,
                name,
                body: value,
            });
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(CliError(errors.join("\nerror: ")))
    }
}

async fn apply(args: ApplyArgs) -> Result<bool, CliError> {
    let mut docs = read_docs(&args.files, args.namespace.as_deref())?;
    // A Trigger is refused unless its Broker is stored: triggers go last,
    // whatever the order of files and documents.
    docs.sort_by_key(|d| d.kind == Kind::Trigger);
    let api = Api::new(&args.server.server)?;
    let mut ok = true;
    for d in docs {
        let path = format!(
            "/v1/namespaces/{}/{}/{}",
            d.namespace,
            d.kind.plural(),
            d.name
        );
        let a = api.call(Method::PUT, &path, Some(&d.body)).await?;
        let what = format!("{}/{}", d.kind.qualified(), d.name);
        if a.status.is_success() {
            println!("{what} {}", a.outcome.as_deref().unwrap_or("configured"));
        } else {
            ok = false;
            eprintln!("error: {}: {what}: {}", d.source, error_message(&a));
        }
    }
    Ok(ok)
}

// === delete ===

async fn delete(args: DeleteArgs) -> Result<bool, CliError> {
    let mut targets: Vec<(Kind, String, String)> = Vec::new();
    if !args.files.is_empty() {
        for d in read_docs(&args.files, args.namespace.as_deref())? {
            targets.push((d.kind, d.namespace, d.name));
        }
    }
    if let Some(res) = &args.resource {
        let kind = Kind::parse(res).ok_or_else(|| {
            CliError(format!(
                "unknown resource type {res:?}; expected service, broker or trigger"
            ))
        })?;
        if args.names.is_empty() {
            return Err(CliError(format!(
                "delete {res}: name the object(s) to delete"
            )));
        }
        let ns = args
            .namespace
            .clone()
            .unwrap_or_else(|| meta::DEFAULT_NAMESPACE.to_string());
        for n in &args.names {
            targets.push((kind, ns.clone(), n.clone()));
        }
    }
    if targets.is_empty() {
        return Err(CliError(
            "nothing to delete: give TYPE NAME... or -f FILE".to_string(),
        ));
    }
    let api = Api::new(&args.server.server)?;
    let mut ok = true;
    // Delete in reverse order of apply, so dependents go first.
    targets.reverse();
    targets.dedup();
    for (kind, ns, name) in targets {
        let path = format!("/v1/namespaces/{ns}/{}/{name}", kind.plural());
        let a = api.call(Method::DELETE, &path, None).await?;
        let what = format!("{}/{name}", kind.qualified());
        if a.status.is_success() {
            println!("{what} deleted");
        } else {
            ok = false;
            eprintln!("error: {what}: {}", error_message(&a));
        }
    }
    Ok(ok)
}

// === get ===

async fn get(args: GetArgs) -> Result<bool, CliError> {
    let kind = Kind::parse(&args.resource).ok_or_else(|| {
        CliError(format!(
            "unknown resource type {:?}; expected services, revisions, routes, \
             configurations, brokers or triggers",
            args.resource
        ))
    })?;
    let output = args.output.as_str();
    if !matches!(output, "table" | "wide" | "yaml" | "json" | "name") {
        return Err(CliError(format!(
            "-o {output:?}: expected table, yaml, json or name"
        )));
    }
    let api = Api::new(&args.server.server)?;
    let ns = args.namespace.as_str();
    let path = match (&args.name, args.all_namespaces) {
        (Some(name), _) => format!("/v1/namespaces/{ns}/{}/{name}", kind.plural()),
        (None, true) => format!("/v1/{}", kind.plural()),
        (None, false) => format!("/v1/namespaces/{ns}/{}", kind.plural()),
    };
    let a = api.call(Method::GET, &path, None).await?;
    if !a.status.is_success() {
        return Err(CliError(error_message(&a)));
    }
    let items: Vec<Value> = if args.name.is_some() {
        vec![a.body.clone()]
    } else {
        a.body
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&a.body)?),
        "yaml" => print!("{}", serde_norway::to_string(&a.body)?),
        "name" => {
            for i in &items {
                println!("{}/{}", kind.qualified(), str_at(i, "/metadata/name"));
            }
        }
        _ => {
            if items.is_empty() {
                if args.all_namespaces {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {ns} namespace.");
                }
                return Ok(true);
            }
            // Revisions show the traffic their route sends them.
            let routes = if kind == Kind::Revision {
                let path = if args.all_namespaces {
                    "/v1/routes".to_string()
                } else {
                    format!("/v1/namespaces/{ns}/routes")
                };
                let r = api.call(Method::GET, &path, None).await?;
                r.body
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            print!(
                "{}",
                table(kind, &items, &routes, args.all_namespaces, now_secs())
            );
        }
    }
    Ok(true)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn ready_of(v: &Value) -> (String, String) {
    let conds = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match conds
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
    {
        Some(c) => (
            str_at(c, "/status").to_string(),
            str_at(c, "/reason").to_string(),
        ),
        None => ("Unknown".to_string(), String::new()),
    }
}

/// kubectl's AGE: `45s`, `12m`, `3h`, `2d`.
fn age(v: &Value, now: u64) -> String {
    let Some(created) = meta::parse_rfc3339(str_at(v, "/metadata/creationTimestamp")) else {
        return "<unknown>".to_string();
    };
    let s = now.saturating_sub(created);
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `90% hello-v1, 10% hello-v2 #candidate`
fn traffic_summary(route: &Value) -> String {
    let traffic = route
        .pointer("/status/traffic")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts: Vec<String> = traffic
        .iter()
        .map(|t| {
            let rev = t
                .get("revisionName")
                .and_then(Value::as_str)
                .unwrap_or("<unresolved>");
            let pct = t.get("percent").and_then(Value::as_i64).unwrap_or(0);
            match t.get("tag").and_then(Value::as_str) {
                Some(tag) => format!("{pct}% {rev} #{tag}"),
                None => format!("{pct}% {rev}"),
            }
        })
        .collect();
    parts.join(", ")
}

/// The table `get` prints for `kind`.
fn table(kind: Kind, items: &[Value], routes: &[Value], all_ns: bool, now: u64) -> String {
    let header: Vec<&str> = match kind {
        Kind::Service => vec![
            "NAME",
            "URL",
            "LATESTCREATED",
            "LATESTREADY",
            "READY",
            "REASON",
            "AGE",
        ],
        Kind::Configuration => vec![
            "NAME",
            "LATESTCREATED",
            "LATESTREADY",
            "READY",
            "REASON",
            "AGE",
        ],
        Kind::Revision => vec![
            "NAME",
            "SERVICE",
            "TRAFFIC",
            "TAGS",
            "GENERATION",
            "READY",
            "ACTUAL",
            "DESIRED",
            "AGE",
        ],
        Kind::Route => vec!["NAME", "URL", "READY", "REASON", "TRAFFIC", "AGE"],
        Kind::Broker => vec!["NAME", "URL", "READY", "REASON", "AGE"],
        Kind::Trigger => vec!["NAME", "BROKER", "SUBSCRIBER", "READY", "REASON", "AGE"],
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    if all_ns {
        head.insert(0, "NAMESPACE".to_string());
    }
    rows.push(head);
    for v in items {
        let name = str_at(v, "/metadata/name").to_string();
        let ns = str_at(v, "/metadata/namespace").to_string();
        let (ready, reason) = ready_of(v);
        let mut row = match kind {
            Kind::Service => vec![
                name,
                str_at(v, "/status/url").to_string(),
                str_at(v, "/status/latestCreatedRevisionName").to_string(),
                str_at(v, "/status/latestReadyRevisionName").to_string(),
                ready,
                reason,
                age(v, now),
            ],
            Kind::Configuration => vec![
                name,
                str_at(v, "/status/latestCreatedRevisionName").to_string(),
                str_at(v, "/status/latestReadyRevisionName").to_string(),
                ready,
                reason,
                age(v, now),
            ],
            Kind::Revision => {
                let service = v
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(crate::model::serving::SERVICE_LABEL))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let mut pct = 0i64;
                let mut tags = Vec::new();
                for r in routes
                    .iter()
                    .filter(|r| str_at(r, "/metadata/namespace") == ns)
                {
                    for t in r
                        .pointer("/status/traffic")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if t.get("revisionName").and_then(Value::as_str) == Some(name.as_str()) {
                            pct += t.get("percent").and_then(Value::as_i64).unwrap_or(0);
                            if let Some(tag) = t.get("tag").and_then(Value::as_str) {
                                tags.push(tag.to_string());
                            }
                        }
                    }
                }
                let num = |p: &str| {
                    v.pointer(p)
                        .and_then(Value::as_u64)
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                };
                vec![
                    name.clone(),
                    service,
                    if pct > 0 {
                        format!("{pct}%")
                    } else {
                        String::new()
                    },
                    tags.join(","),
                    v.pointer("/metadata/labels")
                        .and_then(|l| l.get(crate::model::serving::CONFIGURATION_GENERATION_LABEL))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    ready,
                    num("/status/actualReplicas"),
                    num("/status/desiredReplicas"),
                    age(v, now),
                ]
            }
            Kind::Route => vec![
                name,
                str_at(v, "/status/url").to_string(),
                ready,
                reason,
                traffic_summary(v),
                age(v, now),
            ],
            Kind::Broker => vec![
                name,
                str_at(v, "/status/address/url").to_string(),
                ready,
                reason,
                age(v, now),
            ],
            Kind::Trigger => {
                // The resolved URI once the broker reported it.
                let sub = v
                    .pointer("/status/subscriberUri")
                    .or_else(|| v.pointer("/spec/subscriber/uri"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| {
                        v.pointer("/spec/subscriber/ref")
                            .map(|r| format!("{}:{}", str_at(r, "/kind"), str_at(r, "/name")))
                    })
                    .unwrap_or_default();
                vec![
                    name,
                    str_at(v, "/spec/broker").to_string(),
                    sub,
                    ready,
                    reason,
                    age(v, now),
                ]
            }
        };
        if all_ns {
            row.insert(0, ns);
        }
        rows.push(row);
    }
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
