//! `tokenbridge-cred`: AWS credentials for Google Cloud workloads through
//! tokenbridge, as `credential_process` output (`process`) or from a local
//! container credentials endpoint (`serve`). See `tokenbridge-cred --help`.
//!
//! Environment: `TOKENBRIDGE_ENDPOINT`, `TOKENBRIDGE_AUDIENCE`,
//! `TOKENBRIDGE_ROLE_ARN`, `TOKENBRIDGE_DURATION_SECONDS`,
//! `TOKENBRIDGE_CA_FILE`, `TOKENBRIDGE_CLIENT_CERT`, `TOKENBRIDGE_CLIENT_KEY`,
//! `TOKENBRIDGE_CACHE_DIR` (process), `TOKENBRIDGE_LISTEN` and
//! `TOKENBRIDGE_AUTHORIZATION_TOKEN` (serve), `GCE_METADATA_HOST`, `RUST_LOG`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use tokenbridge_cred::{
    cli::{Cli, Command},
    fetch::{EXIT_FAILED, Failure},
    process, serve,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help, --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => return fail(&Failure::usage(usage_line(&error))),
    };
    let default_level = match cli.command {
        Command::Process(_) => None,
        Command::Serve(_) => Some("info"),
    };
    init_logging(default_level);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&Failure {
                message: format!("cannot start the async runtime: {error}"),
                exit: EXIT_FAILED,
            });
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Process(args) => process::run(args).await,
            Command::Serve(args) => serve::run(args).await,
        }
    });
    // Do not wait for a blocking task still waiting on a cache lock.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

/// Prints the one line and returns the exit status.
fn fail(failure: &Failure) -> ExitCode {
    let line = failure
        .message
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("tokenbridge-cred: {line}");
    ExitCode::from(failure.exit)
}

/// clap's error without the usage block, on one line.
fn usage_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let text = rendered
        .lines()
        .take_while(|line| !line.starts_with("Usage:"))
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.trim().trim_start_matches("error:").trim();
    format!("usage: {text} (see --help)")
}

/// Logs to stderr at `RUST_LOG`, or at `default` when it is unset (`None`:
/// no logging, so that a failure prints exactly one line).
fn init_logging(default: Option<&str>) {
    let filter = match (std::env::var("RUST_LOG"), default) {
        (Ok(spec), _) if !spec.trim().is_empty() => EnvFilter::new(spec),
        (_, Some(level)) => EnvFilter::new(level),
        _ => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn usage_errors_are_one_line() {
        let error = Cli::try_parse_from(["tokenbridge-cred", "process"]).unwrap_err();
        let line = usage_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--endpoint"), "{line}");
        assert!(line.starts_with("usage: "), "{line}");
        assert_eq!(tokenbridge_cred::fetch::EXIT_USAGE, 64);
    }
}
