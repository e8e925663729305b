//! A fake STS for fault injection: answers `AssumeRoleWithWebIdentity` as
//! the test says, including the ways the real one can fail.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderName, Method, StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokio::sync::watch;

use crate::{
    serve,
    sts_wire::{XMLNS, error_response, escape, lock, request_id, unix_now, unverified_claims},
};

/// The access key id of [`FakeStsMode::Success`]'s credentials.
pub const FAKE_ACCESS_KEY_ID: &str = "ASIAFAKESTS00000001";
/// The secret access key of [`FakeStsMode::Success`]'s credentials.
pub const FAKE_SECRET_ACCESS_KEY: &str = "fake-sts-secret-access-key";
/// The session token of [`FakeStsMode::Success`]'s credentials.
pub const FAKE_SESSION_TOKEN: &str = "fake-sts-session-token";
/// The account of the roles [`FakeSts`] hands out.
const ACCOUNT: &str = "111122223333";

/// How [`FakeSts`] answers requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeStsMode {
    /// An STS error document (`ErrorResponse`) with this HTTP status, error
    /// code (e.g. `InvalidIdentityToken`) and message.
    Error {
        /// The HTTP status.
        status: u16,
        /// The STS error code.
        code: String,
        /// The error message.
        message: String,
    },
    /// No answer at all, until the server is dropped.
    Hang,
    /// 200 with a body that is not XML.
    Garbage,
    /// 200 with well-formed XML that is not an STS answer (no credentials).
    WrongXml,
    /// A valid `AssumeRoleWithWebIdentityResponse` with fixed credentials
    /// ([`FAKE_ACCESS_KEY_ID`] ..) expiring in an hour, for the role and
    /// session of the request.
    Success,
    /// Like `Success`, but each request waits until [`FakeSts::release`].
    Gated,
}

/// An STS on 127.0.0.1 that answers every POST according to a
/// [`FakeStsMode`] that tests can change at any time. Dropping it stops it.
pub struct FakeSts {
    addr: SocketAddr,
    state: Arc<StsState>,
    _stop: watch::Sender<()>,
}

struct StsState {
    mode: Mutex<FakeStsMode>,
    /// Requests so far.
    requests: watch::Sender<usize>,
    /// Whether `Gated` requests may proceed.
    gate_open: watch::Sender<bool>,
    last_form: Mutex<Option<HashMap<String, String>>>,
    /// Changes (to closed) when the server is dropped.
    stopped: watch::Receiver<()>,
}

impl FakeSts {
    /// Starts a fake STS answering in `mode`.
    pub async fn start(mode: FakeStsMode) -> Self {
        let (stop, stopped) = watch::channel(());
        let state = Arc::new(StsState {
            mode: Mutex::new(mode),
            requests: watch::Sender::new(0),
            gate_open: watch::Sender::new(false),
            last_form: Mutex::new(None),
            stopped,
        });
        let router = Router::new().fallback(sts).with_state(Arc::clone(&state));
        let addr = serve(router, &stop).await;
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    /// Answers later requests in `mode`; also closes the gate of
    /// [`FakeStsMode::Gated`] again.
    pub fn set_mode(&self, mode: FakeStsMode) {
        *lock(&self.state.mode) = mode;
        self.state.gate_open.send_replace(false);
    }

    /// Opens the gate: `Gated` requests, waiting or still to come, proceed
    /// until the next [`set_mode`](Self::set_mode).
    pub fn release(&self) {
        self.state.gate_open.send_replace(true);
    }

    /// Resolves once `n` requests in all have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut requests = self.state.requests.subscribe();
        // Fails only if the sender is gone, and `self` holds it.
        let _ = requests.wait_for(|&count| count >= n).await;
    }

    /// The endpoint URL: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests have arrived (answered or not).
    pub fn request_count(&self) -> usize {
        *self.state.requests.borrow()
    }

    /// The form parameters of the last request (`Action`, `RoleArn`,
    /// `RoleSessionName`, `DurationSeconds`, `WebIdentityToken` ..).
    pub fn last_form(&self) -> Option<HashMap<String, String>> {
        lock(&self.state.last_form).clone()
    }
}

async fn sts(State(state): State<Arc<StsState>>, method: Method, body: Bytes) -> Response {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mode = lock(&state.mode).clone();
    *lock(&state.last_form) = Some(form.clone());
    state.requests.send_modify(|count| *count += 1);
    let mut stopped = state.stopped.clone();
    match mode {
        FakeStsMode::Error {
            status,
            code,
            message,
        } => error_response(
            StatusCode::from_u16(status).expect("an HTTP status code"),
            &code,
            &message,
        ),
        FakeStsMode::Hang => {
            let _ = stopped.changed().await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        FakeStsMode::Garbage => (
            [(CONTENT_TYPE, "text/xml")],
            "<<< this is not an STS response >>>",
        )
            .into_response(),
        FakeStsMode::WrongXml => (
            [(CONTENT_TYPE, "text/xml")],
            format!(
                "<AssumeRoleWithWebIdentityResponse xmlns=\"{XMLNS}\">\
                 <AssumeRoleWithWebIdentityResult><Nothing>here</Nothing>\
                 </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
            ),
        )
            .into_response(),
        FakeStsMode::Success => success(&form),
        FakeStsMode::Gated => {
            let mut gate_open = state.gate_open.subscribe();
            tokio::select! {
                _ = gate_open.wait_for(|&open| open) => success(&form),
                _ = stopped.changed() => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            }
        }
    }
}

/// Credentials for the request's role and session; the subject, audience and
/// provider come from the (unverified) token, as far as it can be read.
fn success(form: &HashMap<String, String>) -> Response {
    let param = |name: &str| form.get(name).map_or("", String::as_str);
    let role = param("RoleArn").rsplit('/').next().unwrap_or_default();
    let session = param("RoleSessionName");
    let claims = unverified_claims(param("WebIdentityToken")).unwrap_or_default();
    let claim = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    let provider = claim("iss").trim_start_matches("https://");
    let expiration = utc_timestamp(unix_now() + 3600);
    let request_id = request_id();
    let body = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"{XMLNS}\">\
         <AssumeRoleWithWebIdentityResult>\
         <SubjectFromWebIdentityToken>{sub}</SubjectFromWebIdentityToken>\
         <Audience>{aud}</Audience>\
         <AssumedRoleUser>\
         <Arn>arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}</Arn>\
         <AssumedRoleId>AROAFAKESTS000000001:{session}</AssumedRoleId>\
         </AssumedRoleUser>\
         <Credentials>\
         <SessionToken>{FAKE_SESSION_TOKEN}</SessionToken>\
         <SecretAccessKey>{FAKE_SECRET_ACCESS_KEY}</SecretAccessKey>\
         <Expiration>{expiration}</Expiration>\
         <AccessKeyId>{FAKE_ACCESS_KEY_ID}</AccessKeyId>\
         </Credentials>\
         <Provider>{provider}</Provider>\
         </AssumeRoleWithWebIdentityResult>\
         <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>\
         </AssumeRoleWithWebIdentityResponse>",
        sub = escape(claim("sub")),
        aud = escape(claim("aud")),
        role = escape(role),
        session = escape(session),
        provider = escape(provider),
    );
    // Like STS, the request ID in a header too (where the SDKs read it).
    (
        [
            (CONTENT_TYPE, "text/xml".to_string()),
            (HeaderName::from_static("x-amzn-requestid"), request_id),
        ],
        body,
    )
        .into_response()
}

/// `unix` as `%Y-%m-%dT%H:%M:%SZ`, STS's format for `Expiration`.
fn utc_timestamp(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_timestamp(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
    }
}
