//! tokenbridge as an OIDC issuer (README, "Issuer mode").
//!
//! In issuer mode STS never sees the caller's Google token: for each call
//! tokenbridge signs a short-lived token of its own, and the role's trust
//! policy trusts tokenbridge's issuer only. This crate holds what the server
//! and `tokenbridge-admin` share, with no network I/O:
//!
//! * [`IssuerKeys`]: the signing keys from PEM files (RSA ≥ 2048 bits, RS256;
//!   EC P-256, ES256), every one published, one active. `kid` is the key's
//!   RFC 7638 thumbprint, so it is the same on every replica and after every
//!   reload.
//! * [`IssuerKeys::mint`]: the token STS gets.
//! * [`IssuerKeys::jwks`] and [`discovery`]: what AWS fetches from
//!   `URL/.well-known/openid-configuration` and its `jwks_uri`.
//!
//! Private keys never leave [`IssuerKeys`]: its `Debug` names the keys by
//! file and `kid` only, and minted tokens are [`Secret`]s.

#![forbid(unsafe_code)]

use std::{collections::BTreeMap, fmt, time::SystemTime};

use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash},
};
use rand::RngCore as _;
use serde::Serialize;
use serde_json::{Value, json};
use tokenbridge_proto::Secret;

/// Where the discovery document is, below the issuer URL.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the JWKS is, below the issuer URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The default `aud` of minted tokens: what STS expects.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// The claim STS reads session tags from.
pub const TAGS_CLAIM: &str = "https://aws.amazon.com/tags";
/// The claim STS reads the source identity from.
pub const SOURCE_IDENTITY_CLAIM: &str = "https://aws.amazon.com/source_identity";

/// Why a key file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Neither an RSA nor an EC private key in PEM.
    #[error(
        "not a PEM private key tokenbridge can sign with: RSA of at least 2048 bits (RS256) or EC P-256 (ES256), PKCS#8 or PKCS#1/SEC1 (a weaker RSA key is refused here too)"
    )]
    NotAKey,
    /// An RSA key below [`MIN_RSA_BITS`].
    #[error("RSA key of {0} bits is too weak; use at least {MIN_RSA_BITS}")]
    TooWeak(usize),
    /// No key at all.
    #[error("no signing key: `key_files` is empty")]
    NoKeys,
    /// The active key is not one of the keys.
    #[error("`active_key_file` `{0}` is not one of `key_files`")]
    UnknownActive(String),
    /// Two files hold the same key.
    #[error("`{0}` holds the same key as `{1}`")]
    Duplicate(String, String),
}

struct Key {
    name: String,
    kid: String,
    alg: Algorithm,
    signing: EncodingKey,
    public: Jwk,
}

/// The issuer's keys: every one published in the JWKS, one signing.
pub struct IssuerKeys {
    keys: Vec<Key>,
    active: usize,
}

impl fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{} ({:?}, kid {})", k.name, k.alg, k.kid))
            .collect();
        f.debug_struct("IssuerKeys")
            .field("keys", &keys)
            .field("active", &self.keys[self.active].name)
            .finish()
    }
}

/// One key as given: a name (its file, for messages) and its PEM text.
pub struct KeySource<'a> {
    /// The file it came from.
    pub name: &'a str,
    /// PEM text.
    pub pem: &'a [u8],
}

fn parse_key(pem: &[u8]) -> Result<(Algorithm, EncodingKey, Jwk), KeyError> {
    let (alg, signing) = if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
        (Algorithm::RS256, k)
    } else if let Ok(k) = EncodingKey::from_ec_pem(pem) {
        (Algorithm::ES256, k)
    } else {
        return Err(KeyError::NotAKey);
    };
    // Deriving the public half also proves the key is usable (an EC key on
    // another curve fails here).
    let mut public = Jwk::from_encoding_key(&signing, alg).map_err(|_| KeyError::NotAKey)?;
    if let AlgorithmParameters::RSA(rsa) = &public.algorithm {
        let bits = base64_len(&rsa.n) * 8;
        if bits < MIN_RSA_BITS {
            return Err(KeyError::TooWeak(bits));
        }
    }
    public.common.public_key_use = Some(PublicKeyUse::Signature);
    public.common.key_algorithm = Some(match alg {
        Algorithm::ES256 => KeyAlgorithm::ES256,
        _ => KeyAlgorithm::RS256,
    });
    Ok((alg, signing, public))
}

/// Bytes encoded by unpadded base64url text (leading zero bytes stripped,
/// as JWK moduli are).
fn base64_len(text: &str) -> usize {
    text.trim_end_matches('=').len() * 3 / 4
}

impl IssuerKeys {
    /// Loads `keys`; `active` names the signing key (default: the first).
    /// Errors name the file.
    pub fn new(keys: &[KeySource<'_>], active: Option<&str>) -> Result<Self, (String, KeyError)> {
        if keys.is_empty() {
            return Err((String::new(), KeyError::NoKeys));
        }
        let mut out: Vec<Key> = Vec::with_capacity(keys.len());
        for source in keys {
            let (alg, signing, mut public) =
                parse_key(source.pem).map_err(|e| (source.name.to_owned(), e))?;
            let kid = public
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(|_| (source.name.to_owned(), KeyError::NotAKey))?;
            if let Some(first) = out.iter().find(|k| k.kid == kid) {
                return Err((
                    source.name.to_owned(),
                    KeyError::Duplicate(source.name.to_owned(), first.name.clone()),
                ));
            }
            public.common.key_id = Some(kid.clone());
            out.push(Key {
                name: source.name.to_owned(),
                kid,
                alg,
                signing,
                public,
            });
        }
        let active = match active {
            None => 0,
            Some(name) => out
                .iter()
                .position(|k| k.name == name)
                .ok_or_else(|| (name.to_owned(), KeyError::UnknownActive(name.to_owned())))?,
        };
        Ok(Self { keys: out, active })
    }

    /// The published keys, public halves only.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.public.clone()).collect(),
        }
    }

    /// The `kid` of the signing key.
    pub fn active_kid(&self) -> &str {
        &self.keys[self.active].kid
    }

    /// The algorithms the keys sign with, for the discovery document.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = self
            .keys
            .iter()
            .map(|k| match k.alg {
                Algorithm::ES256 => "ES256",
                _ => "RS256",
            })
            .collect();
        algs.sort_unstable();
        algs.dedup();
        algs
    }

    /// Signs `claims` with the active key.
    pub fn mint(&self, claims: &Claims<'_>) -> Result<Secret<String>, MintError> {
        let key = &self.keys[self.active];
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.signing)
            .map(Secret::new)
            .map_err(|_| MintError)
    }
}

/// Signing failed (a key that loaded but cannot sign; not expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the issuer's signing key could not sign")]
pub struct MintError;

/// The session tags claim, as STS reads it: each value a one-element list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TagsClaim {
    /// Tag key -> `[value]`.
    pub principal_tags: BTreeMap<String, [String; 1]>,
    /// Keys that follow the session through role chaining.
    pub transitive_tag_keys: Vec<String>,
}

/// What a minted token says.
#[derive(Debug, Clone, Serialize)]
pub struct Claims<'a> {
    /// The issuer URL.
    pub iss: &'a str,
    /// The caller's service account unique ID.
    pub sub: &'a str,
    /// `sts.amazonaws.com` or the configured audience.
    pub aud: &'a str,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Not before, Unix seconds (= `iat`).
    pub nbf: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// A random ID, unique per token.
    pub jti: String,
    /// The caller's email, only when Google said it is verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
    /// Session tags.
    #[serde(
        rename = "https://aws.amazon.com/tags",
        skip_serializing_if = "Option::is_none"
    )]
    pub tags: Option<TagsClaim>,
    /// Source identity.
    #[serde(
        rename = "https://aws.amazon.com/source_identity",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_identity: Option<&'a str>,
}

impl<'a> Claims<'a> {
    /// Claims issued now, valid for `lifetime_seconds`, with a fresh `jti`.
    pub fn new(
        iss: &'a str,
        sub: &'a str,
        aud: &'a str,
        now: SystemTime,
        lifetime_seconds: u64,
    ) -> Self {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        Claims {
            iss,
            sub,
            aud,
            iat,
            nbf: iat,
            exp: iat + lifetime_seconds,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            email: None,
            tags: None,
            source_identity: None,
        }
    }

    /// Adds session tags (none: no claim).
    pub fn with_tags(mut self, tags: &BTreeMap<String, String>) -> Self {
        if !tags.is_empty() {
            self.tags = Some(TagsClaim {
                principal_tags: tags.iter().map(|(k, v)| (k.clone(), [v.clone()])).collect(),
                transitive_tag_keys: Vec::new(),
            });
        }
        self
    }
}

/// The OpenID Provider configuration AWS reads for `issuer`.
pub fn discovery(issuer: &str, algorithms: &[&str]) -> Value {
    let base = issuer.trim_end_matches('/');
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
        "claims_supported": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "email",
            TAGS_CLAIM, SOURCE_IDENTITY_CLAIM],
    })
}

/// Checks an issuer URL: `https://HOST[/path]`, no query, fragment or
/// trailing slash (STS compares it with the provider's URL).
pub fn check_issuer_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!(
            "`{url}` is not an https:// URL; AWS fetches the issuer's keys over HTTPS only"
        ));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.contains(['?', '#', ' ', '@']) || url.ends_with('/') {
        return Err(format!(
            "`{url}` must be https://HOST or https://HOST/PATH, without a trailing slash, query, fragment or user"
        ));
    }
    Ok(())
}

/// The IAM condition key prefix for `issuer` (the URL without `https://`).
pub fn condition_prefix(issuer: &str) -> &str {
    issuer.strip_prefix("https://").unwrap_or(issuer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn rsa_pem(bits: usize) -> String {
        let alg = match bits {
            2048 => &rcgen::PKCS_RSA_SHA256,
            _ => &rcgen::PKCS_RSA_SHA256,
        };
        rcgen::KeyPair::generate_for(alg).unwrap().serialize_pem()
    }

    fn ec_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem()
    }

    #[test]
    fn minted_tokens_verify_against_the_published_jwks_with_every_key() {
        let rsa = rsa_pem(2048);
        let ec = ec_pem();
        for active in ["rsa.pem", "ec.pem"] {
            let keys = IssuerKeys::new(
                &[
                    KeySource {
                        name: "rsa.pem",
                        pem: rsa.as_bytes(),
                    },
                    KeySource {
                        name: "ec.pem",
                        pem: ec.as_bytes(),
                    },
                ],
                Some(active),
            )
            .unwrap();
            let tags = BTreeMap::from([("team".to_string(), "a".to_string())]);
            let claims = Claims::new(
                "https://issuer.example",
                "1122",
                DEFAULT_AUDIENCE,
                SystemTime::now(),
                300,
            )
            .with_tags(&tags);
            let token = keys.mint(&claims).unwrap();
            let header = jsonwebtoken::decode_header(token.expose()).unwrap();
            assert_eq!(header.kid.as_deref(), Some(keys.active_kid()));
            let jwks = keys.jwks();
            assert_eq!(jwks.keys.len(), 2);
            let jwk = jwks.find(keys.active_kid()).unwrap();
            assert!(
                serde_json::to_string(jwk).unwrap().find("\"d\"").is_none(),
                "a private part was published"
            );
            let mut v = Validation::new(header.alg);
            v.set_audience(&[DEFAULT_AUDIENCE]);
            v.set_issuer(&["https://issuer.example"]);
            let got = jsonwebtoken::decode::<Value>(
                token.expose(),
                &DecodingKey::from_jwk(jwk).unwrap(),
                &v,
            )
            .unwrap();
            assert_eq!(got.claims["sub"], "1122");
            assert_eq!(
                got.claims[TAGS_CLAIM]["principal_tags"]["team"],
                json!(["a"])
            );
            assert_eq!(
                got.claims["exp"].as_u64().unwrap() - got.claims["iat"].as_u64().unwrap(),
                300
            );
        }
        let debug = format!(
            "{:?}",
            IssuerKeys::new(
                &[KeySource {
                    name: "rsa.pem",
                    pem: rsa.as_bytes()
                }],
                None
            )
            .unwrap()
        );
        assert!(
            !debug.contains("PRIVATE") && debug.contains("rsa.pem"),
            "{debug}"
        );
    }

    #[test]
    fn bad_keys_are_refused_with_their_file() {
        let (name, err) = IssuerKeys::new(
            &[KeySource {
                name: "x.pem",
                pem: b"nope",
            }],
            None,
        )
        .unwrap_err();
        assert_eq!((name.as_str(), err), ("x.pem", KeyError::NotAKey));
        let rsa = rsa_pem(2048);
        let err = IssuerKeys::new(
            &[
                KeySource {
                    name: "a.pem",
                    pem: rsa.as_bytes(),
                },
                KeySource {
                    name: "b.pem",
                    pem: rsa.as_bytes(),
                },
            ],
            None,
        )
        .unwrap_err();
        assert!(matches!(err.1, KeyError::Duplicate(..)));
        let err = IssuerKeys::new(
            &[KeySource {
                name: "a.pem",
                pem: rsa.as_bytes(),
            }],
            Some("c.pem"),
        )
        .unwrap_err();
        assert_eq!(err.1, KeyError::UnknownActive("c.pem".into()));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap()
            .serialize_pem();
        assert!(
            IssuerKeys::new(
                &[KeySource {
                    name: "p384.pem",
                    pem: p384.as_bytes()
                }],
                None
            )
            .is_err()
        );
    }

    #[test]
    fn issuer_urls_must_be_https_without_decoration() {
        assert!(check_issuer_url("https://issuer.example.com").is_ok());
        assert!(check_issuer_url("https://issuer.example.com/tb").is_ok());
        assert!(
            check_issuer_url("http://issuer.example.com")
                .unwrap_err()
                .contains("https")
        );
        assert!(check_issuer_url("https://issuer.example.com/").is_err());
        assert!(check_issuer_url("https://").is_err());
        assert_eq!(condition_prefix("https://i.example/tb"), "i.example/tb");
        let doc = discovery("https://i.example", &["RS256"]);
        assert_eq!(doc["jwks_uri"], "https://i.example/.well-known/jwks.json");
    }
}
