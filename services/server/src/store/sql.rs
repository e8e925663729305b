//! The logic both SQL backends share, over the row operations of one
//! transaction ([`Tx`]), and the `impl_tx!` macro that implements those
//! operations once for both.

use std::{
    future::Future,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokenbridge_policy::{
    Binding,
    revocation::{RETENTION, check_revocation},
    rules::{ServiceAccountRef, classify_service_account},
    validate_set,
};

use super::{
    ApplyReport, AuditAction, AuditEntry, AuditQuery, Changes, DeniedServiceAccount, MAX_PAGE_SIZE,
    PolicyStore, StoreContents, StoreError, StoredBinding, StoredRevocation,
};

/// A binding row as the database holds it.
#[derive(Debug, Clone)]
pub struct BindingRow {
    /// The binding name.
    pub name: String,
    /// The binding as JSON.
    pub spec: String,
    /// The revision that last wrote it.
    pub revision: i64,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last write, Unix milliseconds.
    pub updated_at_ms: i64,
}

/// A deny-list row.
#[derive(Debug, Clone)]
pub struct DeniedRow {
    /// Unique ID or lower-case email.
    pub service_account: String,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// When, Unix milliseconds.
    pub created_at_ms: i64,
    /// The revision that wrote it.
    pub revision: i64,
}

/// A revocation row.
#[derive(Debug, Clone)]
pub struct RevocationRow {
    /// Row id (0 when inserting).
    pub id: i64,
    /// The service account's unique ID, if it names one.
    pub unique_id: Option<String>,
    /// The role ARN, if it names one.
    pub role_arn: Option<String>,
    /// When, Unix milliseconds.
    pub revoked_at_ms: i64,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// The revision that wrote it.
    pub revision: i64,
}

/// An audit row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Row id (0 when inserting).
    pub id: i64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Who.
    pub actor: String,
    /// `AuditAction::as_str`.
    pub action: String,
    /// Binding name or service account.
    pub target: String,
    /// The revision of the change.
    pub revision: i64,
    /// Before, as JSON.
    pub before_json: Option<String>,
    /// After, as JSON.
    pub after_json: Option<String>,
}

/// The row operations one backend provides inside one transaction (an
/// implementation detail of [`SqlStore`], public only because its bound is).
/// The SQL is the same for both backends; see `impl_tx!`.
pub trait Tx: Send + Sized {
    /// Locks the store for writing and returns the next revision.
    fn bump_revision(&mut self) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
    /// The current revision.
    fn current_revision(&mut self) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
    /// One binding row.
    fn binding(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<BindingRow>, sqlx::Error>> + Send;
    /// Binding rows after `after` in name order.
    fn bindings_after(
        &mut self,
        after: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<BindingRow>, sqlx::Error>> + Send;
    /// Inserts a binding row.
    fn insert_binding(
        &mut self,
        row: &BindingRow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Replaces a binding row.
    fn update_binding(
        &mut self,
        row: &BindingRow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Deletes a binding row.
    fn delete_binding(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// One deny-list row.
    fn denied(
        &mut self,
        service_account: &str,
    ) -> impl Future<Output = Result<Option<DeniedRow>, sqlx::Error>> + Send;
    /// Every deny-list row.
    fn all_denied(&mut self) -> impl Future<Output = Result<Vec<DeniedRow>, sqlx::Error>> + Send;
    /// Inserts or replaces a deny-list row.
    fn upsert_denied(
        &mut self,
        row: &DeniedRow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Deletes a deny-list row.
    fn delete_denied(
        &mut self,
        service_account: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Inserts a revocation row and returns its id.
    fn insert_revocation(
        &mut self,
        row: &RevocationRow,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
    /// Revocation rows made at or after `since_ms`, oldest first.
    fn revocations_since(
        &mut self,
        since_ms: i64,
    ) -> impl Future<Output = Result<Vec<RevocationRow>, sqlx::Error>> + Send;
    /// Deletes the revocation rows made before `before_ms`.
    fn delete_revocations_before(
        &mut self,
        before_ms: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Appends an audit row.
    fn insert_audit(
        &mut self,
        row: &AuditRow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Audit rows, newest first.
    fn audit(
        &mut self,
        target: &str,
        before_id: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AuditRow>, sqlx::Error>> + Send;
    /// Tells other replicas about `revision` (delivered on commit).
    fn notify(&mut self, revision: i64) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Commits.
    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Rolls back.
    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// What a backend adds to its row operations: transactions and watching
/// (an implementation detail of [`SqlStore`]).
pub trait Backend: Send + Sync + 'static {
    /// Its transaction.
    type Tx: Tx;
    /// A write transaction, holding the writer lock from its first statement.
    fn begin_write(&self) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send;
    /// A read-only transaction that sees one consistent state.
    fn begin_read(&self) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send;
    /// Called after a write committed `revision`.
    fn committed(&self, revision: u64);
    /// See [`PolicyStore::watch`].
    fn watch(&self) -> impl Future<Output = Result<Changes, StoreError>> + Send;
}

/// The store over one backend.
#[derive(Debug, Clone)]
pub struct SqlStore<B> {
    backend: B,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or_default())
}

fn revision_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn etag_of(revision: i64) -> String {
    revision.to_string()
}

fn page(limit: u32) -> i64 {
    i64::from(if limit == 0 {
        100
    } else {
        limit.min(MAX_PAGE_SIZE)
    })
}

/// The etag as a revision; anything this store never returned is refused.
fn parse_etag(name: &str, etag: &str) -> Result<i64, StoreError> {
    if etag.is_empty() {
        return Err(StoreError::invalid(
            name,
            "etag",
            "required: send the etag of the binding as last read",
        ));
    }
    etag.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| StoreError::invalid(name, "etag", "not an etag this store returned"))
}

/// The binding as audit JSON: its fields and its etag.
#[derive(Serialize)]
struct AuditBinding<'a> {
    #[serde(flatten)]
    binding: &'a Binding,
    etag: String,
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode JSON: {e}")))
}

fn decode_binding(row: BindingRow) -> Result<StoredBinding, StoreError> {
    let binding: Binding = serde_json::from_str(&row.spec)
        .map_err(|e| StoreError::Corrupt(format!("binding `{}`: {e}", row.name)))?;
    if binding.name != row.name {
        return Err(StoreError::Corrupt(format!(
            "binding `{}` holds a spec named `{}`",
            row.name, binding.name
        )));
    }
    Ok(StoredBinding {
        binding,
        etag: etag_of(row.revision),
        revision: revision_of(row.revision),
        created_at: time_of(row.created_at_ms),
        updated_at: time_of(row.updated_at_ms),
    })
}

fn decode_denied(row: DeniedRow) -> DeniedServiceAccount {
    DeniedServiceAccount {
        service_account: row.service_account,
        reason: row.reason,
        actor: row.actor,
        created_at: time_of(row.created_at_ms),
        revision: revision_of(row.revision),
    }
}

fn decode_revocation(row: RevocationRow) -> StoredRevocation {
    StoredRevocation {
        id: revision_of(row.id),
        service_account: row.unique_id,
        role_arn: row.role_arn,
        reason: row.reason,
        actor: row.actor,
        revoked_at: time_of(row.revoked_at_ms),
        revision: revision_of(row.revision),
    }
}

/// Revocations made before this (Unix milliseconds) match nothing still
/// cached anywhere.
fn retention_cutoff_ms(now_ms: i64) -> i64 {
    now_ms.saturating_sub(i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX))
}

fn decode_audit(row: AuditRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: revision_of(row.id),
        at: time_of(row.at_ms),
        actor: row.actor,
        action: AuditAction::parse(&row.action)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown audit action `{}`", row.action)))?,
        target: row.target,
        revision: revision_of(row.revision),
        before: row.before_json,
        after: row.after_json,
    })
}

fn audit_binding_json(binding: &Binding, revision: i64) -> Result<String, StoreError> {
    to_json(&AuditBinding {
        binding,
        etag: etag_of(revision),
    })
}

fn audit_row_binding_json(row: &BindingRow) -> Result<String, StoreError> {
    let stored = decode_binding(row.clone())?;
    audit_binding_json(&stored.binding, row.revision)
}

fn validate_one(binding: &Binding) -> Result<(), StoreError> {
    let violations = validate_set(std::slice::from_ref(binding));
    if violations.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(violations))
    }
}

fn normalize_service_account(sa: &str) -> Result<String, StoreError> {
    match classify_service_account(sa) {
        Some(ServiceAccountRef::UniqueId) => Ok(sa.to_string()),
        Some(ServiceAccountRef::Email) => Ok(sa.to_ascii_lowercase()),
        None => Err(StoreError::invalid(
            "",
            "service_account",
            format!(
                "`{}` is neither a service account unique ID (digits) nor an email",
                tokenbridge_policy::rules::shorten(sa)
            ),
        )),
    }
}

struct Audit<'a> {
    actor: &'a str,
    at_ms: i64,
    revision: i64,
}

impl Audit<'_> {
    async fn record<T: Tx>(
        &self,
        tx: &mut T,
        action: AuditAction,
        target: &str,
        before: Option<String>,
        after: Option<String>,
    ) -> Result<(), StoreError> {
        tx.insert_audit(&AuditRow {
            id: 0,
            at_ms: self.at_ms,
            actor: self.actor.to_string(),
            action: action.as_str().to_string(),
            target: target.to_string(),
            revision: self.revision,
            before_json: before,
            after_json: after,
        })
        .await?;
        Ok(())
    }
}

impl<B: Backend> SqlStore<B> {
    pub(crate) fn new(backend: B) -> Self {
        Self { backend }
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// Commits a write, notifying others, and tells the backend.
    async fn finish(&self, mut tx: B::Tx, revision: i64) -> Result<(), StoreError> {
        tx.notify(revision).await?;
        tx.commit().await?;
        self.backend.committed(revision_of(revision));
        Ok(())
    }

    async fn write_binding(
        &self,
        actor: &str,
        binding: Binding,
        etag: Option<&str>,
    ) -> Result<StoredBinding, StoreError> {
        validate_one(&binding)?;
        let expected = etag.map(|e| parse_etag(&binding.name, e)).transpose()?;
        let spec = to_json(&binding)?;
        let mut tx = self.backend.begin_write().await?;
        let revision = tx.bump_revision().await?;
        let now = now_ms();
        let audit = Audit {
            actor,
            at_ms: now,
            revision,
        };
        let existing = tx.binding(&binding.name).await?;
        let row = match (expected, existing) {
            (None, Some(_)) => {
                tx.rollback().await?;
                return Err(StoreError::AlreadyExists { name: binding.name });
            }
            (Some(_), None) => {
                tx.rollback().await?;
                return Err(StoreError::NotFound {
                    what: format!("binding `{}`", binding.name),
                });
            }
            (Some(given), Some(current)) if current.revision != given => {
                tx.rollback().await?;
                return Err(StoreError::Conflict {
                    name: binding.name,
                    given: etag_of(given),
                    current: etag_of(current.revision),
                });
            }
            (None, None) => {
                let row = BindingRow {
                    name: binding.name.clone(),
                    spec,
                    revision,
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                tx.insert_binding(&row).await?;
                audit
                    .record(
                        &mut tx,
                        AuditAction::CreateBinding,
                        &binding.name,
                        None,
                        Some(audit_binding_json(&binding, revision)?),
                    )
                    .await?;
                row
            }
            (Some(_), Some(current)) => {
                let row = BindingRow {
                    name: binding.name.clone(),
                    spec,
                    revision,
                    created_at_ms: current.created_at_ms,
                    updated_at_ms: now,
                };
                tx.update_binding(&row).await?;
                audit
                    .record(
                        &mut tx,
                        AuditAction::UpdateBinding,
                        &binding.name,
                        Some(audit_row_binding_json(&current)?),
                        Some(audit_binding_json(&binding, revision)?),
                    )
                    .await?;
                row
            }
        };
        self.finish(tx, revision).await?;
        Ok(StoredBinding {
            binding,
            etag: etag_of(revision),
            revision: revision_of(revision),
            created_at: time_of(row.created_at_ms),
            updated_at: time_of(row.updated_at_ms),
        })
    }
}

type Everything = (i64, Vec<BindingRow>, Vec<DeniedRow>, Vec<RevocationRow>);

async fn read_all<T: Tx>(tx: &mut T) -> Result<Everything, sqlx::Error> {
    let revision = tx.current_revision().await?;
    let mut rows = Vec::new();
    let mut after = String::new();
    loop {
        let batch = tx.bindings_after(&after, i64::from(MAX_PAGE_SIZE)).await?;
        let Some(last) = batch.last() else { break };
        after = last.name.clone();
        rows.extend(batch);
    }
    let denied = tx.all_denied().await?;
    let revocations = tx.revocations_since(retention_cutoff_ms(now_ms())).await?;
    Ok((revision, rows, denied, revocations))
}

/// Ends a read-only transaction (rolling back and committing are the same)
/// and passes the result on.
async fn end_read<T: Tx, R>(tx: T, out: Result<R, sqlx::Error>) -> Result<R, StoreError> {
    let out = out?;
    tx.rollback().await?;
    Ok(out)
}

impl<B: Backend> PolicyStore for SqlStore<B> {
    async fn list_bindings(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<StoredBinding>, StoreError> {
        let mut tx = self.backend.begin_read().await?;
        let out = tx.bindings_after(after, page(limit)).await;
        let rows = end_read(tx, out).await?;
        rows.into_iter().map(decode_binding).collect()
    }

    async fn get_binding(&self, name: &str) -> Result<StoredBinding, StoreError> {
        let mut tx = self.backend.begin_read().await?;
        let out = tx.binding(name).await;
        let row = end_read(tx, out).await?;
        match row {
            Some(row) => decode_binding(row),
            None => Err(StoreError::NotFound {
                what: format!("binding `{name}`"),
            }),
        }
    }

    async fn create_binding(
        &self,
        actor: &str,
        binding: Binding,
    ) -> Result<StoredBinding, StoreError> {
        self.write_binding(actor, binding, None).await
    }

    async fn update_binding(
        &self,
        actor: &str,
        binding: Binding,
        etag: &str,
    ) -> Result<StoredBinding, StoreError> {
        self.write_binding(actor, binding, Some(etag)).await
    }

    async fn delete_binding(&self, actor: &str, name: &str, etag: &str) -> Result<(), StoreError> {
        let given = parse_etag(name, etag)?;
        let mut tx = self.backend.begin_write().await?;
        let revision = tx.bump_revision().await?;
        let Some(current) = tx.binding(name).await? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound {
                what: format!("binding `{name}`"),
            });
        };
        if current.revision != given {
            tx.rollback().await?;
            return Err(StoreError::Conflict {
                name: name.to_string(),
                given: etag_of(given),
                current: etag_of(current.revision),
            });
        }
        tx.delete_binding(name).await?;
        let audit = Audit {
            actor,
            at_ms: now_ms(),
            revision,
        };
        audit
            .record(
                &mut tx,
                AuditAction::DeleteBinding,
                name,
                Some(audit_row_binding_json(&current)?),
                None,
            )
            .await?;
        self.finish(tx, revision).await
    }

    async fn apply(
        &self,
        actor: &str,
        bindings: Vec<Binding>,
        prune: bool,
        dry_run: bool,
    ) -> Result<ApplyReport, StoreError> {
        let violations = validate_set(&bindings);
        if !violations.is_empty() {
            return Err(StoreError::Invalid(violations));
        }
        let mut tx = self.backend.begin_write().await?;
        let revision = tx.bump_revision().await?;
        let now = now_ms();
        let audit = Audit {
            actor,
            at_ms: now,
            revision,
        };
        let mut existing = std::collections::BTreeMap::new();
        let mut after = String::new();
        loop {
            let rows = tx.bindings_after(&after, i64::from(MAX_PAGE_SIZE)).await?;
            let Some(last) = rows.last() else { break };
            after = last.name.clone();
            for row in rows {
                existing.insert(row.name.clone(), row);
            }
        }
        let mut report = ApplyReport::default();
        let mut wanted = std::collections::BTreeSet::new();
        let mut sorted = bindings;
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for binding in sorted {
            wanted.insert(binding.name.clone());
            let spec = to_json(&binding)?;
            match existing.get(&binding.name) {
                None => {
                    report.created.push(binding.name.clone());
                    if dry_run {
                        continue;
                    }
                    tx.insert_binding(&BindingRow {
                        name: binding.name.clone(),
                        spec,
                        revision,
                        created_at_ms: now,
                        updated_at_ms: now,
                    })
                    .await?;
                    audit
                        .record(
                            &mut tx,
                            AuditAction::CreateBinding,
                            &binding.name,
                            None,
                            Some(audit_binding_json(&binding, revision)?),
                        )
                        .await?;
                }
                Some(current) => {
                    let same = decode_binding(current.clone())
                        .map(|s| s.binding == binding)
                        .unwrap_or(false);
                    if same {
                        report.unchanged.push(binding.name.clone());
                        continue;
                    }
                    report.updated.push(binding.name.clone());
                    if dry_run {
                        continue;
                    }
                    tx.update_binding(&BindingRow {
                        name: binding.name.clone(),
                        spec,
                        revision,
                        created_at_ms: current.created_at_ms,
                        updated_at_ms: now,
                    })
                    .await?;
                    let before = audit_row_binding_json(current).ok();
                    audit
                        .record(
                            &mut tx,
                            AuditAction::UpdateBinding,
                            &binding.name,
                            before,
                            Some(audit_binding_json(&binding, revision)?),
                        )
                        .await?;
                }
            }
        }
        if prune {
            for (name, row) in &existing {
                if wanted.contains(name) {
                    continue;
                }
                report.deleted.push(name.clone());
                if dry_run {
                    continue;
                }
                tx.delete_binding(name).await?;
                let before = audit_row_binding_json(row).ok();
                audit
                    .record(&mut tx, AuditAction::DeleteBinding, name, before, None)
                    .await?;
            }
        }
        if dry_run || report.is_noop() {
            tx.rollback().await?;
            return Ok(report);
        }
        self.finish(tx, revision).await?;
        report.revision = Some(revision_of(revision));
        Ok(report)
    }

    async fn deny(
        &self,
        actor: &str,
        service_account: &str,
        reason: &str,
    ) -> Result<DeniedServiceAccount, StoreError> {
        let sa = normalize_service_account(service_account)?;
        if reason.chars().count() > 1024 {
            return Err(StoreError::invalid("", "reason", "at most 1024 characters"));
        }
        let mut tx = self.backend.begin_write().await?;
        let revision = tx.bump_revision().await?;
        let now = now_ms();
        let before = tx.denied(&sa).await?;
        let row = DeniedRow {
            service_account: sa.clone(),
            reason: reason.to_string(),
            actor: actor.to_string(),
            created_at_ms: before.as_ref().map_or(now, |b| b.created_at_ms),
            revision,
        };
        tx.upsert_denied(&row).await?;
        let audit = Audit {
            actor,
            at_ms: now,
            revision,
        };
        let before_json = before.map(|b| to_json(&decode_denied(b))).transpose()?;
        let entry = decode_denied(row);
        audit
            .record(
                &mut tx,
                AuditAction::DenyServiceAccount,
                &sa,
                before_json,
                Some(to_json(&entry)?),
            )
            .await?;
        self.finish(tx, revision).await?;
        Ok(entry)
    }

    async fn allow(&self, actor: &str, service_account: &str) -> Result<(), StoreError> {
        let sa = normalize_service_account(service_account)?;
        let mut tx = self.backend.begin_write().await?;
        let revision = tx.bump_revision().await?;
        let Some(before) = tx.denied(&sa).await? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound {
                what: format!("denied service account `{sa}`"),
            });
        };
        tx.delete_denied(&sa).await?;
        let audit = Audit {
            actor,
            at_ms: now_ms(),
            revision,
        };
        audit
            .record(
                &mut tx,
                AuditAction::AllowServiceAccount,
                &sa,
                Some(to_json(&decode_denied(before))?),
                None,
            )
            .await?;
        self.finish(tx, revision).await
    }

    async fn list_denied(&self) -> Result<Vec<DeniedServiceAccount>, StoreError> {
        let mut tx = self.backend.begin_read().await?;
        let out = tx.all_denied().await;
        let rows = end_read(tx, out).await?;
        Ok(rows.into_iter().map(decode_denied).collect())
    }

    async fn revoke(
        &self,
        actor: &str,
        service_account: Option<&str>,
        role_arn: Option<&str>,
        reason: &str,
    ) -> Result<StoredRevocation, StoreError> {
        check_revocation(service_account, role_arn, reason)
            .map_err(|e| StoreError::invalid("", &e.field, e.reason))?;
        let mut tx = self.backend.begin_write().await?;
        let revision = tx.bump_revision().await?;
        let now = now_ms();
        tx.delete_revocations_before(retention_cutoff_ms(now))
            .await?;
        let mut row = RevocationRow {
            id: 0,
            unique_id: service_account.map(str::to_string),
            role_arn: role_arn.map(str::to_string),
            revoked_at_ms: now,
            actor: actor.to_string(),
            reason: reason.to_string(),
            revision,
        };
        row.id = tx.insert_revocation(&row).await?;
        let revocation = decode_revocation(row);
        let audit = Audit {
            actor,
            at_ms: now,
            revision,
        };
        let target = revocation
            .service_account
            .as_deref()
            .or(revocation.role_arn.as_deref())
            .unwrap_or_default();
        audit
            .record(
                &mut tx,
                AuditAction::RevokeCachedCredentials,
                target,
                None,
                Some(to_json(&revocation)?),
            )
            .await?;
        self.finish(tx, revision).await?;
        Ok(revocation)
    }

    async fn list_revocations(&self) -> Result<Vec<StoredRevocation>, StoreError> {
        let mut tx = self.backend.begin_read().await?;
        let out = tx.revocations_since(retention_cutoff_ms(now_ms())).await;
        let rows = end_read(tx, out).await?;
        Ok(rows.into_iter().rev().map(decode_revocation).collect())
    }

    async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let target = query.target.unwrap_or_default();
        let before = query
            .before_id
            .map(|id| i64::try_from(id).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut tx = self.backend.begin_read().await?;
        let out = tx.audit(&target, before, page(query.limit)).await;
        let rows = end_read(tx, out).await?;
        rows.into_iter().map(decode_audit).collect()
    }

    async fn load(&self) -> Result<StoreContents, StoreError> {
        let mut tx = self.backend.begin_read().await?;
        let out = read_all(&mut tx).await;
        let (revision, rows, denied, revocations) = end_read(tx, out).await?;
        Ok(StoreContents {
            revision: revision_of(revision),
            bindings: rows
                .into_iter()
                .map(decode_binding)
                .collect::<Result<_, _>>()?,
            denied: denied.into_iter().map(decode_denied).collect(),
            revocations: revocations.into_iter().map(decode_revocation).collect(),
        })
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let mut tx = self.backend.begin_read().await?;
        let out = tx.current_revision().await;
        let r = end_read(tx, out).await?;
        Ok(revision_of(r))
    }

    async fn watch(&self) -> Result<Changes, StoreError> {
        self.backend.watch().await
    }
}

/// Implements [`Tx`] for a newtype over `sqlx::Transaction<'static, DB>`.
/// The SQL is identical for SQLite and PostgreSQL (`$N` parameters work in
/// both); `notify` is the backend's own inherent method.
macro_rules! impl_tx {
    ($tx:ty, $row:ty) => {
        impl $crate::store::Tx for $tx {
            async fn bump_revision(&mut self) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(
                    "UPDATE store_state SET revision = revision + 1 WHERE id = 1 RETURNING revision",
                )
                .fetch_one(&mut *self.0)
                .await
            }

            async fn current_revision(&mut self) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar("SELECT revision FROM store_state WHERE id = 1")
                    .fetch_one(&mut *self.0)
                    .await
            }

            async fn binding(
                &mut self,
                name: &str,
            ) -> Result<Option<$crate::store::BindingRow>, sqlx::Error> {
                let row = sqlx::query(
                    "SELECT name, spec, revision, created_at_ms, updated_at_ms FROM bindings WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&mut *self.0)
                .await?;
                row.map(|r| binding_row(&r)).transpose()
            }

            async fn bindings_after(
                &mut self,
                after: &str,
                limit: i64,
            ) -> Result<Vec<$crate::store::BindingRow>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT name, spec, revision, created_at_ms, updated_at_ms FROM bindings WHERE name > $1 ORDER BY name LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *self.0)
                .await?;
                rows.iter().map(binding_row).collect()
            }

            async fn insert_binding(
                &mut self,
                row: &$crate::store::BindingRow,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO bindings (name, spec, revision, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&row.name)
                .bind(&row.spec)
                .bind(row.revision)
                .bind(row.created_at_ms)
                .bind(row.updated_at_ms)
                .execute(&mut *self.0)
                .await
                .map(drop)
            }

            async fn update_binding(
                &mut self,
                row: &$crate::store::BindingRow,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "UPDATE bindings SET spec = $2, revision = $3, updated_at_ms = $4 WHERE name = $1",
                )
                .bind(&row.name)
                .bind(&row.spec)
                .bind(row.revision)
                .bind(row.updated_at_ms)
                .execute(&mut *self.0)
                .await
                .map(drop)
            }

            async fn delete_binding(&mut self, name: &str) -> Result<(), sqlx::Error> {
                sqlx::query("DELETE FROM bindings WHERE name = $1")
                    .bind(name)
                    .execute(&mut *self.0)
                    .await
                    .map(drop)
            }

            async fn denied(
                &mut self,
                service_account: &str,
            ) -> Result<Option<$crate::store::DeniedRow>, sqlx::Error> {
                let row = sqlx::query(
                    "SELECT service_account, reason, actor, created_at_ms, revision FROM denied_service_accounts WHERE service_account = $1",
                )
                .bind(service_account)
                .fetch_optional(&mut *self.0)
                .await?;
                row.map(|r| denied_row(&r)).transpose()
            }

            async fn all_denied(&mut self) -> Result<Vec<$crate::store::DeniedRow>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT service_account, reason, actor, created_at_ms, revision FROM denied_service_accounts ORDER BY service_account",
                )
                .fetch_all(&mut *self.0)
                .await?;
                rows.iter().map(denied_row).collect()
            }

            async fn upsert_denied(
                &mut self,
                row: &$crate::store::DeniedRow,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO denied_service_accounts (service_account, reason, actor, created_at_ms, revision) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (service_account) DO UPDATE SET reason = excluded.reason, actor = excluded.actor, revision = excluded.revision",
                )
                .bind(&row.service_account)
                .bind(&row.reason)
                .bind(&row.actor)
                .bind(row.created_at_ms)
                .bind(row.revision)
                .execute(&mut *self.0)
                .await
                .map(drop)
            }

            async fn delete_denied(&mut self, service_account: &str) -> Result<(), sqlx::Error> {
                sqlx::query("DELETE FROM denied_service_accounts WHERE service_account = $1")
                    .bind(service_account)
                    .execute(&mut *self.0)
                    .await
                    .map(drop)
            }

            async fn insert_revocation(
                &mut self,
                row: &$crate::store::RevocationRow,
            ) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(
                    "INSERT INTO revocations (unique_id, role_arn, revoked_at_ms, actor, reason, revision) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(row.unique_id.as_deref())
                .bind(row.role_arn.as_deref())
                .bind(row.revoked_at_ms)
                .bind(&row.actor)
                .bind(&row.reason)
                .bind(row.revision)
                .fetch_one(&mut *self.0)
                .await
            }

            async fn revocations_since(
                &mut self,
                since_ms: i64,
            ) -> Result<Vec<$crate::store::RevocationRow>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT id, unique_id, role_arn, revoked_at_ms, actor, reason, revision FROM revocations WHERE revoked_at_ms >= $1 ORDER BY id",
                )
                .bind(since_ms)
                .fetch_all(&mut *self.0)
                .await?;
                rows.iter().map(revocation_row).collect()
            }

            async fn delete_revocations_before(&mut self, before_ms: i64) -> Result<(), sqlx::Error> {
                sqlx::query("DELETE FROM revocations WHERE revoked_at_ms < $1")
                    .bind(before_ms)
                    .execute(&mut *self.0)
                    .await
                    .map(drop)
            }

            async fn insert_audit(
                &mut self,
                row: &$crate::store::AuditRow,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO audit_log (at_ms, actor, action, target, revision, before_json, after_json) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(row.at_ms)
                .bind(&row.actor)
                .bind(&row.action)
                .bind(&row.target)
                .bind(row.revision)
                .bind(row.before_json.as_deref())
                .bind(row.after_json.as_deref())
                .execute(&mut *self.0)
                .await
                .map(drop)
            }

            async fn audit(
                &mut self,
                target: &str,
                before_id: i64,
                limit: i64,
            ) -> Result<Vec<$crate::store::AuditRow>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT id, at_ms, actor, action, target, revision, before_json, after_json FROM audit_log \
                     WHERE ($1 = '' OR target = $1) AND ($2 = 0 OR id < $2) ORDER BY id DESC LIMIT $3",
                )
                .bind(target)
                .bind(before_id)
                .bind(limit)
                .fetch_all(&mut *self.0)
                .await?;
                rows.iter().map(audit_row).collect()
            }

            async fn notify(&mut self, revision: i64) -> Result<(), sqlx::Error> {
                self.notify_others(revision).await
            }

            async fn commit(self) -> Result<(), sqlx::Error> {
                self.0.commit().await
            }

            async fn rollback(self) -> Result<(), sqlx::Error> {
                self.0.rollback().await
            }
        }

        fn binding_row(r: &$row) -> Result<$crate::store::BindingRow, sqlx::Error> {
            use sqlx::Row as _;
            Ok($crate::store::BindingRow {
                name: r.try_get("name")?,
                spec: r.try_get("spec")?,
                revision: r.try_get("revision")?,
                created_at_ms: r.try_get("created_at_ms")?,
                updated_at_ms: r.try_get("updated_at_ms")?,
            })
        }

        fn denied_row(r: &$row) -> Result<$crate::store::DeniedRow, sqlx::Error> {
            use sqlx::Row as _;
            Ok($crate::store::DeniedRow {
                service_account: r.try_get("service_account")?,
                reason: r.try_get("reason")?,
                actor: r.try_get("actor")?,
                created_at_ms: r.try_get("created_at_ms")?,
                revision: r.try_get("revision")?,
            })
        }

        fn revocation_row(r: &$row) -> Result<$crate::store::RevocationRow, sqlx::Error> {
            use sqlx::Row as _;
            Ok($crate::store::RevocationRow {
                id: r.try_get("id")?,
                unique_id: r.try_get("unique_id")?,
                role_arn: r.try_get("role_arn")?,
                revoked_at_ms: r.try_get("revoked_at_ms")?,
                actor: r.try_get("actor")?,
                reason: r.try_get("reason")?,
                revision: r.try_get("revision")?,
            })
        }

        fn audit_row(r: &$row) -> Result<$crate::store::AuditRow, sqlx::Error> {
            use sqlx::Row as _;
            Ok($crate::store::AuditRow {
                id: r.try_get("id")?,
                at_ms: r.try_get("at_ms")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                revision: r.try_get("revision")?,
                before_json: r.try_get("before_json")?,
                after_json: r.try_get("after_json")?,
            })
        }
    };
}
pub(crate) use impl_tx;

/// The embedded migrations of one backend, as sqlx runs them.
pub(crate) fn migrator(files: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr as _;
    sqlx::migrate::Migrator::with_migrations(
        files
            .iter()
            .map(|(version, description, sql)| {
                sqlx::migrate::Migration::new(
                    *version,
                    (*description).into(),
                    sqlx::migrate::MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_must_be_what_the_store_returned() {
        assert!(
            matches!(parse_etag("b", ""), Err(StoreError::Invalid(v)) if v[0].error.field == "etag")
        );
        assert!(matches!(
            parse_etag("b", "W/\"x\""),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(parse_etag("b", "0"), Err(StoreError::Invalid(_))));
        assert_eq!(parse_etag("b", "42").unwrap(), 42);
    }
}
