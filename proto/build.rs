//! Compiles the service contracts with protox (pure Rust, no system `protoc`)
//! and writes the encoded descriptor set for gRPC reflection.
//!
//! Two passes: messages and clients with tonic's stock prost codec, then the
//! servers alone (reusing those messages through `extern_path`) with
//! [`codec::RequestCodec`](src/codec.rs), which answers an undecodable
//! request body with INVALID_ARGUMENT instead of tonic's INTERNAL.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/checkout/v1/checkout.proto",
        "proto/checkout/v1/events.proto",
        "proto/billing/v1/billing.proto",
        "proto/billing/v1/events.proto",
        "proto/billing/v1/catalog.proto",
        "proto/payments/errors/v1/errors.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    // `vendor` holds third-party imports (google/api/field_behavior.proto),
    // outside the module buf lints and holds to compatibility (buf.yaml).
    println!("cargo:rerun-if-changed=vendor");
    let fds = protox::compile(files, ["proto", "vendor"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds.clone())?;
    let servers = out.join("server");
    std::fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path("crate::codec::RequestCodec")
        .extern_path(".checkout.v1", "crate::checkout::v1")
        .extern_path(".billing.v1", "crate::billing::v1")
        .out_dir(&servers)
        .compile_fds(fds)?;
    Ok(())
}
