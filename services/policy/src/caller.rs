//! The caller as a verified token describes it: what the policy decides on.

use serde::{Deserialize, Deserializer, Serialize};

/// The caller as a verified token describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: the service account's unique ID.
    pub sub: String,
    /// `email`, if the token has one.
    pub email: Option<String>,
    /// `email_verified`.
    pub email_verified: bool,
    /// `google.compute_engine`, in `format=full` tokens from GCE VMs.
    pub compute_engine: Option<ComputeEngine>,
}

impl Caller {
    /// The email, only when the token marks it verified: what bindings match.
    pub fn verified_email(&self) -> Option<&str> {
        self.email.as_deref().filter(|_| self.email_verified)
    }

    /// How refusals name the caller: the unique ID, and the email only when
    /// verified (`112233445566778899001 (etl@p.iam.gserviceaccount.com)`).
    pub fn name(&self) -> String {
        match self.verified_email() {
            Some(email) => format!("{} ({email})", self.sub),
            None => self.sub.clone(),
        }
    }

    /// The unique ID, and the email if any (verified or not), for `Explain`.
    pub fn describe(&self) -> String {
        match &self.email {
            Some(email) => format!("{} ({email})", self.sub),
            None => self.sub.clone(),
        }
    }
}

/// The `google.compute_engine` claim of a `format=full` ID token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeEngine {
    /// The VM's project ID.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The VM's project number (a JSON number in Google's tokens; a string
    /// of digits is accepted too).
    #[serde(default, deserialize_with = "number_or_string")]
    pub project_number: Option<String>,
    /// The VM's zone, e.g. `us-central1-a`.
    #[serde(default)]
    pub zone: Option<String>,
    /// The VM's name.
    #[serde(default)]
    pub instance_name: Option<String>,
    /// The VM's numeric ID.
    #[serde(default, deserialize_with = "number_or_string")]
    pub instance_id: Option<String>,
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }
    Ok(Option::<NumOrStr>::deserialize(d)?.map(|v| match v {
        NumOrStr::Num(n) => n.to_string(),
        NumOrStr::Str(s) => s,
    }))
}
