//! `tokenbridge-loadtest`: drives `GetCredentials` over many connections with
//! many identities, for a duration or a count, at a fixed rate or flat out,
//! against tokenbridge and, in the same run, against a null service of the
//! same proto (the transport floor). Tokens come from the project's stand-in
//! issuer, STS is moto behind a counting proxy (or the fake STS).
//!
//! ```text
//! tokenbridge-loadtest run --server-bin target/release/tokenbridge-server \
//!     --duration 10s --connections 8 --concurrency 64 --identities 1000
//! ```
//!
//! Reports requests/s, latency p50/p90/p99/p99.9/max, errors by status code,
//! STS calls made, server RSS and cold start to SERVING; prints a table and,
//! with `--json FILE`, writes the same as JSON.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod null;
mod sts_counter;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokenbridge_proto::v1::{GetCredentialsRequest, token_exchange_client::TokenExchangeClient};
use tokenbridge_testing::{FakeSts, FakeStsMode, Issuer, JwksServer, Moto, ServiceAccount};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const AUDIENCE: &str = "https://tokenbridge.loadtest";
/// Distinct tokens per identity with `--fresh-tokens`.
const FRESH_TOKENS: usize = 8;
const ROLE: &str = "arn:aws:iam::123456789012:role/LoadTest";
/// How late a fixed-rate request may be released before its latency counts
/// from its intended send time (the timer's granularity, with room).
const TIMER_SLACK: Duration = Duration::from_millis(2);

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the load test.
    Run(RunArgs),
    /// Start the stand-ins (JWKS, metadata server), moto and tokenbridge for
    /// one workload, print the environment a client needs, and keep them up
    /// until standard input closes (for benchmarks of the shim and the
    /// walkthrough's script).
    Env {
        /// The tokenbridge-server binary to run.
        #[arg(long)]
        server_bin: PathBuf,
    },
    /// Serve the null service (used by `run` as a child process).
    NullServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(clap::Args, Clone, Serialize)]
struct RunArgs {
    /// The tokenbridge-server binary to run. Without it the server runs inside
    /// this process (then RSS includes the load generator).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// How long to drive load (after warm-up).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    #[serde(serialize_with = "as_secs")]
    duration: Duration,
    /// Send this many requests instead of running for a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Requests per second; 0 drives flat out (closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// HTTP/2 connections to open.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Distinct service accounts (one binding and one token each).
    #[arg(long, default_value_t = 1000)]
    identities: usize,
    /// Fresh tokens, as a fleet whose metadata server mints one per request
    /// sends them: tokenbridge's verified-token cache is turned off
    /// (`google.verified_token_cache_entries = 0`), so every request pays
    /// the RS256 signature check, and each identity has a pool of
    /// `FRESH_TOKENS` distinct tokens used in turn (different `iat`), so no
    /// header is the same twice in a row (HPACK cannot shortcut them
    /// either). The null service gets the same tokens.
    #[arg(long)]
    fresh_tokens: bool,
    /// What to measure.
    #[arg(long, value_enum, default_value = "both")]
    target: Target,
    /// The STS behind tokenbridge.
    #[arg(long, value_enum, default_value = "moto")]
    sts: StsKind,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print (and record) throughput, latency and server RSS every this
    /// long during the measured phase, e.g. `60s` for a soak.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "opt_secs")]
    report_every: Option<Duration>,
}

#[derive(Clone, Copy, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Target {
    Both,
    Tokenbridge,
    Null,
}

#[derive(Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum StsKind {
    Moto,
    Fake,
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One target's figures.
#[derive(Serialize)]
struct Figures {
    target: &'static str,
    requests: u64,
    seconds: f64,
    requests_per_second: f64,
    latency_us: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    sts_calls: Option<u64>,
    server_rss_kib: Option<u64>,
    cold_start_ms: Option<f64>,
    /// Audit lines the server wrote to its stdout (a pipe the load test
    /// reads, as a container runtime would), warm-up included; only for a
    /// server run as a child process.
    audit_lines: Option<u64>,
    /// The server's audit writes by path (`inline`: the calling task wrote
    /// a pipe with room; `blocking`: on a blocking thread, e.g. because the
    /// pipe's reader was behind), from its `/metrics` at the end of the run,
    /// warm-up included.
    audit_writes: Option<BTreeMap<String, u64>>,
    /// With `--report-every`: one entry per interval.
    intervals: Vec<Interval>,
}

/// One `--report-every` interval of the measured phase.
#[derive(Serialize, Clone)]
struct Interval {
    at_seconds: f64,
    /// Requests answered in the interval (errors apart).
    requests: u64,
    requests_per_second: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    server_rss_kib: Option<u64>,
    /// The machine's CPU time in the interval: busy (not idle or waiting
    /// for I/O) and stolen by the hypervisor, in percent of all its CPUs;
    /// and the server's own, in cores. From `/proc`; absent elsewhere.
    machine_busy_percent: Option<f64>,
    steal_percent: Option<f64>,
    server_cores: Option<f64>,
}

/// CPU counters read from `/proc` at one instant, in clock ticks.
#[derive(Clone, Copy)]
struct CpuSample {
    total: u64,
    idle: u64,
    steal: u64,
    cpus: u64,
    server: Option<u64>,
}

impl CpuSample {
    fn read(pid: Option<u32>) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        // cpu  user nice system idle iowait irq softirq steal guest guest_nice
        let ticks: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        let cpus = lines.filter(|l| l.starts_with("cpu")).count() as u64;
        // guest time is already counted in user time.
        let total = ticks.iter().take(8).sum();
        let server = pid.and_then(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces):
            // state is the first; utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        });
        Some(Self {
            total,
            idle: ticks.get(3)? + ticks.get(4)?,
            steal: *ticks.get(7)?,
            cpus: cpus.max(1),
            server,
        })
    }

    /// (busy %, steal %, server cores) from `earlier` to `self`.
    fn since(&self, earlier: &Self) -> (f64, f64, Option<f64>) {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        let server = self
            .server
            .zip(earlier.server)
            .map(|(now, then)| now.saturating_sub(then) as f64 / (total / self.cpus as f64));
        (
            100.0 * (total - idle) / total,
            100.0 * steal / total,
            server,
        )
    }
}

#[derive(Serialize)]
struct Report {
    args: RunArgs,
    cores: usize,
    results: Vec<Figures>,
    /// tokenbridge's requests/s over the null service's.
    throughput_ratio: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokenbridge-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Cmd::NullServer { listen } => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| e.to_string())?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                println!("{}", null::announce(addr));
                null::serve(listener).await.map_err(|e| e.to_string())
            }
            Cmd::Run(args) => run(args).await,
            Cmd::Env { server_bin } => env(server_bin).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenbridge-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let mut results = Vec::new();
    let issuer = Issuer::new();
    eprintln!(
        "minting {} tokens…",
        args.identities * if args.fresh_tokens { FRESH_TOKENS } else { 1 }
    );
    let accounts: Vec<ServiceAccount> = (0..args.identities)
        .map(|i| {
            ServiceAccount::new(
                &format!("{}", 100_000_000_000_000_000_000u128 + i as u128),
                &format!("load-{i}@loadtest.iam.gserviceaccount.com"),
            )
        })
        .collect();
    // Laid out pool-major: request n uses identity n % identities, and the
    // pool's tokens in turn as n grows.
    let per_identity = if args.fresh_tokens { FRESH_TOKENS } else { 1 };
    let tokens: Arc<Vec<MetadataValue<Ascii>>> = Arc::new(
        (0..per_identity)
            .flat_map(|k| accounts.iter().map(move |sa| (k, sa)))
            .map(|(k, sa)| {
                let mut claims = issuer.claims(sa, AUDIENCE, true);
                if k > 0 {
                    let iat = claims["iat"].as_u64().unwrap_or_default() - k as u64;
                    claims.insert("iat".into(), iat.into());
                    claims.insert("exp".into(), (iat + 3600).into());
                }
                format!("Bearer {}", issuer.sign(&claims))
                    .parse()
                    .map_err(|_| "token is not ASCII".to_string())
            })
            .collect::<Result<_, _>>()?,
    );

    if args.target != Target::Tokenbridge {
        eprintln!("null service…");
        let (mut child, addr) = spawn_null()?;
        let channels = connect_all(&addr.to_string(), args.connections).await?;
        let measured = drive(&channels, tokens.clone(), &args, Some(child.id())).await;
        let rss = rss_kib(child.id());
        let _ = child.kill();
        let _ = child.wait();
        results.push(measured.figures("null", None, rss, None));
    }

    if args.target != Target::Null {
        eprintln!("tokenbridge…");
        let jwks = JwksServer::start(issuer.clone(), 3600).await;
        let (sts_endpoint, counter, fake, _moto) = match args.sts {
            StsKind::Moto => {
                let moto = Moto::start().await;
                let counter = sts_counter::StsCounter::start(moto.endpoint())
                    .await
                    .map_err(|e| e.to_string())?;
                (counter.endpoint(), Some(counter), None, Some(moto))
            }
            StsKind::Fake => {
                let fake = FakeSts::start(FakeStsMode::Success).await;
                (fake.endpoint(), None, Some(fake), None)
            }
        };
        let sts_calls = || {
            counter.as_ref().map_or_else(
                || fake.as_ref().map_or(0, |f| f.request_count() as u64),
                |c| c.calls(),
            )
        };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let Started {
            server,
            addr,
            admin_addr,
            cold_start,
            audit_reader,
        } = start_server(&args, dir.path(), &jwks.uri(), &sts_endpoint, &accounts).await?;
        let channels = connect_all(&addr, args.connections).await?;

        eprintln!("warm-up: one request per identity…");
        // Bounded by count only: every identity once, however long STS takes.
        let warm = RunArgs {
            requests: Some(args.identities as u64),
            rate: 0,
            duration: Duration::from_secs(3600),
            concurrency: args.concurrency.min(16),
            ..args.clone()
        };
        let warmed = drive(
            &channels,
            tokens.clone(),
            &RunArgs {
                report_every: None,
                ..warm
            },
            None,
        )
        .await;
        if !warmed.errors.is_empty() {
            return Err(format!("warm-up failed: {:?}", warmed.errors));
        }
        let calls_before = sts_calls();
        eprintln!("measuring…");
        let pid = match &server {
            ServerProcess::Child(c) => c.id(),
            ServerProcess::InProcess(_) => std::process::id(),
        };
        let measured = drive(&channels, tokens.clone(), &args, Some(pid)).await;
        let calls = sts_calls();
        let rss = match &server {
            ServerProcess::Child(c) => rss_kib(c.id()),
            ServerProcess::InProcess(_) => rss_kib(std::process::id()),
        };
        let mut figures = measured.figures(
            "tokenbridge",
            Some(calls),
            rss,
            Some(cold_start.as_secs_f64() * 1000.0),
        );
        if calls != calls_before {
            figures.errors.insert(
                "sts calls during the measured phase".into(),
                calls - calls_before,
            );
        }
        figures.audit_writes = audit_writes(&admin_addr).await;
        server.stop().await;
        if let Some(reader) = audit_reader {
            // Every answer, warm-up included, has its audit line.
            let lines = tokio::task::spawn_blocking(move || reader.join().unwrap_or(0))
                .await
                .unwrap_or(0);
            let answered = warmed.histogram.len() + figures.requests;
            figures.audit_lines = Some(lines);
            if lines != answered {
                figures.errors.insert(
                    format!("audit lines {lines} != requests answered {answered}"),
                    1,
                );
            }
        }
        results.push(figures);
    }

    let ratio = match (
        results.iter().find(|r| r.target == "null"),
        results.iter().find(|r| r.target == "tokenbridge"),
    ) {
        (Some(n), Some(t)) if n.requests_per_second > 0.0 => {
            Some(t.requests_per_second / n.requests_per_second)
        }
        _ => None,
    };
    let report = Report {
        args: args.clone(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        results,
        throughput_ratio: ratio,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

async fn env(server_bin: PathBuf) -> Result<(), String> {
    let issuer = Issuer::new();
    let sa = ServiceAccount::new(
        "112233445566778899001",
        "bench@loadtest.iam.gserviceaccount.com",
    );
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let metadata = tokenbridge_testing::MetadataServer::start(issuer, sa.clone()).await;
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let args = RunArgs {
        server_bin: Some(server_bin),
        duration: Duration::ZERO,
        requests: None,
        rate: 0,
        connections: 1,
        concurrency: 1,
        identities: 1,
        fresh_tokens: false,
        target: Target::Tokenbridge,
        sts: StsKind::Moto,
        json: None,
        report_every: None,
    };
    // The audit reader thread keeps draining the server's stdout.
    let Started {
        server,
        addr,
        audit_reader: _audit,
        ..
    } = start_server(&args, dir.path(), &jwks.uri(), &moto.endpoint(), &[sa]).await?;
    println!("GCE_METADATA_HOST={}", metadata.host());
    println!("TOKENBRIDGE_ENDPOINT=http://{addr}");
    println!("TOKENBRIDGE_AUDIENCE={AUDIENCE}");
    println!("TOKENBRIDGE_ROLE_ARN={ROLE}");
    println!("AWS_ENDPOINT_URL_STS={}", moto.endpoint());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ =
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await;
    server.stop().await;
    Ok(())
}

enum ServerProcess {
    Child(Child),
    InProcess(Box<tokenbridge_server::app::Running>),
}

impl ServerProcess {
    async fn stop(self) {
        match self {
            ServerProcess::Child(mut c) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let _ = tokio::task::spawn_blocking(move || c.wait()).await;
            }
            ServerProcess::InProcess(r) => {
                let _ = r.stop().await;
            }
        }
    }
}

fn policy(accounts: &[ServiceAccount]) -> String {
    let mut out = String::with_capacity(accounts.len() * 120);
    for (i, sa) in accounts.iter().enumerate() {
        out.push_str(&format!(
            "[[binding]]\nname = \"load-{i}\"\nservice_accounts = [\"{}\"]\nrole_arns = [\"{ROLE}\"]\n\n",
            sa.unique_id
        ));
    }
    out
}

async fn start_server(
    args: &RunArgs,
    dir: &std::path::Path,
    jwks_uri: &str,
    sts_endpoint: &str,
    accounts: &[ServiceAccount],
) -> Result<Started, String> {
    // A child writes its audit log to stdout, a pipe read by a thread here,
    // as a container runtime reads it in production; in-process, stdout is
    // the load test's own, so the log goes to /dev/null.
    let audit = if args.server_bin.is_some() {
        "[audit]\nsink = \"stdout\"\n"
    } else {
        "[audit]\nsink = \"file\"\npath = \"/dev/null\"\n"
    };
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())
    };
    let addr = format!("127.0.0.1:{}", free_port()?);
    let admin_addr = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join("config.toml");
    let fresh = if args.fresh_tokens {
        "verified_token_cache_entries = 0\n"
    } else {
        ""
    };
    std::fs::write(dir.join("policy.toml"), policy(accounts)).map_err(|e| e.to_string())?;
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\n\n[google]\naudiences = [\"{AUDIENCE}\"]\njwks_uri = \"{jwks_uri}\"\n{fresh}\n\
             [aws]\nregion = \"us-east-1\"\nsts_endpoint = \"{sts_endpoint}\"\n\n[policy]\nfile = \"policy.toml\"\n\n\
             [admin]\nlisten = \"{admin_addr}\"\n\n{audit}"
        ),
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut audit_reader = None;
    let server = match &args.server_bin {
        Some(bin) => {
            let mut child = Command::new(bin)
                .args(["serve", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            audit_reader = Some(read_audit_lines(stdout));
            ServerProcess::Child(child)
        }
        None => {
            let (cfg, policy) = tokenbridge_server::load(&config).map_err(|p| format!("{p:?}"))?;
            ServerProcess::InProcess(Box::new(
                tokenbridge_server::app::start(cfg, policy)
                    .await
                    .map_err(|e| e.to_string())?,
            ))
        }
    };
    let channel = connect(&addr, Duration::from_secs(30)).await?;
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    while let Some(update) = watch.message().await.map_err(|e| e.to_string())? {
        if update.status == ServingStatus::Serving as i32 {
            return Ok(Started {
                server,
                addr,
                admin_addr,
                cold_start: started.elapsed(),
                audit_reader,
            });
        }
    }
    Err("the server never reported SERVING".into())
}

/// A server started and SERVING.
struct Started {
    server: ServerProcess,
    /// The gRPC listener.
    addr: String,
    /// The admin listener (`/metrics`).
    admin_addr: String,
    cold_start: Duration,
    audit_reader: Option<AuditReader>,
}

/// `tokenbridge_audit_writes_total` by `path`, from the server's `/metrics`.
async fn audit_writes(admin_addr: &str) -> Option<BTreeMap<String, u64>> {
    let text = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let writes: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tokenbridge_audit_writes_total{"))
        .filter_map(|l| {
            let path = l.split("path=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((path.to_string(), count))
        })
        .collect();
    Some(writes)
}

/// A thread counting the lines of a child's stdout until it closes.
type AuditReader = std::thread::JoinHandle<u64>;

fn read_audit_lines(mut stdout: std::process::ChildStdout) -> AuditReader {
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = vec![0u8; 1 << 16];
        let mut lines = 0u64;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        lines
    })
}

fn spawn_null() -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("null-server")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected null-server output {line:?}"))?;
    Ok((child, addr))
}

/// Connects, retrying while the server is still binding its listener.
async fn connect(addr: &str, within: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    loop {
        match endpoint.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("cannot connect to {addr}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

async fn connect_all(addr: &str, n: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(connect(addr, Duration::from_secs(30)).await?);
    }
    Ok(out)
}

struct Measured {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    intervals: Vec<Interval>,
}

impl Measured {
    fn figures(
        self,
        target: &'static str,
        sts_calls: Option<u64>,
        rss: Option<u64>,
        cold_start_ms: Option<f64>,
    ) -> Figures {
        let h = &self.histogram;
        let requests = h.len() + self.errors.values().sum::<u64>();
        let seconds = self.elapsed.as_secs_f64();
        let latency_us = BTreeMap::from([
            ("p50", h.value_at_quantile(0.5)),
            ("p90", h.value_at_quantile(0.9)),
            ("p99", h.value_at_quantile(0.99)),
            ("p99.9", h.value_at_quantile(0.999)),
            ("max", h.max()),
        ]);
        Figures {
            target,
            requests,
            seconds,
            requests_per_second: if seconds > 0.0 {
                h.len() as f64 / seconds
            } else {
                0.0
            },
            latency_us,
            errors: self.errors,
            sts_calls,
            server_rss_kib: rss,
            cold_start_ms,
            audit_lines: None,
            audit_writes: None,
            intervals: self.intervals,
        }
    }
}

/// Drives load with `args.concurrency` workers spread over `channels`.
/// Flat out, each worker sends its next request when the last one answers;
/// at a fixed rate, a ticker issues send times and latency counts from the
/// intended send time (so a stall is not hidden: no coordinated omission).
async fn drive(
    channels: &[Channel],
    tokens: Arc<Vec<MetadataValue<Ascii>>>,
    args: &RunArgs,
    rss_pid: Option<u32>,
) -> Measured {
    let started = Instant::now();
    let interval_errors = Arc::new(AtomicU64::new(0));
    let mut windows: Vec<Arc<std::sync::Mutex<Histogram<u64>>>> = Vec::new();
    let end = started + args.duration;
    let limit = args.requests.unwrap_or(u64::MAX);
    let issued = Arc::new(AtomicU64::new(0));
    let (ticket_tx, ticket_rx) = ticker(args.rate, end, limit, args.concurrency);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.concurrency.max(1) {
        let mut client = TokenExchangeClient::new(channels[w % channels.len()].clone());
        let tokens = tokens.clone();
        let issued = issued.clone();
        let tickets = ticket_rx.clone();
        let window = Arc::new(std::sync::Mutex::new(histogram()));
        windows.push(window.clone());
        let interval_errors = interval_errors.clone();
        workers.spawn(async move {
            let mut histogram = histogram();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let intended = match &tickets {
                    Some(rx) => match rx.lock().await.recv().await {
                        Some(at) => at,
                        None => break,
                    },
                    None => {
                        if Instant::now() >= end {
                            break;
                        }
                        Instant::now()
                    }
                };
                // tokio's timer has 1 ms granularity: a request released up to
                // TIMER_SLACK late counts from when it was sent; later than
                // that it counts from when it should have been sent, so a
                // stall is not hidden.
                let sent = Instant::now();
                let intended = if sent.duration_since(intended) <= TIMER_SLACK {
                    sent
                } else {
                    intended
                };
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= limit {
                    break;
                }
                let mut req = Request::new(GetCredentialsRequest {
                    role_arn: ROLE.into(),
                    duration_seconds: 0,
                });
                req.metadata_mut()
                    .insert("authorization", tokens[n as usize % tokens.len()].clone());
                match client.get_credentials(req).await {
                    Ok(_) => {
                        let us = u64::try_from(intended.elapsed().as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1);
                        let us = us.min(60_000_000);
                        let _ = histogram.record(us);
                        if let Ok(mut w) = window.lock() {
                            let _ = w.record(us);
                        }
                    }
                    Err(status) => {
                        interval_errors.fetch_add(1, Ordering::Relaxed);
                        *errors.entry(format!("{:?}", status.code())).or_default() += 1;
                    }
                }
            }
            (histogram, errors)
        });
    }
    drop(ticket_rx);
    let (stop_monitor, mut monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = args.report_every.map(|every| {
        let (windows, interval_errors) = (windows.clone(), interval_errors.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
            let mut cpu = CpuSample::read(rss_pid);
            let mut since = Instant::now();
            loop {
                // The run's end closes a last, shorter interval.
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut monitor_stopped => true,
                };
                let length = since.elapsed();
                since = Instant::now();
                let mut merged = histogram();
                for w in &windows {
                    if let Ok(mut w) = w.lock() {
                        let _ = merged.add(&*w);
                        w.reset();
                    }
                }
                let now = CpuSample::read(rss_pid);
                let (busy, steal, server) = match (now, cpu) {
                    (Some(now), Some(then)) => {
                        let (busy, steal, server) = now.since(&then);
                        (Some(busy), Some(steal), server)
                    }
                    _ => (None, None, None),
                };
                cpu = now;
                let errors = interval_errors.swap(0, Ordering::Relaxed);
                if last && merged.is_empty() && errors == 0 {
                    return out;
                }
                let interval = Interval {
                    at_seconds: started.elapsed().as_secs_f64(),
                    requests: merged.len(),
                    requests_per_second: merged.len() as f64 / length.as_secs_f64().max(1e-3),
                    p50_us: merged.value_at_quantile(0.5),
                    p99_us: merged.value_at_quantile(0.99),
                    errors,
                    server_rss_kib: rss_pid.and_then(rss_kib),
                    machine_busy_percent: busy,
                    steal_percent: steal,
                    server_cores: server,
                };
                let pct = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.1} %"));
                eprintln!(
                    "  t={:>6.0}s  {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  errors {}  RSS {}  \
                     machine busy {}  steal {}  server {} cores",
                    interval.at_seconds,
                    interval.requests_per_second,
                    interval.p50_us,
                    interval.p99_us,
                    interval.errors,
                    interval
                        .server_rss_kib
                        .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
                    pct(interval.machine_busy_percent),
                    pct(interval.steal_percent),
                    interval
                        .server_cores
                        .map_or("-".into(), |c| format!("{c:.2}")),
                );
                out.push(interval);
                if last {
                    return out;
                }
            }
        })
    });
    let mut histogram = histogram();
    let mut errors = BTreeMap::new();
    while let Some(done) = workers.join_next().await {
        if let Ok((h, e)) = done {
            let _ = histogram.add(&h);
            for (k, v) in e {
                *errors.entry(k).or_default() += v;
            }
        }
    }
    if let Some(tx) = ticket_tx {
        tx.abort();
    }
    let elapsed = started.elapsed();
    let _ = stop_monitor.send(());
    let intervals = match monitor {
        Some(m) => m.await.unwrap_or_default(),
        None => Vec::new(),
    };
    Measured {
        histogram,
        errors,
        elapsed,
        intervals,
    }
}

type Tickets = Option<Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Instant>>>>;

/// For a fixed rate, a ticker task sending intended send times.
fn ticker(
    rate: u64,
    end: Instant,
    limit: u64,
    concurrency: usize,
) -> (Option<tokio::task::JoinHandle<()>>, Tickets) {
    if rate == 0 {
        return (None, None);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(concurrency.max(1) * 4);
    let task = tokio::spawn(async move {
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < limit {
            let at = start + period.mul_f64(sent as f64);
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            if tx.send(at).await.is_err() {
                break;
            }
            sent += 1;
        }
    });
    (Some(task), Some(Arc::new(tokio::sync::Mutex::new(rx))))
}

/// Microseconds from 1 µs to 60 s, 3 significant digits.
#[expect(
    clippy::expect_used,
    reason = "the bounds are constants that hdrhistogram accepts"
)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn print_table(report: &Report) {
    println!(
        "\n{:<12} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10}  errors",
        "target",
        "requests",
        "req/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9",
        "max µs",
        "STS calls",
        "RSS MiB",
        "cold ms"
    );
    for r in &report.results {
        let l = &r.latency_us;
        println!(
            "{:<12} {:>9} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10}  {}",
            r.target,
            r.requests,
            r.requests_per_second,
            l["p50"],
            l["p90"],
            l["p99"],
            l["p99.9"],
            l["max"],
            r.sts_calls.map_or("-".into(), |c| c.to_string()),
            r.server_rss_kib
                .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            r.cold_start_ms.map_or("-".into(), |c| format!("{c:.1}")),
            if r.errors.is_empty() {
                "none".to_string()
            } else {
                format!("{:?}", r.errors)
            },
        );
    }
    for r in &report.results {
        if let Some(lines) = r.audit_lines {
            println!(
                "{} audit lines read from its stdout: {lines} (every answer, warm-up included)",
                r.target
            );
        }
        if let Some(writes) = &r.audit_writes {
            println!("{} audit writes by path: {writes:?}", r.target);
        }
    }
    if let Some(ratio) = report.throughput_ratio {
        println!("throughput tokenbridge / null = {ratio:.3}");
    }
}
