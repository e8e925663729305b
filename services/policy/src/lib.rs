//! tokenbridge's policy model, shared by the server, the policy store and
//! `tokenbridge-admin`: no network, no database, no async.
//!
//! * [`rules`]: the one rule set (service account references, binding
//!   names, durations, IAM ARNs, session policies).
//! * [`binding`]: a [`Binding`] and its validation, each problem naming its
//!   field.
//! * [`conditions`]: GCE conditions compiled for matching.
//! * [`caller`]: the caller as a verified token describes it.
//! * [`file`]: the policy file (TOML) in and out, problems with file and
//!   line ([`diag`]).
//! * [`session`]: issuer mode's session tags and source identity.
//! * [`snapshot`]: the decision structure ([`PolicySnapshot`]): decide and
//!   explain.
//! * [`revocation`]: revocations of cached credentials ([`Revocations`]):
//!   which credentials a replica's cache must stop handing out.
//! * [`trust`]: IAM trust policies for bindings, and their linter.
//! * [`wire`]: conversions to and from the `tokenbridge.v1` messages.

#![forbid(unsafe_code)]

pub mod binding;
pub mod caller;
pub mod conditions;
pub mod diag;
pub mod file;
pub mod revocation;
pub mod rules;
pub mod session;
pub mod snapshot;
pub mod trust;
pub mod wire;

pub use binding::{Binding, Conditions, FieldError, SessionScope, Violation, validate_set};
pub use caller::{Caller, ComputeEngine};
pub use diag::Problem;
pub use revocation::{Revocation, Revocations};
pub use session::{ExpandedSession, SessionError, SessionIdentity};
pub use snapshot::{
    Decision, DurationRefusal, Evaluation, Explanation, Grant, Outcome, PolicySnapshot, Refusal,
};

#[cfg(test)]
mod tests;
