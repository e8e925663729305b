//! Issue 15, item 9: `RevokeCachedCredentials` drops cached credentials on
//! every replica. Two replicas share one store (an SQLite file; PostgreSQL
//! on 127.0.0.1:5432), each caches credentials from moto; a revocation
//! through either replica's admin API makes the other's next exchange get
//! new ones, once it has loaded the revision the revocation wrote (awaited
//! on its policy revision, never a sleep).

use serde_json::Value;
use tokenbridge_proto::v1::{self as pb, policy_admin_client::PolicyAdminClient};
use tokenbridge_server::config::StoreConfig;
use tokenbridge_testing::{Issuer, JwksServer, ServiceAccount};
use tonic::{Code, Request, transport::Channel};

use crate::common::{AUDIENCE, Env, Options, ROLE_A, ROLE_B, within};
use crate::policy_admin::{
    ADMIN_AUDIENCE, admin_client, admin_config, admin_sa, caller, drop_schema, postgres_url,
    with_token,
};

/// A hang guard, not a speed assertion.
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(20);

/// Bound to ROLE_A only, next to `caller()`.
fn bystander() -> ServiceAccount {
    ServiceAccount::new("300000000000000000002", "web@data.iam.gserviceaccount.com")
}

/// The access key id `env` hands `sa` for `role`.
async fn key(env: &Env, sa: &ServiceAccount, role: &str) -> String {
    env.call(&env.token(sa), role, 0)
        .await
        .unwrap_or_else(|e| panic!("{} for {role}: {e:?}", sa.unique_id))
        .access_key_id
}

/// Waits until `env` has the store's `revision` in force.
async fn loaded(env: &Env, revision: u64) {
    let mut revisions = env.server.as_ref().unwrap().exchange().policy_revisions();
    within(HANG_GUARD, revisions.wait_for(|r| *r >= revision))
        .await
        .unwrap();
}

struct Replica {
    env: Env,
    admin: PolicyAdminClient<Channel>,
    token: String,
}

impl Replica {
    async fn start(issuer: &Issuer, opts: Options) -> Self {
        let env = Env::start_on(
            issuer.clone(),
            JwksServer::start(issuer.clone(), 3600).await,
            opts,
        )
        .await;
        let admin = admin_client(&env).await;
        let token = issuer.token(&admin_sa(), ADMIN_AUDIENCE);
        Replica { env, admin, token }
    }

    fn req<T>(&self, message: T) -> Request<T> {
        with_token(message, &self.token)
    }

    async fn revoke(
        &self,
        service_account: &str,
        role_arn: &str,
    ) -> Result<pb::RevokeCachedCredentialsResponse, tonic::Status> {
        self.admin
            .clone()
            .revoke_cached_credentials(self.req(pb::RevokeCachedCredentialsRequest {
                service_account: service_account.into(),
                role_arn: role_arn.into(),
                reason: "INC-42: session leaked".into(),
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// (caller, ROLE_A), (caller, ROLE_B), (bystander, ROLE_A): cached,
    /// so a second call returns the same key.
    async fn warm(&self) -> [String; 3] {
        let mut keys: [String; 3] = Default::default();
        for (i, (sa, role)) in [
            (caller(), ROLE_A),
            (caller(), ROLE_B),
            (bystander(), ROLE_A),
        ]
        .iter()
        .enumerate()
        {
            keys[i] = key(&self.env, sa, role).await;
            assert_eq!(key(&self.env, sa, role).await, keys[i], "cached");
        }
        keys
    }
}

/// Two replicas on `store`: warm caches, then revoke by service account,
/// by role and by the pair, each through one replica, and check both.
async fn a_revocation_reaches_every_replica(store: StoreConfig) {
    let issuer = Issuer::new();
    let opts = || Options {
        store: Some(store.clone()),
        policy_admin: Some(admin_config()),
        ..Options::default()
    };
    let a = Replica::start(&issuer, opts()).await;
    let b = Replica::start(&issuer, opts()).await;
    let applied = a
        .admin
        .clone()
        .apply_bindings(a.req(pb::ApplyBindingsRequest {
            bindings: vec![
                pb::Binding {
                    name: "etl".into(),
                    service_accounts: vec![caller().unique_id],
                    role_arns: vec![ROLE_A.into(), ROLE_B.into()],
                    ..Default::default()
                },
                pb::Binding {
                    name: "web".into(),
                    service_accounts: vec![bystander().unique_id],
                    role_arns: vec![ROLE_A.into()],
                    ..Default::default()
                },
            ],
            prune: false,
            dry_run: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.created.len(), 2);
    let etag = a
        .admin
        .clone()
        .get_binding(a.req(pb::GetBindingRequest { name: "etl".into() }))
        .await
        .unwrap()
        .into_inner()
        .etag;
    loaded(&b.env, etag.parse().unwrap()).await;
    let (mut on_a, mut on_b) = (a.warm().await, b.warm().await);

    // By service account, through replica A: every role of the caller, on
    // both replicas; the bystander keeps its credentials.
    let revoked = a.revoke(&caller().unique_id, "").await.unwrap();
    assert!(revoked.every_replica);
    assert_eq!(revoked.dropped_here, 2, "the caller's two credentials on A");
    assert_eq!(revoked.actor, admin_sa().email);
    assert!(revoked.revoked_at.is_some());
    loaded(&b.env, revoked.revision).await;
    for (replica, keys) in [(&a, &mut on_a), (&b, &mut on_b)] {
        let fresh = replica.warm().await;
        assert_ne!(fresh[0], keys[0], "caller, ROLE_A: fetched anew");
        assert_ne!(fresh[1], keys[1], "caller, ROLE_B: fetched anew");
        assert_eq!(fresh[2], keys[2], "the bystander is not named");
        *keys = fresh;
    }

    // By role, through replica B: every caller of ROLE_A.
    let revoked = b.revoke("", ROLE_A).await.unwrap();
    assert!(revoked.every_replica);
    assert_eq!(revoked.role_arn, ROLE_A);
    loaded(&a.env, revoked.revision).await;
    for (replica, keys) in [(&a, &mut on_a), (&b, &mut on_b)] {
        let fresh = replica.warm().await;
        assert_ne!(fresh[0], keys[0], "caller, ROLE_A: fetched anew");
        assert_eq!(fresh[1], keys[1], "ROLE_B is not named");
        assert_ne!(fresh[2], keys[2], "bystander, ROLE_A: fetched anew");
        *keys = fresh;
    }

    // The pair, through replica A: only the caller's ROLE_B credentials.
    let revoked = a.revoke(&caller().unique_id, ROLE_B).await.unwrap();
    assert_eq!(revoked.dropped_here, 1);
    loaded(&b.env, revoked.revision).await;
    for (replica, keys) in [(&a, &on_a), (&b, &on_b)] {
        let fresh = replica.warm().await;
        assert_eq!(fresh[0], keys[0]);
        assert_ne!(fresh[1], keys[1], "caller, ROLE_B: fetched anew");
        assert_eq!(fresh[2], keys[2]);
    }

    // Each is in the store's audit trail.
    let audit = b
        .admin
        .clone()
        .list_audit(b.req(pb::ListAuditRequest {
            target: caller().unique_id,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let revocations: Vec<Value> = audit
        .entries
        .iter()
        .filter(|e| e.action == "credentials.revoke")
        .map(|e| serde_json::from_str(&e.after_json).unwrap())
        .collect();
    assert_eq!(revocations.len(), 2, "{audit:?}");
    assert_eq!(revocations[0]["role_arn"], ROLE_B);
    assert_eq!(revocations[1]["role_arn"], Value::Null);
    assert_eq!(revocations[1]["reason"], "INC-42: session leaked");
    a.env.stop().await;
    b.env.stop().await;
}

#[tokio::test]
async fn a_revocation_reaches_every_replica_on_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("policy.db").display());
    a_revocation_reaches_every_replica(StoreConfig { url, schema: None }).await;
}

#[tokio::test]
async fn a_revocation_reaches_every_replica_on_postgres() {
    let schema = format!(
        "tb_revoke_it_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    );
    a_revocation_reaches_every_replica(StoreConfig {
        url: postgres_url(),
        schema: Some(schema.clone()),
    })
    .await;
    drop_schema(&schema).await;
}

#[tokio::test]
async fn emails_neither_bad_roles_and_outsiders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("policy.db").display());
    let issuer = Issuer::new();
    let r = Replica::start(
        &issuer,
        Options {
            store: Some(StoreConfig { url, schema: None }),
            policy_admin: Some(admin_config()),
            ..Options::default()
        },
    )
    .await;

    let by_email = r.revoke(&caller().email, "").await.unwrap_err();
    assert_eq!(by_email.code(), Code::InvalidArgument);
    assert!(
        by_email.message().contains("unique ID, not its email"),
        "{}",
        by_email.message()
    );
    let neither = r.revoke("", "").await.unwrap_err();
    assert_eq!(neither.code(), Code::InvalidArgument);
    assert!(
        neither.message().contains("a role ARN, or both"),
        "{}",
        neither.message()
    );
    let bad_role = r.revoke("", "arn:aws:s3:::bucket").await.unwrap_err();
    assert_eq!(bad_role.code(), Code::InvalidArgument);
    assert!(
        bad_role.message().contains("role_arn"),
        "{}",
        bad_role.message()
    );

    // A workload's admin-audience token is not an admin's; no token at all.
    let outsider = issuer.token(&caller(), ADMIN_AUDIENCE);
    let request = || pb::RevokeCachedCredentialsRequest {
        role_arn: ROLE_A.into(),
        ..Default::default()
    };
    let refused = r
        .admin
        .clone()
        .revoke_cached_credentials(with_token(request(), &outsider))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let exchange_token = issuer.token(&admin_sa(), AUDIENCE);
    let refused = r
        .admin
        .clone()
        .revoke_cached_credentials(with_token(request(), &exchange_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = r
        .admin
        .clone()
        .revoke_cached_credentials(Request::new(request()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Nothing was written.
    let audit = r
        .admin
        .clone()
        .list_audit(r.req(pb::ListAuditRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(audit.entries.is_empty(), "{audit:?}");
    r.env.stop().await;
}

#[tokio::test]
async fn with_a_policy_file_a_revocation_holds_on_the_answering_replica() {
    let issuer = Issuer::new();
    let r = Replica::start(
        &issuer,
        Options {
            policy_admin: Some(admin_config()),
            ..Options::default()
        },
    )
    .await;
    let workload = crate::common::workload();
    let first = key(&r.env, &workload, ROLE_A).await;
    assert_eq!(key(&r.env, &workload, ROLE_A).await, first);

    let revoked = r.revoke(&workload.unique_id, "").await.unwrap();
    assert!(!revoked.every_replica, "no store: this replica only");
    assert_eq!(revoked.dropped_here, 1);
    assert_eq!(revoked.revision, 1);
    let second = key(&r.env, &workload, ROLE_A).await;
    assert_ne!(second, first);
    assert_eq!(key(&r.env, &workload, ROLE_A).await, second);
    r.env.stop().await;
}
