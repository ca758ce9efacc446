//! Why a stream ended. None of these stop the client: each is logged and
//! followed by a reconnect; only a malformed server address is returned.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid ADS server address {0:?}: {1}")]
    InvalidServer(String, String),
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream error: {}: {}", .0.code(), .0.message())]
    Stream(#[from] tonic::Status),
}
