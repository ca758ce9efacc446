//! Upstream TLS (origination): a rustls client config per cluster.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::{ConfigError, UpstreamProtocol, UpstreamTls};

/// Builds the client config: trust `ca_file` (or the Mozilla roots) and
/// offer the ALPN of the cluster's protocol.
pub fn client_config(
    tls: &UpstreamTls,
    protocol: UpstreamProtocol,
    path: &str,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file).map_err(|e| {
                ConfigError::new(
                    format!("{path}.ca_file"),
                    format!("cannot read {file}: {e}"),
                )
            })?;
            let mut n = 0;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    ConfigError::new(format!("{path}.ca_file"), format!("bad PEM in {file}: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    ConfigError::new(
                        format!("{path}.ca_file"),
                        format!("bad certificate in {file}: {e}"),
                    )
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(ConfigError::new(
                    format!("{path}.ca_file"),
                    format!("no certificate found in {file}"),
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(path, format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = match protocol {
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(cfg))
}
