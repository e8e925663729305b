//! A private certificate authority for TLS tests: a CA, server certificates
//! for `localhost` and 127.0.0.1, and client certificates, all made with
//! `rcgen` and handed out as PEM text.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct PemPair {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert: String,
    /// The private key (`-----BEGIN PRIVATE KEY-----`).
    pub key: String,
}

impl PemPair {
    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns their paths.
    pub fn write(
        &self,
        dir: &std::path::Path,
        name: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).expect("write a certificate");
        std::fs::write(&key, &self.key).expect("write a key");
        (cert, key)
    }
}

/// A certificate authority that issues server and client certificates.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA whose common name is `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = dn(name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        Self {
            ca: CertifiedIssuer::self_signed(params, key).expect("a self-signed CA"),
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> PemPair {
        self.issue(
            "tokenbridge test server",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> PemPair {
        self.issue(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose) -> PemPair {
        let mut params = CertificateParams::new(sans).expect("leaf parameters");
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("a signed leaf");
        PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}
