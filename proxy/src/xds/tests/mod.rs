//! Table-driven translation tests over proto fixtures, one file per
//! resource type, plus the warming and assembly rules of `state`.

mod cluster;
mod fixtures;
mod incremental;
mod listener;
mod route;
mod route_encoded;
mod state;
