//! Compiles the project's own protos (admin API, snapshot format) with a
//! vendored `protoc`, and writes a file descriptor set for gRPC reflection.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; this only tells
    // prost-build where the vendored protoc lives.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("fleet_authz_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/fleet_authz/v1/admin.proto",
                "proto/fleet_authz/v1/snapshot.proto",
            ],
            &["proto"],
        )?;
    // Envoy's ext_authz descriptors for reflection (see proto/envoy/README.md),
    // copied next to ours so the crate includes nothing outside src/ + OUT_DIR.
    std::fs::copy(
        "proto/envoy/envoy_authz_descriptor.bin",
        out_dir.join("envoy_authz_descriptor.bin"),
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
