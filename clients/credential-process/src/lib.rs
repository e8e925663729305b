//! The modules of the `tokenbridge-cred` binary (`src/main.rs` is only the
//! entry point). They are a library so that the fuzz targets (`fuzz/` at the
//! workspace root) can reach the `credential_process` and container-endpoint
//! output and the cache-file reader; this is not an API for other crates.

#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod fetch;
pub mod process;
pub mod serve;
