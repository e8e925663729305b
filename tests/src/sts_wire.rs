//! What the STS stand-ins ([`FakeSts`](crate::FakeSts),
//! [`StrictSts`](crate::StrictSts)) write and read the same way: STS's XML
//! namespace and error document, request ids, unverified JWT payloads.

use std::{
    fmt::Write as _,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

/// The namespace of STS's XML documents.
pub(crate) const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// An STS `ErrorResponse` document with this status, code and message.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    let body = format!(
        "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{kind}</Type><Code>{}</Code>\
         <Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        escape(code),
        escape(message),
        request_id(),
    );
    (status, [(CONTENT_TYPE, "text/xml")], body).into_response()
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A random request id shaped like STS's (a UUID).
pub(crate) fn request_id() -> String {
    let bytes = rand::random::<[u8; 16]>();
    bytes
        .iter()
        .enumerate()
        .fold(String::with_capacity(36), |mut id, (i, byte)| {
            if matches!(i, 4 | 6 | 8 | 10) {
                id.push('-');
            }
            let _ = write!(id, "{byte:02x}");
            id
        })
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// The payload of a JWT (three dot-separated parts), unverified.
pub(crate) fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&json).ok()
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
