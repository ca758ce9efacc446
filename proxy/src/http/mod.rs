//! HTTP glue on hyper 1: the body type shared by both sides, header
//! hygiene, the filters' body hooks on bodies, request-body replay for
//! retries, the downstream server and its HTTP/1 framing guard.
pub mod body;
pub mod filtered;
pub mod framing;
pub mod headers;
pub mod replay;
pub mod server;
