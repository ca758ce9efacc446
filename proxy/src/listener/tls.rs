//! Downstream TLS (termination) with ALPN.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, ListenerTls};

pub fn acceptor(tls: &ListenerTls, path: &str) -> Result<TlsAcceptor, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_chain)
        .map_err(|e| {
            ConfigError::new(
                format!("{path}.cert_chain"),
                format!("cannot read {}: {e}", tls.cert_chain),
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConfigError::new(
                format!("{path}.cert_chain"),
                format!("bad PEM in {}: {e}", tls.cert_chain),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.cert_chain"),
            format!("no certificate found in {}", tls.cert_chain),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.private_key).map_err(|e| {
        ConfigError::new(
            format!("{path}.private_key"),
            format!("no usable private key in {}: {e}", tls.private_key),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(path, format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::new(path, format!("certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
