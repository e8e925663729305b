//! Writes the seed corpus, `fuzz/corpus/<target>/`: real Google-format
//! tokens and JWKS documents from the project's stand-in issuer
//! (`tokenbridge-testing`), the sample config and policy from `deploy/`,
//! and the shim's outputs. Run from `fuzz/`:
//!
//! ```sh
//! cargo run --example seeds
//! ```
//!
//! Files are overwritten, never removed: reproducers of fixed crashes stay.
//! Tokens carry the time they were made, which the pre-signature checks
//! do not look at.

#![forbid(unsafe_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokenbridge_client::{Credentials, Secret};
use tokenbridge_cred::{cache, process, process::ProcessOutput};
use tokenbridge_fuzz::{NOW_SECS, cache_key};
use tokenbridge_server::google::jwt::MAX_TOKEN_BYTES;
use tokenbridge_testing::{Issuer, ServiceAccount};

const AUDIENCE: &str = "https://tokenbridge.example.com";

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)
    };

    // Tokens, as the metadata server hands them out.
    let issuer = Issuer::new();
    let sa = ServiceAccount::new(
        "112233445566778899001",
        "etl@my-project.iam.gserviceaccount.com",
    );
    let full = issuer.token(&sa, AUDIENCE);
    let short = issuer.sign(&issuer.claims(&sa, AUDIENCE, false));
    for target in ["token", "id_token"] {
        write(target, "google-full.jwt", full.as_bytes())?;
        write(target, "google-standard.jwt", short.as_bytes())?;
    }
    write(
        "id_token",
        "google-full-newline.jwt",
        format!("{full}\n").as_bytes(),
    )?;
    write("id_token", "html.txt", b"<html><body>404</body></html>")?;

    // One token just over the size limit, so that libFuzzer's inputs may
    // reach it (it sizes them by the largest seed).
    let mut claims = issuer.claims(&sa, AUDIENCE, false);
    claims.insert("pad".into(), Value::from(""));
    let unpadded = issuer.sign(&claims).len();
    let pad = (MAX_TOKEN_BYTES + 1 - unpadded) * 3 / 4;
    claims.insert("pad".into(), Value::from("x".repeat(pad)));
    let mut large = issuer.sign(&claims);
    while large.len() <= MAX_TOKEN_BYTES {
        large.push('A');
    }
    write("token", "too-large.jwt", large.as_bytes())?;

    // The token target's structured form: header JSON 0xFF payload JSON.
    let kid = issuer.kid();
    let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"}).to_string();
    let payload = Value::Object(issuer.claims(&sa, AUDIENCE, true)).to_string();
    let structured = |h: &str, p: &str| [h.as_bytes(), &[0xff], p.as_bytes()].concat();
    write("token", "parts-google.bin", &structured(&header, &payload))?;
    let base = r#""iss":"https://accounts.google.com","aud":"a","sub":"1","iat":1700000000,"exp":1700003600"#;
    let odd_payloads = [
        ("dup-sub", format!(r#"{{{base},"sub":"2"}}"#)),
        (
            "dup-nested",
            format!(r#"{{{base},"google":{{"x":1,"x":2}}}}"#),
        ),
        ("dup-escaped", format!(r#"{{{base},"s\u0075b":"2"}}"#)),
        (
            "aud-array",
            r#"{"iss":"i","aud":["a"],"sub":"1","iat":1,"exp":2}"#.into(),
        ),
        (
            "iat-float",
            r#"{"iss":"i","aud":"a","sub":"1","iat":1.5,"exp":2}"#.into(),
        ),
        (
            "exp-negative",
            r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":-2}"#.into(),
        ),
        (
            "exp-huge",
            r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":1e400}"#.into(),
        ),
        (
            "email-verified-string",
            format!(r#"{{{base},"email":"e@x.io","email_verified":"true"}}"#),
        ),
        ("nbf", format!(r#"{{{base},"nbf":1700000000,"azp":"1"}}"#)),
        (
            "sub-empty",
            r#"{"iss":"i","aud":"a","sub":"","iat":1,"exp":2}"#.into(),
        ),
        (
            "deep",
            format!(r#"{{{base},"x":{}1{}}}"#, "[".repeat(200), "]".repeat(200)),
        ),
        ("not-object", "[1,2,3]".into()),
    ];
    for (name, p) in odd_payloads {
        write(
            "token",
            &format!("parts-{name}.bin"),
            &structured(&header, &p),
        )?;
    }
    let odd_headers = [
        ("alg-none", r#"{"alg":"none","kid":"k"}"#),
        ("alg-hs256", r#"{"alg":"HS256","kid":"k"}"#),
        ("no-kid", r#"{"alg":"RS256"}"#),
        ("crit", r#"{"alg":"RS256","kid":"k","crit":["exp"]}"#),
        ("dup-alg", r#"{"alg":"RS256","kid":"k","alg":"none"}"#),
        (
            "jku",
            r#"{"alg":"RS256","kid":"k","jku":"https://evil.example/jwks"}"#,
        ),
    ];
    for (name, h) in odd_headers {
        write(
            "token",
            &format!("header-{name}.bin"),
            &structured(h, &payload),
        )?;
    }

    // JWKS documents.
    issuer.rotate();
    write("jwks", "google.json", issuer.jwks().to_string().as_bytes())?;
    let big_n = URL_SAFE_NO_PAD.encode([0xc5_u8; 256]);
    let small_n = URL_SAFE_NO_PAD.encode([0xc5_u8; 128]);
    let mixed = json!({"keys": [
        {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "good", "n": big_n, "e": "AQAB"},
        {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "small", "n": small_n, "e": "AQAB"},
        {"kty": "RSA", "alg": "RS256", "use": "enc", "kid": "enc", "n": big_n, "e": "AQAB"},
        {"kty": "RSA", "alg": "RS512", "kid": "rs512", "n": big_n, "e": "AQAB"},
        {"kty": "RSA", "kid": "e-even", "n": big_n, "e": "AAI"},
        {"kty": "RSA", "n": big_n, "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "bad-b64", "n": "!!!", "e": "AQAB"},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": big_n, "e": "AQAB"},
        {"kty": "RSA", "kid": "ops-ok", "key_ops": ["verify"], "n": big_n, "e": "AQAB"},
        "not even an object",
        {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "good", "n": big_n, "e": "AQAB"}
    ]});
    write("jwks", "mixed.json", mixed.to_string().as_bytes())?;
    write("jwks", "empty.json", br#"{"keys":[]}"#)?;
    write("jwks", "no-keys.json", br#"{"max_age":3600}"#)?;

    // The config and policy files.
    write(
        "config",
        "deploy.toml",
        &fs::read(deploy.join("config.toml"))?,
    )?;
    write(
        "config",
        "every-key.toml",
        br#"[server]
listen = "127.0.0.1:50051"
drain_timeout_seconds = 0

[google]
audiences = ["https://tokenbridge.example.com", "other"]
jwks_uri = "http://127.0.0.1:8080/certs"
issuers = ["https://accounts.google.com"]
jwks_refetch_cooldown_seconds = 86400
jwks_timeout_ms = 100
verified_token_cache_entries = 0

[aws]
region = "eu-west-1"
sts_endpoint = "http://[::1]:5000"
sts_timeout_ms = 60000

[policy]
file = "/etc/tokenbridge/policy.toml"

[cache]
enabled = false
max_entries = 1
margin_seconds = 0
refresh_window_seconds = 39600
"#,
    )?;
    write(
        "config",
        "problems.toml",
        br#"[server]
listen = "nowhere"

[google]
audiences = []
jwks_uri = "http://example.com/certs"

[aws]
region = "US East"
sts_timeout_ms = 5

[policy]
file = "p.toml"
"#,
    )?;
    write(
        "policy",
        "deploy.toml",
        &fs::read(deploy.join("policy.toml"))?,
    )?;
    write(
        "policy",
        "problems.toml",
        br#"
[[binding]]
name = "dup"
service_accounts = ["not an id"]
role_arns = ["arn:aws:iam::1:role/x"]
max_duration_seconds = 60

[[binding]]
name = "dup"
service_accounts = []
role_arns = ["arn:aws:s3:::bucket"]
default_duration_seconds = 50000
"#,
    )?;
    write(
        "policy",
        "union.toml",
        br#"
[[binding]]
name = "one"
service_accounts = ["1", "Svc@p.iam.gserviceaccount.com"]
role_arns = ["arn:aws:iam::111122223333:role/RoleA"]
max_duration_seconds = 1800

[[binding]]
name = "two"
service_accounts = ["1"]
role_arns = ["arn:aws:iam::111122223333:role/RoleA", "arn:aws-us-gov:iam::111122223333:role/team/RoleB"]
max_duration_seconds = 43200
default_duration_seconds = 900
"#,
    )?;

    // The shim's outputs.
    let credentials = |secs: u64| {
        Credentials::new(
            "ASIAEXAMPLEEXAMPLE12",
            Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            Secret::new("FwoGZXIvYXdzEBYaDExampleSessionToken".into()),
            UNIX_EPOCH + Duration::from_secs(secs),
            "arn:aws:sts::111122223333:assumed-role/RoleForAccessFromGCPTeamA/112233445566778899001",
            "112233445566778899001",
        )
    };
    let fresh = ProcessOutput::from(&credentials(NOW_SECS + 3600));
    let stale = ProcessOutput::from(&credentials(NOW_SECS + 600));
    let key = cache_key();
    let text = |output: &ProcessOutput| cache::encode(&key, output).map_err(std::io::Error::other);
    let line =
        process::json_line(&fresh).map_err(|failure| std::io::Error::other(failure.message))?;
    for target in ["credential_process", "container_endpoint"] {
        write(target, "cache-file.json", &text(&fresh)?)?;
        write(target, "cache-file-stale.json", &text(&stale)?)?;
        write(target, "process-output.json", line.as_bytes())?;
    }
    let mut other_key = key.clone();
    other_key.audience = "other".into();
    let other = cache::encode(&other_key, &fresh).map_err(std::io::Error::other)?;
    write("credential_process", "cache-file-other-key.json", &other)?;
    Ok(())
}
