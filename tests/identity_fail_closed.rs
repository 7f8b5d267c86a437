//! A present but unreadable identity source is refused, never skipped
//! (DESIGN §1.1). Each test runs the real gRPC server on 127.0.0.1:0 and
//! sends the lean wire request as raw bytes, so header values and the peer
//! certificate can carry what a client really can: bytes that are not
//! UTF-8, broken percent or base64 encoding, oversized values, blanks.
//!
//! For every ordered pair of sources (first, second) the first carries an
//! unreadable value and the second a compliant device's certificate; the
//! answer must be `invalid_client_certificate` naming the first source.
//! Controls in the same server show the second source alone allows, so a
//! fall-through would be seen.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use common::certs::{Leaf, TestPki};
use common::server::{self, LISTEN_ANY, Verdict};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use fleet_authz::{
    authz::{request::url_encode_pem, wire},
    identity::MAX_SOURCE_BYTES,
    server::RunningServer,
};
use serde_json::Value;
use tempfile::TempDir;
use tonic::{codegen::http::uri::PathAndQuery, transport::Channel};

const POLICY: &str = "version: 1\ndefaults:\n  deny:\n    failing_critical_policy: true\n";
/// The custom-header source used here (nginx's `$ssl_client_escaped_cert`).
const CUSTOM: &str = "x-ssl-client-cert";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Peer,
    Xfcc,
    ClientCert,
    Header,
}

const ALL: [Src; 4] = [Src::Peer, Src::Xfcc, Src::ClientCert, Src::Header];

impl Src {
    fn config(self) -> String {
        match self {
            Self::Peer => "peer_certificate".into(),
            Self::Xfcc => "xfcc".into(),
            Self::ClientCert => "client_cert".into(),
            Self::Header => format!("{{header: {CUSTOM}}}"),
        }
    }

    /// What the deny's detail names the source by.
    fn shown_as(self) -> &'static str {
        match self {
            Self::Peer => "peer certificate",
            Self::Xfcc => "x-forwarded-client-cert",
            Self::ClientCert => "client-cert",
            Self::Header => CUSTOM,
        }
    }

    /// A well-formed value carrying `leaf`.
    fn good(self, leaf: &Leaf) -> Vec<u8> {
        let url_pem = url_encode_pem(&leaf.cert_pem);
        match self {
            Self::Peer | Self::Header => url_pem.into_bytes(),
            Self::Xfcc => format!("Hash=00;Cert=\"{url_pem}\";Subject=\"CN=dev\"").into_bytes(),
            Self::ClientCert => rfc9440(&leaf.der).into_bytes(),
        }
    }

    /// Values that are present but cannot be read, by kind. Each wraps a
    /// real certificate (of a device Fleet does not know) where it can, so
    /// a lenient reader would find a certificate rather than garbage.
    fn unreadable(self, stranger: &Leaf) -> Vec<(&'static str, Vec<u8>)> {
        let url_pem = url_encode_pem(&stranger.cert_pem);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&stranger.der);
        let padding = "A".repeat(MAX_SOURCE_BYTES);
        let mut out = match self {
            Self::Peer | Self::Header => vec![
                ("non-UTF-8", [url_pem.as_bytes(), b"%0A\xe9"].concat()),
                ("bad percent-encoding", format!("{url_pem}%zz").into_bytes()),
                (
                    "bad base64",
                    url_encode_pem(
                        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                    )
                    .into_bytes(),
                ),
                // Text after the END line is ignored, so without a limit
                // this would decode to the stranger's certificate.
                ("oversized", format!("{url_pem}{padding}").into_bytes()),
            ],
            Self::Xfcc => vec![
                (
                    "non-UTF-8",
                    [
                        format!("Hash=00;Cert=\"{url_pem}\";Subject=\"CN=").as_bytes(),
                        b"\xe9\"",
                    ]
                    .concat(),
                ),
                (
                    "bad percent-encoding",
                    format!("Hash=00;Cert=\"{url_pem}%z\"").into_bytes(),
                ),
                (
                    "bad base64",
                    format!(
                        "Cert=\"{}\"",
                        url_encode_pem(
                            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
                        )
                    )
                    .into_bytes(),
                ),
                (
                    "oversized",
                    format!("Hash=00;Cert=\"{url_pem}\";Subject=\"CN={padding}\"").into_bytes(),
                ),
            ],
            Self::ClientCert => vec![
                ("non-UTF-8", [b":", b64.as_bytes(), b"\xe9:"].concat()),
                ("bad base64", format!(":{b64}*:").into_bytes()),
                ("not a byte sequence", b64.clone().into_bytes()),
                ("oversized", format!("{padding}:{b64}:").into_bytes()),
            ],
        };
        if self != Self::Peer {
            // A sent header with nothing in it is present too. (An empty
            // peer certificate is protobuf's "not sent".)
            out.push(("empty", Vec::new()));
            out.push(("blank", b"  \t".to_vec()));
        }
        out
    }
}

fn rfc9440(der: &[u8]) -> String {
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// A lean CheckRequest with these sources set.
fn request(values: &[(Src, Vec<u8>)]) -> wire::CheckRequest {
    let mut peer = Bytes::new();
    let mut headers = vec![wire::Header {
        key: Bytes::from_static(b"accept"),
        value: Bytes::from_static(b"application/json"),
    }];
    for (src, value) in values {
        let key: &'static str = match src {
            Src::Peer => {
                peer = Bytes::from(value.clone());
                continue;
            }
            Src::Xfcc => "x-forwarded-client-cert",
            Src::ClientCert => "client-cert",
            Src::Header => CUSTOM,
        };
        headers.push(wire::Header {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from(value.clone()),
        });
    }
    wire::CheckRequest {
        attributes: Some(wire::AttributeContext {
            source: Some(wire::Peer { certificate: peer }),
            request: Some(wire::Request {
                http: Some(wire::HttpRequest {
                    id: Bytes::from_static(b"fail-closed-test"),
                    headers,
                    path: Bytes::from_static(b"/"),
                    host: Bytes::from_static(b"app.example.com"),
                }),
            }),
            context_extensions: HashMap::new(),
        }),
    }
}

struct Server {
    _server: RunningServer,
    channel: Channel,
    _dir: TempDir,
}

fn posture(compliant: &Leaf) -> String {
    format!(
        "policies:\n  - {{id: 12, name: Disk encryption, critical: true}}\nhosts:\n  - {{id: 1, uuid: u-1, display_name: Anna, platform: darwin, last_seen_ago: 5m, policies: {{12: pass}}, fingerprints: [{}]}}\n",
        compliant.fingerprint
    )
}

impl Server {
    async fn start(sources: &[Src], compliant: &Leaf) -> Self {
        Self::start_with(sources, POLICY, &posture(compliant)).await
    }

    async fn start_with(sources: &[Src], policy: &str, posture: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let files = server::write_files(dir.path(), policy, posture);
        let sources: Vec<String> = sources.iter().map(|s| s.config()).collect();
        let config = format!(
            "{LISTEN_ANY}{files}identity: {{sources: [{}]}}\n",
            sources.join(", ")
        );
        let server = server::start(&config, dir.path()).await;
        let channel = server::channel(server.grpc_addr()).await;
        Self {
            _server: server,
            channel,
            _dir: dir,
        }
    }

    /// Sends the lean request as it is on the wire.
    async fn check(&self, req: wire::CheckRequest) -> CheckResponse {
        self.try_check(req)
            .await
            .expect("a deny is still an OK RPC")
    }

    async fn try_check(&self, req: wire::CheckRequest) -> Result<CheckResponse, tonic::Status> {
        let mut grpc =
            tonic::client::Grpc::new(self.channel.clone()).max_encoding_message_size(usize::MAX);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<wire::CheckRequest, CheckResponse>::default();
        grpc.unary(
            tonic::Request::new(req),
            PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check"),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
    }
}

/// `Ok(host id)` for an allow; `Err((reason header, JSON body))` for a deny.
fn verdict(resp: &CheckResponse) -> Result<String, (String, Value)> {
    match Verdict::of(resp) {
        Verdict::Allow(allowed) => Ok(allowed
            .headers
            .get("x-fleet-host-id")
            .cloned()
            .unwrap_or_default()),
        Verdict::Deny(denied) => Err((denied.reasons().to_owned(), denied.body)),
    }
}

#[tokio::test]
async fn an_unreadable_first_source_is_refused_for_every_pair_in_both_orders() {
    let pki = TestPki::new();
    let compliant = pki.device("compliant");
    let stranger = pki.device("stranger");
    let mut checked = 0;
    for first in ALL {
        for second in ALL.into_iter().filter(|s| *s != first) {
            let server = Server::start(&[first, second], &compliant).await;
            // Controls: the second source alone is the compliant device, and
            // a readable first source decides over the second.
            let alone = server
                .check(request(&[(second, second.good(&compliant))]))
                .await;
            assert_eq!(verdict(&alone), Ok("1".to_owned()), "{first:?}/{second:?}");
            let both = server
                .check(request(&[
                    (first, first.good(&stranger)),
                    (second, second.good(&compliant)),
                ]))
                .await;
            assert_eq!(
                verdict(&both).unwrap_err().0,
                "unknown_device",
                "{first:?} decides before {second:?}"
            );
            for (kind, bad) in first.unreadable(&stranger) {
                let resp = server
                    .check(request(&[(first, bad), (second, second.good(&compliant))]))
                    .await;
                let (reason, body) = verdict(&resp).unwrap_err();
                let case = format!("{kind} {first:?} before a compliant {second:?}");
                assert_eq!(reason, "invalid_client_certificate", "{case}: {body}");
                assert_eq!(body["reasons"][0]["kind"], "invalid_client_certificate");
                let detail = body["reasons"][0]["detail"].as_str().unwrap();
                assert!(
                    detail.starts_with(first.shown_as()),
                    "{case}: {detail:?} names the source"
                );
                assert!(body.get("host").is_none(), "{case}: {body}");
                checked += 1;
            }
        }
    }
    // 12 ordered pairs; 4 kinds for the peer certificate, 6 for each header.
    assert_eq!(checked, 3 * 4 + 9 * 6);
}

/// The exact report: an XFCC with one non-UTF-8 byte in its Subject, and a
/// client-sent RFC 9440 `client-cert` of a compliant device, with the
/// default sources. Envoy does not strip `client-cert`.
#[tokio::test]
async fn xfcc_with_a_non_utf8_subject_does_not_let_client_cert_decide() {
    let pki = TestPki::new();
    let compliant = pki.device("compliant");
    let stranger = pki.device("stranger");
    let server = Server::start(&[Src::Peer, Src::Xfcc, Src::ClientCert], &compliant).await;
    let before = format!(
        "Hash=00;Cert=\"{}\";Subject=\"CN=",
        url_encode_pem(&stranger.cert_pem)
    );
    let xfcc = [before.as_bytes(), b"\xe9t\xe9\""].concat();
    let resp = server
        .check(request(&[
            (Src::Xfcc, xfcc),
            (Src::ClientCert, rfc9440(&compliant.der).into_bytes()),
        ]))
        .await;
    let (reason, body) = verdict(&resp).unwrap_err();
    assert_eq!(reason, "invalid_client_certificate");
    assert_eq!(
        body["reasons"][0]["detail"],
        format!(
            "x-forwarded-client-cert: not UTF-8 text (invalid byte at {})",
            before.len()
        )
    );
}

/// Host and path that are not UTF-8 still route by their valid parts: a
/// `/admin` route's stricter rule applies to `/admin/\xff`, not the
/// defaults' looser one.
#[tokio::test]
async fn a_path_that_is_not_utf8_still_matches_its_route() {
    let pki = TestPki::new();
    let compliant = pki.device("compliant");
    let policy = "version: 1\ndefaults:\n  deny:\n    failing_critical_policy: true\nroutes:\n  - name: admin\n    match: {path_prefix: /admin}\n    require: {teams: [Admins]}\n";
    let server = Server::start_with(&[Src::Peer], policy, &posture(&compliant)).await;
    let at = |path: &'static [u8]| {
        let mut req = request(&[(Src::Peer, Src::Peer.good(&compliant))]);
        if let Some(http) = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.path = Bytes::from_static(path);
        }
        req
    };
    let (reason, body) = verdict(&server.check(at(b"/admin/\xff\xfe")).await).unwrap_err();
    assert_eq!(reason, "requirement", "{body}");
    assert_eq!(body["route"], "admin");
    // The same device elsewhere is allowed.
    let req = at(b"/home/\xff");
    assert_eq!(verdict(&server.check(req).await), Ok("1".to_owned()));
}

/// A CheckRequest over the 1 MiB bound is refused as an RPC error (Envoy
/// then fails closed), never decoded; the next normal Check still works.
#[tokio::test]
async fn an_oversized_check_request_is_refused_not_decoded() {
    let pki = TestPki::new();
    let compliant = pki.device("compliant");
    let server = Server::start(&[Src::Peer], &compliant).await;
    let mut req = request(&[(Src::Peer, Src::Peer.good(&compliant))]);
    if let Some(http) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers.push(wire::Header {
            key: Bytes::from_static(b"x-padding"),
            value: Bytes::from(vec![b'a'; 2 * 1024 * 1024]),
        });
    }
    let status = server.try_check(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let ok = request(&[(Src::Peer, Src::Peer.good(&compliant))]);
    assert_eq!(verdict(&server.check(ok).await), Ok("1".to_owned()));
}

/// `value` padded to exactly `len` bytes where the source's reader ignores
/// the padding: after the PEM's END line, inside XFCC's Subject, or as the
/// blanks RFC 9440 allows around a byte sequence.
fn padded(src: Src, leaf: &Leaf, len: usize) -> Vec<u8> {
    let good = src.good(leaf);
    let pad = len - good.len();
    match src {
        Src::Peer | Src::Header => [good, vec![b'A'; pad]].concat(),
        Src::Xfcc => {
            let url_pem = url_encode_pem(&leaf.cert_pem);
            let head = format!("Cert=\"{url_pem}\";Subject=\"CN=");
            let fill = len - head.len() - 1;
            format!("{head}{}\"", "A".repeat(fill)).into_bytes()
        }
        Src::ClientCert => [vec![b' '; pad], good].concat(),
    }
}

/// A value over `MAX_SOURCE_BYTES` is refused as `invalid_client_certificate`
/// naming its source and size, for every source kind, though it holds a
/// readable certificate and the next source holds a compliant one. At
/// exactly the limit the same padding is read and the device allowed.
#[tokio::test]
async fn an_oversized_value_is_refused_for_every_source_kind() {
    let pki = TestPki::new();
    let compliant = pki.device("compliant");
    for (i, first) in ALL.into_iter().enumerate() {
        let second = ALL[(i + 1) % ALL.len()];
        let server = Server::start(&[first, second], &compliant).await;
        let at_limit = padded(first, &compliant, MAX_SOURCE_BYTES);
        assert_eq!(at_limit.len(), MAX_SOURCE_BYTES);
        let resp = server.check(request(&[(first, at_limit)])).await;
        assert_eq!(verdict(&resp), Ok("1".to_owned()), "{first:?} at the limit");
        for len in [MAX_SOURCE_BYTES + 1, 4 * MAX_SOURCE_BYTES] {
            let value = padded(first, &compliant, len);
            assert_eq!(value.len(), len);
            let resp = server
                .check(request(&[
                    (first, value),
                    (second, second.good(&compliant)),
                ]))
                .await;
            let (reason, body) = verdict(&resp).unwrap_err();
            assert_eq!(
                reason, "invalid_client_certificate",
                "{first:?} {len}: {body}"
            );
            assert_eq!(
                body["reasons"][0]["detail"],
                format!(
                    "{}: {len} bytes, over the {MAX_SOURCE_BYTES}-byte limit",
                    first.shown_as()
                ),
                "{first:?} {len}"
            );
            assert!(body.get("host").is_none(), "{first:?} {len}: {body}");
        }
    }
}
