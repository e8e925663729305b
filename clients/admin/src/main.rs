//! `tokenbridge-admin`: the platform team's command line for tokenbridge's
//! policy table, over the `tokenbridge.v1.PolicyAdmin` API.
//!
//! It authenticates with a Google ID token for the admin audience, from the
//! metadata server (`GCE_METADATA_HOST` overrides the host) or from a file
//! (`--token-file`, e.g. the output of
//! `gcloud auth print-identity-token --audiences=AUD`). Output is a table
//! for people, or JSON with `--output json` for scripts.
//!
//! Exit status: 0 success; 1 the service refused or failed (one line on
//! stderr with the gRPC code and the service's message); 2 bad usage (clap);
//! 3 `apply --dry-run` or `diff` found changes; 64 a file given is unreadable
//! or invalid (each problem with its file and line); 69 the service or the
//! metadata server cannot be reached.

#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, UNIX_EPOCH},
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};
use tokenbridge_client::{IdTokenSource as _, MetadataIdTokenSource};
use tokenbridge_policy::{Binding, file as bindings, trust};
use tokenbridge_proto::v1::{self as pb, policy_admin_client::PolicyAdminClient};
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

const EX_FAILED: u8 = 1;
const EX_CHANGES: u8 = 3;
const EX_DATAERR: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;

/// Administer tokenbridge's policy table.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Connection {
    /// The policy admin listener, e.g. https://tokenbridge-admin.example.com:50052.
    #[arg(long, env = "TOKENBRIDGE_ADMIN_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// The admin audience: the ID token is requested for it.
    #[arg(long, env = "TOKENBRIDGE_ADMIN_AUDIENCE", global = true)]
    audience: Option<String>,
    /// Read the ID token from this file instead of the metadata server.
    #[arg(long, env = "TOKENBRIDGE_ADMIN_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Trust this CA (PEM) for an https:// endpoint.
    #[arg(long, env = "TOKENBRIDGE_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Allow http:// to a host that is not loopback (the admin token and
    /// the policy travel unencrypted): only for a network you trust.
    #[arg(long, env = "TOKENBRIDGE_INSECURE_HTTP", global = true)]
    insecure_http: bool,
    /// Present this client certificate (PEM) when the listener asks for
    /// one (mutual TLS); with --client-key.
    #[arg(
        long,
        env = "TOKENBRIDGE_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "TOKENBRIDGE_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 30, global = true)]
    timeout_seconds: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// List every binding.
    List,
    /// Show one binding.
    Get { name: String },
    /// Make the store hold the bindings of a policy file (the policy file
    /// format, extended keys included): shows the changes, then applies them
    /// in one transaction.
    Apply {
        /// The policy file (TOML).
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Also delete the bindings the file does not name.
        #[arg(long)]
        prune: bool,
        /// Show the changes only (exit status 3 if there are any).
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a binding.
    Delete {
        name: String,
        /// Delete only if the binding still has this etag (default: the
        /// etag read just before).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Check a policy file, locally and with the service, without applying it.
    Validate {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Write every binding as a policy file (stdout, or --out).
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Explain the decision for a caller and a role.
    Explain(ExplainArgs),
    /// The change history, newest first.
    Audit {
        /// Only changes to this binding or service account.
        #[arg(long)]
        target: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put a service account on the deny list (all bindings, next request).
    Deny {
        /// Its unique ID (an email is refused: tokens without an email
        /// claim would pass it).
        service_account: String,
        #[arg(long)]
        reason: String,
    },
    /// Take a service account off the deny list.
    Allow { service_account: String },
    /// The deny list.
    Denied,
    /// Drop the cached credentials of a service account, of a role, or of
    /// the pair: with the policy store on every replica (each within about
    /// a second), with a policy file on the one that answers. Nothing is
    /// revoked at AWS: pair it with the role's "Revoke active sessions"
    /// (runbook: "A leaked session").
    Revoke {
        /// The service account's unique ID (an email is refused: the cache
        /// is keyed by the token's `sub`).
        #[arg(long, required_unless_present = "role_arn")]
        service_account: Option<String>,
        /// The role ARN (with --service-account: only that pair).
        #[arg(long)]
        role_arn: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print the IAM trust policy the roles of a binding need.
    TrustPolicy {
        /// The binding (read from the service, or from --file).
        binding: String,
        /// Read the binding from this policy file instead of the service.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// The exchange audience workloads request tokens for (the
        /// trust policy's `accounts.google.com:oaud`); pass-through mode.
        #[arg(long = "exchange-audience", required_unless_present = "issuer")]
        exchange_audiences: Vec<String>,
        /// Issuer mode: tokenbridge's issuer URL (`[issuer] url`); the
        /// policy trusts the account's IAM OIDC provider for it.
        #[arg(long)]
        issuer: Option<String>,
        /// Issuer mode: the minted tokens' audience (`[issuer] audience`).
        #[arg(long, default_value = tokenbridge_issuer::DEFAULT_AUDIENCE)]
        audience: String,
    },
    /// Check an existing IAM trust policy (JSON file) for the usual mistakes.
    LintTrustPolicy {
        file: PathBuf,
        /// Also warn about the bindings of this policy file whose session
        /// policies, conditions or duration caps a workload can walk around
        /// while the role trusts Google tokens (pass-through mode).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Issuer mode: tokenbridge's OIDC discovery files.
    Issuer {
        #[command(subcommand)]
        command: IssuerCommand,
    },
}

#[derive(Subcommand)]
enum IssuerCommand {
    /// Write DIR/.well-known/openid-configuration and the JWKS it points to
    /// (DIR/.well-known/jwks.json), from the server config's [issuer], for
    /// static hosting at the issuer URL.
    Export {
        /// The server's config file.
        #[arg(long)]
        config: PathBuf,
        /// Where to write.
        dir: PathBuf,
    },
}

#[derive(Args)]
struct ExplainArgs {
    /// The role (empty: the caller's only role).
    #[arg(long, default_value = "")]
    role_arn: String,
    /// A workload's ID token (file), verified like an exchange caller's.
    #[arg(long, conflicts_with = "sub")]
    caller_token_file: Option<PathBuf>,
    /// Or the claims, as given: the service account's unique ID.
    #[arg(long)]
    sub: Option<String>,
    /// Its email.
    #[arg(long, requires = "sub")]
    email: Option<String>,
    /// The email is verified (Google's service account tokens say so).
    #[arg(long, requires = "email")]
    email_verified: bool,
    /// GCE claims of a `format=full` token from a VM.
    #[arg(long, requires = "sub")]
    project_id: Option<String>,
    #[arg(long, requires = "sub")]
    project_number: Option<String>,
    #[arg(long, requires = "sub")]
    zone: Option<String>,
    #[arg(long, requires = "sub")]
    instance_name: Option<String>,
}

/// A failure, with the exit status it gets.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let code = if s.code() == Code::Unavailable && s.message().contains("transport") {
            EX_UNAVAILABLE
        } else {
            EX_FAILED
        };
        let mut message = format!(
            "the service refused: {}: {}",
            tokenbridge_client::code_name(s.code()),
            s.message()
        );
        use tonic_types::StatusExt as _;
        if let Some(bad) = s.get_details_bad_request() {
            for v in bad.field_violations {
                message.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
        Failure::new(code, message)
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokenbridge-admin: cannot start: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("tokenbridge-admin: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// An authenticated connection to the admin API.
struct Admin {
    client: PolicyAdminClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl Admin {
    async fn connect(conn: &Connection) -> Result<Self> {
        let endpoint = conn.endpoint.as_deref().ok_or_else(|| {
            Failure::new(
                2,
                "no endpoint: pass --endpoint or set TOKENBRIDGE_ADMIN_ENDPOINT",
            )
        })?;
        let mut config = tokenbridge_client::Config::new(endpoint)
            .with_insecure_http(conn.insecure_http)
            .with_request_timeout(Duration::from_secs(conn.timeout_seconds));
        if let Some(ca) = &conn.ca_file {
            config = config.with_ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&conn.client_cert, &conn.client_key) {
            config = config.with_client_identity(cert, key);
        }
        let endpoint: Endpoint = config
            .tonic_endpoint()
            .map_err(|e| Failure::new(2, e.to_string()))?;
        let token = id_token(conn).await?;
        let authorization = format!("Bearer {token}").parse().map_err(|_| {
            Failure::new(EX_DATAERR, "the ID token holds characters a header cannot")
        })?;
        let channel = endpoint.connect().await.map_err(|e| {
            Failure::new(
                EX_UNAVAILABLE,
                format!("cannot connect to {}: {}", config.endpoint(), chain(&e)),
            )
        })?;
        Ok(Self {
            client: PolicyAdminClient::new(channel),
            authorization,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut()
            .insert("authorization", self.authorization.clone());
        r
    }

    async fn all_bindings(&mut self) -> Result<Vec<pb::Binding>> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .client
                .list_bindings(self.request(pb::ListBindingsRequest {
                    page_size: 1000,
                    page_token,
                }))
                .await?
                .into_inner();
            out.extend(page.bindings);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }
}

/// The admin ID token: from the file, or from the metadata server.
async fn id_token(conn: &Connection) -> Result<String> {
    if let Some(path) = &conn.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::new(
                EX_DATAERR,
                format!("cannot read the token file {}: {e}", path.display()),
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Failure::new(
                EX_DATAERR,
                format!("the token file {} is empty", path.display()),
            ));
        }
        return Ok(token.to_string());
    }
    let audience = conn.audience.as_deref().ok_or_else(|| {
        Failure::new(
            2,
            "no ID token: pass --audience (the admin audience) to get one from the metadata \
             server, or --token-file",
        )
    })?;
    let source =
        MetadataIdTokenSource::new(audience).map_err(|e| Failure::new(2, e.to_string()))?;
    let token = source
        .id_token()
        .await
        .map_err(|e| Failure::new(EX_UNAVAILABLE, e.to_string()))?;
    Ok(token.expose().to_string())
}

async fn run(cli: Cli) -> Result<u8> {
    let out = cli.output;
    match cli.command {
        // Local commands first: they need no connection.
        Command::LintTrustPolicy { file, policy } => {
            return lint_trust_policy(&file, policy.as_deref(), out);
        }
        Command::Issuer {
            command: IssuerCommand::Export { config, dir },
        } => return issuer_export(&config, &dir),
        Command::TrustPolicy {
            binding,
            file: Some(file),
            exchange_audiences,
            issuer,
            audience,
        } => {
            let bindings = read_policy_file(&file)?;
            let b = bindings
                .into_iter()
                .find(|b| b.name == binding)
                .ok_or_else(|| {
                    Failure::new(
                        EX_DATAERR,
                        format!("{} has no binding `{binding}`", file.display()),
                    )
                })?;
            let mode = issuer.as_deref().map(|i| (i, audience.as_str()));
            return print_trust_policy(&b, &exchange_audiences, mode, out);
        }
        _ => {}
    }
    let mut admin = Admin::connect(&cli.conn).await?;
    match cli.command {
        Command::List => {
            let bindings = admin.all_bindings().await?;
            match out {
                Output::Json => print_json(&json!(
                    bindings.iter().map(binding_json).collect::<Vec<_>>()
                )),
                Output::Table => {
                    let mut t = table(&[
                        "NAME",
                        "SERVICE ACCOUNTS",
                        "ROLES",
                        "MAX",
                        "CONDITIONS",
                        "SCOPED",
                    ]);
                    for b in &bindings {
                        t.add_row(vec![
                            b.name.clone(),
                            b.service_accounts.join("\n"),
                            b.role_arns.join("\n"),
                            b.max_duration_seconds.unwrap_or(3600).to_string(),
                            conditions_text(b.conditions.as_ref()),
                            scoped_text(b),
                        ]);
                    }
                    println!("{t}");
                    println!("{} binding(s)", bindings.len());
                }
            }
        }
        Command::Get { name } => {
            let b = admin
                .client
                .get_binding(admin.request(pb::GetBindingRequest { name }))
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&binding_json(&b)),
                Output::Table => print_binding(&b),
            }
        }
        Command::Apply {
            file,
            prune,
            dry_run,
        } => return apply(&mut admin, &file, prune, dry_run, out).await,
        Command::Delete { name, etag } => {
            let etag = match etag {
                Some(e) => e,
                None => {
                    admin
                        .client
                        .get_binding(admin.request(pb::GetBindingRequest { name: name.clone() }))
                        .await?
                        .into_inner()
                        .etag
                }
            };
            admin
                .client
                .delete_binding(admin.request(pb::DeleteBindingRequest {
                    name: name.clone(),
                    etag,
                }))
                .await?;
            match out {
                Output::Json => print_json(&json!({ "deleted": name })),
                Output::Table => println!("deleted binding `{name}`"),
            }
        }
        Command::Validate { file } => {
            let bindings = read_policy_file(&file)?;
            let r = admin
                .client
                .validate(admin.request(pb::ValidateRequest {
                    bindings: bindings.into_iter().map(pb::Binding::from).collect(),
                }))
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&json!({
                    "valid": r.valid,
                    "violations": r.violations.iter().map(|v| json!({
                        "binding": v.binding, "field": v.field, "description": v.description,
                    })).collect::<Vec<_>>(),
                })),
                Output::Table => {
                    for v in &r.violations {
                        println!("binding `{}`: {}: {}", v.binding, v.field, v.description);
                    }
                    if r.valid {
                        println!("{}: valid", file.display());
                    }
                }
            }
            if !r.valid {
                return Ok(EX_DATAERR);
            }
        }
        Command::Export { out: path } => {
            let bindings: Vec<Binding> = admin
                .all_bindings()
                .await?
                .into_iter()
                .map(Binding::from)
                .collect();
            let text = bindings::to_toml_string(&bindings)
                .map_err(|e| Failure::new(EX_FAILED, format!("cannot write TOML: {e}")))?;
            let text = format!(
                "# Exported by tokenbridge-admin: {} binding(s).\n{text}",
                bindings.len()
            );
            match path {
                Some(p) => std::fs::write(&p, text).map_err(|e| {
                    Failure::new(EX_DATAERR, format!("cannot write {}: {e}", p.display()))
                })?,
                None => print!("{text}"),
            }
        }
        Command::Explain(args) => return explain(&mut admin, args, out).await,
        Command::Audit { target, limit } => {
            let mut entries = Vec::new();
            let mut page_token = String::new();
            while entries.len() < limit as usize {
                let page = admin
                    .client
                    .list_audit(admin.request(pb::ListAuditRequest {
                        page_size: limit.min(1000),
                        page_token,
                        target: target.clone().unwrap_or_default(),
                    }))
                    .await?
                    .into_inner();
                entries.extend(page.entries);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            entries.truncate(limit as usize);
            match out {
                Output::Json => print_json(&json!(
                    entries
                        .iter()
                        .map(|e| json!({
                            "id": e.id,
                            "time": time_text(e.time.as_ref()),
                            "actor": e.actor,
                            "action": e.action,
                            "target": e.target,
                            "revision": e.revision,
                            "before": parse_or_null(&e.before_json),
                            "after": parse_or_null(&e.after_json),
                        }))
                        .collect::<Vec<_>>()
                )),
                Output::Table => {
                    let mut t = table(&["ID", "TIME", "ACTOR", "ACTION", "TARGET", "REVISION"]);
                    for e in &entries {
                        t.add_row(vec![
                            e.id.to_string(),
                            time_text(e.time.as_ref()),
                            e.actor.clone(),
                            e.action.clone(),
                            e.target.clone(),
                            e.revision.to_string(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        Command::Deny {
            service_account,
            reason,
        } => {
            let d = admin
                .client
                .deny_service_account(admin.request(pb::DenyServiceAccountRequest {
                    service_account,
                    reason,
                }))
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&denied_json(&d)),
                Output::Table => println!(
                    "denied {}: every binding ignores it from the next request on",
                    d.service_account
                ),
            }
        }
        Command::Allow { service_account } => {
            admin
                .client
                .allow_service_account(admin.request(pb::AllowServiceAccountRequest {
                    service_account: service_account.clone(),
                }))
                .await?;
            match out {
                Output::Json => print_json(&json!({ "allowed": service_account })),
                Output::Table => println!("{service_account} is off the deny list"),
            }
        }
        Command::Revoke {
            service_account,
            role_arn,
            reason,
        } => {
            let r = admin
                .client
                .revoke_cached_credentials(admin.request(pb::RevokeCachedCredentialsRequest {
                    service_account: service_account.unwrap_or_default(),
                    role_arn: role_arn.unwrap_or_default(),
                    reason,
                }))
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&json!({
                    "service_account": r.service_account,
                    "role_arn": r.role_arn,
                    "revoked_at": time_text(r.revoked_at.as_ref()),
                    "revision": r.revision,
                    "dropped_here": r.dropped_here,
                    "every_replica": r.every_replica,
                    "actor": r.actor,
                    "reason": r.reason,
                })),
                Output::Table => {
                    let what = match (r.service_account.as_str(), r.role_arn.as_str()) {
                        (sa, "") => format!("of service account {sa}"),
                        ("", role) => format!("for role {role}"),
                        (sa, role) => format!("of service account {sa} for role {role}"),
                    };
                    println!(
                        "revoked cached credentials {what} at {} (revision {})",
                        time_text(r.revoked_at.as_ref()),
                        r.revision
                    );
                    if r.every_replica {
                        println!(
                            "every replica: each drops them once it loads revision {} (about a \
                             second); {} dropped on the replica that answered",
                            r.revision, r.dropped_here
                        );
                    } else {
                        println!(
                            "this replica only: the policy comes from a file, so there is no \
                             store to reach the others; run this against every replica ({} \
                             dropped here)",
                            r.dropped_here
                        );
                    }
                }
            }
        }
        Command::Denied => {
            let r = admin
                .client
                .list_denied(admin.request(pb::ListDeniedRequest {}))
                .await?
                .into_inner();
            match out {
                Output::Json => {
                    print_json(&json!(r.denied.iter().map(denied_json).collect::<Vec<_>>()))
                }
                Output::Table => {
                    let mut t = table(&["SERVICE ACCOUNT", "REASON", "BY", "SINCE"]);
                    for d in &r.denied {
                        t.add_row(vec![
                            d.service_account.clone(),
                            d.reason.clone(),
                            d.actor.clone(),
                            time_text(d.create_time.as_ref()),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        Command::TrustPolicy {
            binding,
            file: None,
            exchange_audiences,
            issuer,
            audience,
        } => {
            let b = admin
                .client
                .get_binding(admin.request(pb::GetBindingRequest { name: binding }))
                .await?
                .into_inner();
            let mode = issuer.as_deref().map(|i| (i, audience.as_str()));
            return print_trust_policy(&Binding::from(b), &exchange_audiences, mode, out);
        }
        Command::TrustPolicy { file: Some(_), .. }
        | Command::LintTrustPolicy { .. }
        | Command::Issuer { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(0)
}

async fn apply(
    admin: &mut Admin,
    file: &Path,
    prune: bool,
    dry_run: bool,
    out: Output,
) -> Result<u8> {
    let wanted = read_policy_file(file)?;
    let current: BTreeMap<String, Binding> = admin
        .all_bindings()
        .await?
        .into_iter()
        .map(|b| (b.name.clone(), Binding::from(b)))
        .collect();
    // The service decides what changes; it reports names, and the diff of
    // each comes from the two versions.
    let report = admin
        .client
        .apply_bindings(admin.request(pb::ApplyBindingsRequest {
            bindings: wanted.iter().cloned().map(pb::Binding::from).collect(),
            prune,
            dry_run,
        }))
        .await?
        .into_inner();
    let wanted: BTreeMap<&str, &Binding> = wanted.iter().map(|b| (b.name.as_str(), b)).collect();
    let changes = report.created.len() + report.updated.len() + report.deleted.len();
    match out {
        Output::Json => print_json(&json!({
            "applied": report.applied,
            "created": report.created,
            "updated": report.updated,
            "deleted": report.deleted,
            "unchanged": report.unchanged,
            "diff": report.updated.iter().map(|name| {
                let before = current.get(name).map(model_json).unwrap_or(Value::Null);
                let after = wanted.get(name.as_str()).map(|b| model_json(b)).unwrap_or(Value::Null);
                (name.clone(), json!({ "before": before, "after": after }))
            }).collect::<serde_json::Map<_, _>>(),
        })),
        Output::Table => {
            for name in &report.created {
                println!("+ {name}");
                if let Some(b) = wanted.get(name.as_str()) {
                    for (field, value) in fields(&model_json(b)) {
                        println!("    + {field} = {value}");
                    }
                }
            }
            for name in &report.updated {
                println!("~ {name}");
                let before = current.get(name).map(model_json).unwrap_or(Value::Null);
                let after = wanted
                    .get(name.as_str())
                    .map(|b| model_json(b))
                    .unwrap_or(Value::Null);
                let before = fields(&before);
                let after = fields(&after);
                for (field, old) in &before {
                    match after.get(field) {
                        Some(new) if new == old => {}
                        Some(new) => println!("    ~ {field}: {old} -> {new}"),
                        None => println!("    - {field} = {old}"),
                    }
                }
                for (field, new) in &after {
                    if !before.contains_key(field) {
                        println!("    + {field} = {new}");
                    }
                }
            }
            for name in &report.deleted {
                println!("- {name}");
            }
            let verb = if report.applied {
                "applied"
            } else {
                "would apply (dry run)"
            };
            println!(
                "{verb}: {} created, {} updated, {} deleted, {} unchanged",
                report.created.len(),
                report.updated.len(),
                report.deleted.len(),
                report.unchanged.len()
            );
        }
    }
    Ok(if dry_run && changes > 0 {
        EX_CHANGES
    } else {
        0
    })
}

async fn explain(admin: &mut Admin, args: ExplainArgs, out: Output) -> Result<u8> {
    let (token, claims) = match (&args.caller_token_file, &args.sub) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::new(EX_DATAERR, format!("cannot read {}: {e}", path.display()))
            })?;
            (text.trim().to_string(), None)
        }
        (None, Some(sub)) => {
            let gce = [
                &args.project_id,
                &args.project_number,
                &args.zone,
                &args.instance_name,
            ]
            .iter()
            .any(|o| o.is_some())
            .then(|| pb::ComputeEngineClaims {
                project_id: args.project_id.clone().unwrap_or_default(),
                project_number: args.project_number.clone().unwrap_or_default(),
                zone: args.zone.clone().unwrap_or_default(),
                instance_name: args.instance_name.clone().unwrap_or_default(),
                instance_id: String::new(),
            });
            (
                String::new(),
                Some(pb::Claims {
                    sub: sub.clone(),
                    email: args.email.clone().unwrap_or_default(),
                    email_verified: args.email_verified,
                    compute_engine: gce,
                }),
            )
        }
        _ => {
            return Err(Failure::new(
                2,
                "explain needs the caller: --caller-token-file FILE, or --sub ID [--email …]",
            ));
        }
    };
    let r = admin
        .client
        .explain(admin.request(pb::ExplainRequest {
            token,
            claims,
            role_arn: args.role_arn,
        }))
        .await?
        .into_inner();
    match out {
        Output::Json => print_json(&json!({
            "allowed": r.allowed,
            "reason": r.reason,
            "service_account_denied": r.service_account_denied,
            "role_arn": r.role_arn,
            "max_duration_seconds": r.max_duration_seconds,
            "default_duration_seconds": r.default_duration_seconds,
            "session_policy": r.session_policy,
            "managed_policy_arns": r.managed_policy_arns,
            "bindings": r.bindings.iter().map(|e| json!({
                "binding": e.binding,
                "outcome": outcome_name(e.outcome),
                "details": e.details,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let verdict = if r.allowed { "ALLOWED" } else { "DENIED" };
            println!("{verdict}: {}", r.reason);
            if r.allowed {
                println!(
                    "role {} for up to {} s (default {} s)",
                    r.role_arn, r.max_duration_seconds, r.default_duration_seconds
                );
                if !r.session_policy.is_empty() {
                    println!("session policy: {}", r.session_policy);
                }
                if !r.managed_policy_arns.is_empty() {
                    println!(
                        "managed session policies: {}",
                        r.managed_policy_arns.join(", ")
                    );
                }
            }
            if r.service_account_denied {
                println!("the service account is on the deny list");
            }
            let mut t = table(&["BINDING", "OUTCOME", "WHY"]);
            for e in &r.bindings {
                t.add_row(vec![
                    e.binding.clone(),
                    outcome_name(e.outcome).to_string(),
                    e.details.join("\n"),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(0)
}

fn lint_trust_policy(file: &Path, policy: Option<&Path>, out: Output) -> Result<u8> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(EX_DATAERR, format!("cannot read {}: {e}", file.display())))?;
    let mut findings = trust::lint(&text);
    // A role that trusts Google's tokens is open to the workloads' own
    // tokens: what pass-through bindings add binds only tokenbridge's callers.
    if let Some(policy) = policy
        && text.contains(trust::GOOGLE_FEDERATED_PRINCIPAL)
    {
        for b in read_policy_file(policy)? {
            let extras = trust::bypassable(&b, false);
            if !extras.is_empty() {
                findings.push(trust::Lint {
                    severity: trust::Severity::Warning,
                    kind: trust::LintKind::PassThroughBypass,
                    statement: None,
                    message: format!(
                        "binding `{}` is in pass-through mode: its {} bind only callers that come through tokenbridge; a workload calling STS with its own Google token gets what this trust policy allows (use issuer mode)",
                        b.name,
                        extras.join(", ")
                    ),
                });
            }
        }
    }
    match out {
        Output::Json => print_json(&json!(
            findings
                .iter()
                .map(|f| json!({
                    "severity": format!("{:?}", f.severity).to_lowercase(),
                    "statement": f.statement,
                    "message": f.message,
                }))
                .collect::<Vec<_>>()
        )),
        Output::Table => {
            for f in &findings {
                println!("{}: {f}", file.display());
            }
            if findings.is_empty() {
                println!("{}: no problems found", file.display());
            }
        }
    }
    let errors = findings
        .iter()
        .any(|f| f.severity == trust::Severity::Error);
    Ok(if errors { EX_DATAERR } else { 0 })
}

fn print_trust_policy(
    b: &Binding,
    audiences: &[String],
    issuer: Option<(&str, &str)>,
    out: Output,
) -> Result<u8> {
    let policy = match issuer {
        Some((url, audience)) => {
            tokenbridge_issuer::check_issuer_url(url)
                .map_err(|e| Failure::new(EX_DATAERR, format!("--issuer: {e}")))?;
            trust::for_binding_issuer(b, url, audience, &|_| None)
        }
        None => {
            let extras = trust::bypassable(b, false);
            if !extras.is_empty() {
                eprintln!(
                    "tokenbridge-admin: warning: in pass-through mode, binding `{}`'s {} bind only callers that come through tokenbridge: this trust policy lets its service accounts call STS directly without them (print the issuer-mode policy with --issuer URL)",
                    b.name,
                    extras.join(", ")
                );
            }
            trust::for_binding(b, audiences, &|_| None)
        }
    }
    .map_err(|e| Failure::new(EX_DATAERR, format!("binding `{}`: {e}", b.name)))?;
    match out {
        Output::Json => print_json(&json!({
            "role_arns": policy.role_arns,
            "trust_policy": policy.document,
            "unresolved_emails": policy.unresolved_emails,
        })),
        Output::Table => {
            println!(
                "{}",
                serde_json::to_string_pretty(&policy.document).unwrap_or_default()
            );
            eprintln!("# for role(s): {}", policy.role_arns.join(", "));
        }
    }
    if !policy.unresolved_emails.is_empty() {
        eprintln!(
            "tokenbridge-admin: binding `{}` names service accounts by email ({}); IAM trust \
             policies need their unique IDs (gcloud iam service-accounts describe EMAIL \
             --format='value(uniqueId)'): add them to the binding or the policy",
            b.name,
            policy.unresolved_emails.join(", ")
        );
    }
    Ok(0)
}

/// Reads a policy file (the contract's format with the extended keys); every
/// problem is printed with its file and line.
fn read_policy_file(path: &Path) -> Result<Vec<Binding>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::new(EX_DATAERR, format!("cannot read {}: {e}", path.display())))?;
    bindings::from_toml_str(&text, path).map_err(|problems| {
        Failure::new(
            EX_DATAERR,
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

// ---------------------------------------------------------------------------
// Output.

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn model_json(b: &Binding) -> Value {
    serde_json::to_value(b).unwrap_or(Value::Null)
}

/// The binding's fields, flattened one level (`conditions.zones`).
fn fields(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Value::Object(map) = v {
        for (k, v) in map {
            match v {
                Value::Object(inner) => {
                    for (ik, iv) in inner {
                        out.insert(format!("{k}.{ik}"), iv.to_string());
                    }
                }
                other => {
                    out.insert(k.clone(), other.to_string());
                }
            }
        }
    }
    out
}

fn binding_json(b: &pb::Binding) -> Value {
    let mut v = model_json(&Binding::from(b.clone()));
    if let Value::Object(map) = &mut v {
        map.insert("etag".into(), json!(b.etag));
        map.insert(
            "create_time".into(),
            json!(time_text(b.create_time.as_ref())),
        );
        map.insert(
            "update_time".into(),
            json!(time_text(b.update_time.as_ref())),
        );
    }
    v
}

fn denied_json(d: &pb::DeniedServiceAccount) -> Value {
    json!({
        "service_account": d.service_account,
        "reason": d.reason,
        "actor": d.actor,
        "create_time": time_text(d.create_time.as_ref()),
    })
}

fn print_binding(b: &pb::Binding) {
    let mut t = table(&["FIELD", "VALUE"]);
    for (field, value) in fields(&model_json(&Binding::from(b.clone()))) {
        t.add_row(vec![field, value]);
    }
    t.add_row(vec!["etag".to_string(), b.etag.clone()]);
    t.add_row(vec![
        "updated".to_string(),
        time_text(b.update_time.as_ref()),
    ]);
    println!("{t}");
}

fn conditions_text(c: Option<&pb::Conditions>) -> String {
    let Some(c) = c else { return String::new() };
    let mut parts = Vec::new();
    for (name, values) in [
        ("project_ids", &c.project_ids),
        ("project_numbers", &c.project_numbers),
        ("zones", &c.zones),
        ("instance_names", &c.instance_names),
    ] {
        if !values.is_empty() {
            parts.push(format!("{name}={}", values.join(",")));
        }
    }
    parts.join("\n")
}

fn scoped_text(b: &pb::Binding) -> String {
    match (b.session_policy.is_empty(), b.managed_policy_arns.len()) {
        (true, 0) => String::new(),
        (false, 0) => "inline".into(),
        (true, n) => format!("{n} managed"),
        (false, n) => format!("inline + {n} managed"),
    }
}

fn outcome_name(o: i32) -> &'static str {
    use pb::binding_evaluation::Outcome;
    match Outcome::try_from(o) {
        Ok(Outcome::Matched) => "matched",
        Ok(Outcome::ServiceAccountNotListed) => "service account not listed",
        Ok(Outcome::RoleNotListed) => "role not listed",
        Ok(Outcome::ConditionNotMet) => "condition not met",
        _ => "unknown",
    }
}

fn time_text(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn parse_or_null(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `issuer export`: the discovery document and JWKS for static hosting,
/// from the server config's `[issuer]` (url, key_files, active_key_file;
/// paths relative to the config file). Private keys are read, never written.
fn issuer_export(config: &Path, dir: &Path) -> Result<u8> {
    let data = |reason: String| Failure::new(EX_DATAERR, format!("{}: {reason}", config.display()));
    let text = std::fs::read_to_string(config).map_err(|e| data(format!("cannot read: {e}")))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| data(format!("invalid TOML: {}", e.message())))?;
    let issuer = table
        .get("issuer")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| data("has no [issuer] section".into()))?;
    let url = issuer
        .get("url")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| data("issuer.url: a URL is required".into()))?;
    tokenbridge_issuer::check_issuer_url(url).map_err(|e| data(format!("issuer.url: {e}")))?;
    let base = config.parent().unwrap_or(Path::new(""));
    let files: Vec<PathBuf> = issuer
        .get("key_files")
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(toml::Value::as_str)
                .map(|f| base.join(f))
                .collect()
        })
        .unwrap_or_default();
    let mut pems = Vec::new();
    for f in &files {
        let pem = std::fs::read(f).map_err(|e| {
            Failure::new(
                EX_DATAERR,
                format!("{}: cannot read the issuer key: {e}", f.display()),
            )
        })?;
        pems.push((f.display().to_string(), pem));
    }
    let sources: Vec<tokenbridge_issuer::KeySource<'_>> = pems
        .iter()
        .map(|(name, pem)| tokenbridge_issuer::KeySource { name, pem })
        .collect();
    let active = issuer
        .get("active_key_file")
        .and_then(toml::Value::as_str)
        .map(|f| base.join(f).display().to_string());
    let keys = tokenbridge_issuer::IssuerKeys::new(&sources, active.as_deref())
        .map_err(|(file, e)| Failure::new(EX_DATAERR, format!("{file}: {e}")))?;
    let well_known = dir.join(".well-known");
    std::fs::create_dir_all(&well_known)
        .map_err(|e| Failure::new(EX_FAILED, format!("{}: {e}", well_known.display())))?;
    let write = |name: &str, value: Value| -> Result<()> {
        let path = well_known.join(name);
        let body = serde_json::to_string_pretty(&value).unwrap_or_default();
        std::fs::write(&path, body + "\n")
            .map_err(|e| Failure::new(EX_FAILED, format!("{}: {e}", path.display())))
    };
    write(
        "openid-configuration",
        tokenbridge_issuer::discovery(url, &keys.algorithms()),
    )?;
    write(
        "jwks.json",
        serde_json::to_value(keys.jwks()).unwrap_or_default(),
    )?;
    eprintln!(
        "tokenbridge-admin: wrote {0}/.well-known/openid-configuration and {0}/.well-known/jwks.json ({1} key(s), signing kid {2}); host them at {3}",
        dir.display(),
        files.len(),
        keys.active_kid(),
        url
    );
    Ok(0)
}
