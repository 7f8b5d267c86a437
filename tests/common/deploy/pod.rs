//! Checks on a rendered overlay's Pod: hardening, probes, Prometheus
//! annotations, and that every path the fleet-authz and Envoy configs name
//! is backed by a volume holding that file. Each panics with the overlay,
//! the object and what is wrong.

use std::path::Path;

use yaml_serde::Value;

use super::kube::{self, find, id, is_generated, labels, selects};
use super::{at, parse_docs, str_at};

/// The namespace every object lives in (Istio's provider address uses it).
pub const NAMESPACE: &str = "fleet-authz";

/// Envoy's TLS Secret: created by the operator, so not in the render.
pub const ENVOY_TLS_SECRET: &str = "fleet-authz-envoy-tls";

fn seq(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_sequence).cloned().unwrap_or_default()
}

fn pod_spec(objects: &[Value]) -> &Value {
    at(
        find(objects, "Deployment", "fleet-authz"),
        "spec.template.spec",
    )
    .unwrap()
}

/// The container named `name` in the fleet-authz Pod.
pub fn container(objects: &[Value], name: &str) -> Value {
    seq(pod_spec(objects).get("containers"))
        .into_iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Names of the Pod's containers, sorted.
pub fn container_names(objects: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = seq(pod_spec(objects).get("containers"))
        .iter()
        .map(|c| str_at(c, "name", "container").to_owned())
        .collect();
    names.sort();
    names
}

/// The number of a container port given by name or number.
pub fn port_number(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().unwrap();
    seq(container.get("ports"))
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The keys of the ConfigMaps / Secrets a volume holds, and whether it is
/// an emptyDir. Panics if a referenced object is missing from the render.
fn volume_keys(objects: &[Value], volume: &Value) -> (Vec<String>, bool) {
    let mut refs: Vec<(&str, String)> = Vec::new();
    if let Some(name) = at(volume, "configMap.name").and_then(Value::as_str) {
        refs.push(("ConfigMap", name.to_owned()));
    }
    if let Some(name) = at(volume, "secret.secretName").and_then(Value::as_str) {
        refs.push(("Secret", name.to_owned()));
    }
    for source in seq(at(volume, "projected.sources")) {
        if let Some(name) = at(&source, "configMap.name").and_then(Value::as_str) {
            refs.push(("ConfigMap", name.to_owned()));
        }
    }
    let mut keys = Vec::new();
    for (kind, name) in refs {
        if name == ENVOY_TLS_SECRET {
            keys.extend(["server.pem", "server-key.pem", "ca.pem"].map(str::to_owned));
            continue;
        }
        let obj = objects
            .iter()
            .find(|o| {
                o.get("kind").and_then(Value::as_str) == Some(kind)
                    && str_at(o, "metadata.name", kind) == name
            })
            .unwrap_or_else(|| panic!("volume refers to {kind} {name}, which the render lacks"));
        if let Some(data) = obj.get("data").and_then(Value::as_mapping) {
            keys.extend(data.keys().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    (keys, volume.get("emptyDir").is_some())
}

/// The volume mounted at `file`'s directory in `container`, its keys, and
/// whether it is an emptyDir.
pub fn backing_volume(
    objects: &[Value],
    container: &Value,
    file: &str,
) -> (Value, Vec<String>, bool) {
    let dir = Path::new(file).parent().unwrap().to_str().unwrap();
    let mount = seq(container.get("volumeMounts"))
        .into_iter()
        .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(dir))
        .unwrap_or_else(|| panic!("{file}: nothing is mounted at {dir}"));
    let vol_name = str_at(&mount, "name", "volumeMount");
    let volume = seq(pod_spec(objects).get("volumes"))
        .into_iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(vol_name))
        .unwrap_or_else(|| panic!("no volume {vol_name}"));
    let (keys, empty_dir) = volume_keys(objects, &volume);
    (volume, keys, empty_dir)
}

/// Asserts `file` is a key of the volume mounted at its directory.
pub fn assert_file_mounted(objects: &[Value], container: &Value, file: &str) {
    let (_, keys, _) = backing_volume(objects, container, file);
    let base = Path::new(file).file_name().unwrap().to_str().unwrap();
    assert!(
        keys.iter().any(|k| k == base),
        "{file}: the mounted volume holds {keys:?}"
    );
}

/// Hardening, probes, annotations and config-path checks shared by overlays.
pub fn check_common(objects: &[Value], overlay: &str) {
    for obj in objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) != Some("Namespace"))
    {
        assert_eq!(
            at(obj, "metadata.namespace").and_then(Value::as_str),
            Some(NAMESPACE),
            "{overlay}: {}",
            id(obj)
        );
    }
    let deployment = find(objects, "Deployment", "fleet-authz");
    let annotations = at(deployment, "spec.template.metadata.annotations").unwrap();
    for (key, value) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "9090"),
        ("prometheus.io/path", "/metrics"),
    ] {
        assert_eq!(
            annotations.get(key).and_then(Value::as_str),
            Some(value),
            "{overlay}: annotation {key}"
        );
    }
    let pod = pod_spec(objects);
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot").and_then(Value::as_bool),
        Some(true),
        "{overlay}"
    );
    assert_eq!(
        at(pod, "securityContext.seccompProfile.type").and_then(Value::as_str),
        Some("RuntimeDefault")
    );
    for c in seq(pod.get("containers")) {
        let name = str_at(&c, "name", overlay);
        let sc = c
            .get("securityContext")
            .unwrap_or_else(|| panic!("{overlay}/{name}: no securityContext"));
        assert_eq!(
            sc.get("allowPrivilegeEscalation").and_then(Value::as_bool),
            Some(false),
            "{overlay}/{name}"
        );
        assert_eq!(
            sc.get("readOnlyRootFilesystem").and_then(Value::as_bool),
            Some(true),
            "{overlay}/{name}"
        );
        assert_eq!(
            sc.get("runAsNonRoot").and_then(Value::as_bool),
            Some(true),
            "{overlay}/{name}"
        );
        assert_eq!(
            seq(at(sc, "capabilities.drop")),
            vec![Value::from("ALL")],
            "{overlay}/{name}"
        );
        for part in [
            "requests.cpu",
            "requests.memory",
            "limits.cpu",
            "limits.memory",
        ] {
            assert!(
                at(&c, &format!("resources.{part}")).is_some(),
                "{overlay}/{name}: no resources.{part}"
            );
        }
    }
    check_fleet_authz_container(objects, overlay);
}

fn check_fleet_authz_container(objects: &[Value], overlay: &str) {
    let c = container(objects, "fleet-authz");
    let config_cm = find(objects, "ConfigMap", "fleet-authz-config");
    let config = parse_docs(kube::data(config_cm, "config.yaml"), "config.yaml").remove(0);
    let grpc: u64 = str_at(&config, "listen.grpc", "config.yaml")
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let http: u64 = str_at(&config, "listen.http", "config.yaml")
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert_eq!((grpc, http), (9191, 9090), "{overlay}: listen ports");
    assert_eq!(
        port_number(&c, &Value::from("grpc")),
        grpc,
        "{overlay}: container port grpc"
    );
    assert_eq!(
        port_number(&c, at(&c, "livenessProbe.httpGet.port").unwrap()),
        http,
        "{overlay}: liveness port"
    );
    assert_eq!(str_at(&c, "livenessProbe.httpGet.path", overlay), "/livez");
    assert_eq!(
        at(&c, "readinessProbe.grpc.port").and_then(Value::as_u64),
        Some(grpc),
        "{overlay}: readiness"
    );
    let env_config = seq(c.get("env"))
        .into_iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some("FLEET_AUTHZ_CONFIG"))
        .and_then(|e| e.get("value").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| panic!("{overlay}: no FLEET_AUTHZ_CONFIG"));
    assert_file_mounted(objects, &c, &env_config);
    for key in ["policy_file", "fleet.token_file", "admin.token_file"] {
        assert_file_mounted(objects, &c, str_at(&config, key, "config.yaml"));
    }
    let snapshot = str_at(&config, "snapshot.path", "config.yaml");
    let (_, _, empty_dir) = backing_volume(objects, &c, snapshot);
    assert!(
        empty_dir,
        "{overlay}: {snapshot} must be on an emptyDir (the root fs is read-only)"
    );
    // The policy ConfigMap keeps its name, so an update reaches running Pods.
    let policy = find(objects, "ConfigMap", "fleet-authz-policy");
    assert_eq!(
        str_at(policy, "metadata.name", overlay),
        "fleet-authz-policy"
    );
    let config_name = str_at(config_cm, "metadata.name", overlay);
    assert!(config_name != "fleet-authz-config" && is_generated(config_name, "fleet-authz-config"));
}

/// The sidecar overlay: Envoy in the Pod, its config and certificates
/// mounted where `envoy_config` says, ext_authz pointing at fleet-authz.
pub fn check_envoy_sidecar(objects: &[Value], envoy_config: &Value) {
    assert_eq!(container_names(objects), ["envoy", "fleet-authz"]);
    let envoy = container(objects, "envoy");
    let args: Vec<String> = seq(envoy.get("args"))
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let config_path = args
        .iter()
        .position(|a| a == "-c")
        .and_then(|i| args.get(i + 1))
        .expect("envoy -c FILE");
    assert_file_mounted(objects, &envoy, config_path);
    for (key, file) in super::envoy::cert_files(envoy_config) {
        let (volume, _, _) = backing_volume(objects, &envoy, &file);
        assert_eq!(
            at(&volume, "secret.secretName").and_then(Value::as_str),
            Some(ENVOY_TLS_SECRET),
            "{key}"
        );
        assert_file_mounted(objects, &envoy, &file);
    }
    let authz_cluster = find_str(envoy_config, "envoy_grpc")
        .and_then(|g| g.get("cluster_name"))
        .and_then(Value::as_str)
        .unwrap();
    let cluster = seq(at(envoy_config, "static_resources.clusters"))
        .into_iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(authz_cluster))
        .unwrap();
    let lb = &seq(at(&cluster, "load_assignment.endpoints"))[0];
    let addr = at(
        &seq(lb.get("lb_endpoints"))[0],
        "endpoint.address.socket_address",
    )
    .unwrap()
    .clone();
    assert_eq!(str_at(&addr, "address", "fleet_authz cluster"), "127.0.0.1");
    let fleet_authz = container(objects, "fleet-authz");
    assert_eq!(
        addr.get("port_value").and_then(Value::as_u64),
        Some(port_number(&fleet_authz, &Value::from("grpc")))
    );
    let listener_port = at(
        &seq(at(envoy_config, "static_resources.listeners"))[0],
        "address.socket_address.port_value",
    )
    .and_then(Value::as_u64);
    assert_eq!(
        listener_port,
        Some(port_number(&envoy, &Value::from("https"))),
        "envoy listener port"
    );
    let service = find(objects, "Service", "fleet-authz-envoy");
    check_service_targets(objects, service, &envoy);
}

fn find_str<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Mapping(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|v| find_str(v, key))),
        Value::Sequence(s) => s.iter().find_map(|v| find_str(v, key)),
        _ => None,
    }
}

fn pod_labels(objects: &[Value]) -> Vec<String> {
    labels(at(
        find(objects, "Deployment", "fleet-authz"),
        "spec.template.metadata.labels",
    ))
}

fn check_service_targets(objects: &[Value], service: &Value, container: &Value) {
    assert!(
        selects(&labels(at(service, "spec.selector")), &pod_labels(objects)),
        "{} selects no Pod",
        id(service)
    );
    for port in seq(at(service, "spec.ports")) {
        port_number(container, port.get("targetPort").unwrap());
    }
}

/// The shared overlay: Services, PDB and HPA aim at the fleet-authz Pods.
pub fn check_shared(objects: &[Value]) {
    assert_eq!(container_names(objects), ["fleet-authz"]);
    let c = container(objects, "fleet-authz");
    let deployment = find(objects, "Deployment", "fleet-authz");
    let replicas = at(deployment, "spec.replicas")
        .and_then(Value::as_u64)
        .unwrap();
    for name in ["fleet-authz", "fleet-authz-headless"] {
        let service = find(objects, "Service", name);
        check_service_targets(objects, service, &c);
        let port = &seq(at(service, "spec.ports"))[0];
        assert_eq!(
            port.get("port").and_then(Value::as_u64),
            Some(9191),
            "{name}"
        );
        assert_eq!(
            port_number(&c, port.get("targetPort").unwrap()),
            9191,
            "{name}"
        );
    }
    assert_eq!(
        str_at(
            find(objects, "Service", "fleet-authz-headless"),
            "spec.clusterIP",
            "headless"
        ),
        "None"
    );
    let pdb = find(objects, "PodDisruptionBudget", "fleet-authz");
    assert!(
        selects(
            &labels(at(pdb, "spec.selector.matchLabels")),
            &pod_labels(objects)
        ),
        "PDB selects no Pod"
    );
    let min_available = at(pdb, "spec.minAvailable")
        .and_then(Value::as_u64)
        .unwrap();
    let hpa = find(objects, "HorizontalPodAutoscaler", "fleet-authz");
    assert_eq!(str_at(hpa, "apiVersion", "hpa"), "autoscaling/v2");
    assert_eq!(str_at(hpa, "spec.scaleTargetRef.kind", "hpa"), "Deployment");
    assert_eq!(
        str_at(hpa, "spec.scaleTargetRef.name", "hpa"),
        "fleet-authz"
    );
    let min_replicas = at(hpa, "spec.minReplicas").and_then(Value::as_u64).unwrap();
    // A drain may evict a Pod only if another one stays: min > minAvailable.
    assert!(
        replicas > min_available && min_replicas > min_available,
        "PDB would block every drain"
    );
}
