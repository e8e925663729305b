//! The model's rules, the policy file, the snapshot's decision and
//! explanation.

use std::{collections::BTreeSet, path::Path};

use crate::{binding::*, caller::*, conditions::*, file::*, rules::*, snapshot::*};

const ROLE_A: &str = "arn:aws:iam::111122223333:role/RoleA";
const ROLE_B: &str = "arn:aws:iam::111122223333:role/team/RoleB";
const SUB: &str = "112233445566778899001";
const EMAIL: &str = "etl@my-project.iam.gserviceaccount.com";

fn binding(name: &str) -> Binding {
    Binding {
        name: name.into(),
        service_accounts: vec![SUB.into()],
        role_arns: vec![ROLE_A.into()],
        ..Binding::default()
    }
}

fn full_binding() -> Binding {
    Binding {
        name: "team-a.etl_1".into(),
        service_accounts: vec![SUB.into(), EMAIL.into()],
        role_arns: vec![ROLE_A.into(), ROLE_B.into()],
        max_duration_seconds: Some(7200),
        default_duration_seconds: Some(900),
        conditions: Conditions {
            project_ids: vec!["my-project".into(), "example.com:legacy-project".into()],
            project_numbers: vec!["123456789012".into()],
            zones: vec!["us-central1-*".into(), "europe-west[14]-?".into()],
            instance_names: vec!["etl-{blue,green}-*".into()],
        },
        session_policy: Some(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::bucket/*"}]}"#
                .into(),
        ),
        managed_policy_arns: vec![
            "arn:aws:iam::aws:policy/ReadOnlyAccess".into(),
            "arn:aws:iam::111122223333:policy/team/Scoped".into(),
        ],
        ..Binding::default()
    }
}

#[test]
fn issuer_mode_keys_round_trip_through_the_file_with_lines_for_problems() {
    let src = r#"
[[binding]]
name = "tagged"
service_accounts = ["112233"]
role_arns = ["arn:aws:iam::111122223333:role/R"]
issuer = true
session_tags = { team = "a", sa = "{email}" }
source_identity = "{email}"
"#;
    let bindings = from_toml_str(src, Path::new("p.toml")).unwrap();
    assert_eq!(bindings[0].issuer, Some(true));
    assert_eq!(bindings[0].session_tags["sa"], "{email}");
    let again = from_toml_str(&to_toml_string(&bindings).unwrap(), Path::new("q.toml")).unwrap();
    assert_eq!(again, bindings);

    let bad = src.replace("{email}\" }", "{mail}\" }");
    let problems = from_toml_str(&bad, Path::new("p.toml")).unwrap_err();
    assert_eq!(problems[0].line, Some(7), "{problems:?}");
    assert!(
        problems[0].reason.contains("session_tags.sa"),
        "{problems:?}"
    );
    assert!(
        problems[0].reason.contains("unknown placeholder `{mail}`"),
        "{problems:?}"
    );
}

#[test]
fn bindings_that_differ_in_issuer_mode_or_tags_are_not_merged() {
    let mut a = full_binding();
    a.name = "a".into();
    a.conditions = Conditions::default();
    a.issuer = Some(true);
    a.session_tags = [("team".to_string(), "a".to_string())].into();
    let mut b = a.clone();
    b.name = "b".into();
    b.session_tags = [("team".to_string(), "b".to_string())].into();
    let caller = Caller {
        sub: SUB.into(),
        ..Caller::default()
    };
    let one =
        PolicySnapshot::build(1, vec![a.clone()], Vec::<String>::new(), Path::new("p")).unwrap();
    let decision = one.decide(&caller, ROLE_A).unwrap();
    assert_eq!(decision.session.session_tags["team"], "a");
    assert_eq!(decision.session_binding, "a");
    let both = PolicySnapshot::build(1, vec![a, b], Vec::<String>::new(), Path::new("p")).unwrap();
    assert!(matches!(
        both.decide(&caller, ROLE_A),
        Err(Refusal::ConflictingScopes { .. })
    ));
}

fn gce(project: &str, number: &str, zone: &str, instance: &str) -> ComputeEngine {
    ComputeEngine {
        project_id: Some(project.into()),
        project_number: Some(number.into()),
        zone: Some(zone.into()),
        instance_name: Some(instance.into()),
        instance_id: Some("42".into()),
    }
}

fn fields(b: &Binding) -> Vec<String> {
    b.validate()
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.field)
        .collect()
}

// ---------------------------------------------------------------------------
// Validation

#[test]
fn a_full_binding_is_valid() {
    assert_eq!(full_binding().validate(), Ok(()));
    assert_eq!(binding("minimal").validate(), Ok(()));
}

#[test]
fn every_problem_names_its_field() {
    let b = Binding {
        name: "has space".into(),
        service_accounts: vec![SUB.into(), "not an account".into(), SUB.into()],
        role_arns: vec!["arn:aws:s3:::bucket".into(), ROLE_A.into(), ROLE_A.into()],
        max_duration_seconds: Some(60),
        default_duration_seconds: Some(50_000),
        ..Binding::default()
    };
    let errors = b.validate().unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let has = |prefix: &str| shown.iter().any(|s| s.starts_with(prefix));
    assert!(has("field name: `has space`"), "{shown:?}");
    assert!(
        has("field service_accounts[1]: `not an account` is neither"),
        "{shown:?}"
    );
    assert!(has("field service_accounts[2]: "), "{shown:?}");
    assert!(
        has("field role_arns[0]: `arn:aws:s3:::bucket` is not an IAM role ARN"),
        "{shown:?}"
    );
    assert!(has("field role_arns[2]: "), "{shown:?}");
    assert!(
        has("field max_duration_seconds: 60 is outside 900..=43200"),
        "{shown:?}"
    );
    assert!(
        has("field default_duration_seconds: 50000 is outside"),
        "{shown:?}"
    );
    assert_eq!(errors.len(), 7, "{shown:?}");
}

#[test]
fn empty_lists_and_default_above_max() {
    let b = Binding {
        name: "x".into(),
        max_duration_seconds: Some(1800),
        default_duration_seconds: Some(3600),
        ..Binding::default()
    };
    let errors = b.validate().unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "field service_accounts: must not be empty",
            "field role_arns: must not be empty",
            "field default_duration_seconds: 3600 is above max_duration_seconds 1800",
        ]
    );
    // Without a maximum, the default may not exceed 3600 either.
    let b = Binding {
        default_duration_seconds: Some(7200),
        ..binding("d")
    };
    assert_eq!(fields(&b), ["default_duration_seconds"]);
}

#[test]
fn effective_durations() {
    let b = binding("d");
    assert_eq!(b.effective_max_duration(), 3600);
    assert_eq!(b.effective_default_duration(), 3600);
    let b = Binding {
        max_duration_seconds: Some(1800),
        ..binding("d")
    };
    assert_eq!(b.effective_default_duration(), 1800);
    let b = Binding {
        max_duration_seconds: Some(43200),
        ..binding("d")
    };
    assert_eq!(b.effective_default_duration(), 3600);
}

#[test]
fn service_account_rule_agrees_with_the_policy_file() {
    for entry in [
        SUB,
        "1",
        &"9".repeat(64),
        &"9".repeat(65),
        EMAIL,
        "ETL@My-Project.iam.gserviceaccount.com",
        "a@b",
        "@b.c",
        "a@.c",
        "a@c.",
        "a@b@c.d",
        "a b@c.d",
        "",
        "user-123",
    ] {
        let ours = classify_service_account(entry).is_some();
        let src = format!(
            "[[binding]]\nname = \"x\"\nservice_accounts = [{}]\nrole_arns = [\"{ROLE_A}\"]\n",
            toml::Value::String(entry.to_string())
        );
        let theirs = PolicySnapshot::from_toml_str(&src, Path::new("p.toml")).is_ok();
        assert_eq!(ours, theirs, "`{entry}`");
    }
}

#[test]
fn session_policy_rules() {
    let ok = r#"{"Version":"2012-10-17","Statement":[]}"#;
    assert_eq!(check_session_policy(ok), Ok(()));
    let too_long = format!(
        r#"{{"Statement":[],"Pad":"{}"}}"#,
        "x".repeat(MAX_SESSION_POLICY_CHARS)
    );
    for (policy, wanted) in [
        (too_long.as_str(), "characters; STS accepts at most 2048"),
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ("[1,2]", "must be a JSON object"),
        (r#"{"Version":"2012-10-17"}"#, "needs a `Statement`"),
    ] {
        let reason = check_session_policy(policy).unwrap_err();
        assert!(reason.contains(wanted), "{reason}");
        let b = Binding {
            session_policy: Some(policy.into()),
            ..binding("s")
        };
        assert_eq!(fields(&b), ["session_policy"]);
    }
    // Exactly 2048 characters, multi-byte ones counted as one each.
    let prefix = r#"{"Statement":[],"P":""#;
    let suffix = r#""}"#;
    let fill = "é".repeat(MAX_SESSION_POLICY_CHARS - prefix.len() - suffix.len());
    let exact = format!("{prefix}{fill}{suffix}");
    assert_eq!(exact.chars().count(), MAX_SESSION_POLICY_CHARS);
    assert!(exact.len() > MAX_SESSION_POLICY_CHARS);
    assert_eq!(check_session_policy(&exact), Ok(()));
}

#[test]
fn managed_policy_arn_rules() {
    for ok in [
        "arn:aws:iam::aws:policy/ReadOnlyAccess",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws-us-gov:iam::111122223333:policy/a/b/Name+=,.@_-",
    ] {
        assert_eq!(check_managed_policy_arn(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "arn:aws:iam::111122223333:role/R",
        "arn:aws:iam::1111:policy/P",
        "arn:aws:iam::awz:policy/P",
        "arn:aws:s3:::bucket",
        "arn:aws:iam::aws:policy/",
        "arn:aws:iam::aws:policy/has space",
    ] {
        assert!(check_managed_policy_arn(bad).is_err(), "{bad}");
    }
    let eleven = Binding {
        managed_policy_arns: (0..11)
            .map(|i| format!("arn:aws:iam::111122223333:policy/P{i}"))
            .collect(),
        ..binding("m")
    };
    let errors = eleven.validate().unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "field managed_policy_arns: 11 ARNs; STS accepts at most 10"
    );
    let ten = Binding {
        managed_policy_arns: eleven.managed_policy_arns[..10].to_vec(),
        ..binding("m")
    };
    assert_eq!(ten.validate(), Ok(()));
    let bad = Binding {
        managed_policy_arns: vec![
            "arn:aws:iam::aws:policy/A".into(),
            "nope".into(),
            "arn:aws:iam::aws:policy/A".into(),
        ],
        ..binding("m")
    };
    assert_eq!(
        fields(&bad),
        ["managed_policy_arns[1]", "managed_policy_arns[2]"]
    );
}

#[test]
fn condition_values_are_checked_by_field() {
    let b = Binding {
        conditions: Conditions {
            project_ids: vec![
                "My Project".into(),
                "ok-project".into(),
                "ok-project".into(),
            ],
            project_numbers: vec!["12a".into()],
            zones: vec!["us-[central1-a".into(), "us central".into(), String::new()],
            instance_names: vec!["etl/*".into(), "x".repeat(129)],
        },
        ..binding("c")
    };
    let errors = b.validate().unwrap_err();
    let got: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        got,
        [
            "conditions.project_ids[0]",
            "conditions.project_ids[2]",
            "conditions.project_numbers[0]",
            "conditions.zones[0]",
            "conditions.zones[1]",
            "conditions.zones[2]",
            "conditions.instance_names[0]",
            "conditions.instance_names[1]",
        ]
    );
    let glob = errors
        .iter()
        .find(|e| e.field == "conditions.zones[0]")
        .unwrap();
    assert!(
        glob.reason.starts_with("invalid glob `us-[central1-a`"),
        "{}",
        glob.reason
    );
    let many = Binding {
        conditions: Conditions {
            zones: (0..=MAX_CONDITION_VALUES)
                .map(|i| format!("z{i}"))
                .collect(),
            ..Conditions::default()
        },
        ..binding("c")
    };
    assert_eq!(fields(&many), ["conditions.zones"]);
}

#[test]
fn set_validation_finds_duplicate_names() {
    let set = vec![binding("a"), binding("b"), binding("a")];
    let v = validate_set(&set);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].index, 2);
    assert_eq!(
        v[0].to_string(),
        "binding `a`: field name: `a` is already used by binding #1; names must be unique"
    );
}

// ---------------------------------------------------------------------------
// Globs and conditions

fn compiled(c: Conditions) -> CompiledConditions {
    CompiledConditions::new(&c).unwrap()
}

#[test]
fn zone_and_instance_globs() {
    let c = compiled(Conditions {
        zones: vec!["us-central1-*".into(), "europe-west[14]-?".into()],
        ..Conditions::default()
    });
    let at = |zone: &str| c.is_met(Some(&gce("p", "1", zone, "vm")));
    assert!(at("us-central1-a"));
    assert!(at("us-central1-f"));
    assert!(at("europe-west1-b"));
    assert!(at("europe-west4-c"));
    assert!(!at("europe-west2-b"));
    assert!(!at("europe-west1-bb"));
    assert!(!at("us-east1-b"));
    assert!(!at("US-CENTRAL1-A"), "globs are case-sensitive");
    assert!(!at("xus-central1-a"), "globs match the whole value");

    let c = compiled(Conditions {
        instance_names: vec!["etl-{blue,green}-*".into()],
        ..Conditions::default()
    });
    let named = |name: &str| c.is_met(Some(&gce("p", "1", "z", name)));
    assert!(named("etl-blue-0"));
    assert!(named("etl-green-17"));
    assert!(!named("etl-red-0"));
    assert!(!named("etl-blue"));
}

#[test]
fn every_condition_kind_must_match() {
    let c = compiled(full_binding().conditions);
    let good = gce("my-project", "123456789012", "us-central1-a", "etl-blue-1");
    assert!(c.is_met(Some(&good)));
    assert!(c.evaluate(Some(&good)).met);
    assert!(c.is_met(Some(&ComputeEngine {
        project_id: Some("example.com:legacy-project".into()),
        ..good.clone()
    })));
    for (what, bad) in [
        (
            "project_id",
            ComputeEngine {
                project_id: Some("other".into()),
                ..good.clone()
            },
        ),
        (
            "project_number",
            ComputeEngine {
                project_number: Some("999".into()),
                ..good.clone()
            },
        ),
        (
            "zone",
            ComputeEngine {
                zone: Some("asia-east1-a".into()),
                ..good.clone()
            },
        ),
        (
            "instance_name",
            ComputeEngine {
                instance_name: Some("web-1".into()),
                ..good.clone()
            },
        ),
        (
            "zone",
            ComputeEngine {
                zone: None,
                ..good.clone()
            },
        ),
    ] {
        assert!(!c.is_met(Some(&bad)), "{what}");
        let outcome = c.evaluate(Some(&bad));
        assert!(!outcome.met, "{what}");
        let failing: Vec<&String> = outcome
            .details
            .iter()
            .filter(|d| d.contains("none"))
            .collect();
        assert_eq!(failing.len(), 1, "{what}: {:?}", outcome.details);
        assert!(failing[0].starts_with(what), "{what}: {failing:?}");
    }
}

#[test]
fn tokens_without_gce_claims_never_meet_conditions() {
    let c = compiled(Conditions {
        project_ids: vec!["my-project".into()],
        ..Conditions::default()
    });
    assert!(!c.is_met(None));
    let outcome = c.evaluate(None);
    assert!(!outcome.met);
    assert!(
        outcome.details[0].contains("GKE Workload Identity"),
        "{outcome:?}"
    );
    // No conditions: any token matches.
    let none = compiled(Conditions::default());
    assert!(none.is_met(None));
    assert!(none.evaluate(None).met);
}

#[test]
fn compute_engine_claim_parses_as_google_sends_it() {
    let claim = r#"{
        "instance_creation_timestamp": 1700000000,
        "instance_id": 4312234565443211234,
        "instance_name": "etl-blue-1",
        "project_id": "my-project",
        "project_number": 123456789012,
        "zone": "us-central1-a"
    }"#;
    let parsed: ComputeEngine = serde_json::from_str(claim).unwrap();
    assert_eq!(
        parsed,
        ComputeEngine {
            project_id: Some("my-project".into()),
            project_number: Some("123456789012".into()),
            zone: Some("us-central1-a".into()),
            instance_name: Some("etl-blue-1".into()),
            instance_id: Some("4312234565443211234".into()),
        }
    );
    let as_string: ComputeEngine = serde_json::from_str(r#"{"project_number":"42"}"#).unwrap();
    assert_eq!(as_string.project_number.as_deref(), Some("42"));
    assert_eq!(as_string.zone, None);
}

// ---------------------------------------------------------------------------
// TOML import and export

#[test]
fn toml_round_trip_is_lossless() {
    let with_defaults = binding("plain");
    let explicit = Binding {
        max_duration_seconds: Some(3600),
        default_duration_seconds: Some(3600),
        ..binding("explicit-defaults")
    };
    let set = vec![full_binding(), with_defaults, explicit];
    let text = to_toml_string(&set).unwrap();
    let back = from_toml_str(&text, Path::new("export.toml")).unwrap();
    assert_eq!(back, set, "{text}");
    // Explicit defaults stay explicit, absent ones stay absent.
    assert!(text.contains("[binding.conditions]"), "{text}");
    let plain_part = &text[text.find("name = \"plain\"").unwrap()..];
    let plain_part = &plain_part[..plain_part.find("[[binding]]").unwrap()];
    assert!(!plain_part.contains("duration"), "{plain_part}");
    // And again: exporting the import gives the same text.
    assert_eq!(to_toml_string(&back).unwrap(), text);
}

#[test]
fn the_contract_policy_file_imports_and_exports_in_its_own_shape() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/policy.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    let bindings = from_toml_str(&src, &path).unwrap();
    assert_eq!(bindings.len(), 2);
    assert_eq!(bindings[1].default_duration_seconds, Some(3600));
    assert_eq!(bindings[0].default_duration_seconds, None);
    let exported = to_toml_string(&bindings).unwrap();
    // The exchange reads the export.
    let policy = PolicySnapshot::from_toml_str(&exported, Path::new("export.toml")).unwrap();
    assert_eq!(policy.binding_count(), 2);
    assert_eq!(from_toml_str(&exported, Path::new("e")).unwrap(), bindings);
}

#[test]
fn import_problems_have_file_line_and_field() {
    let src = format!(
        r#"
[[binding]]
name = "ok"
service_accounts = ["{SUB}"]
role_arns = ["{ROLE_A}"]

[[binding]]
name = "bad-glob"
service_accounts = ["{SUB}"]
role_arns = ["{ROLE_A}"]
[binding.conditions]
zones = ["us-[x"]
"#
    );
    let problems = from_toml_str(&src, Path::new("p.toml")).unwrap_err();
    assert_eq!(problems.len(), 1);
    let shown = problems[0].to_string();
    assert!(
        shown.starts_with("p.toml:12: binding `bad-glob`: field conditions.zones[0]: invalid glob"),
        "{shown}"
    );

    let unknown = format!(
        "[[binding]]\nname = \"x\"\nservice_accounts = [\"{SUB}\"]\nrole_arns = [\"{ROLE_A}\"]\nsesion_policy = \"{{}}\"\n"
    );
    let problems = from_toml_str(&unknown, Path::new("p.toml")).unwrap_err();
    let shown = problems[0].to_string();
    assert!(shown.contains("unknown field `sesion_policy`"), "{shown}");
    assert!(shown.starts_with("p.toml:"), "{shown}");

    let unknown_condition = format!(
        "[[binding]]\nname = \"x\"\nservice_accounts = [\"{SUB}\"]\nrole_arns = [\"{ROLE_A}\"]\nconditions = {{ regions = [\"us\"] }}\n"
    );
    let shown = from_toml_str(&unknown_condition, Path::new("p.toml")).unwrap_err()[0].to_string();
    assert!(shown.contains("unknown field `regions`"), "{shown}");
}

#[test]
fn the_index_keeps_grants_and_durations() {
    let set = vec![full_binding(), binding("plain")];
    let policy = PolicySnapshot::build(0, set, [], Path::new("store")).unwrap();
    assert_eq!(policy.binding_count(), 2);
    let who = Caller {
        sub: SUB.into(),
        compute_engine: Some(gce(
            "my-project",
            "123456789012",
            "us-central1-a",
            "etl-blue-1",
        )),
        ..Caller::default()
    };
    let allowed = policy.decide(&who, ROLE_A).unwrap();
    assert_eq!(allowed.max_duration_seconds, 7200);
    // Two whole grants, least scoped first: `plain` (unscoped, 3600 s) and
    // the scoped `team-a.etl_1` (7200 s); the default is the first's.
    assert_eq!(allowed.bindings, BTreeSet::from(["plain".to_string()]));
    assert_eq!(allowed.grants.len(), 2);
    assert!(allowed.scope.is_unscoped());
    let long = allowed.for_duration(7200).unwrap();
    assert_eq!(long.bindings, BTreeSet::from(["team-a.etl_1".to_string()]));
    assert!(!long.scope.is_unscoped());
    assert!(allowed.for_duration(3600).unwrap().scope.is_unscoped());
    assert_eq!(
        allowed.for_duration(7201),
        Err(DurationRefusal::TooLong { max: 7200 })
    );
    // Through the email as well as the unique ID: each binding counts once.
    let both = Caller {
        email: Some(EMAIL.to_ascii_uppercase()),
        email_verified: true,
        ..who.clone()
    };
    assert_eq!(policy.decide(&both, ROLE_A), Ok(allowed));
    // An email entry never matches a sub, nor an unverified email.
    let by_email_as_sub = Caller {
        sub: EMAIL.into(),
        ..Caller::default()
    };
    assert_eq!(
        policy.decide(&by_email_as_sub, ROLE_A),
        Err(Refusal::NoRoles)
    );
    let unverified = Caller {
        sub: "42".into(),
        email: Some(EMAIL.into()),
        email_verified: false,
        compute_engine: who.compute_engine.clone(),
    };
    assert_eq!(policy.decide(&unverified, ROLE_A), Err(Refusal::NoRoles));
    let verified = Caller {
        email_verified: true,
        ..unverified
    };
    assert_eq!(
        policy.decide(&verified, ROLE_A).map(|d| d.bindings),
        Ok(BTreeSet::from(["team-a.etl_1".to_string()]))
    );
    assert_eq!(
        policy.decide(&verified, "arn:aws:iam::111122223333:role/Other"),
        Err(Refusal::RoleNotGranted)
    );
}

// ---------------------------------------------------------------------------
// The snapshot's decision and explanation

fn caller(sub: &str, email: Option<&str>, gce: Option<ComputeEngine>) -> Caller {
    Caller {
        sub: sub.into(),
        email: email.map(Into::into),
        email_verified: email.is_some(),
        compute_engine: gce,
    }
}

fn snapshot(bindings: Vec<Binding>, denied: &[&str]) -> PolicySnapshot {
    PolicySnapshot::build(
        7,
        bindings,
        denied.iter().map(|s| s.to_string()),
        Path::new("test"),
    )
    .unwrap()
}

fn prod_only(name: &str, max: u32) -> Binding {
    Binding {
        max_duration_seconds: Some(max),
        conditions: Conditions {
            project_ids: vec!["prod".into()],
            ..Conditions::default()
        },
        ..binding(name)
    }
}

#[test]
fn conditions_decide_and_limits_come_from_matching_bindings_only() {
    let snap = snapshot(vec![prod_only("prod", 43200), binding("any")], &[]);
    let in_prod = caller(SUB, None, Some(gce("prod", "1", "z", "vm")));
    let elsewhere = caller(SUB, None, Some(gce("dev", "1", "z", "vm")));
    let d = snap.decide(&in_prod, ROLE_A).unwrap();
    assert_eq!(d.max_duration_seconds, 43200);
    assert_eq!(d.bindings, BTreeSet::from(["any".into(), "prod".into()]));
    let d = snap.decide(&elsewhere, ROLE_A).unwrap();
    assert_eq!(
        d.max_duration_seconds, 3600,
        "the prod binding does not apply"
    );
    assert_eq!(d.bindings, BTreeSet::from(["any".into()]));

    let only_prod = snapshot(vec![prod_only("prod", 7200)], &[]);
    assert_eq!(
        only_prod.decide(&elsewhere, ROLE_A),
        Err(Refusal::ConditionsNotMet {
            bindings: BTreeSet::from(["prod".into()])
        })
    );
    let cloud_run = caller(SUB, None, None);
    assert!(matches!(
        only_prod.decide(&cloud_run, ""),
        Err(Refusal::ConditionsNotMet { .. })
    ));
    assert_eq!(only_prod.decide(&in_prod, "").unwrap().role_arn, ROLE_A);
    assert_eq!(snap.revision, 7);
}

#[test]
fn no_role_requested_picks_the_only_role_whose_conditions_are_met() {
    let b_in_prod = Binding {
        role_arns: vec![ROLE_B.into()],
        ..prod_only("b-prod", 3600)
    };
    let snap = snapshot(vec![binding("a"), b_in_prod], &[]);
    let dev = caller(SUB, None, Some(gce("dev", "1", "z", "vm")));
    assert_eq!(snap.decide(&dev, "").unwrap().role_arn, ROLE_A);
    let prod = caller(SUB, None, Some(gce("prod", "1", "z", "vm")));
    assert_eq!(
        snap.decide(&prod, ""),
        Err(Refusal::Ambiguous(vec![ROLE_A.into(), ROLE_B.into()]))
    );
}

#[test]
fn deny_list_beats_every_binding() {
    let snap = snapshot(
        vec![Binding {
            service_accounts: vec![SUB.into(), EMAIL.into(), "999".into()],
            ..binding("a")
        }],
        &[SUB, "ETL@my-project.iam.gserviceaccount.com"],
    );
    assert_eq!(
        snap.decide(&caller(SUB, None, None), ROLE_A),
        Err(Refusal::ServiceAccountDenied)
    );
    // Denied by email, whatever the sub, case-insensitively.
    assert_eq!(
        snap.decide(
            &caller("555", Some("Etl@My-Project.iam.gserviceaccount.com"), None),
            ROLE_A
        ),
        Err(Refusal::ServiceAccountDenied)
    );
    assert!(snap.decide(&caller("999", None, None), ROLE_A).is_ok());
    let e = snap.explain(&caller(SUB, None, None), ROLE_A);
    assert!(e.denied);
    assert_eq!(e.decision, Err(Refusal::ServiceAccountDenied));
}

#[test]
fn session_scopes_merge_by_union() {
    let scoped = |name: &str, policy: &str| Binding {
        session_policy: Some(format!(r#"{{"Statement":[],"Id":"{policy}"}}"#)),
        ..binding(name)
    };
    let who = caller(SUB, None, None);
    // One scoped binding: its scope goes to STS.
    let snap = snapshot(vec![scoped("s1", "one")], &[]);
    let d = snap.decide(&who, ROLE_A).unwrap();
    assert_eq!(
        d.scope.session_policy.as_deref(),
        Some(r#"{"Statement":[],"Id":"one"}"#)
    );
    // An unscoped binding for the same role: the whole role.
    let snap = snapshot(vec![scoped("s1", "one"), binding("open")], &[]);
    assert!(snap.decide(&who, ROLE_A).unwrap().scope.is_unscoped());
    // Two different scopes cannot be united for STS.
    let snap = snapshot(vec![scoped("s1", "one"), scoped("s2", "two")], &[]);
    assert_eq!(
        snap.decide(&who, ROLE_A),
        Err(Refusal::ConflictingScopes {
            bindings: BTreeSet::from(["s1".into(), "s2".into()])
        })
    );
    // The same scope twice is that scope.
    let snap = snapshot(vec![scoped("s1", "one"), scoped("s2", "one")], &[]);
    assert!(!snap.decide(&who, ROLE_A).unwrap().scope.is_unscoped());
}

#[test]
fn explain_says_why_each_binding_matched_or_not() {
    let snap = snapshot(
        vec![
            binding("a-match"),
            Binding {
                role_arns: vec![ROLE_B.into()],
                ..binding("b-other-role")
            },
            Binding {
                service_accounts: vec!["999".into()],
                ..binding("c-other-account")
            },
            prod_only("d-prod", 3600),
            Binding {
                service_accounts: vec![EMAIL.into()],
                ..binding("e-by-email")
            },
        ],
        &[],
    );
    let who = Caller {
        sub: SUB.into(),
        email: Some(EMAIL.into()),
        email_verified: false,
        compute_engine: Some(gce("dev", "1", "us-east1-b", "vm")),
    };
    let e = snap.explain(&who, ROLE_A);
    let outcomes: Vec<(&str, Outcome)> = e
        .evaluations
        .iter()
        .map(|ev| (ev.binding.as_str(), ev.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("a-match", Outcome::Matched),
            ("b-other-role", Outcome::RoleNotListed),
            ("c-other-account", Outcome::ServiceAccountNotListed),
            ("d-prod", Outcome::ConditionNotMet),
            ("e-by-email", Outcome::ServiceAccountNotListed),
        ]
    );
    let detail = |name: &str| {
        e.evaluations
            .iter()
            .find(|ev| ev.binding == name)
            .unwrap()
            .details
            .join(" | ")
    };
    assert!(
        detail("d-prod").contains("project_id `dev` matches none of [prod]"),
        "{}",
        detail("d-prod")
    );
    assert!(
        detail("e-by-email").contains("does not mark it verified"),
        "{}",
        detail("e-by-email")
    );
    assert!(
        detail("b-other-role").contains("does not grant"),
        "{}",
        detail("b-other-role")
    );
    assert_eq!(
        e.decision.as_ref().map(|d| d.bindings.clone()),
        Ok(BTreeSet::from(["a-match".to_string()]))
    );
    assert!(!e.denied);
}

#[test]
fn snapshot_refuses_invalid_bindings() {
    let problems = PolicySnapshot::build(
        1,
        vec![binding("a"), binding("a")],
        Vec::new(),
        Path::new("policy store"),
    )
    .unwrap_err();
    assert!(
        problems[0]
            .to_string()
            .starts_with("policy store: binding `a`: field name"),
        "{problems:?}"
    );
}

#[test]
fn problems_in_a_policy_file_point_at_the_field_line() {
    let src = r#"[[binding]]
name = "ok"
service_accounts = ["1"]
role_arns = ["arn:aws:iam::111122223333:role/R"]

[[binding]]
name = "vm"
service_accounts = [
  "2",
]
role_arns = ["arn:aws:iam::111122223333:role/R"]
conditions = { project_ids = ["p"], zones = ["us-[central"] }
managed_policy_arns = ["nope"]
"#;
    let problems = from_toml_str(src, Path::new("p.toml")).unwrap_err();
    let lines: Vec<(Option<usize>, String)> = problems
        .iter()
        .map(|p| (p.line, p.reason.clone()))
        .collect();
    assert!(
        lines
            .iter()
            .any(|(l, r)| *l == Some(12) && r.contains("conditions.zones")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, r)| *l == Some(13) && r.contains("managed_policy_arns")),
        "{lines:?}"
    );
}
