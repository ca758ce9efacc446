//! Helpers every translator uses: the problem collector (field path +
//! reason), proto well-known types → model types, and the "log an ignored
//! field once" registry.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    address, data_source, socket_address, Address, DataSource,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};

use crate::config::Dur;

/// Problems found in one resource, each with the field path inside it. A
/// resource with any problem is rejected whole.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub list: Vec<(String, String)>,
}

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.list.push((path.into(), reason.into()));
    }

    pub fn unsupported(&mut self, path: impl Into<String>, what: &str) {
        self.add(path, format!("{what} is not supported by Ferry"));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// One NACK sentence: `listener "l1": path: reason; path: reason`.
    pub fn sentence(&self, kind: &str, name: &str) -> String {
        let parts: Vec<String> = self
            .list
            .iter()
            .map(|(p, r)| {
                if p.is_empty() {
                    r.clone()
                } else {
                    format!("{p}: {r}")
                }
            })
            .collect();
        format!("{kind} {name:?}: {}", parts.join("; "))
    }
}

/// Fields logged as ignored, so a field repeated in every push is reported
/// once per process rather than once per resource per push.
static LOGGED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Notes a field Ferry does not implement but whose absence does not change
/// what traffic does (stats prefixes, tracing, access logs configured in
/// the resource): logged once, never a rejection.
pub(crate) fn ignored(kind: &str, field: &str) {
    let key = format!("{kind}.{field}");
    let first = LOGGED.lock().map(|mut s| s.insert(key)).unwrap_or(false);
    if first {
        tracing::info!(
            resource = kind,
            field,
            "xDS field not supported by Ferry; ignored (logged once)"
        );
    }
}

pub(crate) fn duration(d: &PbDuration) -> Option<Dur> {
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Dur(Duration::new(secs, nanos)))
}

/// A proto duration field into the model, with a problem when negative.
pub(crate) fn opt_duration(p: &mut Problems, path: &str, d: &Option<PbDuration>) -> Option<Dur> {
    let d = d.as_ref()?;
    let out = duration(d);
    if out.is_none() {
        p.add(path, "must not be negative");
    }
    out
}

/// `ip:port` (or `host:port`) of a socket address; `None` with a problem for
/// pipes, named ports and internal addresses.
pub(crate) fn socket_address(p: &mut Problems, path: &str, a: &Option<Address>) -> Option<String> {
    let Some(Address {
        address: Some(kind),
    }) = a
    else {
        p.add(path, "an address is required");
        return None;
    };
    let sa = match kind {
        address::Address::SocketAddress(sa) => sa,
        address::Address::Pipe(_) => {
            p.unsupported(format!("{path}.pipe"), "a pipe address");
            return None;
        }
        _ => {
            p.unsupported(path, "this address kind");
            return None;
        }
    };
    // TCP is 0; UDP would need a different listener entirely.
    if sa.protocol != 0 {
        p.unsupported(format!("{path}.socket_address.protocol"), "UDP");
    }
    if !sa.resolver_name.is_empty() {
        p.unsupported(
            format!("{path}.socket_address.resolver_name"),
            "a custom resolver",
        );
    }
    let port = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(v)) => *v,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            p.unsupported(format!("{path}.socket_address.named_port"), "a named port");
            return None;
        }
        None => 0,
    };
    if sa.address.is_empty() {
        p.add(
            format!("{path}.socket_address.address"),
            "must not be empty",
        );
        return None;
    }
    // IPv6 literals need brackets in `ip:port`.
    if sa.address.contains(':') && !sa.address.starts_with('[') {
        Some(format!("[{}]:{port}", sa.address))
    } else {
        Some(format!("{}:{port}", sa.address))
    }
}

/// Where inline TLS material is written: a data source must become a file
/// for the model, which names certificates by path.
pub(crate) fn data_source_file(
    p: &mut Problems,
    path: &str,
    ds: &Option<DataSource>,
    runtime_dir: &std::path::Path,
) -> Option<String> {
    let Some(ds) = ds else {
        p.add(path, "is required");
        return None;
    };
    match &ds.specifier {
        Some(data_source::Specifier::Filename(f)) => Some(f.clone()),
        Some(data_source::Specifier::InlineBytes(b)) => write_inline(p, path, b, runtime_dir),
        Some(data_source::Specifier::InlineString(s)) => {
            write_inline(p, path, s.as_bytes(), runtime_dir)
        }
        Some(data_source::Specifier::EnvironmentVariable(_)) => {
            p.unsupported(
                format!("{path}.environment_variable"),
                "a data source from the environment",
            );
            None
        }
        None => {
            p.add(path, "must set filename, inline_bytes or inline_string");
            None
        }
    }
}

/// Inline PEM → `<runtime_dir>/<xxh64 of content>.pem`, written atomically.
/// Content-addressed, so the same bytes pushed again name the same file and
/// an unchanged listener stays unchanged for the reload diff.
fn write_inline(
    p: &mut Problems,
    path: &str,
    bytes: &[u8],
    dir: &std::path::Path,
) -> Option<String> {
    let hash = xxhash_rust::xxh64::xxh64(bytes, 0);
    let file = dir.join(format!("{hash:016x}.pem"));
    if file.exists() {
        return Some(file.display().to_string());
    }
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{hash:016x}.pem.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &file)
    };
    match write() {
        Ok(()) => Some(file.display().to_string()),
        Err(e) => {
            p.add(
                path,
                format!("cannot write inline data to {}: {e}", file.display()),
            );
            None
        }
    }
}

/// Decodes a typed config of an expected type, with a problem naming the
/// type actually found.
pub(crate) fn decode_any<T: prost::Message + prost::Name + Default>(
    p: &mut Problems,
    path: &str,
    any: &Any,
) -> Option<T> {
    if any.type_url != T::type_url() {
        p.add(
            path,
            format!("expected {} but found {:?}", T::type_url(), any.type_url),
        );
        return None;
    }
    match T::decode(any.value.as_slice()) {
        Ok(v) => Some(v),
        Err(e) => {
            p.add(path, format!("cannot decode {}: {e}", T::full_name()));
            None
        }
    }
}
