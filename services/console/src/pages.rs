//! The handlers: each reads its input, asks the backend, and renders a
//! template with a view made of plain strings and numbers.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Extension, Form,
    extract::{
        Path, Query, State,
        rejection::{FormRejection, QueryRejection},
    },
    http::StatusCode,
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::{Deserialize, Serialize};
use tokenbridge_proto::v1 as pb;
use tracing::info;

use crate::{
    App, MAX_BODY_BYTES, MAX_FIELD_BYTES,
    access::Principal,
    backend::{Decision, Outcome, TrustPolicy},
    chart,
    csrf::CsrfError,
    render::{PageError, render},
};

type PageResult = Result<Html<String>, PageError>;

/// Most decisions listed on one page.
const MAX_DECISIONS_SHOWN: usize = 500;

/// Who is looking and which page is open, for the layout.
#[derive(Serialize)]
struct Me<'a> {
    actor: &'a str,
    admin: bool,
    nav: &'static str,
}

fn me<'a>(p: &'a Principal, nav: &'static str) -> Me<'a> {
    Me {
        actor: &p.actor,
        admin: p.admin,
        nav,
    }
}

/// A form or query field: trimmed, at most [`MAX_FIELD_BYTES`], no control
/// characters.
fn field(name: &str, value: &str) -> Result<String, PageError> {
    let value = value.trim();
    if value.len() > MAX_FIELD_BYTES {
        return Err(PageError::bad_request(format!(
            "The field `{name}` is longer than {MAX_FIELD_BYTES} bytes."
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(PageError::bad_request(format!(
            "The field `{name}` contains control characters."
        )));
    }
    Ok(value.to_owned())
}

fn form_error(r: &FormRejection) -> PageError {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => PageError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request too large",
            format!("The form is larger than {} KiB.", MAX_BODY_BYTES / 1024),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            PageError::bad_request("Expected a form (application/x-www-form-urlencoded).")
        }
        _ => PageError::bad_request(
            "The form could not be read: it is not valid URL-encoded form data (each field once, as UTF-8).",
        ),
    }
}

fn query_error(_: &QueryRejection) -> PageError {
    PageError::bad_request(
        "The query string could not be read: it is not valid URL-encoded data (each parameter once, as UTF-8).",
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn timestamp(seconds: Option<i64>) -> String {
    match seconds.and_then(|s| u64::try_from(s).ok()) {
        Some(s) => rfc3339(UNIX_EPOCH + Duration::from_secs(s)),
        None => String::new(),
    }
}

fn contains_ci(haystack: &str, needle_lower: &str) -> bool {
    haystack.to_lowercase().contains(needle_lower)
}

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn home() -> Redirect {
    Redirect::to("/bindings")
}

pub(crate) async fn not_found() -> PageError {
    PageError::not_found("There is no such page.")
}

pub(crate) async fn method_not_allowed() -> PageError {
    PageError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "This page does not answer that method.",
    )
}

// ---------------------------------------------------------------- bindings

#[derive(Deserialize, Default)]
pub(crate) struct BindingsQuery {
    #[serde(default)]
    q: String,
}

#[derive(Serialize)]
struct BindingRow {
    name: String,
    service_accounts: Vec<String>,
    role_arns: Vec<String>,
    conditions: bool,
    scoped: bool,
}

#[derive(Serialize)]
struct BindingsPage<'a> {
    me: Me<'a>,
    q: String,
    total: usize,
    rows: Vec<BindingRow>,
}

fn has_conditions(b: &pb::Binding) -> bool {
    b.conditions.as_ref().is_some_and(|c| {
        !(c.project_ids.is_empty()
            && c.project_numbers.is_empty()
            && c.zones.is_empty()
            && c.instance_names.is_empty())
    })
}

pub(crate) async fn bindings(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<BindingsQuery>, QueryRejection>,
) -> PageResult {
    let Query(query) = query.map_err(|e| query_error(&e))?;
    let q = field("q", &query.q)?;
    let needle = q.to_lowercase();
    let all = app.backend.list_bindings().await?;
    let total = all.len();
    let rows = all
        .into_iter()
        .filter(|b| {
            needle.is_empty()
                || contains_ci(&b.name, &needle)
                || b.service_accounts.iter().any(|s| contains_ci(s, &needle))
                || b.role_arns.iter().any(|r| contains_ci(r, &needle))
        })
        .map(|b| BindingRow {
            conditions: has_conditions(&b),
            scoped: !b.session_policy.is_empty() || !b.managed_policy_arns.is_empty(),
            name: b.name,
            service_accounts: b.service_accounts,
            role_arns: b.role_arns,
        })
        .collect();
    render(
        "bindings.html",
        &BindingsPage {
            me: me(&p, "bindings"),
            q,
            total,
            rows,
        },
    )
}

#[derive(Serialize)]
struct ConditionsView {
    project_ids: Vec<String>,
    project_numbers: Vec<String>,
    zones: Vec<String>,
    instance_names: Vec<String>,
}

#[derive(Serialize)]
struct BindingView {
    name: String,
    service_accounts: Vec<String>,
    role_arns: Vec<String>,
    max_duration: String,
    default_duration: String,
    conditions: Option<ConditionsView>,
    session_policy: String,
    managed_policy_arns: Vec<String>,
    issuer: &'static str,
    session_tags: Vec<(String, String)>,
    source_identity: String,
    etag: String,
    create_time: String,
    update_time: String,
}

#[derive(Serialize)]
struct TrustView {
    policy: Option<TrustPolicy>,
    error: String,
}

#[derive(Serialize)]
struct BindingPage<'a> {
    me: Me<'a>,
    b: BindingView,
    trust: TrustView,
}

fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}

fn binding_view(b: pb::Binding) -> BindingView {
    let conditions = if has_conditions(&b) {
        b.conditions.as_ref().map(|c| ConditionsView {
            project_ids: c.project_ids.clone(),
            project_numbers: c.project_numbers.clone(),
            zones: c.zones.clone(),
            instance_names: c.instance_names.clone(),
        })
    } else {
        None
    };
    let mut session_tags: Vec<(String, String)> = b.session_tags.into_iter().collect();
    session_tags.sort();
    BindingView {
        max_duration: b
            .max_duration_seconds
            .map_or_else(|| "3600 s (default)".to_owned(), |s| format!("{s} s")),
        default_duration: b.default_duration_seconds.map_or_else(
            || "the smaller of the maximum and 3600 s".to_owned(),
            |s| format!("{s} s"),
        ),
        conditions,
        session_policy: if b.session_policy.is_empty() {
            String::new()
        } else {
            pretty_json(&b.session_policy)
        },
        managed_policy_arns: b.managed_policy_arns,
        issuer: match b.issuer {
            Some(true) => "on",
            Some(false) => "off",
            None => "the server's default",
        },
        session_tags,
        source_identity: b.source_identity,
        etag: b.etag,
        create_time: timestamp(b.create_time.map(|t| t.seconds)),
        update_time: timestamp(b.update_time.map(|t| t.seconds)),
        name: b.name,
        service_accounts: b.service_accounts,
        role_arns: b.role_arns,
    }
}

pub(crate) async fn binding(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> PageResult {
    let name = field("name", &name)?;
    let Some(b) = app.backend.get_binding(&name).await? else {
        return Err(PageError::not_found(format!(
            "There is no binding named {name:?}."
        )));
    };
    let trust = match app.backend.trust_policy(&b) {
        Ok(policy) => TrustView {
            policy: Some(policy),
            error: String::new(),
        },
        Err(e) => TrustView {
            policy: None,
            error: e.to_string(),
        },
    };
    render(
        "binding.html",
        &BindingPage {
            me: me(&p, "bindings"),
            b: binding_view(b),
            trust,
        },
    )
}

// ----------------------------------------------------------------- explain

#[derive(Deserialize, Default, Serialize)]
pub(crate) struct ExplainForm {
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    role_arn: String,
    /// `yes` (the default) or `no`.
    #[serde(default)]
    email_verified: String,
    #[serde(default)]
    project_id: String,
    #[serde(default)]
    project_number: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    instance_name: String,
    #[serde(default)]
    instance_id: String,
}

impl ExplainForm {
    fn cleaned(&self) -> Result<Self, PageError> {
        Ok(Self {
            service_account: field("service_account", &self.service_account)?,
            sub: field("sub", &self.sub)?,
            role_arn: field("role_arn", &self.role_arn)?,
            email_verified: match field("email_verified", &self.email_verified)?.as_str() {
                "" | "yes" => "yes".to_owned(),
                "no" => "no".to_owned(),
                _ => {
                    return Err(PageError::bad_request(
                        "The field `email_verified` must be yes or no.",
                    ));
                }
            },
            project_id: field("project_id", &self.project_id)?,
            project_number: field("project_number", &self.project_number)?,
            zone: field("zone", &self.zone)?,
            instance_name: field("instance_name", &self.instance_name)?,
            instance_id: field("instance_id", &self.instance_id)?,
        })
    }

    fn request(&self) -> Result<pb::ExplainRequest, PageError> {
        let sa = &self.service_account;
        let is_id = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (sub, email) = if is_id(sa) {
            if !self.sub.is_empty() && self.sub != *sa {
                return Err(PageError::bad_request(
                    "The service account is a unique ID and the field `sub` names another one.",
                ));
            }
            (sa.clone(), String::new())
        } else if sa.contains('@') {
            if !self.sub.is_empty() && !is_id(&self.sub) {
                return Err(PageError::bad_request(
                    "The field `sub` must be a unique ID (digits).",
                ));
            }
            (self.sub.clone(), sa.clone())
        } else {
            return Err(PageError::bad_request(
                "The service account must be an email or a unique ID (digits).",
            ));
        };
        let gce = [
            &self.project_id,
            &self.project_number,
            &self.zone,
            &self.instance_name,
            &self.instance_id,
        ]
        .iter()
        .any(|f| !f.is_empty());
        Ok(pb::ExplainRequest {
            token: String::new(),
            claims: Some(pb::Claims {
                email_verified: !email.is_empty() && self.email_verified == "yes",
                sub,
                email,
                compute_engine: gce.then(|| pb::ComputeEngineClaims {
                    project_id: self.project_id.clone(),
                    project_number: self.project_number.clone(),
                    zone: self.zone.clone(),
                    instance_name: self.instance_name.clone(),
                    instance_id: self.instance_id.clone(),
                }),
            }),
            role_arn: self.role_arn.clone(),
        })
    }
}

#[derive(Serialize)]
struct EvaluationView {
    binding: String,
    outcome: &'static str,
    matched: bool,
    details: Vec<String>,
}

#[derive(Serialize)]
struct ClaimsView {
    sub: String,
    email: String,
    email_verified: bool,
    gce: Option<(String, String, String, String, String)>,
}

#[derive(Serialize)]
struct ExplainView {
    allowed: bool,
    reason: String,
    claims: Option<ClaimsView>,
    role_arn: String,
    max_duration_seconds: u32,
    default_duration_seconds: u32,
    session_policy: String,
    managed_policy_arns: Vec<String>,
    service_account_denied: bool,
    bindings: Vec<EvaluationView>,
}

#[derive(Serialize)]
struct ExplainPage<'a> {
    me: Me<'a>,
    form: ExplainForm,
    result: Option<ExplainView>,
}

fn outcome_label(o: pb::binding_evaluation::Outcome) -> &'static str {
    use pb::binding_evaluation::Outcome as O;
    match o {
        O::Matched => "matched",
        O::ServiceAccountNotListed => "service account not listed",
        O::RoleNotListed => "role not listed",
        O::ConditionNotMet => "condition not met",
        O::Unspecified => "unspecified",
    }
}

fn explain_view(r: pb::ExplainResponse) -> ExplainView {
    ExplainView {
        allowed: r.allowed,
        reason: r.reason,
        claims: r.claims.map(|c| ClaimsView {
            sub: c.sub,
            email: c.email,
            email_verified: c.email_verified,
            gce: c.compute_engine.map(|g| {
                (
                    g.project_id,
                    g.project_number,
                    g.zone,
                    g.instance_name,
                    g.instance_id,
                )
            }),
        }),
        role_arn: r.role_arn,
        max_duration_seconds: r.max_duration_seconds,
        default_duration_seconds: r.default_duration_seconds,
        session_policy: if r.session_policy.is_empty() {
            String::new()
        } else {
            pretty_json(&r.session_policy)
        },
        managed_policy_arns: r.managed_policy_arns,
        service_account_denied: r.service_account_denied,
        bindings: r
            .bindings
            .into_iter()
            .map(|e| {
                let outcome = e.outcome();
                EvaluationView {
                    binding: e.binding,
                    outcome: outcome_label(outcome),
                    matched: outcome == pb::binding_evaluation::Outcome::Matched,
                    details: e.details,
                }
            })
            .collect(),
    }
}

async fn explain(app: &App, p: &Principal, form: &ExplainForm) -> PageResult {
    let form = form.cleaned()?;
    let result = if form.service_account.is_empty() {
        None
    } else {
        let request = form.request()?;
        Some(explain_view(app.backend.explain(request).await?))
    };
    render(
        "explain.html",
        &ExplainPage {
            me: me(p, "explain"),
            form,
            result,
        },
    )
}

pub(crate) async fn explain_get(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<ExplainForm>, QueryRejection>,
) -> PageResult {
    let Query(form) = query.map_err(|e| query_error(&e))?;
    explain(&app, &p, &form).await
}

pub(crate) async fn explain_post(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    form: Result<Form<ExplainForm>, FormRejection>,
) -> PageResult {
    let Form(form) = form.map_err(|e| form_error(&e))?;
    if form.service_account.trim().is_empty() {
        return Err(PageError::bad_request(
            "The field `service_account` is required.",
        ));
    }
    explain(&app, &p, &form).await
}

// -------------------------------------------------------------- deny list

#[derive(Deserialize, Default)]
pub(crate) struct DenyQuery {
    #[serde(default)]
    denied: String,
    #[serde(default)]
    allowed: String,
}

#[derive(Serialize)]
struct DeniedRow {
    service_account: String,
    reason: String,
    actor: String,
    create_time: String,
    allow_token: String,
}

#[derive(Serialize)]
struct DenyPage<'a> {
    me: Me<'a>,
    denied_flash: String,
    allowed_flash: String,
    rows: Vec<DeniedRow>,
    deny_token: String,
}

const DENY_SCOPE: &str = "deny";
const ALLOW_SCOPE: &str = "allow";

/// The scope of a confirmation page's token: the exact write it confirms.
fn confirm_scope(action: &str, service_account: &str, reason: &str) -> String {
    format!("confirm\n{action}\n{service_account}\n{reason}")
}

pub(crate) async fn deny_list(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<DenyQuery>, QueryRejection>,
) -> PageResult {
    let Query(query) = query.map_err(|e| query_error(&e))?;
    let denied_flash = field("denied", &query.denied)?;
    let allowed_flash = field("allowed", &query.allowed)?;
    let now = SystemTime::now();
    let rows = app
        .backend
        .list_denied()
        .await?
        .into_iter()
        .map(|d| DeniedRow {
            allow_token: if p.admin {
                app.csrf.mint(&p.actor, ALLOW_SCOPE, now)
            } else {
                String::new()
            },
            create_time: timestamp(d.create_time.map(|t| t.seconds)),
            service_account: d.service_account,
            reason: d.reason,
            actor: d.actor,
        })
        .collect();
    let deny_token = if p.admin {
        app.csrf.mint(&p.actor, DENY_SCOPE, now)
    } else {
        String::new()
    };
    render(
        "deny.html",
        &DenyPage {
            me: me(&p, "deny"),
            denied_flash,
            allowed_flash,
            rows,
            deny_token,
        },
    )
}

#[derive(Deserialize, Default)]
pub(crate) struct WriteForm {
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

#[derive(Serialize)]
struct ConfirmPage<'a> {
    me: Me<'a>,
    action: &'static str,
    service_account: String,
    reason: String,
    token: String,
}

enum Write {
    Deny,
    Allow,
}

impl Write {
    fn name(&self) -> &'static str {
        match self {
            Write::Deny => "deny",
            Write::Allow => "allow",
        }
    }

    fn form_scope(&self) -> &'static str {
        match self {
            Write::Deny => DENY_SCOPE,
            Write::Allow => ALLOW_SCOPE,
        }
    }
}

fn csrf_refusal(e: CsrfError) -> PageError {
    PageError::forbidden(e.message())
}

async fn write(
    app: &App,
    p: &Principal,
    kind: Write,
    form: Result<Form<WriteForm>, FormRejection>,
) -> Result<Response, PageError> {
    if !p.admin {
        info!(actor = %p.actor, action = kind.name(), "console: write refused, not an admin");
        return Err(PageError::forbidden(format!(
            "{} may look but not {}: only console admins may change the deny list.",
            p.actor,
            kind.name()
        )));
    }
    let Form(form) = form.map_err(|e| form_error(&e))?;
    let service_account = field("service_account", &form.service_account)?;
    let reason = match kind {
        Write::Deny => field("reason", &form.reason)?,
        Write::Allow => String::new(),
    };
    let token = field("csrf", &form.csrf)?;
    let confirm = field("confirm", &form.confirm)?;
    if service_account.is_empty() {
        return Err(PageError::bad_request(
            "The field `service_account` is required.",
        ));
    }
    if matches!(kind, Write::Deny) && reason.is_empty() {
        return Err(PageError::bad_request(
            "The field `reason` is required: it goes into the audit trail.",
        ));
    }
    let now = SystemTime::now();
    let scope = confirm_scope(kind.name(), &service_account, &reason);
    match confirm.as_str() {
        "" => {
            app.csrf
                .check(&token, &p.actor, kind.form_scope(), now)
                .map_err(csrf_refusal)?;
            let page = ConfirmPage {
                me: me(p, "deny"),
                action: kind.name(),
                token: app.csrf.mint(&p.actor, &scope, now),
                service_account,
                reason,
            };
            Ok(render("confirm.html", &page)?.into_response())
        }
        "yes" => {
            app.csrf
                .check(&token, &p.actor, &scope, now)
                .map_err(csrf_refusal)?;
            let flash = match kind {
                Write::Deny => {
                    app.backend
                        .deny(&p.actor, &service_account, &reason)
                        .await?;
                    "denied"
                }
                Write::Allow => {
                    app.backend.allow(&p.actor, &service_account).await?;
                    "allowed"
                }
            };
            info!(actor = %p.actor, action = kind.name(), %service_account, "console: deny list changed");
            Ok(Redirect::to(&flash_location(flash, &service_account)).into_response())
        }
        _ => Err(PageError::bad_request(
            "The field `confirm` must be yes or absent.",
        )),
    }
}

/// `/deny?KEY=VALUE`, the value URL-encoded.
fn flash_location(key: &str, value: &str) -> String {
    let mut url = match reqwest::Url::parse("http://console.invalid/deny") {
        Ok(url) => url,
        Err(_) => return "/deny".to_owned(),
    };
    url.query_pairs_mut().append_pair(key, value);
    match url.query() {
        Some(q) => format!("/deny?{q}"),
        None => "/deny".to_owned(),
    }
}

pub(crate) async fn deny_post(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    form: Result<Form<WriteForm>, FormRejection>,
) -> Result<Response, PageError> {
    write(&app, &p, Write::Deny, form).await
}

pub(crate) async fn allow_post(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    form: Result<Form<WriteForm>, FormRejection>,
) -> Result<Response, PageError> {
    write(&app, &p, Write::Allow, form).await
}

// -------------------------------------------------------------- decisions

#[derive(Deserialize, Default)]
pub(crate) struct DecisionsQuery {
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    sa: String,
}

#[derive(Serialize)]
struct DecisionRow {
    time: String,
    outcome: &'static str,
    code: String,
    service_account: String,
    sub: String,
    role_arn: String,
    reason: String,
    request_id: String,
}

#[derive(Serialize)]
struct DecisionsPage<'a> {
    me: Me<'a>,
    outcome: String,
    sa: String,
    held: usize,
    matching: usize,
    rows: Vec<DecisionRow>,
}

fn decision_row(d: Decision) -> DecisionRow {
    DecisionRow {
        time: rfc3339(d.time),
        outcome: d.outcome.as_str(),
        code: d.code,
        service_account: d.service_account,
        sub: d.sub,
        role_arn: d.role_arn,
        reason: d.reason,
        request_id: d.request_id,
    }
}

pub(crate) async fn decisions(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<DecisionsQuery>, QueryRejection>,
) -> PageResult {
    let Query(query) = query.map_err(|e| query_error(&e))?;
    let outcome_name = field("outcome", &query.outcome)?;
    let sa = field("sa", &query.sa)?;
    let outcome = match outcome_name.as_str() {
        "" => None,
        name => Some(Outcome::parse(name).ok_or_else(|| {
            PageError::bad_request("The field `outcome` must be issued, refused or failed.")
        })?),
    };
    let needle = sa.to_lowercase();
    let all = app.backend.recent_decisions();
    let held = all.len();
    let matching: Vec<Decision> = all
        .into_iter()
        .filter(|d| outcome.is_none_or(|o| d.outcome == o))
        .filter(|d| {
            needle.is_empty()
                || contains_ci(&d.service_account, &needle)
                || contains_ci(&d.sub, &needle)
        })
        .collect();
    let count = matching.len();
    render(
        "decisions.html",
        &DecisionsPage {
            me: me(&p, "decisions"),
            outcome: outcome_name,
            sa,
            held,
            matching: count,
            rows: matching
                .into_iter()
                .take(MAX_DECISIONS_SHOWN)
                .map(decision_row)
                .collect(),
        },
    )
}

// ------------------------------------------------------------------ status

#[derive(Serialize)]
struct StatusPage<'a> {
    me: Me<'a>,
    s: crate::backend::Status,
    jwks_age: String,
    store_lag: String,
    chart: chart::Chart,
}

pub(crate) async fn status(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
) -> PageResult {
    let s = app.backend.status();
    let chart = chart::Chart::new(&s.decisions_per_minute);
    render(
        "status.html",
        &StatusPage {
            me: me(&p, "status"),
            jwks_age: s.jwks_age_seconds.map_or_else(
                || "no keys fetched yet".to_owned(),
                |a| humantime::format_duration(Duration::from_secs(a)).to_string(),
            ),
            store_lag: s
                .store_lag_seconds
                .map_or_else(|| "unknown".to_owned(), |l| format!("{l:.1} s")),
            s,
            chart,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_trimmed_and_limited() {
        assert_eq!(field("f", "  a b ").unwrap(), "a b");
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let err = field("reason", &long).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("`reason`"), "{}", err.message);
        assert!(field("f", "a\u{0}b").is_err());
    }

    #[test]
    fn explain_form_builds_claims_from_an_id_or_an_email() {
        let by_id = ExplainForm {
            service_account: "123".into(),
            ..ExplainForm::default()
        }
        .cleaned()
        .unwrap()
        .request()
        .unwrap();
        let c = by_id.claims.unwrap();
        assert_eq!((c.sub.as_str(), c.email.as_str()), ("123", ""));
        assert!(!c.email_verified && c.compute_engine.is_none());

        let by_email = ExplainForm {
            service_account: "sa@p.iam.gserviceaccount.com".into(),
            sub: "42".into(),
            zone: "us-central1-a".into(),
            role_arn: "arn:aws:iam::1:role/r".into(),
            ..ExplainForm::default()
        }
        .cleaned()
        .unwrap()
        .request()
        .unwrap();
        assert_eq!(by_email.role_arn, "arn:aws:iam::1:role/r");
        let c = by_email.claims.unwrap();
        assert_eq!(c.email, "sa@p.iam.gserviceaccount.com");
        assert_eq!(c.sub, "42");
        assert!(c.email_verified);
        assert_eq!(c.compute_engine.unwrap().zone, "us-central1-a");

        let bad = ExplainForm {
            service_account: "nobody".into(),
            ..ExplainForm::default()
        };
        assert_eq!(bad.request().unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn flash_location_encodes_the_value() {
        assert_eq!(flash_location("denied", "123"), "/deny?denied=123");
        assert_eq!(
            flash_location("allowed", "a&b=c d"),
            "/deny?allowed=a%26b%3Dc+d"
        );
    }
}
