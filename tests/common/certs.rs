//! The one maker of test certificates, for the tests and (through `#[path]`)
//! the benches.
//!
//! - [`TestPki`]: a throwaway CA, a server certificate for `localhost` and
//!   127.0.0.1 (what Envoy presents), and device client certificates (what a
//!   laptop presents).
//! - [`Ca::demo`]: the repository's demo CA (`deploy/demo/certs/`), for
//!   certificates that must chain to the CA the demo's Envoy trusts.
//!
//! Each certificate comes with its DER and the SHA-1 fingerprint fleet-authz
//! will compute for it, so a test can put it in a posture file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

use std::path::{Path, PathBuf};

use fleet_authz::fingerprint::Fingerprint;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
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

/// What a device certificate says, beyond who issued it.
#[derive(Clone, Debug, Default)]
pub struct DeviceSpec {
    /// The subject's CN.
    pub common_name: String,
    /// The subject's O, if any.
    pub organization: Option<String>,
    /// A URI subject alternative name (`urn:uuid:…`), if any.
    pub uri: Option<String>,
    /// The serial number; rcgen picks a random one when `None`.
    pub serial: Option<u64>,
    /// The subject key, PEM; a fresh P-256 key when `None`.
    pub key_pem: Option<String>,
    /// Key usage `digitalSignature` and extended key usage `clientAuth`, as
    /// a real device certificate has.
    pub client_auth: bool,
}

/// A certificate authority that signs test certificates.
pub struct Ca {
    /// The CA certificate, PEM: Envoy's `trusted_ca` and the client's root.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A fresh CA, "fleet-authz test CA".
    pub fn generate() -> Self {
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
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// The repository's demo CA: its key from `deploy/demo/certs/ca-key.pem`
    /// and its subject as `deploy/demo/make-certs.sh` writes it, so what it
    /// issues chains to `deploy/demo/certs/ca.pem`.
    pub fn demo() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo/certs");
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.join(name).display()))
        };
        let key = KeyPair::from_pem(&read("ca-key.pem")).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "fleet-authz demo");
        params
            .distinguished_name
            .push(DnType::CommonName, "fleet-authz DEMO CA (do not trust)");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self {
            pem: read("ca.pem"),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate for a device named `name` (its CN).
    pub fn device(&self, name: &str) -> Leaf {
        self.device_with(&DeviceSpec {
            common_name: name.to_owned(),
            client_auth: true,
            ..DeviceSpec::default()
        })
    }

    /// A device certificate as `spec` describes it.
    pub fn device_with(&self, spec: &DeviceSpec) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(org) = &spec.organization {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org.as_str());
        }
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        if let Some(uri) = &spec.uri {
            params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
        }
        params.serial_number = spec
            .serial
            .map(|n| SerialNumber::from(n.to_be_bytes().to_vec()));
        if spec.client_auth {
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = match &spec.key_pem {
            Some(pem) => KeyPair::from_pem(pem).unwrap(),
            None => KeyPair::generate().unwrap(),
        };
        self.sign(params, &key)
    }

    /// A server certificate for `name` and `sans`.
    fn server(&self, name: &str, sans: Vec<String>) -> Leaf {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, &KeyPair::generate().unwrap())
    }

    fn sign(&self, mut params: CertificateParams, key: &KeyPair) -> Leaf {
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer).unwrap();
        let der = cert.der().to_vec();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: Fingerprint::of_der(&der),
            der,
        }
    }
}

/// A test CA plus the server certificate it issued.
pub struct TestPki {
    /// The CA certificate, PEM: Envoy's `trusted_ca` and the client's root.
    pub ca_pem: String,
    /// The server certificate for `localhost` / 127.0.0.1.
    pub server: Leaf,
    ca: Ca,
}

impl TestPki {
    /// Generates a CA and a server certificate.
    pub fn new() -> Self {
        let ca = Ca::generate();
        let server = ca.server("localhost", vec!["localhost".into(), "127.0.0.1".into()]);
        Self {
            ca_pem: ca.pem.clone(),
            server,
            ca,
        }
    }

    /// A client certificate for a device named `name` (its CN).
    pub fn device(&self, name: &str) -> Leaf {
        self.ca.device(name)
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
