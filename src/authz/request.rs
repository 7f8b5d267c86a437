//! The `CheckRequest` Envoy would send for a certificate, built by hand:
//! what `fleet-authz check` sends, and what tests and benches use to drive
//! the service as Envoy does.

use std::collections::HashMap;

use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
    service::auth::v3::{AttributeContext, CheckRequest, attribute_context},
};

/// URL-encodes PEM the way Envoy does for `source.certificate` and XFCC.
pub fn url_encode_pem(pem: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(pem, SET).to_string()
}

/// Builds the CheckRequest `check` sends.
pub fn build_check_request(
    pem: &str,
    context: &[(String, String)],
    host: &str,
    path: &str,
    xfcc: bool,
) -> CheckRequest {
    let encoded = url_encode_pem(pem);
    let mut headers = HashMap::from([
        (":authority".to_owned(), host.to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":method".to_owned(), "GET".to_owned()),
        ("x-request-id".to_owned(), "fleet-authz-cli".to_owned()),
    ]);
    if xfcc {
        headers.insert(
            "x-forwarded-client-cert".to_owned(),
            format!("Cert=\"{encoded}\""),
        );
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".to_owned(),
                        port_specifier: Some(PortSpecifier::PortValue(50000)),
                        ..Default::default()
                    })),
                }),
                certificate: if xfcc { String::new() } else { encoded },
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "fleet-authz-cli".to_owned(),
                    method: "GET".to_owned(),
                    host: host.to_owned(),
                    path: path.to_owned(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: context.iter().cloned().collect(),
            ..Default::default()
        }),
    }
}

/// The HTTP header map of `req` (created if absent), to add headers to a
/// request [`build_check_request`] made.
pub fn request_headers(req: &mut CheckRequest) -> &mut HashMap<String, String> {
    &mut req
        .attributes
        .get_or_insert_default()
        .request
        .get_or_insert_default()
        .http
        .get_or_insert_default()
        .headers
}
