//! The HTML: minijinja templates compiled into the binary, HTML
//! autoescaping on for every template, and the error page every refusal
//! and failure is shown as.

use std::sync::LazyLock;

use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use minijinja::{AutoEscape, Environment, value::Serde};
use serde::Serialize;
use tracing::error;

use crate::backend::BackendError;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("bindings.html", include_str!("../templates/bindings.html")),
    ("binding.html", include_str!("../templates/binding.html")),
    ("explain.html", include_str!("../templates/explain.html")),
    ("deny.html", include_str!("../templates/deny.html")),
    ("confirm.html", include_str!("../templates/confirm.html")),
    (
        "decisions.html",
        include_str!("../templates/decisions.html"),
    ),
    ("status.html", include_str!("../templates/status.html")),
    ("error.html", include_str!("../templates/error.html")),
];

static ENV: LazyLock<Result<Environment<'static>, String>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    for (name, source) in TEMPLATES {
        env.add_template(name, source)
            .map_err(|e| format!("template {name}: {e}"))?;
    }
    Ok(env)
});

/// Whether every template compiles (checked when the router is built).
pub(crate) fn check() -> Result<(), String> {
    ENV.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// `name` rendered with `ctx`.
pub(crate) fn render(name: &str, ctx: &impl Serialize) -> Result<Html<String>, PageError> {
    render_str(name, ctx).map(Html).map_err(|e| {
        error!(template = name, error = %e, "console: page could not be rendered");
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Page unavailable",
            "This page could not be shown; the server log says why.",
        )
    })
}

fn render_str(name: &str, ctx: &impl Serialize) -> Result<String, String> {
    let env = ENV.as_ref().map_err(Clone::clone)?;
    let template = env.get_template(name).map_err(|e| e.to_string())?;
    template.render(Serde(ctx)).map_err(|e| e.to_string())
}

/// A refusal or failure, shown as a page with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageError {
    pub(crate) status: StatusCode,
    pub(crate) title: &'static str,
    pub(crate) message: String,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            title,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Not allowed", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", message)
    }
}

/// The backend's errors as pages: the contract's table, in one place.
impl From<BackendError> for PageError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(m) => PageError::not_found(m),
            BackendError::InvalidArgument(m) => PageError::bad_request(m),
            BackendError::FailedPrecondition(m) => {
                PageError::new(StatusCode::CONFLICT, "Cannot do that now", m)
            }
            BackendError::Unavailable(m) => {
                PageError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m)
            }
        }
    }
}

#[derive(Serialize)]
struct ErrorPage<'a> {
    title: &'a str,
    status: u16,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            title: self.title,
            status: self.status.as_u16(),
            message: &self.message,
        };
        match render_str("error.html", &page) {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(e) => {
                error!(error = %e, "console: the error page could not be rendered");
                (self.status, format!("{}: {}\n", self.title, self.message)).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_escapes_html() {
        check().unwrap();
        let html = render_str(
            "error.html",
            &ErrorPage {
                title: "t",
                status: 400,
                message: "<script>alert(1)</script>",
            },
        )
        .unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn backend_errors_map_to_statuses() {
        let cases = [
            (BackendError::NotFound("a".into()), StatusCode::NOT_FOUND),
            (
                BackendError::InvalidArgument("a".into()),
                StatusCode::BAD_REQUEST,
            ),
            (
                BackendError::FailedPrecondition("a".into()),
                StatusCode::CONFLICT,
            ),
            (
                BackendError::Unavailable("a".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (e, status) in cases {
            let page = PageError::from(e);
            assert_eq!(page.status, status);
            assert_eq!(page.message, "a");
        }
    }
}
