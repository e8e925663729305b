//! `tokenbridge-server serve|check --config FILE`.

#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing::error;

/// Exit status for bad configuration (EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit status when the service cannot run (EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

/// tokenbridge: exchange Google ID tokens for temporary AWS credentials.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service.
    Serve {
        /// The config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate the config file and the policy file it names, print every
    /// problem with its file and line, and exit non-zero if there is any.
    Check {
        /// The config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match tokenbridge_server::load(&config) {
            Ok((cfg, policy)) => {
                println!(
                    "{}: ok ({} bindings in {})",
                    config.display(),
                    policy.binding_count(),
                    cfg.policy_file.display()
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("{p}");
                }
                eprintln!("{} problem(s) found", problems.len());
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Serve { config } => {
            tokenbridge_server::telemetry::init();
            let (cfg, policy) = match tokenbridge_server::load(&config) {
                Ok(loaded) => loaded,
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!(
                        "refusing to start: {} problem(s) in the configuration",
                        problems.len()
                    );
                    return ExitCode::from(EX_USAGE);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(EX_UNAVAILABLE);
                }
            };
            runtime.block_on(async move {
                let addr = cfg.server.listen;
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        error!(%addr, error = %e, "cannot listen");
                        return ExitCode::from(EX_UNAVAILABLE);
                    }
                };
                match tokenbridge_server::app::serve(cfg, policy, listener, shutdown_signal()).await
                {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        error!(error = %e, "server failed");
                        ExitCode::from(EX_UNAVAILABLE)
                    }
                }
            })
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
