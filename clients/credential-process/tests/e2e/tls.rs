//! The shim against a tokenbridge that serves TLS from a private CA
//! (`--ca-file`) and requires client certificates (`--client-cert`,
//! `--client-key`): the server's own TLS listener, certificates made with
//! rcgen by `tokenbridge_testing::Pki`.

use std::path::Path;

use tokenbridge_server::{Config, PolicySnapshot, app};
use tokenbridge_testing::{Issuer, JwksServer, MetadataServer, Moto, Pki};

use crate::common::*;

#[tokio::test]
async fn the_shim_trusts_a_private_ca_and_presents_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("tokenbridge e2e CA");
    let (server_cert, server_key) = ca.server().write(dir.path(), "server");
    let (client_cert, client_key) = ca.client("workload-vm").write(dir.path(), "client");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();

    let moto = Moto::shared().await.endpoint();
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let metadata = MetadataServer::start(issuer, workload()).await;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[google]
audiences = ["{AUDIENCE}"]
jwks_uri = "{jwks}"

[aws]
region = "us-east-1"
sts_endpoint = "{moto}"

[policy]
file = "policy.toml"

[tls]
listen = "127.0.0.1:0"
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
"#,
        jwks = jwks.uri(),
        cert = server_cert.display(),
        key = server_key.display(),
        ca = ca_file.display(),
    );
    let policy = format!(
        "[[binding]]\nname = \"workload\"\nservice_accounts = [\"{WORKLOAD_ID}\"]\nrole_arns = [\"{ROLE}\"]\n"
    );
    let config = Config::from_toml_str(&config, &dir.path().join("config.toml")).unwrap();
    let policy = PolicySnapshot::from_toml_str(&policy, Path::new("policy.toml")).unwrap();
    let server = app::start(config, policy).await.unwrap();
    let endpoint = format!("https://localhost:{}", server.tls_addr.unwrap().port());

    let args = |extra: &[&Path]| {
        let mut args: Vec<String> = vec![
            "process".into(),
            "--endpoint".into(),
            endpoint.clone(),
            "--audience".into(),
            AUDIENCE.into(),
            "--role-arn".into(),
            ROLE.into(),
            "--metadata-host".into(),
            metadata.host(),
            "--ca-file".into(),
            ca_file.display().to_string(),
        ];
        if let [cert, key] = extra {
            args.extend([
                "--client-cert".into(),
                cert.display().to_string(),
                "--client-key".into(),
                key.display().to_string(),
            ]);
        }
        args
    };

    // With the client certificate: credentials from moto, over mutual TLS.
    let out = output(&mut shim(args(&[&client_cert, &client_key]))).await;
    let json = expect_credentials(&out);
    assert!(json["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));

    // Without one: the server refuses the handshake, and the shim says it
    // could not connect. In TLS 1.3 the client learns of the refusal after its
    // side of the handshake, so whether it reads the server's
    // `CertificateRequired` alert or only the closed connection (closed,
    // reset, or a broken pipe on its next write) is a race: each names the
    // failed step.
    let out = output(&mut shim(args(&[]))).await;
    let line = expect_failure(&out, &["connecting to https://localhost"]);
    assert!(
        line.contains("CertificateRequired")
            || line.contains("connection closed")
            || line.contains("broken pipe")
            || line.contains("connection reset"),
        "{line}"
    );
    server.stop().await.unwrap();
}
