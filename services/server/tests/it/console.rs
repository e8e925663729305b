//! The web console (`[console]`) of a server started as in production
//! (`app::start` with a real config, a SQLite store, STS on moto), behind
//! Identity-Aware Proxy played by the console crate's stand-ins: a signer
//! whose keys are served over HTTP, and, in front of the console, a small
//! reverse proxy that adds `x-goog-iap-jwt-assertion` to every request as
//! IAP does (a browser driven over WebDriver cannot set request headers).
//!
//! The pages are driven in Debian's headless `chromium` through
//! `chromedriver` (packages `chromium` and `chromium-driver`; `scripts/test`
//! installs them). Without them these tests fail, never skip.
//!
//! Screenshots of each page are taken; with `TOKENBRIDGE_UPDATE_SCREENSHOTS=1`
//! they are written to `docs/console/` (the README shows them), otherwise
//! to a temporary folder.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, Uri, header},
    response::Response,
};
use fantoccini::{Client, ClientBuilder, Locator};
use tokenbridge_console::{
    ASSERTION_HEADER,
    testing::{AUDIENCE as IAP_AUDIENCE, IapClaims, IapSigner, JwksServer as IapKeys},
};
use tokenbridge_policy::PolicySnapshot;
use tokenbridge_server::{
    app::{self, AppError},
    config::{ConsoleConfig, StoreConfig},
    observability::audit::{AuditConfig, AuditSink},
    store::{AuditQuery, PolicyStore as _, Store},
};
use tokio_util::task::AbortOnDropHandle;
use tonic::Code;

use crate::common::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ADMIN: &str = "ops@example.com";
const VIEWER: &str = "dev@example.com";

// ------------------------------------------------------------------ setup

/// A server with the console behind IAP, over a SQLite store holding the
/// default bindings.
struct Console {
    env: Env,
    addr: SocketAddr,
    signer: Arc<IapSigner>,
    _keys: IapKeys,
    store: Store,
    audit_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn iap_config(keys: &IapKeys) -> ConsoleConfig {
    ConsoleConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        iap_audience: Some(IAP_AUDIENCE.to_owned()),
        iap_jwks_uri: keys.uri(),
        admins: vec![ADMIN.to_owned()],
        viewers: vec![VIEWER.to_owned()],
        ..ConsoleConfig::default()
    }
}

impl Console {
    async fn start() -> Console {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("policy.db").display());
        // The bindings, as an admin would have applied them.
        let store = Store::open(&url).await.unwrap();
        let policy = PolicySnapshot::from_toml_str(&policy_toml(), "policy.toml".as_ref()).unwrap();
        store
            .apply("seed", policy.bindings().cloned().collect(), false, false)
            .await
            .unwrap();
        let signer = Arc::new(IapSigner::generate("iap-key-1").unwrap());
        let keys = IapKeys::start(vec![signer.jwk().unwrap()]).await.unwrap();
        let audit_file = dir.path().join("audit.log");
        let env = Env::start_with(Options {
            store: Some(StoreConfig { url, schema: None }),
            console: Some(iap_config(&keys)),
            audit: AuditConfig {
                sink: AuditSink::File(audit_file.clone()),
                gcp_project_id: None,
            },
            ..Options::default()
        })
        .await;
        let addr = env.server.as_ref().unwrap().console_addr.unwrap();
        Console {
            env,
            addr,
            signer,
            _keys: keys,
            store,
            audit_file,
            _dir: dir,
        }
    }

    fn assertion(&self, email: &str) -> String {
        self.signer
            .sign(&IapClaims::valid(email, IAP_AUDIENCE))
            .unwrap()
    }
}

/// IAP in front of the console: forwards every request, `Host` included,
/// with a fresh assertion for the person signed in (any assertion the
/// client sent is dropped, as IAP does).
struct Iap {
    upstream: SocketAddr,
    signer: Arc<IapSigner>,
    email: Mutex<String>,
    http: reqwest::Client,
}

async fn forward(
    State(iap): State<Arc<Iap>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = iap
        .http
        .request(method, format!("http://{}{path}", iap.upstream));
    for (name, value) in &headers {
        let hop = [
            header::CONNECTION,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
        ];
        if !hop.contains(name) && name.as_str() != ASSERTION_HEADER {
            request = request.header(name, value);
        }
    }
    let email = iap.email.lock().unwrap().clone();
    let assertion = iap
        .signer
        .sign(&IapClaims::valid(&email, IAP_AUDIENCE))
        .unwrap();
    let upstream = request
        .header(ASSERTION_HEADER, assertion)
        .body(body)
        .send()
        .await
        .unwrap();
    let mut response = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(upstream.bytes().await.unwrap()))
        .unwrap()
}

struct Proxy {
    base: String,
    iap: Arc<Iap>,
    _task: AbortOnDropHandle<()>,
}

impl Proxy {
    async fn start(console: &Console, email: &str) -> Proxy {
        let iap = Arc::new(Iap {
            upstream: console.addr,
            signer: console.signer.clone(),
            email: Mutex::new(email.to_owned()),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        });
        let router = Router::new().fallback(forward).with_state(iap.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Proxy {
            base,
            iap,
            _task: AbortOnDropHandle::new(task),
        }
    }

    fn sign_in(&self, email: &str) {
        *self.iap.email.lock().unwrap() = email.to_owned();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// chromedriver and the headless chromium it drives, in a process group
/// of their own that is killed when this is dropped (a failed test too).
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    async fn start() -> Browser {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the console's browser tests need Debian's `{package}` \
                 (scripts/test installs it: apt-get install -y chromium chromium-driver)"
            );
        }
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        within(Duration::from_secs(30), async {
            while reqwest::get(format!("{url}/status")).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = within(
            Duration::from_secs(60),
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&url),
        )
        .await
        .expect("a chromium session through chromedriver");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap(),
            Err(e) => {
                let page = self.client.source().await.unwrap_or_default();
                panic!("{css}: {e}\non the page:\n{page}")
            }
        }
    }

    async fn rows(&self, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        for row in self
            .client
            .find_all(Locator::Css(&format!("{table} tbody tr")))
            .await
            .unwrap()
        {
            out.push(row.text().await.unwrap());
        }
        out
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Clicks what `css` finds and waits for the next page to replace
    /// this one (every click here submits a form or follows a link).
    async fn click(&self, css: &str) {
        let before = self.client.find(Locator::Css("html")).await.unwrap();
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
        within(Duration::from_secs(10), async {
            // The old document's root goes stale once the new page is in.
            while before.tag_name().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Chooses `value` in the `<select>` `css`.
    async fn select(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .select_by_value(value)
            .await
            .unwrap();
    }

    async fn title(&self) -> String {
        self.client.title().await.unwrap()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: not a PNG");
        let dir = if std::env::var_os("TOKENBRIDGE_UPDATE_SCREENSHOTS").is_some() {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console")
        } else {
            std::env::temp_dir().join("tokenbridge-console-screenshots")
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn quit(mut self) {
        let _ = self.client.clone().close().await;
        self.kill();
        let _ = self.driver.wait().await;
    }

    fn kill(&mut self) {
        if let Some(pid) = self
            .driver
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn the_console_in_a_browser_explains_and_pulls_the_kill_switch() {
    let console = Console::start().await;
    let env = &console.env;
    let workload_id = workload().unique_id.clone();
    // Traffic for the decisions page: one issued, one refused.
    env.call(&env.token(&workload()), ROLE_A, 0).await.unwrap();
    assert_eq!(
        env.call(&env.token(&stranger()), ROLE_A, 0)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    let proxy = Proxy::start(&console, ADMIN).await;
    let browser = Browser::start().await;
    let b = &browser;

    // Bindings: the table, the filter, one binding and its trust policy.
    b.client.goto(&proxy.url("/")).await.unwrap();
    assert_eq!(b.title().await, "Bindings · tokenbridge console");
    assert_eq!(b.rows("table").await.len(), 3);
    b.screenshot("bindings").await;
    b.fill("#q", "RoleC").await;
    b.click("form button[type=submit]").await;
    let rows = b.rows("table").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].starts_with("single"), "{rows:?}");
    b.click("table a").await;
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/bindings/single")
    );
    let page = b.text("main").await;
    assert!(page.contains(ROLE_C), "{page}");
    assert!(page.contains("accounts.google.com:sub"), "{page}");
    assert!(page.contains(&single().unique_id), "{page}");
    b.screenshot("binding").await;

    // Explain.
    b.client.goto(&proxy.url("/explain")).await.unwrap();
    b.fill("#service_account", &workload_id).await;
    b.fill("#role_arn", ROLE_A).await;
    b.click("form button[type=submit]").await;
    let decision = b.text("#decision").await;
    assert!(decision.contains("allowed by by-id"), "{decision}");
    let evaluations = b.rows("#evaluations").await;
    assert_eq!(evaluations.len(), 3, "{evaluations:?}");
    assert!(
        evaluations.iter().any(|r| r.starts_with("by-id matched")),
        "{evaluations:?}"
    );
    b.screenshot("explain").await;

    // Deny, through the confirmation page: the exchange is refused.
    b.client.goto(&proxy.url("/deny")).await.unwrap();
    b.fill("#service_account", &workload_id).await;
    b.fill("#reason", "incident 42: leaked key").await;
    b.click("form.card button[type=submit]").await;
    assert_eq!(
        b.title().await,
        "Confirm deny · tokenbridge console",
        "a confirmation first"
    );
    b.screenshot("confirm").await;
    b.click("form button[type=submit]").await;
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/deny");
    assert_eq!(url.query(), Some(format!("denied={workload_id}").as_str()));
    let denied = b.rows("#denied").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(
        denied[0].contains(&workload_id) && denied[0].contains(ADMIN),
        "{denied:?}"
    );
    b.screenshot("deny").await;
    let refused = env.call(&env.token(&workload()), ROLE_A, 0).await;
    assert_status(refused, Code::PermissionDenied, "deny list", "");

    // Allow, confirmed: it issues again.
    b.click("#denied button[type=submit]").await;
    assert_eq!(b.title().await, "Confirm allow · tokenbridge console");
    b.click("form button[type=submit]").await;
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.query(), Some(format!("allowed={workload_id}").as_str()));
    assert!(b.text("main").await.contains("Nobody is denied"));
    env.call(&env.token(&workload()), ROLE_A, 0).await.unwrap();

    // Recent decisions: everything above, filterable.
    b.client.goto(&proxy.url("/decisions")).await.unwrap();
    let all = b.rows("#decisions").await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all[0].contains("issued"), "newest first: {all:?}");
    b.screenshot("decisions").await;
    b.select("#outcome", "refused").await;
    b.click("form button[type=submit]").await;
    let refusals = b.rows("#decisions").await;
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(
        refusals.iter().all(|r| r.contains("PERMISSION_DENIED")),
        "{refusals:?}"
    );
    let page = b.text("main").await;
    for secret in ["SECRET", "session", "eyJ"] {
        assert!(!page.contains(secret), "{secret} on the decisions page");
    }

    // Status: the numbers /metrics has.
    b.client.goto(&proxy.url("/status")).await.unwrap();
    assert_eq!(b.text("#cache-entries").await, "1");
    let page = b.text("main").await;
    assert!(
        page.contains("2 issued") && page.contains("2 refused"),
        "{page}"
    );
    b.screenshot("status").await;

    // A viewer sees the deny list without its forms.
    proxy.sign_in(VIEWER);
    b.client.goto(&proxy.url("/deny")).await.unwrap();
    assert!(
        b.text("main")
            .await
            .contains("only console admins may deny or allow")
    );
    assert!(b.client.find(Locator::Css("#reason")).await.is_err());
    browser.quit().await;

    // The writes are in the store's audit trail with the person's identity,
    // and in the audit log as console calls.
    let trail = console
        .store
        .list_audit(AuditQuery {
            target: Some(workload_id.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = trail
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("service_account.allow", ADMIN),
            ("service_account.deny", ADMIN)
        ]
    );
    let Console {
        env, audit_file, ..
    } = console;
    env.stop().await;
    let log = std::fs::read_to_string(&audit_file).unwrap();
    for method in ["ConsoleDeny", "ConsoleAllow"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("\"method\":\"{method}\"")))
            .unwrap_or_else(|| panic!("no {method} line in {log}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["event"], "tokenbridge.admin");
        assert_eq!(v["actor"], ADMIN);
        assert_eq!(v["target"], workload_id.as_str());
        assert_eq!(v["code"], "OK");
    }
}

/// IAP's assertions, checked by the server's console as configured: plain
/// HTTP requests, no browser needed.
#[tokio::test]
async fn iap_assertions_good_expired_misaddressed_or_forged_get_the_right_pages() {
    let console = Console::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, assertion: Option<String>| {
        let mut request = http.get(format!("http://{}{path}", console.addr));
        if let Some(a) = assertion {
            request = request.header(ASSERTION_HEADER, a);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let good = console.assertion(ADMIN);
    let (status, page) = get("/bindings", Some(good.clone())).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(ADMIN) && !page.contains(&good));
    for path in [
        "/explain",
        "/deny",
        "/decisions",
        "/status",
        "/bindings/by-id",
    ] {
        assert_eq!(get(path, Some(good.clone())).await.0, 200, "{path}");
    }
    let (status, page) = get("/bindings/no-such-binding", Some(good.clone())).await;
    assert_eq!(status, 404, "{page}");

    let expired = console
        .signer
        .sign(&IapClaims::expired(ADMIN, IAP_AUDIENCE, 120))
        .unwrap();
    let (status, page) = get("/bindings", Some(expired)).await;
    assert_eq!(status, 401);
    assert!(page.contains("has expired"), "{page}");

    let elsewhere = console
        .signer
        .sign(&IapClaims::valid(
            ADMIN,
            "/projects/1/global/backendServices/2",
        ))
        .unwrap();
    let (status, page) = get("/bindings", Some(elsewhere)).await;
    assert_eq!(status, 401);
    assert!(page.contains("another audience"), "{page}");

    // A key IAP does not publish, under its kid and under another.
    for kid in ["iap-key-1", "forger"] {
        let forger = IapSigner::generate(kid).unwrap();
        let forged = forger.sign(&IapClaims::valid(ADMIN, IAP_AUDIENCE)).unwrap();
        let (status, page) = get("/bindings", Some(forged)).await;
        assert_eq!(status, 401, "{kid}: {page}");
        assert!(
            page.contains("does not verify") || page.contains("does not publish"),
            "{kid}: {page}"
        );
    }

    let (status, page) = get("/bindings", None).await;
    assert_eq!(status, 401);
    assert!(page.contains("no IAP assertion"), "{page}");
    let (status, page) = get("/bindings", Some(console.assertion("someone@example.com"))).await;
    assert_eq!(status, 403);
    assert!(page.contains("neither a viewer nor an admin"), "{page}");
    // The load balancer's health check needs no sign-in.
    assert_eq!(get("/healthz", None).await, (200, "ok".to_owned()));

    // A viewer may look, not write.
    let viewer = console.assertion(VIEWER);
    assert_eq!(get("/deny", Some(viewer.clone())).await.0, 200);
    let write = http
        .post(format!("http://{}/deny", console.addr))
        .header(ASSERTION_HEADER, viewer)
        .form(&[("service_account", "1"), ("reason", "r"), ("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(write.status().as_u16(), 403);
    console.env.stop().await;
}

/// With the read-only policy file the console explains but cannot deny:
/// a clear 409 page. Loopback only (no IAP), through the real listener.
#[tokio::test]
async fn with_the_policy_file_deny_is_refused_with_a_clear_page() {
    let env = Env::start_with(Options {
        console: Some(ConsoleConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..ConsoleConfig::default()
        }),
        ..Options::default()
    })
    .await;
    let base = format!(
        "http://{}",
        env.server.as_ref().unwrap().console_addr.unwrap()
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("{base}/deny"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&page, "csrf");
    let confirm = http
        .post(format!("{base}/deny"))
        .form(&[
            ("service_account", workload().unique_id.as_str()),
            ("reason", "test"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status().as_u16(), 200);
    let confirm = confirm.text().await.unwrap();
    let token = hidden(&confirm, "csrf");
    let refused = http
        .post(format!("{base}/deny"))
        .form(&[
            ("service_account", workload().unique_id.as_str()),
            ("reason", "test"),
            ("csrf", token.as_str()),
            ("confirm", "yes"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    let page = refused.text().await.unwrap();
    assert!(page.contains("read-only"), "{page}");
    // Reads come from the file as loaded.
    let explained = http
        .post(format!("{base}/explain"))
        .form(&[
            ("service_account", workload().unique_id.as_str()),
            ("role_arn", ROLE_A),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(explained.contains("allowed by by-id"), "{explained}");
    env.stop().await;
}

/// A console listener that cannot be bound fails the start.
#[tokio::test]
async fn a_console_address_in_use_fails_the_start() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = Options {
        console: Some(ConsoleConfig {
            listen: taken.local_addr().unwrap(),
            ..ConsoleConfig::default()
        }),
        ..Options::default()
    };
    let jwks =
        tokenbridge_testing::JwksServer::start(tokenbridge_testing::Issuer::new(), 3600).await;
    let cfg = config(jwks.uri(), "http://127.0.0.1:9".into(), &opts);
    let policy = PolicySnapshot::from_toml_str(&opts.policy, "policy.toml".as_ref()).unwrap();
    match app::start(cfg, policy).await {
        Err(AppError::Bind { addr, .. }) => assert_eq!(addr, taken.local_addr().unwrap()),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("started on an address in use"),
    }
}

/// The value of the first hidden input named `name` in `page`.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}
