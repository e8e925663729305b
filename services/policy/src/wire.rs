//! Conversions between the model and the `tokenbridge.v1` wire messages,
//! shared by the server's `PolicyAdmin` service and `tokenbridge-admin`.
//! Empty strings and lists on the wire mean "unset".

use tokenbridge_proto::v1 as pb;

use crate::{
    binding::{Binding, Conditions},
    caller::{Caller, ComputeEngine},
    snapshot::Outcome,
};

impl From<pb::Binding> for Binding {
    fn from(b: pb::Binding) -> Self {
        let c = b.conditions.unwrap_or_default();
        Binding {
            name: b.name,
            service_accounts: b.service_accounts,
            role_arns: b.role_arns,
            max_duration_seconds: b.max_duration_seconds,
            default_duration_seconds: b.default_duration_seconds,
            conditions: Conditions {
                project_ids: c.project_ids,
                project_numbers: c.project_numbers,
                zones: c.zones,
                instance_names: c.instance_names,
            },
            session_policy: (!b.session_policy.is_empty()).then_some(b.session_policy),
            managed_policy_arns: b.managed_policy_arns,
            issuer: b.issuer,
            session_tags: b.session_tags.into_iter().collect(),
            source_identity: (!b.source_identity.is_empty()).then_some(b.source_identity),
        }
    }
}

/// A binding for the wire, without etag and times.
impl From<Binding> for pb::Binding {
    fn from(b: Binding) -> Self {
        let conditions = (!b.conditions.is_empty()).then_some(pb::Conditions {
            project_ids: b.conditions.project_ids,
            project_numbers: b.conditions.project_numbers,
            zones: b.conditions.zones,
            instance_names: b.conditions.instance_names,
        });
        pb::Binding {
            name: b.name,
            service_accounts: b.service_accounts,
            role_arns: b.role_arns,
            max_duration_seconds: b.max_duration_seconds,
            default_duration_seconds: b.default_duration_seconds,
            conditions,
            session_policy: b.session_policy.unwrap_or_default(),
            managed_policy_arns: b.managed_policy_arns,
            etag: String::new(),
            create_time: None,
            update_time: None,
            issuer: b.issuer,
            session_tags: b.session_tags.into_iter().collect(),
            source_identity: b.source_identity.unwrap_or_default(),
        }
    }
}

/// The caller an `Explain` request describes; `None` when it has no `sub`.
pub fn caller_from_pb(c: pb::Claims) -> Option<Caller> {
    if c.sub.is_empty() {
        return None;
    }
    let compute_engine = c.compute_engine.map(|g| {
        let opt = |s: String| (!s.is_empty()).then_some(s);
        ComputeEngine {
            project_id: opt(g.project_id),
            project_number: opt(g.project_number),
            zone: opt(g.zone),
            instance_name: opt(g.instance_name),
            instance_id: opt(g.instance_id),
        }
    });
    Some(Caller {
        sub: c.sub,
        email: (!c.email.is_empty()).then_some(c.email),
        email_verified: c.email_verified,
        compute_engine,
    })
}

impl From<&Caller> for pb::Claims {
    fn from(c: &Caller) -> Self {
        pb::Claims {
            sub: c.sub.clone(),
            email: c.email.clone().unwrap_or_default(),
            email_verified: c.email_verified,
            compute_engine: c.compute_engine.as_ref().map(|g| pb::ComputeEngineClaims {
                project_id: g.project_id.clone().unwrap_or_default(),
                project_number: g.project_number.clone().unwrap_or_default(),
                zone: g.zone.clone().unwrap_or_default(),
                instance_name: g.instance_name.clone().unwrap_or_default(),
                instance_id: g.instance_id.clone().unwrap_or_default(),
            }),
        }
    }
}

impl From<Outcome> for pb::binding_evaluation::Outcome {
    fn from(o: Outcome) -> Self {
        use pb::binding_evaluation::Outcome as P;
        match o {
            Outcome::Matched => P::Matched,
            Outcome::ServiceAccountNotListed => P::ServiceAccountNotListed,
            Outcome::RoleNotListed => P::RoleNotListed,
            Outcome::ConditionNotMet => P::ConditionNotMet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_round_trip() {
        let b = Binding {
            name: "b".into(),
            service_accounts: vec!["112233".into()],
            role_arns: vec!["arn:aws:iam::111122223333:role/R".into()],
            max_duration_seconds: Some(7200),
            default_duration_seconds: None,
            conditions: Conditions {
                zones: vec!["us-*".into()],
                ..Conditions::default()
            },
            session_policy: Some("{}".into()),
            managed_policy_arns: vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()],
            issuer: Some(true),
            session_tags: [("team".to_string(), "{email}".to_string())].into(),
            source_identity: Some("{email}".into()),
        };
        assert_eq!(Binding::from(pb::Binding::from(b.clone())), b);
        let plain = Binding {
            name: "p".into(),
            ..Binding::default()
        };
        let wire = pb::Binding::from(plain.clone());
        assert!(wire.conditions.is_none());
        assert_eq!(Binding::from(wire), plain);
    }

    #[test]
    fn explain_claims_need_a_subject() {
        assert_eq!(caller_from_pb(pb::Claims::default()), None);
        let caller = caller_from_pb(pb::Claims {
            sub: "1".into(),
            compute_engine: Some(pb::ComputeEngineClaims {
                zone: "us-east1-b".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("a caller");
        let gce = caller.compute_engine.clone().expect("GCE claims");
        assert_eq!(gce.zone.as_deref(), Some("us-east1-b"));
        assert_eq!(gce.project_id, None);
        assert_eq!(caller_from_pb(pb::Claims::from(&caller)), Some(caller));
    }
}
