//! Compiles `tokenbridge/v1/tokenbridge.proto` and `tokenbridge/v1/admin.proto`
//! with `protox` (a pure-Rust protobuf compiler), so no system `protoc` is
//! needed, and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "tokenbridge/v1/tokenbridge.proto",
        "tokenbridge/v1/admin.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile(protos, ["."])?;
    std::fs::write(
        out_dir.join("tokenbridge_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        // Messages carrying secrets (credentials, an ID token): their Debug
        // is written by hand in lib.rs.
        .skip_debug([
            "tokenbridge.v1.GetCredentialsResponse",
            "tokenbridge.v1.ExplainRequest",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
