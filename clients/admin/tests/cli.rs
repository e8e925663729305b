//! `tokenbridge-admin` as the platform team runs it: the real binary against
//! a tokenbridge server in this process (SQLite store, admin API on its own
//! listener), Google stand-ins over HTTP and moto for STS.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{path::Path, process::Output};

use serde_json::Value;
use tokenbridge_policy::file as bindings;
use tokenbridge_server::{Config, PolicySnapshot, app};
use tokenbridge_testing::{Issuer, JwksServer, Moto, ServiceAccount};

const AUDIENCE: &str = "https://tokenbridge.test";
const ADMIN_AUDIENCE: &str = "https://tokenbridge-admin.test";
const ROLE_A: &str = "arn:aws:iam::123456789012:role/RoleA";
const ROLE_B: &str = "arn:aws:iam::123456789012:role/RoleB";

fn admin() -> ServiceAccount {
    ServiceAccount::new(
        "900000000000000000001",
        "platform@ops.iam.gserviceaccount.com",
    )
}

fn workload() -> ServiceAccount {
    ServiceAccount::new("300000000000000000001", "etl@data.iam.gserviceaccount.com")
}

struct Env {
    dir: tempfile::TempDir,
    issuer: Issuer,
    _jwks: JwksServer,
    server: Option<app::Running>,
    endpoint: String,
}

impl Env {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Issuer::new();
        let jwks = JwksServer::start(issuer.clone(), 3600).await;
        let moto = Moto::shared().await;
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"

[google]
audiences = ["{AUDIENCE}"]
jwks_uri = "{jwks}"

[aws]
region = "us-east-1"
sts_endpoint = "{sts}"

[store]
url = "sqlite://policy.db"

[policy_admin]
listen = "127.0.0.1:0"
audiences = ["{ADMIN_AUDIENCE}"]
principals = ["{admin}"]

[admin]
listen = "127.0.0.1:0"

[audit]
sink = "file"
path = "/dev/null"
"#,
            jwks = jwks.uri(),
            sts = moto.endpoint(),
            admin = admin().email,
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let server = app::start(config, PolicySnapshot::default()).await.unwrap();
        let endpoint = format!("http://{}", server.policy_admin_addr.unwrap());
        std::fs::write(
            dir.path().join("admin.token"),
            issuer.token(&admin(), ADMIN_AUDIENCE),
        )
        .unwrap();
        Env {
            dir,
            issuer,
            _jwks: jwks,
            server: Some(server),
            endpoint,
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs the CLI with the admin's token file and these arguments.
    async fn run(&self, args: &[&str]) -> Output {
        self.run_with_token(&self.path("admin.token"), args).await
    }

    async fn run_with_token(&self, token: &Path, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tokenbridge-admin"))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .arg("--token-file")
            .arg(token)
            .args(args)
            .env_remove("TOKENBRIDGE_ADMIN_ENDPOINT")
            .env_remove("GCE_METADATA_HOST")
            .output()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap();
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

fn policy_file() -> String {
    format!(
        r#"
[[binding]]
name = "etl-read"
service_accounts = ["{w}"]
role_arns = ["{ROLE_A}"]
max_duration_seconds = 7200
session_policy = '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::team-a/*"}}]}}'

[[binding]]
name = "etl-vm"
service_accounts = ["{email}"]
role_arns = ["{ROLE_B}"]
conditions = {{ zones = ["us-central1-*"], project_ids = ["demo-project"] }}
managed_policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
"#,
        w = workload().unique_id,
        email = workload().email,
    )
}

#[tokio::test]
async fn apply_list_export_round_trip_and_delete() {
    let env = Env::start().await;
    let file = env.write("policy.toml", &policy_file());
    let file = file.to_str().unwrap();

    // Dry run: the changes, exit status 3, nothing applied.
    let dry = env.run(&["apply", "-f", file, "--dry-run"]).await;
    assert_exit(&dry, 3);
    let out = stdout(&dry);
    assert!(out.contains("+ etl-read"), "{out}");
    assert!(out.contains("+ etl-vm"), "{out}");
    assert!(out.contains("would apply (dry run): 2 created"), "{out}");
    let listed = env.run(&["list", "--output", "json"]).await;
    assert_exit(&listed, 0);
    let v: Value = serde_json::from_str(&stdout(&listed)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0);

    // Apply, then the table and JSON views.
    let applied = env.run(&["apply", "-f", file]).await;
    assert_exit(&applied, 0);
    assert!(
        stdout(&applied).contains("applied: 2 created"),
        "{}",
        stdout(&applied)
    );
    let table = env.run(&["list"]).await;
    assert_exit(&table, 0);
    assert!(stdout(&table).contains("etl-read"));
    assert!(stdout(&table).contains("2 binding(s)"));
    let got = env.run(&["get", "etl-vm", "-o", "json"]).await;
    assert_exit(&got, 0);
    let b: Value = serde_json::from_str(&stdout(&got)).unwrap();
    assert_eq!(b["conditions"]["zones"][0], "us-central1-*");
    assert!(!b["etag"].as_str().unwrap().is_empty());

    // Export reads back to the same bindings: lossless.
    let exported = env.path("exported.toml");
    let export = env
        .run(&["export", "--out", exported.to_str().unwrap()])
        .await;
    assert_exit(&export, 0);
    let original = bindings::from_toml_str(&policy_file(), Path::new("policy.toml")).unwrap();
    let back =
        bindings::from_toml_str(&std::fs::read_to_string(&exported).unwrap(), &exported).unwrap();
    assert_eq!(back, original);

    // A change shows as a field diff.
    let changed =
        policy_file().replace("max_duration_seconds = 7200", "max_duration_seconds = 3600");
    let file2 = env.write("policy2.toml", &changed);
    let diff = env
        .run(&["apply", "-f", file2.to_str().unwrap(), "--dry-run"])
        .await;
    assert_exit(&diff, 3);
    assert!(
        stdout(&diff).contains("~ max_duration_seconds: 7200 -> 3600"),
        "{}",
        stdout(&diff)
    );

    // Delete, and it is gone.
    let deleted = env.run(&["delete", "etl-vm"]).await;
    assert_exit(&deleted, 0);
    let missing = env.run(&["get", "etl-vm"]).await;
    assert_exit(&missing, 1);
    assert!(
        stderr(&missing).contains("NOT_FOUND"),
        "{}",
        stderr(&missing)
    );

    // The audit trail names the admin.
    let audit = env.run(&["audit", "-o", "json"]).await;
    assert_exit(&audit, 0);
    let entries: Value = serde_json::from_str(&stdout(&audit)).unwrap();
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["binding.delete", "binding.create", "binding.create"]
    );
    assert_eq!(entries[0]["actor"], admin().email);
    env.stop().await;
}

#[tokio::test]
async fn explain_deny_and_trust_policy() {
    let env = Env::start().await;
    let file = env.write("policy.toml", &policy_file());
    assert_exit(&env.run(&["apply", "-f", file.to_str().unwrap()]).await, 0);

    let sub = workload().unique_id;
    let allowed = env
        .run(&["explain", "--sub", &sub, "--role-arn", ROLE_A, "-o", "json"])
        .await;
    assert_exit(&allowed, 0);
    let v: Value = serde_json::from_str(&stdout(&allowed)).unwrap();
    assert_eq!(v["allowed"], true);
    assert!(v["session_policy"].as_str().unwrap().contains("team-a"));

    // The VM binding needs GCE claims in the right zone, by email.
    let email = workload().email;
    let wrong_zone = env
        .run(&[
            "explain",
            "--sub",
            &sub,
            "--email",
            &email,
            "--email-verified",
            "--zone",
            "europe-west1-b",
            "--project-id",
            "demo-project",
            "--role-arn",
            ROLE_B,
        ])
        .await;
    assert_exit(&wrong_zone, 0);
    let out = stdout(&wrong_zone);
    assert!(out.starts_with("DENIED"), "{out}");
    assert!(out.contains("condition not met"), "{out}");
    // A real workload token, verified by the service.
    let token_file = env.write("workload.token", &env.issuer.token(&workload(), AUDIENCE));
    let by_token = env
        .run(&[
            "explain",
            "--caller-token-file",
            token_file.to_str().unwrap(),
            "--role-arn",
            ROLE_B,
        ])
        .await;
    assert_exit(&by_token, 0);
    assert!(
        stdout(&by_token).starts_with("ALLOWED"),
        "{}",
        stdout(&by_token)
    );

    // Deny, list, allow.
    let deny = env.run(&["deny", &sub, "--reason", "incident 42"]).await;
    assert_exit(&deny, 0);
    let denied = env.run(&["denied", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&stdout(&denied)).unwrap();
    assert_eq!(v[0]["service_account"], sub.as_str());
    assert_eq!(v[0]["reason"], "incident 42");
    let now_denied = env
        .run(&["explain", "--sub", &sub, "--role-arn", ROLE_A, "-o", "json"])
        .await;
    let v: Value = serde_json::from_str(&stdout(&now_denied)).unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["service_account_denied"], true);
    assert_exit(&env.run(&["allow", &sub]).await, 0);

    // The trust policy for a binding, from the service and from the file.
    let trust = env
        .run(&[
            "trust-policy",
            "etl-read",
            "--exchange-audience",
            AUDIENCE,
            "-o",
            "json",
        ])
        .await;
    assert_exit(&trust, 0);
    let v: Value = serde_json::from_str(&stdout(&trust)).unwrap();
    let cond = &v["trust_policy"]["Statement"][0]["Condition"]["StringEquals"];
    assert_eq!(cond["accounts.google.com:aud"], sub.as_str(), "{v}");
    assert_eq!(cond["accounts.google.com:oaud"], AUDIENCE, "{v}");
    assert_eq!(cond["accounts.google.com:sub"], sub.as_str(), "{v}");
    let offline = env
        .run(&[
            "trust-policy",
            "etl-vm",
            "-f",
            file.to_str().unwrap(),
            "--exchange-audience",
            AUDIENCE,
        ])
        .await;
    // `etl-vm` names its account by email only: no trust policy can be
    // written without the unique ID, and the message says how to get it.
    assert_exit(&offline, 64);
    assert!(
        stderr(&offline).contains("unique ID"),
        "{}",
        stderr(&offline)
    );
    assert!(stdout(&offline).is_empty());
    let offline = env
        .run(&[
            "trust-policy",
            "etl-read",
            "-f",
            file.to_str().unwrap(),
            "--exchange-audience",
            AUDIENCE,
        ])
        .await;
    assert_exit(&offline, 0);
    let doc: Value = serde_json::from_str(&stdout(&offline)).unwrap();
    assert_eq!(
        doc["Statement"][0]["Principal"]["Federated"],
        "accounts.google.com"
    );
    env.stop().await;
}

#[tokio::test]
async fn bad_files_tokens_and_trust_policies_get_clear_answers() {
    let env = Env::start().await;
    // An unknown key: the file and line, exit 64, nothing sent.
    let bad = env.write(
        "bad.toml",
        "[[binding]]\nname = \"x\"\nservice_accounts = [\"1\"]\nrole_arns = [\"arn:aws:iam::1:role/R\"]\ncolour = \"blue\"\n",
    );
    let o = env.run(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert_exit(&o, 64);
    let err = stderr(&o);
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(err.contains("colour"), "{err}");

    // A session policy over STS's limit: the field is named.
    let big = env.write(
        "big.toml",
        &format!(
            "[[binding]]\nname = \"x\"\nservice_accounts = [\"1\"]\nrole_arns = [\"{ROLE_A}\"]\nsession_policy = '{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Allow\",\"Action\":\"s3:GetObject\",\"Resource\":\"{}\"}}]}}'\n",
            "r".repeat(2100)
        ),
    );
    let o = env.run(&["apply", "-f", big.to_str().unwrap()]).await;
    assert_exit(&o, 64);
    assert!(stderr(&o).contains("session_policy"), "{}", stderr(&o));

    // Someone not listed: PERMISSION_DENIED, exit 1, no token echoed.
    let outsider_token = env.issuer.token(&workload(), ADMIN_AUDIENCE);
    let outsider = env.write("outsider.token", &outsider_token);
    let o = env.run_with_token(&outsider, &["list"]).await;
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("PERMISSION_DENIED"), "{}", stderr(&o));
    assert!(!stderr(&o).contains(&outsider_token));

    // A trust policy with the aud/oaud swap and an email as the subject.
    let swapped = env.write(
        "trust.json",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"accounts.google.com"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"accounts.google.com:aud":"https://tokenbridge.test","accounts.google.com:oaud":"300000000000000000001","accounts.google.com:sub":"etl@data.iam.gserviceaccount.com"}}}]}"#,
    );
    let o = env
        .run(&["lint-trust-policy", swapped.to_str().unwrap()])
        .await;
    assert_exit(&o, 64);
    let out = stdout(&o);
    assert!(out.contains("oaud"), "{out}");
    assert!(out.contains("email"), "{out}");

    // No endpoint at all.
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokenbridge-admin"))
        .args(["list"])
        .env_remove("TOKENBRIDGE_ADMIN_ENDPOINT")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--endpoint"), "{}", stderr(&o));
    env.stop().await;
}

/// The access key id the exchange hands `sa` for `role`.
async fn exchange_key(env: &Env, sa: &ServiceAccount, role: &str) -> String {
    use tokenbridge_proto::v1::{
        GetCredentialsRequest, token_exchange_client::TokenExchangeClient,
    };
    let addr = env.server.as_ref().unwrap().addr;
    let mut client = TokenExchangeClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut req = tonic::Request::new(GetCredentialsRequest {
        role_arn: role.into(),
        duration_seconds: 0,
    });
    let bearer = format!("Bearer {}", env.issuer.token(sa, AUDIENCE));
    req.metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    client
        .get_credentials(req)
        .await
        .unwrap()
        .into_inner()
        .access_key_id
}

#[tokio::test]
async fn revoke_drops_cached_credentials_and_says_where() {
    let env = Env::start().await;
    let file = env.write("policy.toml", &policy_file());
    assert_exit(&env.run(&["apply", "-f", file.to_str().unwrap()]).await, 0);
    let sub = workload().unique_id;
    let first = exchange_key(&env, &workload(), ROLE_A).await;
    assert_eq!(exchange_key(&env, &workload(), ROLE_A).await, first);

    // By service account: the table says what and where.
    let revoked = env
        .run(&["revoke", "--service-account", &sub, "--reason", "INC-42"])
        .await;
    assert_exit(&revoked, 0);
    let out = stdout(&revoked);
    assert!(out.contains(&format!("of service account {sub}")), "{out}");
    assert!(out.contains("every replica"), "{out}");
    assert!(
        out.contains("1 dropped on the replica that answered"),
        "{out}"
    );
    let second = exchange_key(&env, &workload(), ROLE_A).await;
    assert_ne!(second, first);

    // By role, for scripts.
    let revoked = env
        .run(&["revoke", "--role-arn", ROLE_A, "-o", "json"])
        .await;
    assert_exit(&revoked, 0);
    let v: Value = serde_json::from_str(&stdout(&revoked)).unwrap();
    assert_eq!(v["role_arn"], ROLE_A);
    assert_eq!(v["service_account"], "");
    assert_eq!(v["every_replica"], true);
    assert_eq!(v["dropped_here"], 1);
    assert_eq!(v["actor"], admin().email);
    assert_ne!(exchange_key(&env, &workload(), ROLE_A).await, second);

    // An email is refused by the service; neither is a usage error.
    let email = env
        .run(&["revoke", "--service-account", &workload().email])
        .await;
    assert_exit(&email, 1);
    assert!(
        stderr(&email).contains("INVALID_ARGUMENT"),
        "{}",
        stderr(&email)
    );
    assert!(stderr(&email).contains("unique ID"), "{}", stderr(&email));
    let neither = env.run(&["revoke", "--reason", "x"]).await;
    assert_exit(&neither, 2);

    // The audit trail has both.
    let audit = env.run(&["audit", "-o", "json"]).await;
    let entries: Value = serde_json::from_str(&stdout(&audit)).unwrap();
    let revocations: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "credentials.revoke")
        .collect();
    assert_eq!(revocations.len(), 2, "{entries}");
    assert_eq!(revocations[1]["target"], sub.as_str());
    assert_eq!(revocations[1]["after"]["reason"], "INC-42");
    env.stop().await;
}

fn admin_local(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokenbridge-admin"))
        .args(args)
        .env_remove("TOKENBRIDGE_ADMIN_ENDPOINT")
        .output()
        .unwrap()
}

#[test]
fn issuer_export_writes_discovery_and_the_public_jwks_and_trust_policy_prints_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["k1.pem", "k2.pem"] {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_pem();
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "[issuer]\nurl = \"https://issuer.example.com\"\nkey_files = [\"k1.pem\", \"k2.pem\"]\nactive_key_file = \"k2.pem\"\n",
    )
    .unwrap();
    let out = dir.path().join("site");
    let o = admin_local(&[
        "issuer",
        "export",
        "--config",
        config.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let discovery: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(".well-known/openid-configuration")).unwrap(),
    )
    .unwrap();
    assert_eq!(discovery["issuer"], "https://issuer.example.com");
    assert_eq!(
        discovery["jwks_uri"],
        "https://issuer.example.com/.well-known/jwks.json"
    );
    let jwks_text = std::fs::read_to_string(out.join(".well-known/jwks.json")).unwrap();
    let jwks: Value = serde_json::from_str(&jwks_text).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert!(!jwks_text.contains("\"d\""), "a private part was exported");

    // A plain-HTTP issuer is refused with the file and the reason.
    std::fs::write(
        &config,
        "[issuer]\nurl = \"http://issuer.example.com\"\nkey_files = [\"k1.pem\"]\n",
    )
    .unwrap();
    let o = admin_local(&[
        "issuer",
        "export",
        "--config",
        config.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an https:// URL"));

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[binding]]\nname = \"issued\"\nservice_accounts = [\"112233\"]\nrole_arns = [\"arn:aws:iam::111122223333:role/R\"]\nissuer = true\nsource_identity = \"{sub}\"\n\n[[binding]]\nname = \"scoped\"\nservice_accounts = [\"112233\"]\nrole_arns = [\"arn:aws:iam::111122223333:role/S\"]\nsession_policy = '{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"s3:GetObject\",\"Resource\":\"*\"}]}'\n",
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let o = admin_local(&[
        "trust-policy",
        "issued",
        "-f",
        p,
        "--issuer",
        "https://issuer.example.com",
        "-o",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let printed: Value = serde_json::from_slice(&o.stdout).unwrap();
    let st = &printed["trust_policy"]["Statement"][0];
    assert_eq!(
        st["Principal"]["Federated"],
        "arn:aws:iam::111122223333:oidc-provider/issuer.example.com"
    );
    assert_eq!(
        st["Condition"]["StringEquals"]["issuer.example.com:aud"],
        "sts.amazonaws.com"
    );
    assert_eq!(st["Action"][1], "sts:SetSourceIdentity");
    // lint-trust-policy with the bindings: a Google trust policy leaves the
    // pass-through binding's session policy to be walked around.
    let google = dir.path().join("google.json");
    let printed = admin_local(&[
        "trust-policy",
        "scoped",
        "-f",
        p,
        "--exchange-audience",
        "aud",
        "-o",
        "json",
    ]);
    let doc: Value = serde_json::from_slice(&printed.stdout).unwrap();
    std::fs::write(&google, doc["trust_policy"].to_string()).unwrap();
    let o = admin_local(&["lint-trust-policy", google.to_str().unwrap(), "--policy", p]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("binding `scoped` is in pass-through mode: its session policies"),
        "{out}"
    );
    assert!(!out.contains("binding `issued`"), "{out}");
    let o = admin_local(&[
        "trust-policy",
        "scoped",
        "-f",
        p,
        "--exchange-audience",
        "aud",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("in pass-through mode, binding `scoped`'s session policies"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
