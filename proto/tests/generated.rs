//! The generated code in `src/generated/` matches the protos.
//!
//! The Rust types and the descriptor set that server reflection serves are
//! generated from `tokenbridge/v1/tokenbridge.proto` and
//! `tokenbridge/v1/admin.proto` with `protox` (a pure-Rust protobuf compiler,
//! so no system `protoc`) and `tonic-prost-build`, and checked in: a build of
//! the server or the demo then compiles neither (about 56 s of compile time on
//! a first build, issue 16). This test generates both again and fails if the
//! checked-in files differ; after changing a proto, regenerate them with
//!
//! ```sh
//! TOKENBRIDGE_REGENERATE=1 cargo test -p tokenbridge-proto --test generated
//! ```

use std::path::{Path, PathBuf};

use prost::Message as _;

const PROTOS: [&str; 2] = [
    "tokenbridge/v1/tokenbridge.proto",
    "tokenbridge/v1/admin.proto",
];
const FILES: [&str; 2] = ["tokenbridge.v1.rs", "tokenbridge_descriptor.bin"];

/// Generates the code and the descriptor set into `out`.
fn generate(crate_dir: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let includes = [crate_dir];
    let protos = PROTOS.map(|p| crate_dir.join(p));
    let descriptors = protox::compile(protos, includes)?;
    std::fs::write(
        out.join("tokenbridge_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .out_dir(out)
        .emit_rerun_if_changed(false)
        // Messages carrying secrets (credentials, an ID token): their Debug
        // is written by hand in lib.rs.
        .skip_debug([
            "tokenbridge.v1.GetCredentialsResponse",
            "tokenbridge.v1.ExplainRequest",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}

#[test]
fn the_checked_in_code_matches_the_protos() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let checked_in = crate_dir.join("src/generated");
    let fresh = tempfile::tempdir().unwrap();
    generate(&crate_dir, fresh.path()).expect("the protos compile and generate");
    let regenerate = std::env::var_os("TOKENBRIDGE_REGENERATE").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for file in FILES {
        let want = std::fs::read(fresh.path().join(file)).unwrap();
        let have = std::fs::read(checked_in.join(file)).unwrap_or_default();
        if want != have {
            if regenerate {
                std::fs::write(checked_in.join(file), &want).unwrap();
            }
            stale.push(file);
        }
    }
    assert!(
        regenerate || stale.is_empty(),
        "{} in proto/src/generated/ differ from what the protos generate; run \
         TOKENBRIDGE_REGENERATE=1 cargo test -p tokenbridge-proto --test generated \
         and commit the result",
        stale.join(", ")
    );
}
