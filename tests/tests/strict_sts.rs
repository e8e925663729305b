//! `StrictSts`, the stand-in for STS that checks web identity tokens and role
//! trust policies before moto issues credentials, behaves as AWS documents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use tokenbridge_testing::{
    Issuer, JwksFault, JwksServer, Moto, Provider, ServiceAccount, StrictSts,
};

const ACCOUNT: &str = "123456789012";
const ROLE: &str = "arn:aws:iam::123456789012:role/reader";
/// The audience tokenbridge asks Google for.
const AUDIENCE: &str = "https://tokenbridge.example";
const CUSTOM_ISSUER: &str = "https://idp.example.com/tenant-1";
/// The custom issuer's condition key prefix and IAM OIDC provider ARN, as
/// AWS documents them (written out, not computed, to check the stand-in).
const CUSTOM_PREFIX: &str = "idp.example.com/tenant-1";
const CUSTOM_ARN: &str = "arn:aws:iam::123456789012:oidc-provider/idp.example.com/tenant-1";
const CUSTOM_AUDIENCE: &str = "sts.amazonaws.com";
const CUSTOM_SUB: &str = "system:serviceaccount:apps:reader";
const TAGS_CLAIM: &str = "https://aws.amazon.com/tags";
const SOURCE_IDENTITY_CLAIM: &str = "https://aws.amazon.com/source_identity";
const NOT_AUTHORIZED: &str = "Not authorized to perform sts:AssumeRoleWithWebIdentity";

fn service_account() -> ServiceAccount {
    ServiceAccount::new(
        "112233445566778899000",
        "app@demo-project.iam.gserviceaccount.com",
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What the stand-in answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn element(&self, name: &str) -> Option<&str> {
        let open = format!("<{name}>");
        let start = self.body.find(&open)? + open.len();
        let end = start + self.body[start..].find(&format!("</{name}>"))?;
        Some(&self.body[start..end])
    }

    fn code(&self) -> Option<&str> {
        self.element("Code")
    }

    /// Asserts an STS error answer with this status and code; returns its
    /// message.
    fn assert_error(&self, status: u16, code: &str) -> &str {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.code(), Some(code), "{}", self.body);
        assert_eq!(self.element("Type"), Some("Sender"), "{}", self.body);
        self.element("Message").unwrap_or_default()
    }

    fn assert_denied(&self) {
        assert_eq!(self.assert_error(403, "AccessDenied"), NOT_AUTHORIZED);
    }

    /// Asserts credentials from moto; returns the access key id.
    fn assert_credentials(&self) -> &str {
        assert_eq!(self.status, 200, "{}", self.body);
        let key = self.element("AccessKeyId").expect("an AccessKeyId");
        assert!(key.starts_with("ASIA"), "{key}");
        assert!(self.element("SecretAccessKey").is_some(), "{}", self.body);
        key
    }
}

async fn assume(sts: &StrictSts, session: &str, token: &str) -> Answer {
    assume_role(sts, ROLE, session, token).await
}

async fn assume_role(sts: &StrictSts, role: &str, session: &str, token: &str) -> Answer {
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", session),
        ("WebIdentityToken", token),
        ("DurationSeconds", "900"),
    ];
    let response = reqwest::Client::new()
        .post(sts.endpoint())
        .form(&form)
        .send()
        .await
        .unwrap();
    Answer {
        status: response.status().as_u16(),
        body: response.text().await.unwrap(),
    }
}

async fn strict_sts() -> StrictSts {
    StrictSts::start(Moto::shared().await.endpoint()).await
}

/// Google's issuer and JWKS, and a service account's token.
struct Google {
    issuer: Issuer,
    jwks: JwksServer,
    sa: ServiceAccount,
}

impl Google {
    async fn start() -> Self {
        let issuer = Issuer::new();
        let jwks = JwksServer::start(issuer.clone(), 300).await;
        Self {
            issuer,
            jwks,
            sa: service_account(),
        }
    }

    fn provider(&self) -> Provider {
        Provider::google(self.jwks.uri())
    }

    /// A token as the GCE metadata server hands out: `aud` = [`AUDIENCE`],
    /// `azp` = `sub` = the unique id.
    fn token(&self) -> String {
        self.issuer.token(&self.sa, AUDIENCE)
    }
}

/// The trust policy tokenbridge's pass-through mode needs, per IAM's
/// "Available keys for AWS web identity federation" (`azp` set: `aud` is
/// the `azp`, `oaud` the `aud`).
fn google_policy(aud: &str, oaud: &str, sub: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": "accounts.google.com"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                "accounts.google.com:aud": aud,
                "accounts.google.com:oaud": oaud,
                "accounts.google.com:sub": sub,
            }}
        }]
    })
}

/// A non-Google OIDC issuer (RS256 keys from [`Issuer`], which signs any
/// claims) and its JWKS.
struct Custom {
    issuer: Issuer,
    jwks: JwksServer,
}

impl Custom {
    async fn start() -> Self {
        let issuer = Issuer::new();
        let jwks = JwksServer::start(issuer.clone(), 300).await;
        Self { issuer, jwks }
    }

    fn provider(&self) -> Provider {
        Provider::oidc(CUSTOM_ISSUER, self.jwks.uri(), [CUSTOM_AUDIENCE])
    }

    /// Claims with `iss` = [`CUSTOM_ISSUER`], `aud` = [`CUSTOM_AUDIENCE`],
    /// `sub` = [`CUSTOM_SUB`], valid for an hour, then `extra` on top.
    fn claims(extra: Value) -> Map<String, Value> {
        let now = now();
        let mut claims = json!({
            "iss": CUSTOM_ISSUER,
            "aud": CUSTOM_AUDIENCE,
            "sub": CUSTOM_SUB,
            "iat": now,
            "exp": now + 3600,
        });
        let claims_map = claims.as_object_mut().unwrap();
        claims_map.extend(extra.as_object().unwrap().clone());
        claims_map.clone()
    }

    fn token(&self, extra: Value) -> String {
        self.issuer.sign(&Self::claims(extra))
    }
}

/// The trust policy of a role for the custom issuer, per IAM's "Creating a
/// role for web identity or OpenID Connect federation".
fn custom_policy(actions: Value, conditions: Value) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": CUSTOM_ARN},
            "Action": actions,
            "Condition": conditions,
        }]
    })
}

fn custom_conditions() -> Value {
    json!({"StringEquals": {
        format!("{CUSTOM_PREFIX}:aud"): CUSTOM_AUDIENCE,
        format!("{CUSTOM_PREFIX}:sub"): CUSTOM_SUB,
    }})
}

#[tokio::test]
async fn google_token_meeting_a_pass_through_policy_gets_credentials_from_moto() {
    let google = Google::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(google.provider());
    let id = google.sa.unique_id.as_str();
    sts.set_trust_policy(ROLE, google_policy(id, AUDIENCE, id));

    let token = google.token();
    let answer = assume(&sts, "pass-through", &token).await;
    answer.assert_credentials();
    assert!(
        answer
            .body
            .contains("<Arn>arn:aws:sts::123456789012:assumed-role/reader/pass-through</Arn>"),
        "{}",
        answer.body
    );

    let seen = sts.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].allowed);
    assert_eq!(seen[0].error_code, None);
    assert_eq!(seen[0].role_arn, ROLE);
    assert_eq!(seen[0].role_session_name, "pass-through");
    assert_eq!(seen[0].claims["sub"], id);
    assert_eq!(seen[0].form["DurationSeconds"], "900");
    assert_eq!(seen[0].form["WebIdentityToken"], "<redacted>");
    // The raw token is nowhere in what the stand-in keeps.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!format!("{seen:?}").contains(signature));
}

#[tokio::test]
async fn google_token_is_refused_when_a_condition_differs() {
    let google = Google::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(google.provider());
    let id = google.sa.unique_id.as_str();
    let token = google.token();

    // Another subject.
    sts.set_trust_policy(ROLE, google_policy(id, AUDIENCE, "998877665544332211000"));
    assume(&sts, "other-sub", &token).await.assert_denied();
    // Another audience (`oaud` is the token's `aud`).
    sts.set_trust_policy(ROLE, google_policy(id, "https://other.example", id));
    assume(&sts, "other-oaud", &token).await.assert_denied();
    // With `azp` set, `accounts.google.com:aud` is the `azp`, not the `aud`.
    sts.set_trust_policy(ROLE, google_policy(AUDIENCE, AUDIENCE, id));
    assume(&sts, "aud-not-azp", &token).await.assert_denied();
    // Without `azp`, it is the `aud`.
    let mut claims = google.issuer.claims(&google.sa, AUDIENCE, false);
    claims.remove("azp");
    let no_azp = google.issuer.sign(&claims);
    assume(&sts, "no-azp", &no_azp).await.assert_credentials();

    // A condition on a key that the request does not have fails.
    let mut policy = google_policy(id, AUDIENCE, id);
    policy["Statement"][0]["Condition"]["StringEquals"]["accounts.google.com:email"] =
        json!(google.sa.email);
    sts.set_trust_policy(ROLE, policy);
    assume(&sts, "unknown-key", &token).await.assert_denied();

    let seen = sts.requests();
    let outcomes: Vec<(bool, Option<&str>)> = seen
        .iter()
        .map(|seen| (seen.allowed, seen.error_code.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (false, Some("AccessDenied")),
            (false, Some("AccessDenied")),
            (false, Some("AccessDenied")),
            (true, None),
            (false, Some("AccessDenied")),
        ]
    );
}

#[tokio::test]
async fn custom_issuer_token_is_accepted_with_its_oidc_provider_arn() {
    let custom = Custom::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(custom.provider());
    let actions = json!(["sts:AssumeRoleWithWebIdentity"]);
    sts.set_trust_policy(ROLE, custom_policy(actions.clone(), custom_conditions()));

    assume(&sts, "issuer-mode", &custom.token(json!({})))
        .await
        .assert_credentials();
    // `aud` may be a list, one of which is a client ID.
    let listed = custom.token(json!({"aud": ["other", CUSTOM_AUDIENCE]}));
    assume(&sts, "aud-list", &listed).await.assert_credentials();

    // An audience that is not a client ID of the provider.
    let other_aud = custom.token(json!({"aud": "https://other.example"}));
    let message = assume(&sts, "other-aud", &other_aud)
        .await
        .assert_error(400, "InvalidIdentityToken")
        .to_owned();
    assert_eq!(message, "Incorrect token audience");

    // Another subject.
    let other_sub = custom.token(json!({"sub": "system:serviceaccount:apps:writer"}));
    assume(&sts, "other-sub", &other_sub).await.assert_denied();

    // The provider of another account is not this account's.
    let mut policy = custom_policy(actions, custom_conditions());
    policy["Statement"][0]["Principal"]["Federated"] =
        json!(CUSTOM_ARN.replace(ACCOUNT, "210987654321"));
    sts.set_trust_policy(ROLE, policy);
    assume(&sts, "other-account", &custom.token(json!({})))
        .await
        .assert_denied();

    // A role without a trust policy (one that does not exist) cannot be
    // assumed.
    let missing = "arn:aws:iam::123456789012:role/missing";
    assume_role(&sts, missing, "no-policy", &custom.token(json!({})))
        .await
        .assert_denied();
}

#[tokio::test]
async fn google_token_is_refused_by_an_issuer_mode_policy() {
    let google = Google::start().await;
    let custom = Custom::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(custom.provider());
    sts.set_trust_policy(
        ROLE,
        custom_policy(json!("sts:AssumeRoleWithWebIdentity"), custom_conditions()),
    );

    // Google is not a provider of the account.
    let message = assume(&sts, "google", &google.token())
        .await
        .assert_error(400, "InvalidIdentityToken")
        .to_owned();
    assert_eq!(
        message,
        "No OpenIDConnect provider found in your account for https://accounts.google.com"
    );

    // It is, but the role trusts only the custom issuer.
    sts.trust_provider(google.provider());
    assume(&sts, "google", &google.token())
        .await
        .assert_denied();
    // While the custom issuer's token still works.
    assume(&sts, "custom", &custom.token(json!({})))
        .await
        .assert_credentials();
}

#[tokio::test]
async fn session_tags_need_tag_session_and_source_identity_needs_set_source_identity() {
    let custom = Custom::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(custom.provider());
    let tagged = custom.token(json!({
        TAGS_CLAIM: {
            "principal_tags": {"Team": ["payments"], "Env": ["prod"]},
            "transitive_tag_keys": ["Team"],
        },
        SOURCE_IDENTITY_CLAIM: "reader@apps",
    }));
    let tags_only = custom.token(json!({
        TAGS_CLAIM: {"principal_tags": {"Team": ["payments"]}},
    }));
    let untagged = custom.token(json!({}));

    // Only sts:AssumeRoleWithWebIdentity: tokens with tags are refused.
    let assume_only = json!("sts:AssumeRoleWithWebIdentity");
    sts.set_trust_policy(ROLE, custom_policy(assume_only, custom_conditions()));
    assume(&sts, "untagged", &untagged)
        .await
        .assert_credentials();
    assume(&sts, "tags-only", &tags_only).await.assert_denied();
    assume(&sts, "tagged", &tagged).await.assert_denied();

    // sts:TagSession too: tags pass, a source identity does not.
    let tag_session = json!(["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]);
    sts.set_trust_policy(ROLE, custom_policy(tag_session, custom_conditions()));
    assume(&sts, "tags-only", &tags_only)
        .await
        .assert_credentials();
    assume(&sts, "tagged", &tagged).await.assert_denied();

    // And sts:SetSourceIdentity, with conditions on the tag and the source
    // identity.
    let all = json!([
        "sts:AssumeRoleWithWebIdentity",
        "sts:TagSession",
        "sts:SetSourceIdentity"
    ]);
    let mut conditions = custom_conditions();
    conditions["StringEquals"]["aws:RequestTag/Team"] = json!("payments");
    conditions["StringEquals"]["sts:SourceIdentity"] = json!("reader@apps");
    conditions["ForAllValues:StringEquals"] = json!({"sts:TransitiveTagKeys": ["Team"]});
    sts.set_trust_policy(ROLE, custom_policy(all.clone(), conditions.clone()));
    assume(&sts, "tagged", &tagged).await.assert_credentials();

    // The tag's value is checked.
    conditions["StringEquals"]["aws:RequestTag/Team"] = json!("billing");
    sts.set_trust_policy(ROLE, custom_policy(all.clone(), conditions));
    assume(&sts, "tagged", &tagged).await.assert_denied();

    // The actions may come from separate statements, as in IAM's example.
    let mut policy = custom_policy(json!("sts:AssumeRoleWithWebIdentity"), custom_conditions());
    let statements = policy["Statement"].as_array_mut().unwrap();
    let mut tagging = statements[0].clone();
    tagging["Action"] = json!(["sts:TagSession", "sts:SetSourceIdentity"]);
    tagging["Condition"] = json!({"StringLike": {"aws:RequestTag/Env": "*"}});
    statements.push(tagging);
    sts.set_trust_policy(ROLE, policy);
    assume(&sts, "split", &tagged).await.assert_credentials();

    let seen = sts.requests();
    let allowed: Vec<&str> = seen
        .iter()
        .filter(|seen| seen.allowed)
        .map(|seen| seen.role_session_name.as_str())
        .collect();
    assert_eq!(allowed, ["untagged", "tags-only", "tagged", "split"]);
    let last = seen.last().unwrap();
    assert_eq!(
        last.tags.iter().collect::<Vec<_>>(),
        [
            (&"Env".to_owned(), &"prod".to_owned()),
            (&"Team".to_owned(), &"payments".to_owned())
        ]
    );
    assert_eq!(last.transitive_tag_keys, ["Team"]);
    assert_eq!(last.source_identity.as_deref(), Some("reader@apps"));
    assert_eq!(last.claims[SOURCE_IDENTITY_CLAIM], "reader@apps");
    assert!(seen[0].tags.is_empty() && seen[0].source_identity.is_none());
}

#[tokio::test]
async fn session_tag_and_source_identity_limits_are_enforced() {
    let custom = Custom::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(custom.provider());
    let all = json!([
        "sts:AssumeRoleWithWebIdentity",
        "sts:TagSession",
        "sts:SetSourceIdentity"
    ]);
    sts.set_trust_policy(ROLE, custom_policy(all, custom_conditions()));
    let with_tags = |tags: Value| custom.token(json!({TAGS_CLAIM: {"principal_tags": tags}}));
    let many = |n: usize| {
        let tags: Map<String, Value> = (0..n)
            .map(|i| (format!("k{i}"), json!([format!("v{i}")])))
            .collect();
        with_tags(Value::Object(tags))
    };

    assume(&sts, "fifty", &many(50)).await.assert_credentials();
    assume(&sts, "fifty-one", &many(51))
        .await
        .assert_error(400, "ValidationError");
    let long_key = with_tags(json!({"k".repeat(129): ["v"]}));
    assume(&sts, "long-key", &long_key)
        .await
        .assert_error(400, "ValidationError");
    let longest = with_tags(json!({"k".repeat(128): ["v".repeat(256)]}));
    assume(&sts, "longest", &longest).await.assert_credentials();
    let long_value = with_tags(json!({"k": ["v".repeat(257)]}));
    assume(&sts, "long-value", &long_value)
        .await
        .assert_error(400, "ValidationError");
    let reserved = with_tags(json!({"aws:team": ["payments"]}));
    assume(&sts, "reserved", &reserved)
        .await
        .assert_error(400, "InvalidParameterValue");
    let duplicate = with_tags(json!({"team": ["a"], "Team": ["b"]}));
    assume(&sts, "duplicate", &duplicate)
        .await
        .assert_error(400, "InvalidParameterValue");

    let source_identity = |value: &str| custom.token(json!({SOURCE_IDENTITY_CLAIM: value}));
    for bad in ["x", "has space", "colon:not-allowed", &"s".repeat(65)] {
        assume(&sts, "bad-source-identity", &source_identity(bad))
            .await
            .assert_error(400, "ValidationError");
    }
    assume(
        &sts,
        "good-source-identity",
        &source_identity("a_b+c=d,e.f@g-h"),
    )
    .await
    .assert_credentials();
}

#[tokio::test]
async fn tokens_that_do_not_verify_are_invalid_identity_tokens() {
    let google = Google::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(google.provider());
    let id = google.sa.unique_id.as_str();
    sts.set_trust_policy(ROLE, google_policy(id, AUDIENCE, id));
    let token = google.token();
    assume(&sts, "genuine", &token).await.assert_credentials();

    // The payload changed after signing: the signature no longer matches.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["email"] = json!("mallory@demo-project.iam.gserviceaccount.com");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tampered = parts.join(".");
    assume(&sts, "tampered", &tampered)
        .await
        .assert_error(400, "InvalidIdentityToken");

    // Signed by a key that is not in Google's JWKS.
    let stranger = Issuer::new().token(&google.sa, AUDIENCE);
    assume(&sts, "stranger", &stranger)
        .await
        .assert_error(400, "InvalidIdentityToken");

    // Expired.
    let mut expired = google.issuer.claims(&google.sa, AUDIENCE, true);
    expired.insert("iat".into(), json!(now() - 7200));
    expired.insert("exp".into(), json!(now() - 3600));
    let message = assume(&sts, "expired", &google.issuer.sign(&expired))
        .await
        .assert_error(400, "ExpiredTokenException")
        .to_owned();
    assert!(message.starts_with("Token expired"), "{message}");

    // Not a JWT at all.
    assume(&sts, "garbage", "not-even-a-jwt")
        .await
        .assert_error(400, "InvalidIdentityToken");

    // The provider's JWKS cannot be fetched.
    google.jwks.set_fault(Some(JwksFault::Status(503)));
    assume(&sts, "jwks-down", &token)
        .await
        .assert_error(400, "IDPCommunicationError");

    let allowed: Vec<bool> = sts.requests().iter().map(|seen| seen.allowed).collect();
    assert_eq!(allowed, [true, false, false, false, false, false]);
}

#[tokio::test]
async fn string_like_matches_wildcards() {
    let custom = Custom::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(custom.provider());
    let conditions = json!({"StringLike": {
        format!("{CUSTOM_PREFIX}:sub"): ["system:serviceaccount:apps:*", "user-?"],
        format!("{CUSTOM_PREFIX}:aud"): "sts.amazonaws.???",
    }});
    sts.set_trust_policy(
        ROLE,
        custom_policy(json!("sts:AssumeRoleWithWebIdentity"), conditions),
    );

    for (sub, allowed) in [
        (CUSTOM_SUB, true),
        ("system:serviceaccount:apps:", true),
        ("user-7", true),
        ("user-42", false),
        ("system:serviceaccount:other:reader", false),
        ("SYSTEM:serviceaccount:apps:reader", false),
    ] {
        let answer = assume(&sts, "like", &custom.token(json!({"sub": sub}))).await;
        if allowed {
            answer.assert_credentials();
        } else {
            answer.assert_denied();
        }
    }
}

#[tokio::test]
async fn an_explicit_deny_overrides_an_allow() {
    let custom = Custom::start().await;
    let sts = strict_sts().await;
    sts.trust_provider(custom.provider());
    let mut policy = custom_policy(json!("sts:AssumeRoleWithWebIdentity"), custom_conditions());
    policy["Statement"].as_array_mut().unwrap().push(json!({
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sts:*",
        "Condition": {"StringLike": {format!("{CUSTOM_PREFIX}:sub"): "*:writer"}},
    }));
    policy["Statement"][0]["Condition"] =
        json!({"StringLike": {format!("{CUSTOM_PREFIX}:sub"): "system:serviceaccount:apps:*"}});
    sts.set_trust_policy(ROLE, policy);

    assume(&sts, "reader", &custom.token(json!({})))
        .await
        .assert_credentials();
    let writer = custom.token(json!({"sub": "system:serviceaccount:apps:writer"}));
    assume(&sts, "writer", &writer).await.assert_denied();
}

#[tokio::test]
async fn es256_tokens_verify_with_ec_keys() {
    // An EC P-256 key, published next to the RS256 keys of an issuer.
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = key.public_key().as_ref();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "use": "sig",
        "kid": "ec-key-1",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    });
    let jwks = JwksServer::start_with_extra_keys(Issuer::new(), 300, vec![jwk]).await;
    let sts = strict_sts().await;
    sts.trust_provider(Provider::oidc(CUSTOM_ISSUER, jwks.uri(), [CUSTOM_AUDIENCE]));
    sts.set_trust_policy(
        ROLE,
        custom_policy(json!("sts:AssumeRoleWithWebIdentity"), custom_conditions()),
    );

    let pkcs8 = key.to_pkcs8v1().unwrap();
    let encoding_key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let sign = |kid: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &Custom::claims(json!({})), &encoding_key).unwrap()
    };
    assume(&sts, "es256", &sign("ec-key-1"))
        .await
        .assert_credentials();
    // The same signature under a kid the JWKS does not have.
    assume(&sts, "unknown-kid", &sign("ec-key-2"))
        .await
        .assert_error(400, "InvalidIdentityToken");
    // A key of a different EC key pair under the published kid.
    let other = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let other_pkcs8 = other.to_pkcs8v1().unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-key-1".to_owned());
    let forged = jsonwebtoken::encode(
        &header,
        &Custom::claims(json!({})),
        &EncodingKey::from_ec_der(other_pkcs8.as_ref()),
    )
    .unwrap();
    assume(&sts, "forged", &forged)
        .await
        .assert_error(400, "InvalidIdentityToken");
}
