//! Compiles `proto/load_report.proto` (the load-report service) into Rust,
//! the same way `proxy/build.rs` does: `protox` parses the proto in pure
//! Rust (no `protoc` needed on the machine) and `tonic-prost-build`
//! generates the messages and the gRPC server from the descriptor set.
//! The control plane implements the server; the client is generated too so
//! unit tests can stream reports at it without linking the proxy.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../proto";
    let file = "../proto/load_report.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], [proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
