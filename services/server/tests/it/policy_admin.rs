//! Issue 6 end to end: the `PolicyAdmin` API on its own listener, the store
//! behind it (SQLite in a temporary folder; PostgreSQL on 127.0.0.1:5432 for
//! the replica tests), and the exchange deciding with the richer bindings.
//! Exchanges go to moto; session policies are read back from moto's own
//! record of the call (`/moto-api/data.json`).

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tokenbridge_proto::v1::{
    self as pb, binding_evaluation::Outcome, policy_admin_client::PolicyAdminClient,
};
use tokenbridge_server::config::{PolicyAdminConfig, StoreConfig};
use tokenbridge_server::policy_admin::PolicyAdminLimits;
use tokenbridge_testing::{FakeSts, FakeStsMode, Issuer, JwksServer, Moto, ServiceAccount};

use tonic::{Code, Request, Status, transport::Channel};

use crate::common::{AUDIENCE, Env, Options, ROLE_A, ROLE_B, assert_no_token, within};

pub(crate) const ADMIN_AUDIENCE: &str = "https://tokenbridge-admin.test";
/// A hang guard, not a speed assertion.
const HANG_GUARD: Duration = Duration::from_secs(20);

pub(crate) fn admin_sa() -> ServiceAccount {
    ServiceAccount::new(
        "900000000000000000001",
        "platform-admin@ops.iam.gserviceaccount.com",
    )
}

pub(crate) fn caller() -> ServiceAccount {
    ServiceAccount::new("300000000000000000001", "etl@data.iam.gserviceaccount.com")
}

struct Admin {
    env: Env,
    client: PolicyAdminClient<Channel>,
    _dir: Option<tempfile::TempDir>,
}

pub(crate) fn admin_config() -> PolicyAdminConfig {
    PolicyAdminConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        audiences: vec![ADMIN_AUDIENCE.into()],
        principals: vec![admin_sa().email],
        tls: false,
        allow_plaintext: false,
        limits: PolicyAdminLimits::default(),
    }
}

pub(crate) async fn admin_client(env: &Env) -> PolicyAdminClient<Channel> {
    let addr = env
        .server
        .as_ref()
        .unwrap()
        .policy_admin_addr
        .expect("policy admin listener");
    admin_client_at(addr).await
}

async fn admin_client_at(addr: SocketAddr) -> PolicyAdminClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    PolicyAdminClient::new(channel)
}

impl Admin {
    /// A server on a fresh SQLite store with the admin API.
    async fn sqlite() -> Self {
        Self::sqlite_with(Options::default()).await
    }

    async fn sqlite_with(opts: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("policy.db").display());
        let env = Env::start_with(Options {
            store: Some(StoreConfig { url, schema: None }),
            policy_admin: opts.policy_admin.clone().or_else(|| Some(admin_config())),
            ..opts
        })
        .await;
        let client = admin_client(&env).await;
        Admin {
            env,
            client,
            _dir: Some(dir),
        }
    }

    /// [`Admin::sqlite`] with the audit log in a file: the server, the
    /// folder (kept alive) and the file.
    async fn sqlite_with_audit_file() -> (Self, tempfile::TempDir, std::path::PathBuf) {
        use tokenbridge_server::observability::audit::{AuditConfig, AuditSink};
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let a = Self::sqlite_with(Options {
            audit: AuditConfig {
                sink: AuditSink::File(log.clone()),
                gcp_project_id: None,
            },
            ..Options::default()
        })
        .await;
        (a, dir, log)
    }

    fn token(&self) -> String {
        self.env.issuer.token(&admin_sa(), ADMIN_AUDIENCE)
    }

    fn req<T>(&self, message: T) -> Request<T> {
        with_token(message, &self.token())
    }

    async fn create(&self, b: pb::Binding) -> Result<pb::Binding, Status> {
        self.client
            .clone()
            .create_binding(self.req(pb::CreateBindingRequest { binding: Some(b) }))
            .await
            .map(|r| r.into_inner())
    }

    async fn exchange(
        &self,
        sa: &ServiceAccount,
        role: &str,
    ) -> Result<pb::GetCredentialsResponse, Status> {
        self.env.call(&self.env.token(sa), role, 0).await
    }
}

/// The audit file's text and its `tokenbridge.admin` records.
fn admin_lines(log: &std::path::Path) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(log).unwrap();
    let admin = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "tokenbridge.admin")
        .collect();
    (text, admin)
}

pub(crate) fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

pub(crate) fn binding(name: &str, sa: &ServiceAccount, role: &str) -> pb::Binding {
    pb::Binding {
        name: name.into(),
        service_accounts: vec![sa.unique_id.clone()],
        role_arns: vec![role.into()],
        ..Default::default()
    }
}

/// moto's record of the AssumeRoleWithWebIdentity call that issued this
/// access key.
async fn moto_assumed_role(access_key_id: &str) -> Value {
    let url = format!("{}/moto-api/data.json", Moto::shared().await.endpoint());
    let data: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    data["sts"]["AssumedRole"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["access_key_id"] == access_key_id)
        .cloned()
        .unwrap_or_else(|| panic!("moto has no assumed role for {access_key_id}"))
}

#[tokio::test]
async fn crud_with_etags_and_the_audit_trail() {
    let a = Admin::sqlite().await;
    let created = a.create(binding("etl", &caller(), ROLE_A)).await.unwrap();
    assert!(!created.etag.is_empty());
    assert!(created.create_time.is_some());

    // The binding is in force on this replica for the very next exchange.
    a.exchange(&caller(), ROLE_A).await.unwrap();

    // Creating the same name again.
    let again = a
        .create(binding("etl", &caller(), ROLE_A))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{}", again.message());

    // Update with the right etag, then with the stale one.
    let mut changed = created.clone();
    changed.role_arns.push(ROLE_B.into());
    let updated = a
        .client
        .clone()
        .update_binding(a.req(pb::UpdateBindingRequest {
            binding: Some(changed.clone()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(updated.etag, created.etag);
    let stale = a
        .client
        .clone()
        .update_binding(a.req(pb::UpdateBindingRequest {
            binding: Some(changed),
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{}", stale.message());
    assert!(
        stale.message().contains("read the binding again"),
        "{}",
        stale.message()
    );

    // Get and List see the update.
    let got = a
        .client
        .clone()
        .get_binding(a.req(pb::GetBindingRequest { name: "etl".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.role_arns, vec![ROLE_A.to_string(), ROLE_B.to_string()]);
    let listed = a
        .client
        .clone()
        .list_bindings(a.req(pb::ListBindingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.bindings.len(), 1);
    assert_eq!(listed.bindings[0].etag, updated.etag);

    // Delete needs the current etag.
    let wrong = a
        .client
        .clone()
        .delete_binding(a.req(pb::DeleteBindingRequest {
            name: "etl".into(),
            etag: created.etag.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Aborted);
    a.client
        .clone()
        .delete_binding(a.req(pb::DeleteBindingRequest {
            name: "etl".into(),
            etag: updated.etag.clone(),
        }))
        .await
        .unwrap();
    let gone = a
        .client
        .clone()
        .get_binding(a.req(pb::GetBindingRequest { name: "etl".into() }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // And the exchange no longer allows it.
    let denied = a.exchange(&caller(), ROLE_A).await.unwrap_err();
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "{}",
        denied.message()
    );

    // The audit trail: who, what, before and after, newest first.
    let audit = a
        .client
        .clone()
        .list_audit(a.req(pb::ListAuditRequest {
            target: "etl".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["binding.delete", "binding.update", "binding.create"]
    );
    for e in &audit.entries {
        assert_eq!(e.actor, admin_sa().email);
        assert!(e.time.is_some());
    }
    let update = &audit.entries[1];
    let before: Value = serde_json::from_str(&update.before_json).unwrap();
    let after: Value = serde_json::from_str(&update.after_json).unwrap();
    assert_eq!(before["role_arns"].as_array().unwrap().len(), 1);
    assert_eq!(after["role_arns"].as_array().unwrap().len(), 2);
    assert!(audit.entries[0].after_json.is_empty());
    assert!(audit.entries[2].before_json.is_empty());
    a.env.stop().await;
}

#[tokio::test]
async fn concurrent_updates_with_one_etag_let_exactly_one_win() {
    let a = Admin::sqlite().await;
    let created = a
        .create(binding("shared", &caller(), ROLE_A))
        .await
        .unwrap();
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..8u32 {
        let mut b = created.clone();
        b.max_duration_seconds = Some(900 + i * 60);
        let mut client = a.client.clone();
        let req = a.req(pb::UpdateBindingRequest { binding: Some(b) });
        attempts.spawn(async move { client.update_binding(req).await });
    }
    let results: Vec<_> = within(HANG_GUARD, attempts.join_all()).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "exactly one update wins: {results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::Aborted, "{}", r.message());
    }
    a.env.stop().await;
}

#[tokio::test]
async fn admin_callers_must_authenticate_for_the_admin_audience_and_be_listed() {
    let a = Admin::sqlite().await;
    let list = |req: Request<pb::ListBindingsRequest>| {
        let mut c = a.client.clone();
        async move { c.list_bindings(req).await }
    };
    // No token.
    let none = list(Request::new(pb::ListBindingsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{}", none.message());
    assert!(
        none.message().contains("authorization"),
        "{}",
        none.message()
    );

    // The admin's own token, but for the exchange audience.
    let exchange_token = a.env.issuer.token(&admin_sa(), AUDIENCE);
    let wrong_aud = list(with_token(
        pb::ListBindingsRequest::default(),
        &exchange_token,
    ))
    .await
    .unwrap_err();
    assert_eq!(
        wrong_aud.code(),
        Code::Unauthenticated,
        "{}",
        wrong_aud.message()
    );
    assert!(
        wrong_aud.message().contains("audience"),
        "{}",
        wrong_aud.message()
    );
    assert_no_token(wrong_aud.message(), &exchange_token);

    // A valid admin-audience token of someone not listed.
    let outsider = a.env.issuer.token(&caller(), ADMIN_AUDIENCE);
    let unlisted = list(with_token(pb::ListBindingsRequest::default(), &outsider))
        .await
        .unwrap_err();
    assert_eq!(
        unlisted.code(),
        Code::PermissionDenied,
        "{}",
        unlisted.message()
    );
    assert!(unlisted.message().contains("policy_admin.principals"));
    assert_no_token(unlisted.message(), &outsider);

    // An outsider cannot write either, and nothing was written.
    let write = a
        .client
        .clone()
        .create_binding(with_token(
            pb::CreateBindingRequest {
                binding: Some(binding("sneaky", &caller(), ROLE_A)),
            },
            &outsider,
        ))
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::PermissionDenied);
    let listed = list(a.req(pb::ListBindingsRequest::default()))
        .await
        .unwrap();
    assert!(listed.into_inner().bindings.is_empty());
    a.env.stop().await;
}

#[tokio::test]
async fn bad_bindings_are_invalid_argument_with_the_field_named_and_nothing_half_applied() {
    let a = Admin::sqlite().await;
    a.create(binding("good", &caller(), ROLE_A)).await.unwrap();

    let cases: Vec<(pb::Binding, &str)> = vec![
        (
            pb::Binding {
                role_arns: vec!["arn:aws:s3:::bucket".into()],
                ..binding("bad-role", &caller(), ROLE_A)
            },
            "role_arns",
        ),
        (
            pb::Binding {
                session_policy: format!(
                    r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"{}"}}]}}"#,
                    "x".repeat(2100)
                ),
                ..binding("big-policy", &caller(), ROLE_A)
            },
            "session_policy",
        ),
        (
            pb::Binding {
                conditions: Some(pb::Conditions {
                    zones: vec!["us-[central".into()],
                    ..Default::default()
                }),
                ..binding("bad-glob", &caller(), ROLE_A)
            },
            "conditions.zones",
        ),
        (
            pb::Binding {
                managed_policy_arns: (0..11)
                    .map(|i| format!("arn:aws:iam::123456789012:policy/P{i}"))
                    .collect(),
                ..binding("many-arns", &caller(), ROLE_A)
            },
            "managed_policy_arns",
        ),
        (
            pb::Binding {
                service_accounts: vec!["not an account".into()],
                ..binding("bad-sa", &caller(), ROLE_A)
            },
            "service_accounts",
        ),
        (binding("bad name!", &caller(), ROLE_A), "name"),
    ];
    for (b, field) in &cases {
        let err = a.create(b.clone()).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }

    // Update and delete without an etag.
    let no_etag = a
        .client
        .clone()
        .update_binding(a.req(pb::UpdateBindingRequest {
            binding: Some(binding("good", &caller(), ROLE_B)),
        }))
        .await
        .unwrap_err();
    assert_eq!(no_etag.code(), Code::InvalidArgument);
    assert!(no_etag.message().contains("etag"), "{}", no_etag.message());
    let no_etag = a
        .client
        .clone()
        .delete_binding(a.req(pb::DeleteBindingRequest {
            name: "good".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(no_etag.code(), Code::InvalidArgument);

    // One bad binding among good ones: the whole apply is refused.
    let mut set: Vec<pb::Binding> = vec![
        binding("good", &caller(), ROLE_B),
        binding("new-one", &caller(), ROLE_A),
    ];
    set.push(cases[0].0.clone());
    let err = a
        .client
        .clone()
        .apply_bindings(a.req(pb::ApplyBindingsRequest {
            bindings: set.clone(),
            prune: true,
            dry_run: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let listed = a
        .client
        .clone()
        .list_bindings(a.req(pb::ListBindingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.bindings.len(), 1);
    assert_eq!(listed.bindings[0].role_arns, vec![ROLE_A.to_string()]);

    // Validate reports the same problems without applying anything.
    let v = a
        .client
        .clone()
        .validate(a.req(pb::ValidateRequest { bindings: set }))
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    assert!(
        v.violations
            .iter()
            .any(|v| v.binding == "bad-role" && v.field.starts_with("role_arns"))
    );

    // Page sizes and tokens are checked too.
    let page = a
        .client
        .clone()
        .list_bindings(a.req(pb::ListBindingsRequest {
            page_size: 5000,
            page_token: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(page.code(), Code::InvalidArgument);
    a.env.stop().await;
}

#[tokio::test]
async fn apply_dry_run_reports_and_apply_prunes() {
    let a = Admin::sqlite().await;
    a.create(binding("old", &caller(), ROLE_A)).await.unwrap();
    a.create(binding("keep", &caller(), ROLE_B)).await.unwrap();
    let wanted = vec![
        binding("keep", &caller(), ROLE_B),
        pb::Binding {
            max_duration_seconds: Some(7200),
            ..binding("new", &admin_sa(), ROLE_A)
        },
    ];
    let apply = |dry_run: bool| {
        let mut c = a.client.clone();
        let req = a.req(pb::ApplyBindingsRequest {
            bindings: wanted.clone(),
            prune: true,
            dry_run,
        });
        async move { c.apply_bindings(req).await.map(|r| r.into_inner()) }
    };
    let dry = apply(true).await.unwrap();
    assert!(!dry.applied);
    assert_eq!(dry.created, ["new"]);
    assert_eq!(dry.deleted, ["old"]);
    assert_eq!(dry.unchanged, ["keep"]);
    // The dry run changed nothing: `old` still grants ROLE_A.
    a.exchange(&caller(), ROLE_A).await.unwrap();

    let done = apply(false).await.unwrap();
    assert!(done.applied);
    assert_eq!(done.created, ["new"]);
    let denied = a.exchange(&caller(), ROLE_A).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Applying again changes nothing.
    let again = apply(false).await.unwrap();
    assert!(again.created.is_empty() && again.updated.is_empty() && again.deleted.is_empty());
    a.env.stop().await;
}

#[tokio::test]
async fn the_deny_list_beats_a_warm_cache_and_is_audited() {
    let a = Admin::sqlite().await;
    a.create(binding("etl", &caller(), ROLE_A)).await.unwrap();
    let first = a.exchange(&caller(), ROLE_A).await.unwrap();
    // Cached: the same credentials again.
    let second = a.exchange(&caller(), ROLE_A).await.unwrap();
    assert_eq!(first.access_key_id, second.access_key_id);

    // Deny by email is refused: it would miss tokens without an email.
    let by_email = a
        .client
        .clone()
        .deny_service_account(a.req(pb::DenyServiceAccountRequest {
            service_account: caller().email,
            reason: "compromised VM".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(by_email.code(), Code::InvalidArgument);
    assert!(
        by_email.message().contains("unique ID, not its email"),
        "{}",
        by_email.message()
    );

    // Deny by unique ID: every binding ignores the account on the next
    // request, whether or not its token carries an email.
    let denied = a
        .client
        .clone()
        .deny_service_account(a.req(pb::DenyServiceAccountRequest {
            service_account: caller().unique_id,
            reason: "compromised VM".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.actor, admin_sa().email);
    let refused = a.exchange(&caller(), ROLE_A).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("deny list"),
        "{}",
        refused.message()
    );

    // A token without an email (the metadata server's default format) is
    // stopped too: the entry is the unique ID every token carries.
    let mut claims = a.env.issuer.claims(&caller(), AUDIENCE, false);
    claims.remove("email");
    claims.remove("email_verified");
    let no_email = a.env.issuer.sign(&claims);
    let refused = a.env.call(&no_email, ROLE_A, 0).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("deny list"),
        "{}",
        refused.message()
    );

    let list = a
        .client
        .clone()
        .list_denied(a.req(pb::ListDeniedRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.denied.len(), 1);
    assert_eq!(list.denied[0].reason, "compromised VM");

    // Explain says so too.
    let explained = a
        .client
        .clone()
        .explain(a.req(pb::ExplainRequest {
            token: a.env.token(&caller()),
            claims: None,
            role_arn: ROLE_A.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!explained.allowed);
    assert!(explained.service_account_denied);

    a.client
        .clone()
        .allow_service_account(a.req(pb::AllowServiceAccountRequest {
            service_account: caller().unique_id,
        }))
        .await
        .unwrap();
    a.exchange(&caller(), ROLE_A).await.unwrap();
    let audit = a
        .client
        .clone()
        .list_audit(a.req(pb::ListAuditRequest {
            target: caller().unique_id,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["service_account.allow", "service_account.deny"]);
    a.env.stop().await;
}

#[tokio::test]
async fn every_condition_kind_decides_and_tokens_without_gce_claims_never_match() {
    let a = Admin::sqlite().await;
    let sa = caller(); // its tokens come from `demo-vm` in us-central1-a of demo-project
    let cond = |name: &str, role: &str, c: pb::Conditions| pb::Binding {
        conditions: Some(c),
        ..binding(name, &sa, role)
    };
    let matching = [
        pb::Conditions {
            project_ids: vec!["demo-project".into()],
            ..Default::default()
        },
        pb::Conditions {
            project_numbers: vec![sa.project_number.to_string()],
            ..Default::default()
        },
        pb::Conditions {
            zones: vec!["us-central1-*".into()],
            ..Default::default()
        },
        pb::Conditions {
            instance_names: vec!["demo-*".into()],
            ..Default::default()
        },
    ];
    let failing = [
        pb::Conditions {
            project_ids: vec!["other-project".into()],
            ..Default::default()
        },
        pb::Conditions {
            project_numbers: vec!["1".into()],
            ..Default::default()
        },
        pb::Conditions {
            zones: vec!["europe-*".into()],
            ..Default::default()
        },
        pb::Conditions {
            instance_names: vec!["web-*".into()],
            ..Default::default()
        },
    ];
    for (i, (good, bad)) in matching.into_iter().zip(failing).enumerate() {
        let name = format!("c{i}");
        let created = a.create(cond(&name, ROLE_A, good)).await.unwrap();
        a.exchange(&sa, ROLE_A)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        // A token without GCE claims (GKE, Cloud Run) never matches.
        let bare = a
            .env
            .issuer
            .sign(&a.env.issuer.claims(&sa, AUDIENCE, false));
        let err = a.env.call(&bare, ROLE_A, 0).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{name}: {}",
            err.message()
        );
        assert!(err.message().contains("conditions"), "{}", err.message());
        // The failing variant.
        let mut failing = created.clone();
        failing.conditions = Some(bad);
        a.client
            .clone()
            .update_binding(a.req(pb::UpdateBindingRequest {
                binding: Some(failing),
            }))
            .await
            .unwrap();
        let err = a.exchange(&sa, ROLE_A).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{name}: {}",
            err.message()
        );
        // Explain names the binding and why.
        let explained = a
            .client
            .clone()
            .explain(a.req(pb::ExplainRequest {
                token: a.env.token(&sa),
                claims: None,
                role_arn: ROLE_A.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        let eval = explained
            .bindings
            .iter()
            .find(|e| e.binding == name)
            .unwrap();
        assert_eq!(eval.outcome, Outcome::ConditionNotMet as i32, "{eval:?}");
        assert!(!eval.details.is_empty());
        let current = a
            .client
            .clone()
            .get_binding(a.req(pb::GetBindingRequest { name: name.clone() }))
            .await
            .unwrap()
            .into_inner();
        a.client
            .clone()
            .delete_binding(a.req(pb::DeleteBindingRequest {
                name,
                etag: current.etag,
            }))
            .await
            .unwrap();
    }
    a.env.stop().await;
}

#[tokio::test]
async fn explain_with_claims_lists_every_binding_and_why() {
    let a = Admin::sqlite().await;
    a.create(binding("a-role", &caller(), ROLE_A))
        .await
        .unwrap();
    a.create(binding("b-other", &admin_sa(), ROLE_A))
        .await
        .unwrap();
    a.create(binding("c-role-b", &caller(), ROLE_B))
        .await
        .unwrap();
    let explain = |role: &str| {
        let mut c = a.client.clone();
        let req = a.req(pb::ExplainRequest {
            token: String::new(),
            claims: Some(pb::Claims {
                sub: caller().unique_id,
                ..Default::default()
            }),
            role_arn: role.into(),
        });
        async move { c.explain(req).await.map(|r| r.into_inner()) }
    };
    let r = explain(ROLE_A).await.unwrap();
    assert!(r.allowed, "{}", r.reason);
    assert_eq!(r.role_arn, ROLE_A);
    let outcomes: Vec<(String, i32)> = r
        .bindings
        .iter()
        .map(|e| (e.binding.clone(), e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("a-role".to_string(), Outcome::Matched as i32),
            (
                "b-other".to_string(),
                Outcome::ServiceAccountNotListed as i32
            ),
            ("c-role-b".to_string(), Outcome::RoleNotListed as i32),
        ]
    );
    // No role: the caller has two, so the exchange would refuse.
    let ambiguous = explain("").await.unwrap();
    assert!(!ambiguous.allowed);
    assert!(
        ambiguous.reason.contains("several roles"),
        "{}",
        ambiguous.reason
    );
    // Token and claims together, or neither.
    let both = a
        .client
        .clone()
        .explain(a.req(pb::ExplainRequest {
            token: "x.y.z".into(),
            claims: Some(pb::Claims::default()),
            role_arn: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    a.env.stop().await;
}

#[tokio::test]
async fn session_policies_reach_sts_and_scope_the_cache() {
    let a = Admin::sqlite().await;
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::team-a/*"}]}"#;
    let created = a
        .create(pb::Binding {
            session_policy: policy.into(),
            ..binding("scoped", &caller(), ROLE_A)
        })
        .await
        .unwrap();
    let issued = a.exchange(&caller(), ROLE_A).await.unwrap();
    let record = moto_assumed_role(&issued.access_key_id).await;
    assert_eq!(record["policy"], policy, "moto saw {record}");
    assert_eq!(record["session_name"], caller().unique_id);

    // A different scope gets its own credentials, not the cached ones.
    let narrower = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::team-a"}]}"#;
    let mut changed = created.clone();
    changed.session_policy = narrower.into();
    a.client
        .clone()
        .update_binding(a.req(pb::UpdateBindingRequest {
            binding: Some(changed),
        }))
        .await
        .unwrap();
    let reissued = a.exchange(&caller(), ROLE_A).await.unwrap();
    assert_ne!(reissued.access_key_id, issued.access_key_id);
    let record = moto_assumed_role(&reissued.access_key_id).await;
    assert_eq!(record["policy"], narrower);
    a.env.stop().await;
}

#[tokio::test]
async fn managed_session_policy_arns_are_sent_to_sts() {
    // moto does not record PolicyArns; the fake STS shows the form sent.
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let a = Admin::sqlite_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        ..Options::default()
    })
    .await;
    let arns = [
        "arn:aws:iam::aws:policy/ReadOnlyAccess",
        "arn:aws:iam::123456789012:policy/team/Narrow",
    ];
    a.create(pb::Binding {
        managed_policy_arns: arns.iter().map(|s| s.to_string()).collect(),
        ..binding("managed", &caller(), ROLE_A)
    })
    .await
    .unwrap();
    a.exchange(&caller(), ROLE_A).await.unwrap();
    let form = sts.last_form().unwrap();
    assert_eq!(
        form.get("PolicyArns.member.1.arn").map(String::as_str),
        Some(arns[0])
    );
    assert_eq!(
        form.get("PolicyArns.member.2.arn").map(String::as_str),
        Some(arns[1])
    );
    assert!(!form.contains_key("Policy"));
    a.env.stop().await;
}

#[tokio::test]
async fn a_policy_file_is_read_only_through_the_admin_api() {
    let env = Env::start_with(Options {
        policy_admin: Some(admin_config()),
        ..Options::default()
    })
    .await;
    let client = admin_client(&env).await;
    let token = env.issuer.token(&admin_sa(), ADMIN_AUDIENCE);
    let listed = client
        .clone()
        .list_bindings(with_token(pb::ListBindingsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !listed.bindings.is_empty(),
        "the file's bindings are listed"
    );
    let write = client
        .clone()
        .create_binding(with_token(
            pb::CreateBindingRequest {
                binding: Some(binding("x", &caller(), ROLE_A)),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        write.code(),
        Code::FailedPrecondition,
        "{}",
        write.message()
    );
    assert!(write.message().contains("read-only"), "{}", write.message());
    env.stop().await;
}

// ---------------------------------------------------------------------------
// Two replicas on one PostgreSQL.

pub(crate) fn postgres_url() -> String {
    std::env::var("TOKENBRIDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of this test's own (the store creates it), dropped at the end.
pub(crate) async fn drop_schema(schema: &str) {
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn two_replicas_on_postgres_agree_within_two_seconds() {
    // PostgreSQL must be there (it is on every development machine and in
    // CI); if it is not, the store cannot open and the test fails saying so.
    let schema = format!(
        "tb_admin_it_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let issuer = Issuer::new();
    let opts = || Options {
        store: Some(StoreConfig {
            url: postgres_url(),
            schema: Some(schema.clone()),
        }),
        policy_admin: Some(admin_config()),
        ..Options::default()
    };
    let a = Env::start_on(
        issuer.clone(),
        JwksServer::start(issuer.clone(), 3600).await,
        opts(),
    )
    .await;
    let b = Env::start_on(
        issuer.clone(),
        JwksServer::start(issuer.clone(), 3600).await,
        opts(),
    )
    .await;
    let admin = admin_client(&a).await;
    let token = issuer.token(&admin_sa(), ADMIN_AUDIENCE);

    // B refuses first.
    let before = b.call(&b.token(&caller()), ROLE_A, 0).await.unwrap_err();
    assert_eq!(before.code(), Code::PermissionDenied);

    // A write through replica A ...
    let created = admin
        .clone()
        .create_binding(with_token(
            pb::CreateBindingRequest {
                binding: Some(binding("etl", &caller(), ROLE_A)),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let revision: u64 = created.etag.parse().unwrap();
    // ... is in force on replica B within 2 s (LISTEN/NOTIFY; the issue's
    // bound, with a wide margin over what NOTIFY takes).
    let mut revisions = b.server.as_ref().unwrap().exchange().policy_revisions();
    tokio::time::timeout(
        Duration::from_secs(2),
        revisions.wait_for(|r| *r >= revision),
    )
    .await
    .expect("replica B did not see the change within 2 s")
    .unwrap();
    b.call(&b.token(&caller()), ROLE_A, 0).await.unwrap();

    // The deny list too, beating B's warm cache.
    let before_deny = b.server.as_ref().unwrap().exchange().snapshot().revision;
    let denied = admin
        .clone()
        .deny_service_account(with_token(
            pb::DenyServiceAccountRequest {
                service_account: caller().unique_id,
                reason: "rotation".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.service_account, caller().unique_id);
    tokio::time::timeout(
        Duration::from_secs(2),
        revisions.wait_for(|r| *r > before_deny),
    )
    .await
    .expect("replica B did not see the deny within 2 s")
    .unwrap();
    let refused = b.call(&b.token(&caller()), ROLE_A, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("deny list"));

    a.stop().await;
    b.stop().await;
    drop_schema(&schema).await;
}

#[tokio::test]
async fn every_admin_call_leaves_an_audit_line_refusals_included() {
    let (a, _dir, log) = Admin::sqlite_with_audit_file().await;
    a.create(binding("etl", &caller(), ROLE_A)).await.unwrap();
    let outsider = a.env.issuer.token(&caller(), ADMIN_AUDIENCE);
    let refused = a
        .client
        .clone()
        .delete_binding(with_token(
            pb::DeleteBindingRequest {
                name: "etl".into(),
                etag: "1".into(),
            },
            &outsider,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Stopping the server flushes the audit writer.
    a.env.stop().await;
    let (text, admin) = admin_lines(&log);
    assert_eq!(admin.len(), 2, "{text}");
    assert_eq!(admin[0]["method"], "CreateBinding");
    assert_eq!(admin[0]["actor"], admin_sa().email);
    assert_eq!(admin[0]["target"], "etl");
    assert_eq!(admin[0]["code"], "OK");
    assert_eq!(admin[1]["method"], "DeleteBinding");
    assert_eq!(admin[1]["code"], "PERMISSION_DENIED");
    assert!(admin[1].get("actor").is_none(), "{}", admin[1]);
    assert_eq!(admin[1]["severity"], "WARNING");
    assert_no_token(&text, &outsider);
    // No JWT at all (every one starts with the base64 of `{"`).
    assert!(!text.contains("eyJ"), "{text}");
}

#[tokio::test]
async fn the_admin_listener_can_serve_tls_only() {
    use tokenbridge_server::transport::tls::TlsConfig;
    let dir = tempfile::tempdir().unwrap();
    let ca = tokenbridge_testing::Pki::new("tokenbridge admin test CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let env = Env::start_with(Options {
        tls: Some(TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_file: cert,
            key_file: key,
            client_ca_file: None,
            reload_interval: Duration::from_secs(10),
        }),
        policy_admin: Some(PolicyAdminConfig {
            tls: true,
            ..admin_config()
        }),
        ..Options::default()
    })
    .await;
    let port = env
        .server
        .as_ref()
        .unwrap()
        .policy_admin_addr
        .unwrap()
        .port();
    let token = env.issuer.token(&admin_sa(), ADMIN_AUDIENCE);

    // Over TLS, trusting the private CA: served.
    let endpoint = tokenbridge_client::Config::new(format!("https://localhost:{port}"))
        .with_ca_file(&ca_file)
        .tonic_endpoint()
        .unwrap();
    let channel = within(HANG_GUARD, endpoint.connect()).await.unwrap();
    let listed = PolicyAdminClient::new(channel)
        .list_bindings(with_token(pb::ListBindingsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.bindings.is_empty());

    // Plaintext to the same port: no gRPC answer, so the token never
    // crosses in the clear.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let refused = within(HANG_GUARD, async {
        let channel = plain.connect().await?;
        PolicyAdminClient::new(channel)
            .list_bindings(with_token(pb::ListBindingsRequest::default(), &token))
            .await
            .map(|_| ())
            .map_err(|s| Box::new(s) as Box<dyn std::error::Error + Send + Sync>)
    })
    .await;
    assert!(refused.is_err(), "plaintext must not be served");
    env.stop().await;
}

#[tokio::test]
async fn an_older_store_snapshot_never_replaces_a_newer_one() {
    use tokenbridge_server::PolicySnapshot;
    let env = Env::start().await;
    let exchange = env.server.as_ref().unwrap().exchange().clone();
    let at = |revision: u64| {
        PolicySnapshot::build(revision, Vec::new(), Vec::<String>::new(), "store".as_ref()).unwrap()
    };
    assert!(exchange.advance_policy(at(7)));
    // A loader that read revision 5 before revision 7 was written and
    // finishes after it: ignored.
    assert!(!exchange.advance_policy(at(5)));
    assert_eq!(exchange.snapshot().revision, 7);
    assert_eq!(*exchange.policy_revisions().borrow(), 7);
    assert!(exchange.advance_policy(at(8)));
    assert_eq!(exchange.snapshot().revision, 8);
    env.stop().await;
}

#[test]
fn a_policy_admin_call_in_flight_at_shutdown_is_drained_not_cut() {
    // The server runs in a runtime of its own, stopped as `main` stops it:
    // `stop()`, then the runtime goes away with every task still in it. A
    // write held inside PostgreSQL (the test locks the store's revision
    // table against writers) is in flight when the stop begins; it must be
    // finished and answered before `stop()` returns, not cut with the
    // runtime (5 s drain time here).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let schema = format!(
        "tb_admin_drain_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let env = server_rt.block_on(Env::start_with(Options {
        store: Some(StoreConfig {
            url: postgres_url(),
            schema: Some(schema.clone()),
        }),
        policy_admin: Some(admin_config()),
        ..Options::default()
    }));
    let admin_addr = env.server.as_ref().unwrap().policy_admin_addr.unwrap();
    let token = env.issuer.token(&admin_sa(), ADMIN_AUDIENCE);

    let (pool, lock, call) = client_rt.block_on(async {
        let admin = admin_client_at(admin_addr).await;
        let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
        let mut lock = pool.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE \"{schema}\".store_state IN EXCLUSIVE MODE"
        )))
        .execute(&mut *lock)
        .await
        .unwrap();
        let call = tokio::spawn({
            let mut admin = admin.clone();
            async move {
                admin
                    .create_binding(with_token(
                        pb::CreateBindingRequest {
                            binding: Some(binding("late", &caller(), ROLE_A)),
                        },
                        &token,
                    ))
                    .await
            }
        });
        // The call is in flight once its write waits for the lock.
        within(HANG_GUARD, async {
            loop {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE NOT l.granted AND n.nspname = $1",
                )
                .bind(&schema)
                .fetch_one(&pool)
                .await
                .unwrap();
                if waiting > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        (pool, lock, call)
    });

    let stopping = server_rt.spawn(env.stop());
    client_rt.block_on(async {
        // Shutdown has begun once the admin listener takes no new
        // connections; only then does the write get its lock.
        within(HANG_GUARD, async {
            while tokio::net::TcpStream::connect(admin_addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        lock.commit().await.unwrap();
    });
    server_rt.block_on(stopping).unwrap();
    drop(server_rt);

    let created = client_rt
        .block_on(within(HANG_GUARD, call))
        .unwrap()
        .expect("the admin call in flight was cut at shutdown")
        .into_inner();
    assert_eq!(created.name, "late");
    client_rt.block_on(async {
        pool.close().await;
        drop_schema(&schema).await;
    });
}

/// Issue 15, item 4: the admin listener authenticates a call from its
/// headers before reading its message, so what an unauthenticated caller
/// puts there (a 3 MiB binding name) is never decoded or audited; an
/// authenticated caller's over-long target is cut in the audit line.
#[tokio::test]
async fn an_unauthenticated_callers_message_is_never_read_nor_audited() {
    let (a, _dir, log) = Admin::sqlite_with_audit_file().await;
    let huge = "n".repeat(3 * 1024 * 1024);
    let refused = a
        .client
        .clone()
        .create_binding(with_token(
            pb::CreateBindingRequest {
                binding: Some(binding(&huge, &caller(), ROLE_A)),
            },
            "not-a-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::Unauthenticated,
        "{}",
        refused.message()
    );
    let long = "m".repeat(10_000);
    let invalid = a
        .create(binding(&long, &caller(), ROLE_A))
        .await
        .unwrap_err();
    assert_eq!(
        invalid.code(),
        Code::InvalidArgument,
        "{}",
        invalid.message()
    );
    a.env.stop().await;
    let (text, admin) = admin_lines(&log);
    for line in text.lines() {
        assert!(line.len() < 2048, "an audit line of {} bytes", line.len());
    }
    assert_eq!(admin.len(), 2, "{text}");
    assert_eq!(admin[0]["method"], "CreateBinding");
    assert_eq!(admin[0]["code"], "UNAUTHENTICATED");
    assert_eq!(admin[0]["target"], "");
    assert_eq!(admin[1]["code"], "INVALID_ARGUMENT");
    assert!(
        admin[1]["target"].as_str().unwrap().ends_with('…'),
        "{}",
        admin[1]
    );
}

/// Issue 15, item 4: the admin listener has its own per-peer rate limit,
/// concurrency limit and deadline (a caller that never sends its message
/// frees its place at the deadline).
#[tokio::test]
async fn the_admin_listener_has_its_own_rate_limit_and_deadline() {
    let a = Admin::sqlite_with(Options {
        policy_admin: Some(PolicyAdminConfig {
            limits: PolicyAdminLimits {
                max_concurrent_requests: 1,
                request_timeout: Duration::from_millis(500),
                per_peer: tokenbridge_server::transport::limits::Rate::new(1, 3),
                ..PolicyAdminLimits::default()
            },
            ..admin_config()
        }),
        ..Options::default()
    })
    .await;
    let addr = a.env.server.as_ref().unwrap().policy_admin_addr.unwrap();
    // One authenticated caller holds the only place and never sends its
    // message: it ends at the deadline.
    let (_client, streams) = crate::abuse::stalled_streams(
        addr,
        "/tokenbridge.v1.PolicyAdmin/ListDenied",
        &a.token(),
        1,
    )
    .await;
    for (response, _send) in streams {
        let response = within(Duration::from_secs(30), response).await.unwrap();
        let (code, message) = crate::abuse::grpc_status_of(&response);
        assert_eq!(
            code,
            (Code::DeadlineExceeded as i32).to_string(),
            "{message}"
        );
    }
    // The place is free again; then the peer runs out of its burst.
    let list = || {
        let mut client = a.client.clone();
        let request = a.req(pb::ListDeniedRequest {});
        async move { client.list_denied(request).await }
    };
    list().await.unwrap();
    let mut limited = None;
    for _ in 0..20 {
        if let Err(status) = list().await {
            limited = Some(status);
            break;
        }
    }
    let limited = limited.expect("the peer's burst of 3 at 1/s ran out within 20 calls");
    assert_eq!(
        limited.code(),
        Code::ResourceExhausted,
        "{}",
        limited.message()
    );
    assert!(
        limited.message().contains("requests from this address"),
        "{}",
        limited.message()
    );
}
