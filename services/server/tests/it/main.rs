//! Integration tests: the whole service in-process (or as its binary) over
//! real loopback gRPC, with Google stand-ins over real HTTP and STS from
//! moto's server (or a fault-injecting fake STS where a test says so).
//! See tests/README.md at the workspace root for the tiers.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod abuse;
mod bad_input;
mod cache;
mod cli;
mod common;
mod console;
mod exchange;
mod issuer;
mod observability;
mod outage;
mod policy;
mod policy_admin;
mod revocation;
mod tls;
mod traces;
mod verification;
