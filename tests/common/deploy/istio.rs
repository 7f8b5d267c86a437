//! The Istio resources' structure, written for these tests from Istio's API
//! reference (`mesh/v1alpha1`, `security/v1`, `networking/v1`): only the
//! fields fleet-authz's files may use, every struct rejecting unknown keys,
//! enums limited to Istio's values. Kubernetes schemas do not cover Istio's
//! CRDs, so this stands in for them.

#![allow(dead_code)] // Fields exist to be parsed, not all are read.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Any Kubernetes-style object: apiVersion, kind, metadata, spec.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

// === IstioOperator (install.istio.io/v1alpha1), mesh config only ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperatorSpec {
    pub mesh_config: MeshConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    pub default_config: Option<ProxyConfig>,
}

/// `meshConfig.extensionProviders[]`: a name and exactly one provider; only
/// the gRPC ext_authz provider is allowed here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    pub envoy_ext_authz_grpc: GrpcAuthzProvider,
}

/// `EnvoyExternalAuthorizationGrpcProvider`. It has no header options (those
/// are HTTP-provider only): over gRPC Envoy sends every header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcAuthzProvider {
    pub service: String,
    pub port: u16,
    pub timeout: Option<String>,
    pub fail_open: Option<bool>,
    pub clear_route_cache: Option<bool>,
    pub status_on_error: Option<String>,
    pub include_request_body_in_check: Option<RequestBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestBody {
    pub max_request_bytes: Option<u32>,
    pub allow_partial_message: Option<bool>,
    pub pack_as_bytes: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    pub gateway_topology: Option<Topology>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Topology {
    pub num_trusted_proxies: Option<u32>,
    pub forward_client_cert_details: Option<ForwardClientCertDetails>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCertDetails {
    Undefined,
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

// === AuthorizationPolicy (security.istio.io/v1) ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    pub action: Option<Action>,
    pub provider: Option<Provider>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
}

/// `from[].source`: field name → values.
pub type Sources = BTreeMap<String, BTreeMap<String, Vec<String>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub from: Option<Vec<Sources>>,
    pub to: Option<Vec<To>>,
    pub when: Option<Vec<Condition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    pub operation: Operation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    pub not_ports: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    pub values: Option<Vec<String>>,
    pub not_values: Option<Vec<String>>,
}

// === Gateway (networking.istio.io/v1) ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    pub port: Port,
    pub bind: Option<String>,
    pub hosts: Vec<String>,
    pub tls: Option<ServerTls>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub number: u16,
    pub name: String,
    pub protocol: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTls {
    pub https_redirect: Option<bool>,
    pub mode: Option<TlsMode>,
    pub credential_name: Option<String>,
    pub subject_alt_names: Option<Vec<String>>,
    pub verify_certificate_spki: Option<Vec<String>>,
    pub verify_certificate_hash: Option<Vec<String>>,
    pub min_protocol_version: Option<TlsVersion>,
    pub max_protocol_version: Option<TlsVersion>,
    pub cipher_suites: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSV1_0")]
    V1_0,
    #[serde(rename = "TLSV1_1")]
    V1_1,
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

// === VirtualService (networking.istio.io/v1), the fields used here ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: Vec<HttpMatch>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    pub uri: Option<StringMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    pub port: Option<PortSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u16,
}

/// Parses `text` as an object with the given spec type, or says why not.
pub fn parse<S: serde::de::DeserializeOwned>(text: &str) -> Result<Object<S>, String> {
    yaml_serde::from_str(text).map_err(|e| e.to_string())
}

/// Seconds in a protobuf-JSON duration such as `0.25s`.
pub fn duration_secs(text: &str) -> Option<f64> {
    text.strip_suffix('s')?.parse().ok()
}
