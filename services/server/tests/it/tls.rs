//! TLS and mutual TLS with certificates from a private CA (rcgen), through
//! the real client crate (`tokenbridge-client` with a CA file and a client
//! certificate); plaintext stays available beside it; the certificate is
//! reloaded when its files change.

use std::{path::Path, time::Duration};

use tokenbridge_client::{
    Client, Config as ClientConfig, CredentialsRequest, IdToken, RetryPolicy,
};
use tokenbridge_server::transport::tls::{Reload, TlsConfig};
use tokenbridge_testing::{FakeSts, FakeStsMode, Pki};

use crate::common::*;

const GUARD: Duration = Duration::from_secs(30);

struct TlsEnv {
    env: Env,
    dir: tempfile::TempDir,
    ca: Pki,
    _sts: FakeSts,
}

impl TlsEnv {
    async fn start(mtls: bool) -> TlsEnv {
        let dir = tempfile::tempdir().unwrap();
        let ca = Pki::new("tokenbridge test CA");
        let (cert, key) = ca.server().write(dir.path(), "server");
        let client_ca = dir.path().join("client-ca.pem");
        std::fs::write(&client_ca, ca.ca_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.ca_pem()).unwrap();
        let sts = FakeSts::start(FakeStsMode::Success).await;
        let env = Env::start_with(Options {
            sts_endpoint: Some(sts.endpoint()),
            tls: Some(TlsConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                cert_file: cert,
                key_file: key,
                client_ca_file: mtls.then_some(client_ca),
                reload_interval: Duration::from_millis(50),
            }),
            ..Options::default()
        })
        .await;
        TlsEnv {
            env,
            dir,
            ca,
            _sts: sts,
        }
    }

    fn https(&self) -> String {
        let port = self.env.server.as_ref().unwrap().tls_addr.unwrap().port();
        format!("https://localhost:{port}")
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A client trusting the CA in `ca_file`, with no retries.
    fn client(&self, ca_file: &Path) -> ClientConfig {
        ClientConfig::new(self.https())
            .with_ca_file(ca_file)
            .with_retry(RetryPolicy::none())
            .with_connect_timeout(Duration::from_secs(5))
    }

    async fn exchange(&self, config: ClientConfig) -> Result<String, tokenbridge_client::Error> {
        let token = IdToken::parse(self.env.token(&workload())).unwrap();
        let client = Client::new(&config)?;
        within(
            GUARD,
            client.get_credentials(&token, &CredentialsRequest::role(ROLE_A)),
        )
        .await
        .map(|c| c.access_key_id)
    }
}

#[tokio::test]
async fn tls_serves_with_a_private_ca_and_plaintext_stays() {
    let t = TlsEnv::start(false).await;
    let key = t.exchange(t.client(&t.path("ca.pem"))).await.unwrap();
    assert!(key.starts_with("ASIA"));
    // Plaintext, beside it, as before.
    t.env
        .call(&t.env.token(&workload()), ROLE_A, 0)
        .await
        .unwrap();
    // A client that does not trust the CA refuses the server.
    let other = Pki::new("someone else");
    std::fs::write(t.path("other-ca.pem"), other.ca_pem()).unwrap();
    let err = t
        .exchange(t.client(&t.path("other-ca.pem")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, tokenbridge_client::Error::Connect { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_issued_by_the_ca() {
    let t = TlsEnv::start(true).await;
    let ca = t.path("ca.pem");
    // No client certificate: refused in the handshake.
    let err = t.exchange(t.client(&ca)).await.unwrap_err();
    assert!(
        !matches!(err, tokenbridge_client::Error::Refused { .. }),
        "{err:?}"
    );

    // A certificate from another CA: refused.
    let stranger = Pki::new("stranger CA").client("intruder");
    let (cert, key) = stranger.write(t.dir.path(), "intruder");
    let err = t
        .exchange(t.client(&ca).with_client_identity(&cert, &key))
        .await
        .unwrap_err();
    assert!(
        !matches!(err, tokenbridge_client::Error::Refused { .. }),
        "{err:?}"
    );

    // One from the CA: served.
    let (cert, key) = t.ca.client("workload-node").write(t.dir.path(), "client");
    let access_key = t
        .exchange(t.client(&ca).with_client_identity(&cert, &key))
        .await
        .unwrap();
    assert!(access_key.starts_with("ASIA"));
}

#[tokio::test]
async fn the_certificate_is_reloaded_when_its_files_change() {
    let t = TlsEnv::start(false).await;
    let running = t.env.server.as_ref().unwrap();
    let tls = running.tls().unwrap().clone();
    let mut loads = tls.loads();
    assert_eq!(*loads.borrow_and_update(), 1);
    t.exchange(t.client(&t.path("ca.pem"))).await.unwrap();

    // Rotate to a certificate from a new CA, as cert-manager would.
    let next = Pki::new("next CA");
    std::fs::write(t.path("next-ca.pem"), next.ca_pem()).unwrap();
    next.server().write(t.dir.path(), "server");
    within(GUARD, loads.wait_for(|&n| n >= 2)).await.unwrap();
    t.exchange(t.client(&t.path("next-ca.pem"))).await.unwrap();
    let err = t.exchange(t.client(&t.path("ca.pem"))).await.unwrap_err();
    assert!(
        matches!(err, tokenbridge_client::Error::Connect { .. }),
        "new connections get the new certificate: {err:?}"
    );

    // A half-done rotation (a key that does not match the certificate) is
    // refused; the current certificate stays in use.
    let third = Pki::new("third CA").server();
    std::fs::write(t.path("server.pem"), &third.cert).unwrap();
    assert_eq!(tls.reload(), Reload::Refused);
    assert_eq!(*tls.loads().borrow(), 2);
    t.exchange(t.client(&t.path("next-ca.pem"))).await.unwrap();
    // Completing it is picked up.
    std::fs::write(t.path("server.key"), &third.key).unwrap();
    assert!(matches!(tls.reload(), Reload::Reloaded | Reload::Unchanged));
    within(GUARD, loads.wait_for(|&n| n >= 3)).await.unwrap();
}
