//! The console over real HTTP on 127.0.0.1: reqwest against the served
//! router, an in-memory backend, and (for IAP) a stand-in signer whose keys
//! are served over HTTP too.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{sync::Arc, time::SystemTime};

use reqwest::{StatusCode, header};
use tokenbridge_console::{
    ASSERTION_HEADER, CONTENT_SECURITY_POLICY, ConsoleConfig, ConsoleError, Decision,
    MAX_BODY_BYTES, MinuteBucket, Outcome, Status,
    testing::{AUDIENCE, IapClaims, IapSigner, JwksServer, MemoryBackend, Write},
};
use tokenbridge_proto::v1 as pb;
use tokio::sync::oneshot;

const ADMIN: &str = "ops@example.com";
const VIEWER: &str = "dev@example.com";

struct Console {
    base: String,
    http: reqwest::Client,
    backend: Arc<MemoryBackend>,
    _stop: oneshot::Sender<()>,
}

fn binding(name: &str, sa: &str, role: &str) -> pb::Binding {
    pb::Binding {
        name: name.into(),
        service_accounts: vec![sa.into()],
        role_arns: vec![role.into()],
        ..pb::Binding::default()
    }
}

fn backend() -> Arc<MemoryBackend> {
    let backend = MemoryBackend::default();
    let mut etl = binding(
        "etl-reader",
        "112233445566778899000",
        "arn:aws:iam::123456789012:role/etl-reader",
    );
    etl.conditions = Some(pb::Conditions {
        zones: vec!["us-central1-*".into()],
        ..pb::Conditions::default()
    });
    etl.session_policy = r#"{"Version":"2012-10-17","Statement":[]}"#.into();
    etl.managed_policy_arns = vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()];
    etl.session_tags = [("team".to_owned(), "{project_id}".to_owned())].into();
    etl.source_identity = "{email}".into();
    etl.create_time = Some(prost_types::Timestamp::from(SystemTime::now()));
    *backend.bindings.lock().unwrap() = vec![
        etl,
        binding(
            "web-writer",
            "web@proj.iam.gserviceaccount.com",
            "arn:aws:iam::123456789012:role/web-writer",
        ),
    ];
    Arc::new(backend)
}

async fn start(config: ConsoleConfig, backend: Arc<MemoryBackend>) -> Console {
    let router = tokenbridge_console::router(&config, backend.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    // As the server serves it: with the peer address the loopback check reads.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move {
        axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Console {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        backend,
        _stop: stop,
    }
}

async fn loopback() -> Console {
    start(ConsoleConfig::default(), backend()).await
}

struct Iap {
    console: Console,
    signer: IapSigner,
    jwks: JwksServer,
}

async fn behind_iap() -> Iap {
    let signer = IapSigner::generate("iap-key-1").unwrap();
    let jwks = JwksServer::start(vec![signer.jwk().unwrap()])
        .await
        .unwrap();
    let config = ConsoleConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        iap_audience: Some(AUDIENCE.into()),
        iap_jwks_uri: jwks.uri(),
        viewers: vec![VIEWER.into()],
        admins: vec!["OPS@example.com".into()],
        ..ConsoleConfig::default()
    };
    Iap {
        console: start(config, backend()).await,
        signer,
        jwks,
    }
}

impl Iap {
    fn assertion(&self, email: &str) -> String {
        self.signer
            .sign(&IapClaims::valid(email, AUDIENCE))
            .unwrap()
    }

    async fn get(&self, path: &str, assertion: &str) -> (StatusCode, String) {
        let resp = self
            .console
            .http
            .get(format!("{}{path}", self.console.base))
            .header(ASSERTION_HEADER, assertion)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains(assertion) || assertion.is_empty(),
            "the page repeats the assertion"
        );
        (status, body)
    }

    async fn post(&self, path: &str, assertion: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.console
            .http
            .post(format!("{}{path}", self.console.base))
            .header(ASSERTION_HEADER, assertion)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

impl Console {
    async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

/// `html` with minijinja's entities decoded, to look for text.
fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of the first `csrf` field after `marker` in `html`.
fn csrf_after(html: &str, marker: &str) -> String {
    let from = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {html}"));
    let rest = &html[from..];
    let field = r#"name="csrf" value=""#;
    let start = rest.find(field).expect("a csrf field") + field.len();
    let end = rest[start..].find('"').unwrap();
    rest[start..start + end].to_owned()
}

// ------------------------------------------------------------ every page

#[tokio::test]
async fn healthz_needs_no_sign_in_and_every_response_has_the_security_headers() {
    let iap = behind_iap().await;
    let resp = iap
        .console
        .http
        .get(format!("{}/healthz", iap.console.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    assert_eq!(resp.text().await.unwrap(), "ok");
    for (status, path) in [
        (StatusCode::OK, "/healthz"),
        (StatusCode::UNAUTHORIZED, "/bindings"),
    ] {
        let resp = iap
            .console
            .http
            .get(format!("{}{path}", iap.console.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let h = resp.headers();
        assert_eq!(
            h[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
    }
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    // A page behind the sign-in too.
    let resp = iap
        .console
        .http
        .get(format!("{}/status", iap.console.base))
        .header(ASSERTION_HEADER, iap.assertion(VIEWER))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_SECURITY_POLICY],
        CONTENT_SECURITY_POLICY
    );
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = resp.text().await.unwrap();
    assert!(!body.contains("<script"), "no script on any page");
}

#[tokio::test]
async fn root_redirects_to_bindings_and_unknown_paths_are_404_pages() {
    let c = loopback().await;
    let resp = c.http.get(format!("{}/", c.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[header::LOCATION], "/bindings");
    let (status, body) = c.get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("There is no such page."), "{body}");
    let resp = c
        .http
        .delete(format!("{}/bindings", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

// ------------------------------------------------------------- bindings

#[tokio::test]
async fn bindings_table_filters_by_name_service_account_or_role() {
    let c = loopback().await;
    let (status, all) = c.get("/bindings").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        all.contains("etl-reader") && all.contains("web-writer"),
        "{all}"
    );
    assert!(all.contains("2 of 2 bindings"), "{all}");
    for q in ["ETL", "1122334455", "role/etl-reader"] {
        let (status, body) = c.get(&format!("/bindings?q={q}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#"href="/bindings/etl-reader""#),
            "{q}: {body}"
        );
        assert!(
            !body.contains(r#"href="/bindings/web-writer""#),
            "{q}: {body}"
        );
    }
    let (_, none) = c.get("/bindings?q=nothing-like-this").await;
    assert!(none.contains("No binding matches."), "{none}");
}

#[tokio::test]
async fn a_binding_page_shows_its_scope_tags_and_trust_policy() {
    let c = loopback().await;
    let (status, body) = c.get("/bindings/etl-reader").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = unescape(&body);
    for needle in [
        "arn:aws:iam::123456789012:role/etl-reader",
        "us-central1-*",
        "arn:aws:iam::aws:policy/ReadOnlyAccess",
        r#""Version": "2012-10-17""#,
        "team",
        "{project_id}",
        "Source identity",
        "sts:AssumeRoleWithWebIdentity",
        "accounts.google.com:sub",
    ] {
        assert!(body.contains(needle), "{needle} missing: {body}");
    }
}

#[tokio::test]
async fn an_unknown_binding_is_a_404_page() {
    let c = loopback().await;
    let (status, body) = c.get("/bindings/no-such-binding").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("There is no binding named"), "{body}");
    assert!(body.contains("no-such-binding"), "{body}");
}

// -------------------------------------------------------------- explain

#[tokio::test]
async fn explain_answers_with_the_decision_and_each_binding() {
    let c = loopback().await;
    *c.backend.explanation.lock().unwrap() = Some(pb::ExplainResponse {
        allowed: false,
        reason: "binding etl-reader: zone \"europe-west1-b\" matches none of [us-central1-*]"
            .into(),
        bindings: vec![
            pb::BindingEvaluation {
                binding: "etl-reader".into(),
                outcome: pb::binding_evaluation::Outcome::ConditionNotMet as i32,
                details: vec!["zone \"europe-west1-b\" matches none of [us-central1-*]".into()],
            },
            pb::BindingEvaluation {
                binding: "web-writer".into(),
                outcome: pb::binding_evaluation::Outcome::ServiceAccountNotListed as i32,
                details: vec![],
            },
        ],
        ..pb::ExplainResponse::default()
    });
    let (status, form) = c.get("/explain").await;
    assert_eq!(status, StatusCode::OK);
    assert!(form.contains(r#"name="service_account""#), "{form}");
    assert!(c.backend.explained.lock().unwrap().is_empty());

    let resp = c
        .post(
            "/explain",
            &[
                ("service_account", "112233445566778899000"),
                ("role_arn", "arn:aws:iam::123456789012:role/etl-reader"),
                ("zone", "europe-west1-b"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.text().await.unwrap();
    assert!(body.contains("refused"), "{body}");
    assert!(body.contains("condition not met"), "{body}");
    assert!(body.contains("service account not listed"), "{body}");
    assert!(body.contains("matches none of [us-central1-*]"), "{body}");
    let asked = c.backend.explained.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    let claims = asked[0].claims.clone().unwrap();
    assert_eq!(claims.sub, "112233445566778899000");
    assert_eq!(claims.compute_engine.unwrap().zone, "europe-west1-b");
    assert_eq!(
        asked[0].role_arn,
        "arn:aws:iam::123456789012:role/etl-reader"
    );
    assert!(asked[0].token.is_empty());

    // The same by GET with a query.
    let (status, body) = c
        .get("/explain?service_account=web%40proj.iam.gserviceaccount.com")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Each binding"), "{body}");
    let asked = c.backend.explained.lock().unwrap().clone();
    let claims = asked[1].claims.clone().unwrap();
    assert_eq!(claims.email, "web@proj.iam.gserviceaccount.com");
    assert!(claims.email_verified);
}

#[tokio::test]
async fn explain_refuses_what_is_neither_an_email_nor_an_id() {
    let c = loopback().await;
    let resp = c
        .post("/explain", &[("service_account", "not an account")])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert!(body.contains("must be an email or a unique ID"), "{body}");
    let resp = c.post("/explain", &[("role_arn", "x")]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(c.backend.explained.lock().unwrap().is_empty());
}

// ------------------------------------------------------------ bad input

#[tokio::test]
async fn oversized_fields_and_bodies_and_malformed_forms_are_refused() {
    let c = loopback().await;
    let long = "1".repeat(513);
    let resp = c
        .post("/explain", &[("service_account", long.as_str())])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("`service_account` is longer than 512 bytes"),
        "{body}"
    );

    let (status, body) = c.get(&format!("/bindings?q={}", "x".repeat(600))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("`q` is longer than 512 bytes"), "{body}");

    let huge = "1".repeat(MAX_BODY_BYTES + 1);
    let resp = c
        .post("/explain", &[("service_account", huge.as_str())])
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(resp.text().await.unwrap().contains("larger than 16 KiB"));

    let resp = c
        .http
        .post(format!("{}/explain", c.base))
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"service_account":"1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("Expected a form"));

    let resp = c
        .http
        .post(format!("{}/explain", c.base))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("service_account=1&service_account=2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert!(body.contains("could not be read"), "{body}");
    assert!(!body.to_lowercase().contains("panick"), "{body}");

    let (status, body) = c.get("/decisions?outcome=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("issued, refused or failed"), "{body}");
}

// ------------------------------------------------------------ decisions

#[tokio::test]
async fn decisions_filter_by_outcome_and_service_account() {
    let c = loopback().await;
    let d = |outcome, sa: &str, request_id: &str| Decision {
        time: SystemTime::now(),
        outcome,
        code: if outcome == Outcome::Issued {
            "OK"
        } else {
            "PERMISSION_DENIED"
        }
        .into(),
        service_account: sa.into(),
        sub: "1".into(),
        role_arn: "arn:aws:iam::123456789012:role/r".into(),
        reason: String::new(),
        request_id: request_id.into(),
    };
    *c.backend.decisions.lock().unwrap() = vec![
        d(Outcome::Refused, "etl@p.iam.gserviceaccount.com", "req-a"),
        d(Outcome::Issued, "etl@p.iam.gserviceaccount.com", "req-b"),
        d(Outcome::Refused, "web@p.iam.gserviceaccount.com", "req-c"),
    ];
    let (status, all) = c.get("/decisions").await;
    assert_eq!(status, StatusCode::OK);
    assert!(all.contains("req-a") && all.contains("req-b") && all.contains("req-c"));
    let (_, refused) = c.get("/decisions?outcome=refused").await;
    assert!(refused.contains("req-a") && refused.contains("req-c"));
    assert!(!refused.contains("req-b"), "{refused}");
    let (_, etl_refused) = c.get("/decisions?outcome=refused&sa=ETL@").await;
    assert!(etl_refused.contains("req-a"));
    assert!(!etl_refused.contains("req-b") && !etl_refused.contains("req-c"));
    assert!(
        etl_refused.contains("1 of the 3 decisions"),
        "{etl_refused}"
    );
}

// --------------------------------------------------------------- status

#[tokio::test]
async fn status_shows_the_numbers_and_a_chart() {
    let c = loopback().await;
    *c.backend.status.lock().unwrap() = Status {
        jwks_age_seconds: Some(125),
        jwks_keys: 2,
        jwks_stale: false,
        cache_entries: 7,
        sts_errors: 3,
        sts_throttles: 1,
        store_revision: Some(42),
        store_lag_seconds: Some(0.5),
        decisions_per_minute: vec![
            MinuteBucket {
                minute_start_unix: 1_700_000_040,
                issued: 5,
                refused: 2,
                failed: 1,
            },
            MinuteBucket {
                minute_start_unix: 1_700_000_100,
                issued: 1,
                refused: 0,
                failed: 0,
            },
        ],
    };
    let (status, body) = c.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"<dd id="cache-entries">7</dd>"#), "{body}");
    assert!(body.contains("2m 5s"), "{body}");
    assert!(body.contains("42"), "{body}");
    assert!(body.contains("0.5 s"), "{body}");
    assert!(body.contains("<svg"), "{body}");
    assert_eq!(body.matches("<rect").count(), 4, "{body}");
    assert!(body.contains("22:14 UTC: 5 issued"), "{body}");
    assert!(body.contains("6 issued") && body.contains("2 refused") && body.contains("1 failed"));
}

// ------------------------------------------------------------ loopback

#[tokio::test]
async fn loopback_console_refuses_foreign_host_names() {
    let c = loopback().await;
    let (status, body) = c.get("/bindings").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("loopback · admin"), "{body}");
    let resp = c
        .http
        .get(format!("{}/bindings", c.base))
        .header(header::HOST, "rebound.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("loopback"));
}

#[test]
fn without_iap_the_console_will_not_listen_beyond_loopback() {
    let config = ConsoleConfig {
        listen: "0.0.0.0:9465".parse().unwrap(),
        ..ConsoleConfig::default()
    };
    let err = tokenbridge_console::router(&config, backend()).unwrap_err();
    assert!(
        matches!(err, ConsoleError::Config(ref m) if m.contains("loopback")),
        "{err}"
    );
}

#[tokio::test]
async fn loopback_admin_denies_and_allows_with_confirmation() {
    let c = loopback().await;
    let (_, page) = c.get("/deny").await;
    assert!(page.contains("Nobody is denied."), "{page}");
    let token = csrf_after(&page, r#"action="/deny""#);
    let resp = c
        .post(
            "/deny",
            &[
                ("service_account", "112233445566778899000"),
                ("reason", "incident 42"),
                ("csrf", &token),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let confirm = resp.text().await.unwrap();
    assert!(confirm.contains("Confirm: deny"), "{confirm}");
    assert!(
        c.backend.writes().is_empty(),
        "nothing written before confirmation"
    );
    let confirm_token = csrf_after(&confirm, r#"action="/deny""#);
    let resp = c
        .post(
            "/deny",
            &[
                ("service_account", "112233445566778899000"),
                ("reason", "incident 42"),
                ("csrf", &confirm_token),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        resp.headers()[header::LOCATION],
        "/deny?denied=112233445566778899000"
    );
    assert_eq!(
        c.backend.writes(),
        vec![Write::Deny {
            actor: "loopback".into(),
            service_account: "112233445566778899000".into(),
            reason: "incident 42".into(),
        }]
    );
    let (_, page) = c.get("/deny?denied=112233445566778899000").await;
    assert!(
        page.contains("Denied <span class=\"mono\">112233445566778899000</span>"),
        "{page}"
    );
    assert!(page.contains("incident 42"), "{page}");

    // Allow it again, through the row's form and its confirmation.
    let token = csrf_after(&page, r#"action="/allow""#);
    let resp = c
        .post(
            "/allow",
            &[
                ("service_account", "112233445566778899000"),
                ("csrf", &token),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let confirm = resp.text().await.unwrap();
    assert!(confirm.contains("Confirm: allow"), "{confirm}");
    let confirm_token = csrf_after(&confirm, r#"action="/allow""#);
    let resp = c
        .post(
            "/allow",
            &[
                ("service_account", "112233445566778899000"),
                ("csrf", &confirm_token),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(c.backend.writes().len(), 2);
    assert!(c.backend.denied.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_confirmation_token_is_good_only_for_the_write_it_confirms() {
    let c = loopback().await;
    let (_, page) = c.get("/deny").await;
    let token = csrf_after(&page, r#"action="/deny""#);
    let resp = c
        .post(
            "/deny",
            &[
                ("service_account", "111"),
                ("reason", "r"),
                ("csrf", &token),
            ],
        )
        .await;
    let confirm_token = csrf_after(&resp.text().await.unwrap(), r#"action="/deny""#);
    for form in [
        [("service_account", "222"), ("reason", "r")],
        [("service_account", "111"), ("reason", "other")],
    ] {
        let mut form = form.to_vec();
        form.extend([("csrf", confirm_token.as_str()), ("confirm", "yes")]);
        let resp = c.post("/deny", &form).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    // The form's own token cannot skip the confirmation.
    let resp = c
        .post(
            "/deny",
            &[
                ("service_account", "111"),
                ("reason", "r"),
                ("csrf", &token),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(c.backend.writes().is_empty());
}

#[tokio::test]
async fn backend_refusals_are_pages_with_their_status() {
    let c = loopback().await;
    let (_, page) = c.get("/deny").await;
    let token = csrf_after(&page, r#"action="/deny""#);
    let sa = "web@proj.iam.gserviceaccount.com";
    let resp = c
        .post(
            "/deny",
            &[("service_account", sa), ("reason", "r"), ("csrf", &token)],
        )
        .await;
    let confirm_token = csrf_after(&resp.text().await.unwrap(), r#"action="/deny""#);
    let resp = c
        .post(
            "/deny",
            &[
                ("service_account", sa),
                ("reason", "r"),
                ("csrf", &confirm_token),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert!(body.contains("must be a unique ID"), "{body}");

    // Allowing a service account that is not denied: NOT_FOUND -> 404.
    c.backend
        .denied
        .lock()
        .unwrap()
        .push(pb::DeniedServiceAccount {
            service_account: "111".into(),
            reason: "r".into(),
            actor: "someone".into(),
            create_time: None,
        });
    let (_, page) = c.get("/deny").await;
    let allow_token = csrf_after(&page, r#"action="/allow""#);
    let deny_token = csrf_after(&page, r#"action="/deny""#);
    let resp = c
        .post(
            "/allow",
            &[("service_account", "999"), ("csrf", &deny_token)],
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "a deny token is not an allow token"
    );
    let resp = c
        .post(
            "/allow",
            &[("service_account", "999"), ("csrf", &allow_token)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let confirm_token = csrf_after(&resp.text().await.unwrap(), r#"action="/allow""#);
    let resp = c
        .post(
            "/allow",
            &[
                ("service_account", "999"),
                ("csrf", &confirm_token),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("999 is not on the deny list")
    );
    assert!(c.backend.writes().is_empty());
}

#[tokio::test]
async fn cross_site_posts_are_refused_before_the_form_is_read() {
    let c = loopback().await;
    let (_, page) = c.get("/deny").await;
    let token = csrf_after(&page, r#"action="/deny""#);
    let resp = c
        .http
        .post(format!("{}/deny", c.base))
        .header(header::ORIGIN, "https://evil.example.com")
        .form(&[
            ("service_account", "111"),
            ("reason", "r"),
            ("csrf", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("another site"));
}

// ------------------------------------------------------------------ IAP

#[tokio::test]
async fn a_good_assertion_opens_every_page_and_is_never_shown() {
    let iap = behind_iap().await;
    let assertion = iap.assertion(VIEWER);
    for path in [
        "/bindings",
        "/bindings/etl-reader",
        "/explain",
        "/deny",
        "/decisions",
        "/status",
    ] {
        let (status, body) = iap.get(path, &assertion).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(body.contains("dev@example.com · viewer"), "{path}: {body}");
    }
    // A listed admin, matched whatever the case.
    let (status, body) = iap.get("/deny", &iap.assertion("Ops@Example.com")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("ops@example.com · admin"), "{body}");
    assert!(body.contains(r#"action="/deny""#), "admins get the form");
    let (_, viewer_page) = iap.get("/deny", &assertion).await;
    assert!(
        !viewer_page.contains(r#"action="/deny""#),
        "viewers get no form"
    );
    assert_eq!(iap.jwks.fetches(), 1, "keys are fetched once and cached");
}

#[tokio::test]
async fn missing_forged_expired_or_misaddressed_assertions_get_401_pages() {
    let iap = behind_iap().await;
    let other_key_same_kid = IapSigner::generate(iap.signer.kid()).unwrap();
    let unknown_kid = IapSigner::generate("not-published").unwrap();
    let good = IapClaims::valid(ADMIN, AUDIENCE);
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing", String::new(), "carries no IAP assertion"),
        ("garbage", "not.a.jwt".into(), "malformed"),
        (
            "expired",
            iap.signer
                .sign(&IapClaims::expired(ADMIN, AUDIENCE, 120))
                .unwrap(),
            "has expired",
        ),
        (
            "wrong audience",
            iap.signer
                .sign(&IapClaims::valid(
                    ADMIN,
                    "/projects/123456789/global/backendServices/111",
                ))
                .unwrap(),
            "another audience",
        ),
        (
            "wrong issuer",
            iap.signer
                .sign(&IapClaims {
                    iss: "https://accounts.google.com".into(),
                    ..good.clone()
                })
                .unwrap(),
            "issuer is not IAP",
        ),
        (
            "wrong key, same kid",
            other_key_same_kid.sign(&good).unwrap(),
            "signature does not verify",
        ),
        (
            "unknown kid",
            unknown_kid.sign(&good).unwrap(),
            "key IAP does not publish",
        ),
        (
            "HS256 header",
            iap.signer
                .sign_claiming_alg(&good, jsonwebtoken::Algorithm::HS256)
                .unwrap(),
            "not signed with ES256",
        ),
        (
            "issued in the future",
            iap.signer
                .sign(&IapClaims {
                    iat: good.iat + 3600,
                    exp: good.exp + 3600,
                    ..good.clone()
                })
                .unwrap(),
            "issued in the future",
        ),
    ];
    for (what, assertion, says) in cases {
        let mut req = iap
            .console
            .http
            .get(format!("{}/bindings", iap.console.base));
        if !assertion.is_empty() {
            req = req.header(ASSERTION_HEADER, &assertion);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        let body = resp.text().await.unwrap();
        assert!(body.contains(says), "{what}: {body}");
        if !assertion.is_empty() {
            assert!(
                !body.contains(&assertion),
                "{what}: the page repeats the assertion"
            );
            // Not even the signature part.
            let sig = assertion.rsplit('.').next().unwrap();
            assert!(sig.len() < 8 || !body.contains(sig), "{what}");
        }
    }
    // The good one still works.
    let (status, _) = iap.get("/bindings", &iap.assertion(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_signed_in_person_who_is_not_listed_gets_403() {
    let iap = behind_iap().await;
    let (status, body) = iap
        .get("/bindings", &iap.assertion("stranger@example.com"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains("stranger@example.com is signed in but is neither"),
        "{body}"
    );
}

#[tokio::test]
async fn a_viewer_cannot_write() {
    let iap = behind_iap().await;
    // Even with a token minted for an admin, a viewer's POST is refused.
    let (_, admin_page) = iap.get("/deny", &iap.assertion(ADMIN)).await;
    let token = csrf_after(&admin_page, r#"action="/deny""#);
    for confirm in ["", "yes"] {
        let resp = iap
            .post(
                "/deny",
                &iap.assertion(VIEWER),
                &[
                    ("service_account", "111"),
                    ("reason", "r"),
                    ("csrf", &token),
                    ("confirm", confirm),
                ],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = resp.text().await.unwrap();
        assert!(body.contains("only console admins"), "{body}");
    }
    let resp = iap
        .post(
            "/allow",
            &iap.assertion(VIEWER),
            &[("service_account", "111")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(iap.console.backend.writes().is_empty());
}

#[tokio::test]
async fn an_admin_write_needs_a_csrf_token_of_their_own() {
    let iap = behind_iap().await;
    let admin = iap.assertion(ADMIN);
    let resp = iap
        .post(
            "/deny",
            &admin,
            &[("service_account", "111"), ("reason", "r")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("no CSRF token"));
    let resp = iap
        .post(
            "/deny",
            &admin,
            &[
                ("service_account", "111"),
                ("reason", "r"),
                ("csrf", "1.AAAAAAAAAAAAAAAAAAAAAA.AAAA"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A token minted for another admin is not good for this one.
    let signer = &iap.signer;
    let second_admin_console = {
        let config = ConsoleConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            iap_audience: Some(AUDIENCE.into()),
            iap_jwks_uri: iap.jwks.uri(),
            admins: vec![ADMIN.into(), "second@example.com".into()],
            ..ConsoleConfig::default()
        };
        start(config, backend()).await
    };
    let second = signer
        .sign(&IapClaims::valid("second@example.com", AUDIENCE))
        .unwrap();
    let page = second_admin_console
        .http
        .get(format!("{}/deny", second_admin_console.base))
        .header(ASSERTION_HEADER, &second)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let theirs = csrf_after(&page, r#"action="/deny""#);
    let resp = second_admin_console
        .http
        .post(format!("{}/deny", second_admin_console.base))
        .header(ASSERTION_HEADER, &admin)
        .form(&[
            ("service_account", "111"),
            ("reason", "r"),
            ("csrf", &theirs),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("not valid for you"));
    assert!(iap.console.backend.writes().is_empty());
    assert!(second_admin_console.backend.writes().is_empty());
}

#[tokio::test]
async fn an_admin_denies_through_the_confirmation_as_themselves() {
    let iap = behind_iap().await;
    let admin = iap.assertion(ADMIN);
    let (_, page) = iap.get("/deny", &admin).await;
    let token = csrf_after(&page, r#"action="/deny""#);
    let form = [
        ("service_account", "112233445566778899000"),
        ("reason", "leaked key, INC-7"),
    ];
    let mut first = form.to_vec();
    first.push(("csrf", &token));
    let resp = iap.post("/deny", &admin, &first).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let confirm = resp.text().await.unwrap();
    assert!(
        confirm.contains("Recorded in the audit trail as ops@example.com"),
        "{confirm}"
    );
    assert!(iap.console.backend.writes().is_empty());
    let confirm_token = csrf_after(&confirm, r#"action="/deny""#);
    let mut second = form.to_vec();
    second.extend([("csrf", confirm_token.as_str()), ("confirm", "yes")]);
    let resp = iap.post("/deny", &admin, &second).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        iap.console.backend.writes(),
        vec![Write::Deny {
            actor: ADMIN.into(),
            service_account: "112233445566778899000".into(),
            reason: "leaked key, INC-7".into(),
        }]
    );
    let (_, list) = iap.get("/deny", &iap.assertion(VIEWER)).await;
    assert!(
        list.contains("leaked key, INC-7") && list.contains(ADMIN),
        "{list}"
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_unknown_kids_do_not_hammer_iap() {
    let iap = behind_iap().await;
    let (status, _) = iap.get("/bindings", &iap.assertion(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(iap.jwks.fetches(), 1);
    // IAP rotates in a new key: the first assertion signed with it
    // triggers one refetch.
    let rotated = IapSigner::generate("iap-key-2").unwrap();
    iap.jwks
        .set_keys(vec![iap.signer.jwk().unwrap(), rotated.jwk().unwrap()]);
    let (status, _) = iap
        .get(
            "/bindings",
            &rotated.sign(&IapClaims::valid(ADMIN, AUDIENCE)).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(iap.jwks.fetches(), 2);
    // Random kids within the cooldown do not fetch again.
    for i in 0..3 {
        let stranger = IapSigner::generate(&format!("random-{i}")).unwrap();
        let (status, _) = iap
            .get(
                "/bindings",
                &stranger.sign(&IapClaims::valid(ADMIN, AUDIENCE)).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(iap.jwks.fetches(), 2);
}
