//! `ferry-control serve --broker-config FILE`: Broker and Trigger
//! manifests applied to the store at start, exactly as `ferry-control apply
//! -f FILE` would apply them (same validation, same objects), so a file and
//! the API are two doors to one config rather than two configs. Objects
//! applied later through the API stay; the file's objects are re-applied
//! (updated to the file's content) at every start.

use std::path::Path;

use anyhow::Context as _;

use crate::model::{manifest, Kind, Manifest};
use crate::store::Serving;

/// Applies every Broker, then every Trigger of the YAML (or JSON) file at
/// `path`; the first invalid object stops the start with its field path.
pub async fn apply_file(serving: &Serving, path: &Path) -> anyhow::Result<usize> {
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("reading the broker config {}", path.display()))?;
    let mut docs = manifest::parse(&text)
        .map_err(|e| anyhow::anyhow!("broker config {}: {e}", path.display()))?;
    if let Some(m) = docs
        .iter()
        .find(|m| !matches!(m.kind(), Kind::Broker | Kind::Trigger))
    {
        anyhow::bail!(
            "broker config {}: {} {:?}: --broker-config takes Brokers and Triggers; apply other \
             objects with `ferry-control apply`",
            path.display(),
            m.kind(),
            m.name()
        );
    }
    // A trigger needs its broker stored first.
    docs.sort_by_key(|m| matches!(m, Manifest::Trigger(_)));
    let n = docs.len();
    for m in docs {
        let ns = match m.namespace() {
            "" => crate::model::meta::DEFAULT_NAMESPACE,
            ns => ns,
        };
        let what = format!("{} {ns}/{}", m.kind(), m.name());
        serving
            .apply(m)
            .await
            .map_err(|e| anyhow::anyhow!("broker config {}: {what}: {e}", path.display()))?;
    }
    Ok(n)
}
