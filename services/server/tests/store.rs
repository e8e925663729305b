//! The policy store against both backends: an SQLite file in a temporary
//! folder, and the PostgreSQL server on 127.0.0.1:5432 (database `test`,
//! trust auth; `TOKENBRIDGE_TEST_POSTGRES_URL` overrides the URL). Each
//! PostgreSQL test works in a schema of its own, dropped at the end. If
//! PostgreSQL cannot be reached the PostgreSQL tests fail, saying why: it is
//! there on every development machine and in CI.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokenbridge_policy::{Binding, Caller, ComputeEngine, Conditions, Refusal, file as bindings};
use tokenbridge_server::store::{
    AuditAction, AuditQuery, PgOptions, PgStore, PolicyStore, SqliteOptions, SqliteStore, Store,
    StoreError, load_snapshot,
};

const ROLE_A: &str = "arn:aws:iam::111122223333:role/RoleA";
const ROLE_B: &str = "arn:aws:iam::111122223333:role/RoleB";
const SUB: &str = "112233445566778899001";
const ADMIN: &str = "admin@platform.iam.gserviceaccount.com";
/// A hang guard only: waits end as soon as the awaited event happens.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn binding(name: &str) -> Binding {
    Binding {
        name: name.into(),
        service_accounts: vec![SUB.into()],
        role_arns: vec![ROLE_A.into()],
        ..Binding::default()
    }
}

fn postgres_url() -> String {
    std::env::var("TOKENBRIDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        schema: String,
    },
}

/// One database for one test; `open` gives independent handles on it (each
/// with its own connection pool, as separate replicas would have).
struct Harness {
    backend: Backend,
}

impl Harness {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.db");
        Self {
            backend: Backend::Sqlite { _dir: dir, path },
        }
    }

    fn postgres() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!(
            "tb_test_{}_{}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            backend: Backend::Postgres { schema },
        }
    }

    async fn open(&self) -> Store {
        match &self.backend {
            Backend::Sqlite { path, .. } => Store::Sqlite(
                SqliteStore::open(
                    path,
                    SqliteOptions {
                        poll_interval: Duration::from_millis(50),
                        ..SqliteOptions::default()
                    },
                )
                .await
                .unwrap(),
            ),
            Backend::Postgres { schema } => {
                let url = postgres_url();
                let options = PgOptions {
                    schema: Some(schema.clone()),
                    ..PgOptions::default()
                };
                match PgStore::open(&url, options).await {
                    Ok(store) => Store::Postgres(store),
                    Err(e) => panic!(
                        "PostgreSQL at {url} is required for this test and could not be used: {e} ({:?}). \
                         Start it (CI and development machines run it on 127.0.0.1:5432 with trust auth and a database `test`) \
                         or point TOKENBRIDGE_TEST_POSTGRES_URL at one.",
                        std::error::Error::source(&e)
                    ),
                }
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let Backend::Postgres { schema } = &self.backend else {
            return;
        };
        // Drop the schema even when the test failed; on a thread of its own,
        // since this may run inside the test's runtime.
        let schema = schema.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(&postgres_url())
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&pool)
                .await?;
                pool.close().await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test schema: {e}");
        }
    }
}

/// Each scenario runs once per backend.
macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Harness::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Harness::postgres()).await;
                }
            )*
        }
    };
}

both_backends!(
    crud,
    concurrent_updates_with_one_etag_have_one_winner,
    audit_records_every_change_with_before_and_after,
    failed_writes_change_nothing,
    deny_list,
    import_export_round_trip_and_declarative_apply,
    changes_reach_another_handle,
    snapshot_applies_conditions_and_the_deny_list,
    revocations,
);

async fn crud(h: Harness) {
    let store = h.open().await;
    assert_eq!(store.revision().await.unwrap(), 0);

    let created = store.create_binding(ADMIN, binding("b1")).await.unwrap();
    assert_eq!(created.binding, binding("b1"));
    assert!(!created.etag.is_empty());
    assert_eq!(created.created_at, created.updated_at);
    let got = store.get_binding("b1").await.unwrap();
    assert_eq!(got, created);

    match store.create_binding(ADMIN, binding("b1")).await {
        Err(StoreError::AlreadyExists { name }) => assert_eq!(name, "b1"),
        other => panic!("{other:?}"),
    }

    let changed = Binding {
        role_arns: vec![ROLE_A.into(), ROLE_B.into()],
        max_duration_seconds: Some(7200),
        ..binding("b1")
    };
    let updated = store
        .update_binding(ADMIN, changed.clone(), &created.etag)
        .await
        .unwrap();
    assert_ne!(updated.etag, created.etag);
    assert_eq!(updated.binding, changed);
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(store.get_binding("b1").await.unwrap(), updated);

    // The old etag no longer works, for update or delete.
    match store
        .update_binding(ADMIN, binding("b1"), &created.etag)
        .await
    {
        Err(StoreError::Conflict { given, current, .. }) => {
            assert_eq!(given, created.etag);
            assert_eq!(current, updated.etag);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.delete_binding(ADMIN, "b1", &created.etag).await,
        Err(StoreError::Conflict { .. })
    ));
    // An etag is required.
    match store.update_binding(ADMIN, binding("b1"), "").await {
        Err(StoreError::Invalid(v)) => assert_eq!(v[0].error.field, "etag"),
        other => panic!("{other:?}"),
    }

    store
        .delete_binding(ADMIN, "b1", &updated.etag)
        .await
        .unwrap();
    assert!(matches!(
        store.get_binding("b1").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .update_binding(ADMIN, binding("b1"), &updated.etag)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_binding(ADMIN, "b1", &updated.etag).await,
        Err(StoreError::NotFound { .. })
    ));

    // Created again: a new etag, never one used before.
    let again = store.create_binding(ADMIN, binding("b1")).await.unwrap();
    assert!(again.revision > updated.revision);

    // Pages in name order.
    for name in ["e", "a", "d", "c"] {
        store.create_binding(ADMIN, binding(name)).await.unwrap();
    }
    let mut names = Vec::new();
    let mut after = String::new();
    loop {
        let page = store.list_bindings(&after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = last.binding.name.clone();
        names.extend(page.into_iter().map(|b| b.binding.name));
    }
    assert_eq!(names, ["a", "b1", "c", "d", "e"]);
}

async fn concurrent_updates_with_one_etag_have_one_winner(h: Harness) {
    let store = h.open().await;
    let other = h.open().await;
    let created = store.create_binding(ADMIN, binding("hot")).await.unwrap();
    const WRITERS: u32 = 16;
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        // Half through each handle: two pools, as two replicas.
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let etag = created.etag.clone();
        tasks.push(tokio::spawn(async move {
            let b = Binding {
                max_duration_seconds: Some(900 + i * 60),
                ..binding("hot")
            };
            (i, s.update_binding(&format!("writer-{i}"), b, &etag).await)
        }));
    }
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (i, result) = t.await.unwrap();
        match result {
            Ok(stored) => winners.push((i, stored)),
            Err(StoreError::Conflict { given, .. }) => {
                assert_eq!(given, created.etag);
                conflicts += 1;
            }
            Err(e) => panic!("writer {i}: unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    assert_eq!(conflicts, WRITERS - 1);
    let (i, won) = &winners[0];
    let now = store.get_binding("hot").await.unwrap();
    assert_eq!(&now, won);
    assert_eq!(now.binding.max_duration_seconds, Some(900 + i * 60));
    let updates = store
        .list_audit(AuditQuery {
            target: Some("hot".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == AuditAction::UpdateBinding)
        .collect::<Vec<_>>();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].actor, format!("writer-{i}"));
}

fn json(text: Option<&str>) -> serde_json::Value {
    serde_json::from_str(text.unwrap()).unwrap()
}

async fn audit_records_every_change_with_before_and_after(h: Harness) {
    let store = h.open().await;
    let started = SystemTime::now() - Duration::from_secs(1);
    let v1 = store.create_binding("alice", binding("b")).await.unwrap();
    let v2 = store
        .update_binding(
            "bob",
            Binding {
                max_duration_seconds: Some(1800),
                ..binding("b")
            },
            &v1.etag,
        )
        .await
        .unwrap();
    store.delete_binding("carol", "b", &v2.etag).await.unwrap();
    store.deny("dave", "999", "compromised").await.unwrap();
    store.allow("erin", "999").await.unwrap();

    let all = store.list_audit(AuditQuery::default()).await.unwrap();
    let summary: Vec<(&str, AuditAction, &str)> = all
        .iter()
        .map(|e| (e.actor.as_str(), e.action, e.target.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("erin", AuditAction::AllowServiceAccount, "999"),
            ("dave", AuditAction::DenyServiceAccount, "999"),
            ("carol", AuditAction::DeleteBinding, "b"),
            ("bob", AuditAction::UpdateBinding, "b"),
            ("alice", AuditAction::CreateBinding, "b"),
        ]
    );
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert!(all.iter().all(|e| e.at >= started));

    let create = &all[4];
    assert_eq!(create.before, None);
    let after = json(create.after.as_deref());
    assert_eq!(after["name"], "b");
    assert_eq!(after["role_arns"][0], ROLE_A);
    assert_eq!(after["etag"], v1.etag);
    assert_eq!(create.revision, v1.revision);

    let update = &all[3];
    assert_eq!(json(update.before.as_deref())["etag"], v1.etag);
    assert!(
        json(update.before.as_deref())
            .get("max_duration_seconds")
            .is_none()
    );
    assert_eq!(json(update.after.as_deref())["max_duration_seconds"], 1800);
    assert_eq!(json(update.after.as_deref())["etag"], v2.etag);

    let delete = &all[2];
    assert_eq!(json(delete.before.as_deref())["etag"], v2.etag);
    assert_eq!(delete.after, None);

    assert_eq!(json(all[1].after.as_deref())["reason"], "compromised");
    assert_eq!(all[1].before, None);
    assert_eq!(json(all[0].before.as_deref())["service_account"], "999");
    assert_eq!(all[0].after, None);

    // Filter by target, and page with before_id.
    let about_b = store
        .list_audit(AuditQuery {
            target: Some("b".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(about_b.len(), 3);
    let page = store
        .list_audit(AuditQuery {
            before_id: Some(all[1].id),
            limit: 2,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<u64> = page.iter().map(|e| e.id).collect();
    assert_eq!(ids, [all[2].id, all[3].id]);
}

async fn failed_writes_change_nothing(h: Harness) {
    let store = h.open().await;
    let b = store.create_binding(ADMIN, binding("b")).await.unwrap();
    let before = store.load().await.unwrap();
    let audit_before = store.list_audit(AuditQuery::default()).await.unwrap();

    let invalid = Binding {
        conditions: Conditions {
            zones: vec!["us-[central".into()],
            ..Conditions::default()
        },
        session_policy: Some("x".repeat(2049)),
        ..binding("b")
    };
    match store.update_binding(ADMIN, invalid, &b.etag).await {
        Err(StoreError::Invalid(v)) => {
            let fields: Vec<&str> = v.iter().map(|v| v.error.field.as_str()).collect();
            assert_eq!(fields, ["conditions.zones[0]", "session_policy"]);
            assert!(
                v[0].to_string()
                    .starts_with("binding `b`: field conditions.zones[0]: invalid glob")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.create_binding(ADMIN, binding("b")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.update_binding(ADMIN, binding("b"), "1234567").await,
        Err(StoreError::Conflict { .. })
    ));
    // A set with one bad binding applies nothing.
    let bad_set = vec![
        binding("new-1"),
        Binding {
            role_arns: vec![],
            ..binding("new-2")
        },
    ];
    match store.apply(ADMIN, bad_set, true, false).await {
        Err(StoreError::Invalid(v)) => {
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].binding, "new-2");
            assert_eq!(v[0].error.field, "role_arns");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.deny(ADMIN, "not an account", "x").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.allow(ADMIN, "12345").await,
        Err(StoreError::NotFound { .. })
    ));

    assert_eq!(store.load().await.unwrap(), before, "nothing changed");
    assert_eq!(
        store.list_audit(AuditQuery::default()).await.unwrap(),
        audit_before,
        "nothing audited"
    );
}

async fn deny_list(h: Harness) {
    let store = h.open().await;
    let first = store
        .deny(
            ADMIN,
            "Etl@My-Project.iam.gserviceaccount.com",
            "rotating keys",
        )
        .await
        .unwrap();
    assert_eq!(
        first.service_account,
        "etl@my-project.iam.gserviceaccount.com"
    );
    assert_eq!(first.actor, ADMIN);
    store.deny(ADMIN, SUB, "incident 42").await.unwrap();
    // Denying again updates the reason and keeps the first time.
    let again = store
        .deny(
            "other-admin",
            "etl@my-project.iam.gserviceaccount.com",
            "still rotating",
        )
        .await
        .unwrap();
    assert_eq!(again.created_at, first.created_at);
    assert_eq!(again.reason, "still rotating");

    let listed = store.list_denied().await.unwrap();
    let names: Vec<(&str, &str)> = listed
        .iter()
        .map(|d| (d.service_account.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (SUB, "incident 42"),
            ("etl@my-project.iam.gserviceaccount.com", "still rotating")
        ]
    );
    let audit = store.list_audit(AuditQuery::default()).await.unwrap();
    assert_eq!(json(audit[0].before.as_deref())["reason"], "rotating keys");
    assert_eq!(json(audit[0].after.as_deref())["reason"], "still rotating");

    store
        .allow(ADMIN, "ETL@my-project.iam.gserviceaccount.com")
        .await
        .unwrap();
    let listed = store.list_denied().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].service_account, SUB);
    assert!(matches!(
        store
            .allow(ADMIN, "etl@my-project.iam.gserviceaccount.com")
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

fn policy_file() -> String {
    format!(
        r#"
[[binding]]
name = "team-a-s3-read"
service_accounts = ["{SUB}", "etl@my-project.iam.gserviceaccount.com"]
role_arns = ["{ROLE_A}"]
max_duration_seconds = 3600

[[binding]]
name = "gce-only"
service_accounts = ["{SUB}"]
role_arns = ["{ROLE_B}"]
max_duration_seconds = 7200
default_duration_seconds = 900
session_policy = '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}}]}}'
managed_policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]

[binding.conditions]
project_ids = ["prod-project"]
project_numbers = ["123456789012"]
zones = ["us-central1-*"]
instance_names = ["etl-*"]
"#
    )
}

async fn import_export_round_trip_and_declarative_apply(h: Harness) {
    let store = h.open().await;
    let imported = bindings::from_toml_str(&policy_file(), Path::new("policy.toml")).unwrap();

    let dry = store
        .apply(ADMIN, imported.clone(), false, true)
        .await
        .unwrap();
    assert_eq!(dry.created, ["gce-only", "team-a-s3-read"]);
    assert_eq!(dry.revision, None);
    assert_eq!(
        store.revision().await.unwrap(),
        0,
        "a dry run writes nothing"
    );

    let report = store
        .apply(ADMIN, imported.clone(), false, false)
        .await
        .unwrap();
    assert_eq!(report.created, ["gce-only", "team-a-s3-read"]);
    let revision = report.revision.unwrap();
    assert_eq!(store.revision().await.unwrap(), revision);

    // Export: the same bindings, and the same text as exporting the import.
    let contents = store.load().await.unwrap();
    assert_eq!(contents.revision, revision);
    let exported: Vec<Binding> = contents
        .bindings
        .iter()
        .map(|b| b.binding.clone())
        .collect();
    let mut expected = imported.clone();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(exported, expected);
    let text = bindings::to_toml_string(&exported).unwrap();
    assert_eq!(text, bindings::to_toml_string(&expected).unwrap());
    assert_eq!(
        bindings::from_toml_str(&text, Path::new("export.toml")).unwrap(),
        expected
    );

    // The same set again changes nothing.
    let again = store
        .apply(ADMIN, imported.clone(), true, false)
        .await
        .unwrap();
    assert!(again.is_noop());
    assert_eq!(again.unchanged, ["gce-only", "team-a-s3-read"]);
    assert_eq!(store.revision().await.unwrap(), revision);

    // A changed set with prune: one update, one create, one delete, one
    // revision for all of them.
    let changed = vec![
        Binding {
            max_duration_seconds: Some(1800),
            ..imported[0].clone()
        },
        binding("new"),
    ];
    let preview = store
        .apply(ADMIN, changed.clone(), true, true)
        .await
        .unwrap();
    let report = store
        .apply(ADMIN, changed.clone(), true, false)
        .await
        .unwrap();
    assert_eq!(report.created, ["new"]);
    assert_eq!(report.updated, ["team-a-s3-read"]);
    assert_eq!(report.deleted, ["gce-only"]);
    assert_eq!(
        (preview.created, preview.updated, preview.deleted),
        (
            report.created.clone(),
            report.updated.clone(),
            report.deleted.clone()
        )
    );
    let contents = store.load().await.unwrap();
    let names: Vec<&str> = contents
        .bindings
        .iter()
        .map(|b| b.binding.name.as_str())
        .collect();
    assert_eq!(names, ["new", "team-a-s3-read"]);
    assert!(
        contents
            .bindings
            .iter()
            .all(|b| b.revision == report.revision.unwrap())
    );
    let audit = store
        .list_audit(AuditQuery {
            limit: 3,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: BTreeSet<(AuditAction, &str)> = audit
        .iter()
        .map(|e| (e.action, e.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        BTreeSet::from([
            (AuditAction::CreateBinding, "new"),
            (AuditAction::UpdateBinding, "team-a-s3-read"),
            (AuditAction::DeleteBinding, "gce-only"),
        ])
    );
}

async fn changes_reach_another_handle(h: Harness) {
    let replica = h.open().await;
    let admin = h.open().await;
    let mut changes = replica.watch().await.unwrap();
    assert_eq!(changes.revision(), 0);

    let started = Instant::now();
    let created = admin.create_binding(ADMIN, binding("b")).await.unwrap();
    let seen = tokio::time::timeout(HANG_GUARD, changes.changed())
        .await
        .expect("no change notification")
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(seen, created.revision);
    assert!(elapsed < Duration::from_secs(2), "seen after {elapsed:?}");
    // The replica reads what the notification announced.
    assert_eq!(load_snapshot(&replica).await.unwrap().revision, seen);

    // A deny is a change too.
    admin.deny(ADMIN, SUB, "incident").await.unwrap();
    let seen = tokio::time::timeout(HANG_GUARD, changes.changed())
        .await
        .expect("no change notification")
        .unwrap();
    assert_eq!(seen, admin.revision().await.unwrap());
    assert!(seen > created.revision);

    // Changes through the watching handle itself are reported as well.
    replica.allow(ADMIN, SUB).await.unwrap();
    let seen = tokio::time::timeout(HANG_GUARD, changes.changed())
        .await
        .expect("no change notification")
        .unwrap();
    assert_eq!(seen, replica.revision().await.unwrap());
}

async fn snapshot_applies_conditions_and_the_deny_list(h: Harness) {
    let store = h.open().await;
    let imported = bindings::from_toml_str(&policy_file(), Path::new("policy.toml")).unwrap();
    store.apply(ADMIN, imported, false, false).await.unwrap();
    let snap = load_snapshot(&store).await.unwrap();
    let caller = |project: &str| Caller {
        sub: SUB.into(),
        email: None,
        email_verified: false,
        compute_engine: Some(ComputeEngine {
            project_id: Some(project.into()),
            project_number: Some("123456789012".into()),
            zone: Some("us-central1-b".into()),
            instance_name: Some("etl-7".into()),
            instance_id: None,
        }),
    };
    let d = snap.decide(&caller("prod-project"), ROLE_B).unwrap();
    assert_eq!(d.max_duration_seconds, 7200);
    assert_eq!(d.default_duration_seconds, 900);
    assert!(
        d.scope
            .session_policy
            .as_deref()
            .unwrap()
            .contains("s3:GetObject")
    );
    assert_eq!(
        d.scope.managed_policy_arns,
        ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
    );
    assert!(matches!(
        snap.decide(&caller("dev-project"), ROLE_B),
        Err(Refusal::ConditionsNotMet { .. })
    ));

    store.deny(ADMIN, SUB, "incident").await.unwrap();
    let snap = load_snapshot(&store).await.unwrap();
    assert_eq!(
        snap.decide(&caller("prod-project"), ROLE_B),
        Err(Refusal::ServiceAccountDenied)
    );
    assert_eq!(
        snap.decide(&caller("prod-project"), ROLE_A),
        Err(Refusal::ServiceAccountDenied)
    );
}

impl Harness {
    /// Runs `sql` on the database directly (as an old replica, or an
    /// operator, would).
    async fn execute(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            Backend::Postgres { schema } => {
                let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "SET search_path TO \"{schema}\"; {sql}"
                )))
                .execute(&pool)
                .await
                .unwrap();
                pool.close().await;
            }
        }
    }

    /// How many revocation rows are older than the retention (made at
    /// Unix millisecond 1000 by [`execute`](Self::execute)).
    async fn ancient_revocations(&self) -> i64 {
        let sql = "SELECT count(*) FROM revocations WHERE revoked_at_ms = 1000";
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                pool.close().await;
                n
            }
            Backend::Postgres { schema } => {
                let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
                let sql = sql.replace(
                    "FROM revocations",
                    &format!("FROM \"{schema}\".revocations"),
                );
                let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                n
            }
        }
    }
}

async fn revocations(h: Harness) {
    let store = h.open().await;
    let replica = h.open().await;
    let mut changes = replica.watch().await.unwrap();
    let before = store.revision().await.unwrap();

    let by_sa = store
        .revoke(ADMIN, Some(SUB), None, "INC-42")
        .await
        .unwrap();
    assert_eq!(by_sa.service_account.as_deref(), Some(SUB));
    assert_eq!(by_sa.role_arn, None);
    assert_eq!(by_sa.actor, ADMIN);
    assert!(by_sa.revision > before, "a revocation is a store write");
    // Every replica learns of it as of any change.
    let seen = tokio::time::timeout(HANG_GUARD, changes.changed())
        .await
        .expect("no change notification")
        .unwrap();
    assert_eq!(seen, by_sa.revision);
    let by_role = store.revoke(ADMIN, None, Some(ROLE_A), "").await.unwrap();
    let pair = store
        .revoke(ADMIN, Some(SUB), Some(ROLE_B), "")
        .await
        .unwrap();
    assert!(by_sa.id < by_role.id && by_role.id < pair.id);

    // What a replica loads carries them to its credential cache.
    let snap = load_snapshot(&replica).await.unwrap();
    let revocations = snap.revocations();
    assert_eq!(revocations.revision(), pair.revision);
    assert_eq!(revocations.iter().count(), 3);
    let obtained = before;
    assert!(revocations.revokes(SUB, "arn:aws:iam::111122223333:role/Other", obtained));
    assert!(revocations.revokes("9", ROLE_A, obtained));
    assert!(!revocations.revokes("9", ROLE_B, obtained));
    assert!(
        !revocations.revokes(SUB, ROLE_B, pair.revision),
        "obtained after"
    );
    assert_eq!(
        replica.list_revocations().await.unwrap(),
        vec![pair.clone(), by_role.clone(), by_sa.clone()],
        "newest first"
    );

    // Each is audited with what it named.
    let audit = store
        .list_audit(AuditQuery {
            target: Some(ROLE_A.into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, AuditAction::RevokeCachedCredentials);
    assert_eq!(audit[0].revision, by_role.revision);
    assert_eq!(json(audit[0].after.as_deref())["role_arn"], ROLE_A);

    // Refused: neither, an email, a bad ARN; nothing written.
    let revision = store.revision().await.unwrap();
    for (sa, role, field) in [
        (None, None, "service_account"),
        (
            Some("etl@p.iam.gserviceaccount.com"),
            None,
            "service_account",
        ),
        (None, Some("arn:aws:s3:::bucket"), "role_arn"),
    ] {
        match store.revoke(ADMIN, sa, role, "").await {
            Err(StoreError::Invalid(v)) => assert_eq!(v[0].error.field, field),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(store.revision().await.unwrap(), revision);

    // A revocation older than the longest credential lifetime matches
    // nothing still cached: loads leave it out, the next revocation
    // deletes it.
    h.execute(&format!(
        "INSERT INTO revocations (unique_id, role_arn, revoked_at_ms, actor, reason, revision) \
         VALUES ('{SUB}', NULL, 1000, 'old', '', 1)"
    ))
    .await;
    assert_eq!(h.ancient_revocations().await, 1);
    assert_eq!(store.load().await.unwrap().revocations.len(), 3);
    assert_eq!(store.list_revocations().await.unwrap().len(), 3);
    store.revoke(ADMIN, Some(SUB), None, "").await.unwrap();
    assert_eq!(h.ancient_revocations().await, 0);
    assert_eq!(store.list_revocations().await.unwrap().len(), 4);
}

#[tokio::test]
async fn store_open_picks_the_backend_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    assert!(matches!(Store::open(&url).await.unwrap(), Store::Sqlite(_)));
    match Store::open("mysql://localhost/x").await {
        Err(StoreError::Invalid(v)) => assert_eq!(v[0].error.field, "store.url"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reopening_an_existing_sqlite_file_keeps_its_data() {
    let h = Harness::sqlite();
    let first = h.open().await;
    let b = first.create_binding(ADMIN, binding("kept")).await.unwrap();
    if let Store::Sqlite(s) = &first {
        s.close().await;
    }
    let second = h.open().await;
    assert_eq!(second.get_binding("kept").await.unwrap(), b);
}

/// Any role that can connect can `NOTIFY` the store's channel with any
/// payload. A forged, huge revision must not stop a replica from following
/// the store: the notification is a hint, the revision is read from the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_notification_does_not_stop_a_replica_from_following() {
    let h = Harness::postgres();
    let replica = h.open().await;
    let admin = h.open().await;
    let Store::Postgres(pg) = &replica else {
        unreachable!("a PostgreSQL harness")
    };
    let channel = pg.channel().to_owned();
    let mut changes = replica.watch().await.unwrap();

    let attacker = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&postgres_url())
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(&channel)
        .bind("18446744073709551000")
        .execute(&attacker)
        .await
        .unwrap();
    let created = admin.create_binding(ADMIN, binding("b")).await.unwrap();
    let seen = tokio::time::timeout(HANG_GUARD, changes.changed())
        .await
        .expect("no change notification")
        .unwrap();
    assert_eq!(seen, created.revision, "the forged revision was believed");
    let again = admin.create_binding(ADMIN, binding("c")).await.unwrap();
    let seen = tokio::time::timeout(HANG_GUARD, changes.changed())
        .await
        .expect("the replica stopped following after a forged notification")
        .unwrap();
    assert_eq!(seen, again.revision);
}
