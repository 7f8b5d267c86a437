use std::{collections::HashMap, io::Write, process::Command, process::Stdio};

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;

use super::*;

/// Envoy escapes everything outside RFC 3986 unreserved characters.
const ENVOY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// AWS ALB and nginx leave `+`, `/` and `=` as they are.
const LOOSE: &AsciiSet = &ENVOY.remove(b'+').remove(b'/').remove(b'=');

fn envoy_encode(pem: &str) -> String {
    utf8_percent_encode(pem, ENVOY).to_string()
}

fn loose_encode(pem: &str) -> String {
    utf8_percent_encode(pem, LOOSE).to_string()
}

fn rfc9440(der: &[u8]) -> String {
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

fn new_cert(name: &str) -> (String, Vec<u8>) {
    let key = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (key.cert.pem(), key.cert.der().to_vec())
}

fn openssl_sha1(pem: &str) -> String {
    let mut child = Command::new("/usr/bin/openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl failed on {pem}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (label, hex) = text.trim().split_once('=').unwrap();
    assert!(label.eq_ignore_ascii_case("sha1 fingerprint"), "{text}");
    hex.replace(':', "").to_ascii_lowercase()
}

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn cfg(sources: Vec<Source>, xfcc_element: XfccElement) -> IdentityConfig {
    IdentityConfig {
        sources,
        xfcc_element,
    }
}

fn invalid(origin: Source, problem: Problem) -> IdentityError {
    IdentityError::Invalid {
        origin: Some(origin),
        problem,
    }
}

fn xfcc_problem(value: &str) -> Problem {
    match xfcc_certificate(value, XfccElement::Only) {
        Err(IdentityError::Invalid { problem, .. }) => problem,
        other => panic!("expected an invalid XFCC, got {other:?}"),
    }
}

// === sources ===

#[test]
fn peer_certificate_url_pem_matches_openssl() {
    let (pem, der) = new_cert("dev");
    let got = identify(
        &IdentityConfig::default(),
        &envoy_encode(&pem),
        &headers(&[]),
    )
    .unwrap();
    assert_eq!(got.der, der);
    assert_eq!(got.source, Source::PeerCertificate);
    assert_eq!(got.sha1.to_hex(), openssl_sha1(&pem));
    let sha256: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        &der,
    ))
    .into();
    assert_eq!(got.sha256, sha256);
}

#[test]
fn plus_is_not_form_decoded() {
    let (pem, der) = (1..50)
        .map(|i| new_cert(&format!("plus{i}")))
        .find(|(pem, _)| pem.contains('+'))
        .unwrap();
    let raw_plus = loose_encode(&pem);
    assert!(raw_plus.contains('+'));
    assert_eq!(url_pem_to_der(&raw_plus).unwrap(), der);
    let escaped = envoy_encode(&pem);
    assert!(escaped.contains("%2B") && !escaped.contains('+'));
    assert_eq!(url_pem_to_der(&escaped).unwrap(), der);
    // A form decoder would have turned '+' into a space and lost a byte.
    assert_ne!(
        url_pem_to_der(&raw_plus.replace('+', "%20")).ok(),
        Some(der)
    );
}

#[test]
fn chain_takes_the_first_certificate() {
    let (leaf_pem, leaf_der) = new_cert("leaf");
    let (ca_pem, _) = new_cert("ca");
    let chain = format!("{leaf_pem}{ca_pem}");
    assert_eq!(url_pem_to_der(&envoy_encode(&chain)).unwrap(), leaf_der);
}

#[test]
fn client_cert_rfc9440() {
    let (_, der) = new_cert("dev");
    let h = headers(&[("client-cert", &rfc9440(&der))]);
    let got = identify(&IdentityConfig::default(), "", &h).unwrap();
    assert_eq!((got.der, got.source), (der.clone(), Source::ClientCert));

    // ":MAABAg==:" without its padding.
    for bad in ["MII=", ":MII", ":not base64!:", "::", ":MAABAg:"] {
        let err = identify(
            &IdentityConfig::default(),
            "",
            &headers(&[("client-cert", bad)]),
        );
        let want = if bad == "::" {
            Problem::NotDer
        } else {
            Problem::NotByteSequence
        };
        assert_eq!(err, Err(invalid(Source::ClientCert, want)), "{bad}");
    }
    assert_eq!(
        client_cert_header_to_der("MII=").unwrap_err().to_string(),
        "certificate: not an RFC 9440 byte sequence"
    );
}

#[test]
fn custom_header_source() {
    let (pem, der) = new_cert("alb");
    let name = "x-amzn-mtls-clientcert-leaf";
    let c = cfg(vec![Source::Header(name.into())], XfccElement::Only);
    let got = identify(&c, "", &headers(&[(name, &loose_encode(&pem))])).unwrap();
    assert_eq!((got.der, got.source), (der, Source::Header(name.into())));
    assert_eq!(
        identify(&c, "", &headers(&[(name, "nope")]))
            .unwrap_err()
            .to_string(),
        "x-amzn-mtls-clientcert-leaf: not a PEM certificate"
    );
}

#[test]
fn missing_when_no_source_is_present() {
    let h = headers(&[("x-other", "Cert=\"x\"")]);
    let err = identify(&IdentityConfig::default(), "", &h).unwrap_err();
    assert_eq!(err, IdentityError::Missing);
    assert!(err.is_missing());
    assert_eq!(
        err.to_string(),
        "no client certificate: none of the configured sources is present"
    );
}

#[test]
fn a_sent_but_blank_header_is_present_and_invalid() {
    let (_, der) = new_cert("dev");
    for blank in ["", "  ", "\t"] {
        let h = headers(&[
            ("x-forwarded-client-cert", blank),
            ("client-cert", &rfc9440(&der)),
        ]);
        let err = identify(&IdentityConfig::default(), "", &h).unwrap_err();
        assert_eq!(err, invalid(Source::Xfcc, Problem::Empty), "{blank:?}");
        assert_eq!(
            err.to_string(),
            "x-forwarded-client-cert: present but empty"
        );
    }
}

#[test]
fn unreadable_bytes_and_oversized_values_are_refused_not_skipped() {
    struct Raw(Vec<(&'static str, Vec<u8>)>);
    impl Headers for Raw {
        fn header_bytes(&self, name: &str) -> Option<&[u8]> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| &v[..])
        }
    }
    let (pem, der) = new_cert("dev");
    let good = rfc9440(&der).into_bytes();
    let xfcc = format!("Cert=\"{}\";Subject=\"CN=", envoy_encode(&pem));
    let h = Raw(vec![
        (
            "x-forwarded-client-cert",
            [xfcc.as_bytes(), b"\xe9\""].concat(),
        ),
        ("client-cert", good.clone()),
    ]);
    let err = identify(&IdentityConfig::default(), "", &h).unwrap_err();
    assert_eq!(
        err,
        invalid(Source::Xfcc, Problem::NotUtf8 { at: xfcc.len() })
    );
    // The peer certificate as raw bytes is judged the same way.
    let peer = [envoy_encode(&pem).as_bytes(), b"\xff"].concat();
    let h = Raw(vec![("client-cert", good.clone())]);
    assert!(matches!(
        identify(&IdentityConfig::default(), &peer[..], &h),
        Err(IdentityError::Invalid {
            origin: Some(Source::PeerCertificate),
            problem: Problem::NotUtf8 { .. }
        })
    ));
    // Longer than the limit, even though the certificate in it is fine.
    let long = format!("{}{}", envoy_encode(&pem), " ".repeat(MAX_SOURCE_BYTES));
    let err = identify(&IdentityConfig::default(), &long, &h).unwrap_err();
    assert_eq!(
        err,
        invalid(
            Source::PeerCertificate,
            Problem::TooLarge {
                len: long.len(),
                max: MAX_SOURCE_BYTES
            }
        )
    );
    // At the limit it is read.
    let at_limit = format!(
        "{}{}",
        envoy_encode(&pem),
        " ".repeat(MAX_SOURCE_BYTES - envoy_encode(&pem).len())
    );
    assert_eq!(
        identify(&IdentityConfig::default(), &at_limit, &h)
            .unwrap()
            .der,
        der
    );
}

#[test]
fn present_invalid_source_does_not_fall_through() {
    let (pem, _) = new_cert("dev");
    let h = headers(&[(
        "x-forwarded-client-cert",
        &format!("Cert=\"{}\"", envoy_encode(&pem)),
    )]);
    let err = identify(&IdentityConfig::default(), "garbage", &h).unwrap_err();
    assert!(!err.is_missing());
    assert_eq!(err.to_string(), "peer certificate: not a PEM certificate");
}

#[test]
fn source_order_is_respected() {
    let (pem_a, der_a) = new_cert("a");
    let (_, der_b) = new_cert("b");
    let h = headers(&[
        (
            "x-forwarded-client-cert",
            &format!("Cert={}", envoy_encode(&pem_a)),
        ),
        ("client-cert", &rfc9440(&der_b)),
    ]);
    let c = cfg(vec![Source::ClientCert, Source::Xfcc], XfccElement::Only);
    assert_eq!(identify(&c, "", &h).unwrap().der, der_b);
    let c = cfg(vec![Source::Xfcc, Source::ClientCert], XfccElement::Only);
    assert_eq!(identify(&c, "", &h).unwrap().der, der_a);
    // A source that is not configured is never read.
    let c = cfg(vec![Source::PeerCertificate], XfccElement::Only);
    assert_eq!(identify(&c, "", &h), Err(IdentityError::Missing));
}

// === XFCC ===

#[test]
fn xfcc_envoy_format_with_other_pairs() {
    let (pem, der) = new_cert("dev");
    let value = format!(
        "By=spiffe://cluster.local/ns/foo/sa/bar;Hash=abc;Cert=\"{}\";Subject=\"CN=dev\";URI=",
        envoy_encode(&pem)
    );
    assert_eq!(xfcc_certificate(&value, XfccElement::Only).unwrap(), der);
    let lower = format!("cert={}", loose_encode(&pem));
    assert_eq!(xfcc_certificate(&lower, XfccElement::Only).unwrap(), der);
}

#[test]
fn xfcc_element_modes() {
    let (pem_a, der_a) = new_cert("a");
    let (pem_b, der_b) = new_cert("b");
    let value = format!(
        "Hash=1;Cert=\"{}\";URI=, By=x;Cert=\"{}\"",
        envoy_encode(&pem_a),
        envoy_encode(&pem_b)
    );
    assert_eq!(xfcc_certificate(&value, XfccElement::First).unwrap(), der_a);
    assert_eq!(xfcc_certificate(&value, XfccElement::Last).unwrap(), der_b);
    let err = xfcc_certificate(&value, XfccElement::Only).unwrap_err();
    assert_eq!(
        err.to_string(),
        "x-forwarded-client-cert: more than one element and xfcc_element is only"
    );
    // The chosen element must carry the Cert, even if another one does.
    let value = format!("By=edge;Hash=1,By=gw;Cert={}", envoy_encode(&pem_b));
    assert_eq!(
        xfcc_certificate(&value, XfccElement::First),
        Err(invalid(Source::Xfcc, Problem::MissingCert))
    );
    assert_eq!(xfcc_certificate(&value, XfccElement::Last).unwrap(), der_b);
}

#[test]
fn xfcc_quotes_and_escapes() {
    let parsed = parse_xfcc(r#"a="x\"y,z;w=1" ; B=c,d="e\\f\g";e=,f="""#).unwrap();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    };
    assert_eq!(
        parsed,
        vec![
            pairs(&[("a", "x\"y,z;w=1"), ("B", "c")]),
            pairs(&[("d", r"e\f\g"), ("e", "")]),
            pairs(&[("f", "")]),
        ]
    );
    assert_eq!(parse_xfcc("").unwrap(), Vec::<Vec<(String, String)>>::new());
}

#[test]
fn xfcc_refusals() {
    assert_eq!(xfcc_problem("Cert=a;cert=b"), Problem::DuplicateCert);
    assert_eq!(xfcc_problem("By=a;Hash=b"), Problem::MissingCert);
    assert_eq!(xfcc_problem("Cert=ab\"c"), Problem::StrayQuote { at: 7 });
    assert_eq!(xfcc_problem("\"Cert\"=x"), Problem::StrayQuote { at: 0 });
    assert_eq!(
        xfcc_problem("Cert=\"abc"),
        Problem::UnterminatedQuote { at: 5 }
    );
    assert_eq!(
        xfcc_problem("Cert=\"abc\\\""),
        Problem::UnterminatedQuote { at: 5 }
    );
    assert_eq!(xfcc_problem("Cert=\"a\"b"), Problem::AfterQuote { at: 8 });
    assert_eq!(xfcc_problem("a=b,,c=d"), Problem::ExpectedPair { at: 4 });
    assert_eq!(xfcc_problem("a=b;"), Problem::ExpectedPair { at: 4 });
    assert_eq!(xfcc_problem("Cert"), Problem::ExpectedPair { at: 0 });
    assert_eq!(xfcc_problem("=x"), Problem::ExpectedPair { at: 0 });
    assert_eq!(xfcc_problem("Cert=%zz"), Problem::PercentEncoding { at: 0 });
    assert_eq!(xfcc_problem("Cert=hello"), Problem::NotPem);
    assert_eq!(
        xfcc_certificate("Cert=a;Cert=b", XfccElement::Only)
            .unwrap_err()
            .to_string(),
        "x-forwarded-client-cert: duplicate Cert key"
    );
    assert_eq!(
        parse_xfcc("a=\"b").unwrap_err().to_string(),
        "x-forwarded-client-cert: unterminated quoted value starting at byte 2"
    );
}

#[test]
fn xfcc_fixtures() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/xfcc");
    let pem = std::fs::read_to_string(format!("{dir}/client.pem")).unwrap();
    let want = openssl_sha1(&pem);
    let single = std::fs::read_to_string(format!("{dir}/envoy_single.txt")).unwrap();
    let appended = std::fs::read_to_string(format!("{dir}/envoy_appended.txt")).unwrap();
    let fp = |der: Vec<u8>| Fingerprint::of_der(&der).to_hex();
    assert_eq!(
        fp(xfcc_certificate(single.trim(), XfccElement::Only).unwrap()),
        want
    );
    assert_eq!(
        fp(xfcc_certificate(appended.trim(), XfccElement::Last).unwrap()),
        want
    );
    assert_eq!(
        xfcc_certificate(appended.trim(), XfccElement::First),
        Err(invalid(Source::Xfcc, Problem::MissingCert))
    );
    let parsed = parse_xfcc(single.trim()).unwrap();
    let subject = parsed[0].iter().find(|(k, _)| k == "Subject").unwrap();
    assert_eq!(subject.1, r"CN=dev,O=Example\, Inc.");
}

// === config ===

#[test]
fn config_yaml_forms() {
    let c: IdentityConfig = yaml_serde::from_str(
        "sources: [peer_certificate, xfcc, client_cert, {header: X-Amzn-Mtls-Clientcert-Leaf}]\n\
         xfcc_element: last\n",
    )
    .unwrap();
    assert_eq!(
        c,
        cfg(
            vec![
                Source::PeerCertificate,
                Source::Xfcc,
                Source::ClientCert,
                Source::Header("x-amzn-mtls-clientcert-leaf".into()),
            ],
            XfccElement::Last
        )
    );
    let d: IdentityConfig = yaml_serde::from_str("{}").unwrap();
    assert_eq!(d, IdentityConfig::default());
    assert_eq!(
        d.sources,
        vec![Source::PeerCertificate, Source::Xfcc, Source::ClientCert]
    );
    assert_eq!(d.xfcc_element, XfccElement::Only);
}

#[test]
fn config_yaml_errors() {
    let err = |y: &str| {
        yaml_serde::from_str::<IdentityConfig>(y)
            .unwrap_err()
            .to_string()
    };
    assert!(
        err("sources: [xfcc, tls]").contains(
            "unknown identity source \"tls\": expected peer_certificate, xfcc, client_cert or {header: <name>}"
        ),
        "{}",
        err("sources: [xfcc, tls]")
    );
    assert!(err("sources: [{hdr: a}]").contains("unknown identity source key \"hdr\""));
    assert!(err("sources: [{header: \"a b\"}]").contains("is not a valid header name"));
    assert!(err("sources: []").contains("identity sources must not be empty"));
    assert!(err("xfcc_element: middle").contains("unknown variant `middle`"));
    assert!(err("source: [xfcc]").contains("unknown field `source`"));
}

// === properties ===

fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z=;,\"\\\\ %:0-9A-F+/\n-]{0,80}",
        "(Cert|By|Hash)=\"?[-A-Za-z0-9%+/=]{0,40}\"?[;,]?".prop_map(String::from),
        ":[A-Za-z0-9+/=]{0,40}:",
    ]
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics(
        peer in header_text(), xfcc in header_text(), cc in header_text(), custom in header_text(),
        element in prop_oneof![Just(XfccElement::Only), Just(XfccElement::First), Just(XfccElement::Last)],
    ) {
        let c = cfg(
            vec![Source::PeerCertificate, Source::Xfcc, Source::ClientCert, Source::Header("x-cert".into())],
            element,
        );
        let h = headers(&[("x-forwarded-client-cert", &xfcc), ("client-cert", &cc), ("x-cert", &custom)]);
        let all_blank = [&peer, &xfcc, &cc, &custom].iter().all(|v| v.trim().is_empty());
        match identify(&c, &peer, &h) {
            Ok(cert) => {
                prop_assert_eq!(cert.sha1, Fingerprint::of_der(&cert.der));
                prop_assert_eq!(pem::check_der(&cert.der), Ok(()));
            }
            Err(e) => prop_assert_eq!(e.is_missing(), all_blank),
        }
        if let Ok(elements) = parse_xfcc(&xfcc) {
            prop_assert!(elements.iter().all(|e| !e.is_empty()));
        }
    }
}

proptest! {
    // Each case makes two keys and runs openssl once.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn every_encoding_gives_the_same_fingerprint(name in "[a-z]{1,12}(\\.[a-z]{2,5})?") {
        let (pem, der) = new_cert(&name);
        let want = Fingerprint::of_der(&der);
        prop_assert_eq!(want.to_hex(), openssl_sha1(&pem));
        let (other_pem, _) = new_cert("other");
        let (env, other) = (envoy_encode(&pem), envoy_encode(&other_pem));
        let xfcc = format!("By=spiffe://a/b;Hash=00;Cert=\"{env}\";Subject=\"CN=x,O=y\";URI=");
        let only = cfg(vec![Source::Xfcc], XfccElement::Only);
        let first = cfg(vec![Source::Xfcc], XfccElement::First);
        let last = cfg(vec![Source::Xfcc], XfccElement::Last);
        let custom = cfg(vec![Source::Header("x-ssl-cert".into())], XfccElement::Only);
        let cases = [
            (IdentityConfig::default(), env.clone(), headers(&[])),
            (IdentityConfig::default(), String::new(), headers(&[("client-cert", &rfc9440(&der))])),
            (only, String::new(), headers(&[("x-forwarded-client-cert", &xfcc)])),
            (first, String::new(), headers(&[("x-forwarded-client-cert", &format!("{xfcc},Cert={other}"))])),
            (last, String::new(), headers(&[("x-forwarded-client-cert", &format!("Cert=\"{other}\";By=z,{xfcc}"))])),
            (custom.clone(), String::new(), headers(&[("x-ssl-cert", &loose_encode(&pem))])),
            (custom, String::new(), headers(&[("x-ssl-cert", &pem)])),
        ];
        for (i, (c, peer, h)) in cases.iter().enumerate() {
            let got = identify(c, peer, h).map_err(|e| format!("case {i}: {e}"));
            prop_assert_eq!(got.map(|g| g.sha1), Ok(want), "case {}", i);
        }
    }
}
