//! Compiles `proto/flwr/proto/*.proto` with protox (pure Rust, so no system `protoc` is needed),
//! generates prost/tonic code, and keeps the descriptor set for the canonical encoder.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto");
    let dir = root.join("flwr/proto");
    println!("cargo:rerun-if-changed={}", dir.display());

    let mut files = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    // Sorted so that generated output does not depend on directory order.
    files.sort();

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("flwr_descriptor.bin"), fds.encode_to_vec())?;
    let mut config = prost_build::Config::new();
    // `prost::Name` lets the canonical encoder find a message's descriptor from its type.
    config.enable_type_names();
    // Array payloads decode as slices of the received buffer and are shared, not copied, when a
    // record set is stored, cloned for delivery or handed on (large models).
    config.bytes([".flwr.proto.Array.data"]);
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(config, fds)?;
    Ok(())
}
