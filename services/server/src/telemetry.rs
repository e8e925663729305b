//! Logging to stderr, filtered by `RUST_LOG` (default `info`).
//!
//! Whatever `RUST_LOG` says, the HTTP/2 and HTTP stacks are capped at `info`:
//! at `trace` they log raw header frames, and the caller's ID token travels in
//! a header. tokenbridge's own code never logs a token, a secret access key or
//! a session token at any level (a test reads trace-level logs to check).

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, filter::Directive};

/// Targets whose trace output could contain request headers or bodies.
const CAPPED: [&str; 6] = [
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "aws_smithy_runtime",
    "aws_smithy_http_client",
];

/// Installs the global subscriber.
pub fn init() {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for target in CAPPED {
        if let Ok(directive) = format!("{target}=info").parse::<Directive>() {
            filter = filter.add_directive(directive);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}
