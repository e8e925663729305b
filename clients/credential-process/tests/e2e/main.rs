//! End-to-end tests of the `tokenbridge-cred` binary: real AWS clients
//! (aws CLI, boto3, aws-sdk-rust) against moto through the real tokenbridge
//! server and the metadata emulator; faults; the file cache; log secrecy.
//!
//! Needs the project virtualenv (`scripts/test` makes it): moto, boto3 and
//! the aws CLI. Missing, the tests fail; they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aws_clients;
mod cache;
mod common;
mod faults;
mod secrets;
mod tls;
