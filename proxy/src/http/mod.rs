//! HTTP glue on hyper 1: the body type shared by both sides, header
//! hygiene, and the downstream server.
pub mod body;
pub mod headers;
pub mod replay;
pub mod server;
