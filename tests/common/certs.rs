//! A throwaway PKI for tests: one CA, a server certificate for `localhost` and
//! 127.0.0.1 (what Envoy presents), and device client certificates (what a
//! laptop presents). Each device certificate comes with the SHA-1 fingerprint
//! fleet-authz will compute for it, so a test can put it in a posture file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

use std::path::{Path, PathBuf};

use fleet_authz::fingerprint::Fingerprint;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate with its private key, both PEM.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key (PKCS#8), PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// SHA-1 over `der`, as Fleet's `certificates.sha1` reports it.
    pub fingerprint: Fingerprint,
}

impl Leaf {
    /// Certificate then key, the form `reqwest::Identity::from_pem` reads.
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }
}

/// A test CA plus the server certificate it issued.
pub struct TestPki {
    /// The CA certificate, PEM: Envoy's `trusted_ca` and the client's root.
    pub ca_pem: String,
    /// The server certificate for `localhost` / 127.0.0.1.
    pub server: Leaf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// Generates a CA and a server certificate.
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "fleet-authz test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let issuer = Issuer::new(params, key);
        let server = issue(
            &issuer,
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        Self {
            ca_pem,
            server,
            issuer,
        }
    }

    /// A client certificate for a device named `name` (its CN).
    pub fn device(&self, name: &str) -> Leaf {
        issue(
            &self.issuer,
            name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Writes `ca.pem`, `server.pem` and `server-key.pem` (the names
    /// `envoy.yaml` expects under `deploy/demo/certs/`) into `dir`.
    pub fn write_envoy_files(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &self.server.cert_pem).unwrap();
        std::fs::write(dir.join("server-key.pem"), &self.server.key_pem).unwrap();
        dir.to_path_buf()
    }
}

fn issue(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(sans).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer).unwrap();
    let der = cert.der().to_vec();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        fingerprint: Fingerprint::of_der(&der),
        der,
    }
}
