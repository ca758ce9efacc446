//! Compiles `proto/load_report.proto` (the load-report service) into Rust.
//!
//! `protox` parses the proto into a FileDescriptorSet in pure Rust, so a
//! build needs no `protoc` on the machine (and no vendored binary);
//! `tonic-prost-build` then generates the messages and the gRPC client and
//! server from that set. The server is generated too: tests run a fake
//! control plane with it.

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
