//! `tokenbridge-cred serve`: a container credentials endpoint on loopback,
//! in the format of the ECS/EKS provider of the AWS SDKs
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` + `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`;
//! the token is written to a 0600 file, never printed).
//!
//! - `GET /credentials` with `Authorization: <token>` answers
//!   `{"AccessKeyId","SecretAccessKey","Token","Expiration","AccountId","RoleArn"}`;
//!   without the header 401, with another value 403.
//! - Credentials are fetched at start and refreshed at about half their
//!   lifetime (with jitter). A failed refresh is retried with exponential
//!   backoff, and the current credentials are served until they expire; only
//!   then does the endpoint answer 503 with the last error.
//! - At start, after binding, it prints the two environment variables for
//!   the workload on stdout.

use std::{
    future::Future,
    io::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::get,
};
use backon::{BackoffBuilder as _, ExponentialBuilder};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{Rng as _, TryRngCore as _, rngs::OsRng};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokenbridge_client::{Credentials, Secret};
use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};

use crate::{
    cli::ServeArgs,
    fetch::{Failure, Fetcher},
    process::rfc3339,
};

/// The path credentials are served at.
pub const PATH: &str = "/credentials";
/// How long a request made before the first fetch ended waits for it.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(5);
/// The shortest time between two refreshes.
const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// What the endpoint serves.
#[derive(Clone, Debug, Default)]
pub struct Current {
    /// The newest credentials, if any were ever had.
    pub credentials: Option<Arc<Credentials>>,
    /// The error of the last fetch, if it failed.
    pub last_error: Option<String>,
    /// How many fetches have ended.
    pub fetches: u64,
}

/// Gets credentials for the refresher (the real one is [`Fetcher`]).
pub trait FetchCredentials: Send + Sync + 'static {
    /// One fetch.
    fn fetch(&self) -> impl Future<Output = Result<Credentials, Failure>> + Send;
}

impl FetchCredentials for Fetcher {
    fn fetch(&self) -> impl Future<Output = Result<Credentials, Failure>> + Send {
        Fetcher::fetch(self)
    }
}

/// Runs `serve` until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    if !args.listen.ip().is_loopback() {
        return Err(Failure::usage(format!(
            "--listen {} is not a loopback address (the endpoint serves credentials over \
             plain HTTP)",
            args.listen
        )));
    }
    let token = match args.authorization_token {
        Some(token) => check_token(token)?,
        None => generate_token()?,
    };
    let fetcher = Fetcher::new(&args.common)?;
    let role_arn = fetcher.role_arn().map(str::to_owned);
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| Failure::usage(format!("cannot listen on {}: {error}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|error| Failure::usage(format!("cannot listen on {}: {error}", args.listen)))?;

    let (current, watcher) = watch::channel(Current::default());
    let refresher = tokio::spawn(refresh(fetcher, current, SystemTime::now));
    info!(
        listen = %addr,
        endpoint = %args.common.endpoint,
        audience = %args.common.audience,
        role_arn = role_arn.as_deref().unwrap_or("(the only bound role)"),
        "serving container credentials"
    );
    let token_file = write_token_file(args.token_file.as_deref(), &token)?;
    print_env(addr, &token_file)?;

    let state = Arc::new(Endpoint {
        token_digest: Sha256::digest(token.expose().as_bytes()).into(),
        current: watcher,
        role_arn,
    });
    let router = Router::new()
        .route(PATH, get(credentials))
        .with_state(state);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    refresher.abort();
    served.map_err(|error| Failure {
        message: format!("serving on {addr}: {error}"),
        exit: crate::fetch::EXIT_FAILED,
    })
}

/// Writes the token to `path` (or a new private directory's `token`),
/// readable by this user only. stdout is collected into logs by container
/// runtimes, so the token never goes there.
fn write_token_file(
    path: Option<&std::path::Path>,
    token: &Secret<String>,
) -> Result<std::path::PathBuf, Failure> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let failed = |what: String| Failure {
        message: what,
        exit: crate::fetch::EXIT_FAILED,
    };
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let mut suffix = [0u8; 8];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut suffix);
            let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
            let dir = std::env::temp_dir().join(format!("tokenbridge-cred-{name}"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
            dir.join("token")
        }
    };
    // A fresh file (an old one, or a link planted there, is removed first),
    // created 0600 before anything is written.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(format!("cannot replace {}: {e}", path.display()))),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            failed(format!(
                "cannot write the token file {}: {e}",
                path.display()
            ))
        })?;
    file.write_all(token.expose().as_bytes())
        .and_then(|()| file.flush())
        .map_err(|e| {
            failed(format!(
                "cannot write the token file {}: {e}",
                path.display()
            ))
        })?;
    Ok(path)
}

fn print_env(addr: SocketAddr, token_file: &std::path::Path) -> Result<(), Failure> {
    let text = format!(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{addr}{PATH}\n\
         AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}\n",
        token_file.display()
    );
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| Failure {
            message: format!("cannot write to stdout: {error}"),
            exit: crate::fetch::EXIT_FAILED,
        })
}

/// 32 bytes from the OS's CSPRNG, base64url.
fn generate_token() -> Result<Secret<String>, Failure> {
    let mut bytes = [0_u8; 32];
    OsRng.try_fill_bytes(&mut bytes).map_err(|error| Failure {
        message: format!("cannot get random bytes for the authorization token: {error}"),
        exit: crate::fetch::EXIT_FAILED,
    })?;
    Ok(Secret::new(URL_SAFE_NO_PAD.encode(bytes)))
}

/// A given token must be at least 16 visible ASCII characters (it goes into
/// an HTTP header).
fn check_token(token: String) -> Result<Secret<String>, Failure> {
    let visible = token.bytes().all(|b| b.is_ascii_graphic());
    if token.len() < 16 || !visible {
        return Err(Failure::usage(
            "--authorization-token must be at least 16 visible ASCII characters",
        ));
    }
    Ok(Secret::new(token))
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    info!("shutting down");
}

/// Fetches credentials, then refreshes them at about half their lifetime,
/// forever. After a failure it retries with exponential backoff (1 s up to
/// 60 s, with jitter), never waiting past the current credentials' expiry;
/// the current credentials stay published until replaced.
pub async fn refresh(
    fetcher: impl FetchCredentials,
    current: watch::Sender<Current>,
    now: impl Fn() -> SystemTime + Send + 'static,
) {
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .without_max_times()
        .with_jitter();
    let mut backoff = retry.build();
    loop {
        let wait = match fetcher.fetch().await {
            Ok(credentials) => {
                let lifetime = credentials
                    .expiration
                    .duration_since(now())
                    .unwrap_or_default();
                info!(
                    access_key_id = %credentials.access_key_id,
                    expiration = %rfc3339(credentials.expiration),
                    "got credentials"
                );
                current.send_modify(|state| {
                    state.credentials = Some(Arc::new(credentials));
                    state.last_error = None;
                    state.fetches += 1;
                });
                backoff = retry.build();
                let jitter = rand::rng().random_range(0.0..0.1);
                lifetime.mul_f64(0.5 - jitter).max(MIN_REFRESH_DELAY)
            }
            Err(failure) => {
                let valid = current.borrow().credentials.as_ref().map(|c| c.expiration);
                match valid.and_then(|expiration| expiration.duration_since(now()).ok()) {
                    Some(left) => warn!(
                        error = %failure,
                        still_valid_s = left.as_secs(),
                        "refresh failed; serving the current credentials meanwhile"
                    ),
                    None => warn!(error = %failure, "cannot get credentials"),
                }
                current.send_modify(|state| {
                    state.last_error = Some(failure.message);
                    state.fetches += 1;
                });
                backoff.next().unwrap_or(Duration::from_secs(60))
            }
        };
        tokio::time::sleep(wait).await;
    }
}

struct Endpoint {
    token_digest: [u8; 32],
    current: watch::Receiver<Current>,
    role_arn: Option<String>,
}

/// The container credentials format.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerCredentials<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_arn: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

async fn credentials(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    let Some(given) = headers.get(AUTHORIZATION) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "no Authorization header",
        );
    };
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    if given != endpoint.token_digest {
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "wrong Authorization header",
        );
    }
    let mut current = endpoint.current.clone();
    // Right after start, wait for the first fetch to end.
    let _ = tokio::time::timeout(
        FIRST_FETCH_WAIT,
        current.wait_for(|state| state.fetches > 0),
    )
    .await;
    let state = current.borrow().clone();
    respond(&state, endpoint.role_arn.as_deref(), SystemTime::now())
}

/// The answer for `state` at `now`: the credentials while they are valid,
/// else 503 with the last error.
pub fn respond(state: &Current, role_arn: Option<&str>, now: SystemTime) -> Response {
    match &state.credentials {
        Some(credentials) if credentials.expiration > now => {
            let body = ContainerCredentials {
                access_key_id: &credentials.access_key_id,
                secret_access_key: credentials.secret_access_key.expose(),
                token: credentials.session_token.expose(),
                expiration: rfc3339(credentials.expiration),
                account_id: credentials.account_id(),
                role_arn,
            };
            axum::Json(body).into_response()
        }
        _ => {
            let message = state.last_error.as_deref().unwrap_or("no credentials yet");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "CredentialsUnavailable",
                message,
            )
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(ErrorBody { code, message })).into_response()
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Mutex};

    use super::*;

    fn credentials(key: &str, expiration: SystemTime) -> Credentials {
        Credentials::new(
            key,
            Secret::new(format!("secret-of-{key}")),
            Secret::new(format!("session-of-{key}")),
            expiration,
            "arn:aws:sts::123456789012:assumed-role/R/s",
            "s",
        )
    }

    /// Answers from a script; the last answer repeats.
    struct Scripted {
        answers: Mutex<VecDeque<Result<(&'static str, Duration), &'static str>>>,
        clock: fn() -> SystemTime,
    }

    impl FetchCredentials for Scripted {
        fn fetch(&self) -> impl Future<Output = Result<Credentials, Failure>> + Send {
            let answer = {
                let mut answers = self.answers.lock().unwrap();
                if answers.len() > 1 {
                    answers.pop_front().unwrap()
                } else {
                    *answers.front().unwrap()
                }
            };
            let now = (self.clock)();
            std::future::ready(match answer {
                Ok((key, lifetime)) => Ok(credentials(key, now + lifetime)),
                Err(message) => Err(Failure {
                    message: message.into(),
                    exit: 1,
                }),
            })
        }
    }

    /// Wall time that moves with Tokio's (paused) clock.
    fn clock() -> SystemTime {
        static START: std::sync::OnceLock<(SystemTime, tokio::time::Instant)> =
            std::sync::OnceLock::new();
        let (wall, instant) =
            *START.get_or_init(|| (SystemTime::now(), tokio::time::Instant::now()));
        wall + instant.elapsed()
    }

    async fn body(response: Response) -> (StatusCode, serde_json::Value) {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_serving_the_good_credentials() {
        let hour = Duration::from_secs(3600);
        let fetcher = Scripted {
            answers: Mutex::new(VecDeque::from([
                Ok(("FIRST", hour)),
                Err("tokenbridge refused the request: UNAVAILABLE: STS down"),
                Err("tokenbridge refused the request: UNAVAILABLE: STS down"),
                Ok(("SECOND", hour)),
            ])),
            clock,
        };
        let (sender, mut current) = watch::channel(Current::default());
        let task = tokio::spawn(refresh(fetcher, sender, clock));

        let first = current.wait_for(|s| s.fetches == 1).await.unwrap().clone();
        assert_eq!(first.credentials.as_ref().unwrap().access_key_id, "FIRST");
        let issued = clock();

        // The refresh comes at about half the lifetime, and fails.
        let failed = current.wait_for(|s| s.fetches == 2).await.unwrap().clone();
        let waited = clock().duration_since(issued).unwrap();
        assert!(
            waited >= Duration::from_secs(1400) && waited <= Duration::from_secs(1800),
            "refreshed after {waited:?}"
        );
        assert!(failed.last_error.as_deref().unwrap().contains("STS down"));
        assert_eq!(failed.credentials.as_ref().unwrap().access_key_id, "FIRST");
        let (status, json) = body(respond(&failed, None, clock())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["AccessKeyId"], "FIRST");
        assert_eq!(json["Token"], "session-of-FIRST");

        // Retried with backoff, then replaced.
        let third = current.wait_for(|s| s.fetches == 3).await.unwrap().clone();
        assert_eq!(third.credentials.as_ref().unwrap().access_key_id, "FIRST");
        let fourth = current.wait_for(|s| s.fetches == 4).await.unwrap().clone();
        assert_eq!(fourth.credentials.as_ref().unwrap().access_key_id, "SECOND");
        assert!(fourth.last_error.is_none());
        task.abort();
    }

    #[tokio::test]
    async fn expired_or_missing_credentials_are_not_served() {
        let now = SystemTime::now();
        let state = Current {
            credentials: Some(Arc::new(credentials("OLD", now - Duration::from_secs(1)))),
            last_error: Some("metadata server h: unreachable".into()),
            fetches: 3,
        };
        let (status, json) = body(respond(&state, None, now)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["Message"], "metadata server h: unreachable");
        assert!(json.get("AccessKeyId").is_none());
        let (status, _) = body(respond(&Current::default(), None, now)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn the_answer_has_the_container_provider_shape() {
        let expiration = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let state = Current {
            credentials: Some(Arc::new(credentials("KEY", expiration))),
            last_error: None,
            fetches: 1,
        };
        let role = "arn:aws:iam::123456789012:role/R";
        let (status, json) = body(respond(&state, Some(role), SystemTime::UNIX_EPOCH)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json,
            serde_json::json!({
                "AccessKeyId": "KEY",
                "SecretAccessKey": "secret-of-KEY",
                "Token": "session-of-KEY",
                "Expiration": "2030-03-17T17:46:40Z",
                "AccountId": "123456789012",
                "RoleArn": role,
            })
        );
    }

    #[test]
    fn tokens_are_random_and_given_ones_checked() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 43);
        assert!(check_token("short".into()).is_err());
        assert!(check_token("sixteen chars ok".into()).is_err(), "spaces");
        assert!(check_token("0123456789abcdef".into()).is_ok());
    }
}
