//! Compiles ops/proto into Rust with protox (pure Rust, so building needs no `protoc`),
//! and keeps the encoded descriptor set for the server's reflection service.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/carillon/v1/carillon.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let bytes = prost::Message::encode_to_vec(&files);
    std::fs::write(out.join("carillon_descriptor.bin"), bytes)?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(files)?;
    Ok(())
}
