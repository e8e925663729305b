//! `tokenbridge-server serve|check --config FILE`.

#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing::{error, info};

/// The allocator (issue 16): jemalloc, with two arenas and freed pages
/// returned after a second (`.cargo/config.toml` compiles those settings in;
/// `_RJEM_MALLOC_CONF` overrides them at run time). A cache-hit exchange
/// allocates and frees several futures and buffers over a kilobyte, which
/// glibc's malloc serves from its shared bins, consolidating its fast bins
/// first; profiled flat out, malloc and free took 6.7 µs of each call's
/// 50 µs against 1.8 µs in the null service. Measured in BENCHMARKS.md ("The
/// allocator"): +17 % cache-hit throughput against glibc in the same runs,
/// RSS with 10,000 identities cached 60 MiB against glibc's 63 MiB.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
                match (&cfg.policy_file, &cfg.store) {
                    (Some(file), _) => println!(
                        "{}: ok ({} bindings in {})",
                        config.display(),
                        policy.binding_count(),
                        file.display()
                    ),
                    // The store is not contacted: `check` reads files only.
                    (None, Some(store)) => println!(
                        "{}: ok (policy in the {} store, not contacted by check)",
                        config.display(),
                        store.url.split_once("://").map_or("?", |(s, _)| s)
                    ),
                    (None, None) => println!("{}: ok", config.display()),
                }
                // Pass-through mode: the role's trust policy alone decides a
                // call a workload makes to STS with its own Google token.
                let default = cfg.issuer.as_ref().is_some_and(|i| i.default);
                for b in policy.bindings() {
                    let extras = tokenbridge_policy::trust::bypassable(b, default);
                    if !extras.is_empty() {
                        eprintln!(
                            "warning: binding `{}` is in pass-through mode: its {} bind only callers that come through tokenbridge; a workload calling STS directly with its own Google token gets what the role's trust policy allows (use issuer mode: README, \"Issuer mode\")",
                            b.name,
                            extras.join(", ")
                        );
                    }
                }
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
            tokenbridge_server::app::install_crypto_provider();
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
            let code = runtime.block_on(async move {
                // Logging (and tracing, if configured) from here on: the
                // trace exporter needs the runtime.
                let telemetry =
                    match tokenbridge_server::observability::telemetry::init_with(&cfg.telemetry) {
                        Ok(t) => t,
                        Err(e) => {
                            tokenbridge_server::observability::telemetry::init();
                            error!(error = %e, "cannot start");
                            return ExitCode::from(EX_UNAVAILABLE);
                        }
                    };
                let code = serve(cfg, policy, config.clone()).await;
                telemetry.shutdown().await;
                code
            });
            // A write stuck on a stalled audit sink (a pipe nobody reads)
            // must not keep the process from exiting.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            code
        }
    }
}

/// Listens, serves until SIGTERM or SIGINT, and drains.
async fn serve(
    cfg: tokenbridge_server::Config,
    policy: tokenbridge_server::PolicySnapshot,
    config_path: std::path::PathBuf,
) -> ExitCode {
    let addr = cfg.server.listen;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(%addr, error = %e, "cannot listen");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    // Handlers first: a signal that arrives while starting is not lost.
    let Some(signals) = Signals::install() else {
        error!("cannot install signal handlers");
        return ExitCode::from(EX_UNAVAILABLE);
    };
    let policy_file = cfg.policy_file.clone();
    let running = match tokenbridge_server::app::start_on(cfg, policy, listener).await {
        Ok(running) => running,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    signals
        .wait_for_shutdown(&running, policy_file.as_deref(), Some(&config_path))
        .await;
    match running.stop().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "server failed");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

/// The signals the server acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Self {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }

    /// Waits for SIGTERM or SIGINT; on SIGHUP, reloads the policy file, if
    /// the policy comes from one (a file with problems is refused whole: the
    /// problems are logged and the current policy stays), and the TLS files
    /// (likewise). A policy store is followed without a signal.
    async fn wait_for_shutdown(
        mut self,
        running: &tokenbridge_server::app::Running,
        policy_file: Option<&std::path::Path>,
        config_file: Option<&std::path::Path>,
    ) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    if let Some(tls) = running.tls() {
                        tls.reload();
                    }
                    if let Some(issuer) = running.exchange().issuer() {
                        // Key rotation changes key_files or active_key_file:
                        // read them from the config again.
                        let wanted = config_file
                            .and_then(|f| tokenbridge_server::Config::load(f).ok())
                            .and_then(|c| c.issuer)
                            .unwrap_or_else(|| issuer.config().clone());
                        match issuer.reload_with(&wanted) {
                            Ok(kid) => info!(active_kid = %kid, "issuer keys reloaded (SIGHUP)"),
                            Err((file, why)) => error!(file = %file.display(), reason = %why, "issuer key reload refused; the current keys stay"),
                        }
                    }
                    let Some(policy_file) = policy_file else { continue };
                    match tokenbridge_server::PolicySnapshot::load(policy_file) {
                    Ok(policy) => {
                        let bindings = policy.binding_count();
                        // In force first, then said: the log line means it applies.
                        running.exchange().set_policy(policy);
                        info!(bindings, file = %policy_file.display(), "policy reloaded (SIGHUP)");
                    }
                    Err(problems) => {
                        for p in &problems {
                            error!(problem = %p, "policy reload refused");
                        }
                    }
                    }
                }
            }
        }
    }
}
