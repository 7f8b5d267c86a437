//! The binary: `check-config` exit codes and messages, `serve` refusing bad
//! input at start with exit 64, and `check` sending a real Check.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

use std::{path::Path, process::Command};

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-authz");

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .display()
        .to_string()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A config in a temp dir pointing at `policy` text and the demo posture.
fn config_with(dir: &TempDir, extra: &str, policy: &str) -> String {
    config_listening(dir, "127.0.0.1:0", extra, policy)
}

/// [`config_with`], with gRPC on `grpc`.
fn config_listening(dir: &TempDir, grpc: &str, extra: &str, policy: &str) -> String {
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{grpc: \"{grpc}\", http: \"127.0.0.1:0\"}}\nposture_file: {}\npolicy_file: {}\n{extra}",
            repo("deploy/demo/posture.yaml"),
            policy_path.display()
        ),
    )
    .unwrap();
    config.display().to_string()
}

#[test]
fn demo_config_is_valid() {
    let (code, out, _) = run(&["check-config", "--config", "deploy/demo/config.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "deploy/demo/config.yaml: ok");
}

#[test]
fn bad_config_key_exits_64_naming_file_key_and_problem() {
    let dir = TempDir::new().unwrap();
    let config = config_with(&dir, "telemetry: {log_fromat: json}\n", "version: 1\n");
    for cmd in ["check-config", "serve"] {
        let (code, _, err) = run(&[cmd, "--config", &config]);
        assert_eq!(code, 64, "{cmd}: {err}");
        assert!(
            err.contains(&config)
                && err.contains("telemetry")
                && err.contains("unknown field `log_fromat`"),
            "{err}"
        );
    }
}

#[test]
fn bad_fleet_bounds_exit_64_naming_file_key_and_problem() {
    for (line, key, problem) in [
        (
            "max_body_bytes: 0",
            "fleet.max_body_bytes",
            "must be at least 1",
        ),
        (
            "max_body_bytes: 64MiB",
            "fleet.max_body_bytes",
            "invalid type",
        ),
        (
            "max_report_rows: -1",
            "fleet.max_report_rows",
            "invalid type",
        ),
        (
            "max_report_rows: 0",
            "fleet.max_report_rows",
            "must be at least 1",
        ),
    ] {
        let dir = TempDir::new().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "fleet:\n  url: https://fleet.example.com\n  token_env: FLEET_API_TOKEN\n  \
                 certificate_query_id: 42\n  {line}\npolicy_file: policy.yaml\n"
            ),
        )
        .unwrap();
        let config = config.display().to_string();
        let (code, _, err) = run(&["check-config", "--config", &config]);
        assert_eq!(code, 64, "{line}: {err}");
        assert!(
            err.contains(&config) && err.contains(key) && err.contains(problem),
            "{line}: {err}"
        );
    }
}

#[test]
fn bad_grpc_listen_address_exits_64_naming_the_key() {
    for (grpc, problem) in [
        ("localhost", "`localhost` is neither ip:port"),
        ("unix:", "`unix:` names no socket path"),
    ] {
        let dir = TempDir::new().unwrap();
        let config = config_listening(&dir, grpc, "", "version: 1\n");
        let (code, _, err) = run(&["check-config", "--config", &config]);
        assert_eq!(code, 64, "{grpc}: {err}");
        assert!(
            err.contains(&config) && err.contains("listen.grpc") && err.contains(problem),
            "{err}"
        );
    }
}

#[test]
fn bad_policy_exits_64_naming_the_policy_file_and_key() {
    let dir = TempDir::new().unwrap();
    let config = config_with(
        &dir,
        "",
        "version: 1\ndefaults:\n  deny: {last_seen_over: soon}\n",
    );
    for cmd in ["check-config", "serve"] {
        let (code, _, err) = run(&[cmd, "--config", &config]);
        assert_eq!(code, 64, "{cmd}: {err}");
        assert!(
            err.contains("policy.yaml: defaults.deny.last_seen_over: not a duration"),
            "{err}"
        );
    }
}

#[test]
fn missing_source_and_missing_file_exit_64() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "policy_file: p.yaml\n").unwrap();
    let (code, _, err) = run(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("fleet: a posture source is required"), "{err}");
    let (code, _, err) = run(&["check-config", "--config", "/nonexistent/config.yaml"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("/nonexistent/config.yaml: (file): cannot read"),
        "{err}"
    );
}

#[test]
fn bad_posture_file_exits_64() {
    let dir = TempDir::new().unwrap();
    let posture = dir.path().join("posture.yaml");
    std::fs::write(&posture, "hosts: [{id: 1, fingerprints: [nothex]}]\n").unwrap();
    std::fs::write(dir.path().join("policy.yaml"), "version: 1\n").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "posture_file: {}\npolicy_file: {}/policy.yaml\n",
            posture.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains("posture.yaml") && err.contains("SHA-1 fingerprint"),
        "{err}"
    );
}

/// `check`'s result for the demo's compliant device: allowed, as host 101.
fn assert_compliant_allowed((code, out, err): &(i32, String, String)) {
    assert_eq!(*code, 0, "{out}{err}");
    assert!(
        out.starts_with("ALLOW\n") && out.contains("x-fleet-host-id: 101"),
        "{out}"
    );
}

/// `check`'s result for the demo's critical device: denied by BitLocker.
fn assert_critical_denied((code, out, err): &(i32, String, String)) {
    assert_eq!(*code, 1, "{out}{err}");
    assert!(
        out.contains("DENY (HTTP 403)")
            && out.contains("- failing_critical_policy name=BitLocker enabled"),
        "{out}"
    );
}

#[tokio::test]
async fn check_prints_the_decision_and_reasons() {
    let dir = TempDir::new().unwrap();
    let policy = std::fs::read_to_string(repo("deploy/demo/policy.yaml")).unwrap();
    let config = config_with(&dir, "", &policy);
    let config = fleet_authz::config::Config::load(Path::new(&config)).unwrap();
    let server = fleet_authz::server::start(config).await.unwrap();
    let addr = format!("http://{}", server.grpc_addr());
    let check = |cert: &str, extra: &[&str]| {
        let mut args = vec!["check", "--cert", cert, "--addr", &addr];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    assert_compliant_allowed(
        &check("deploy/demo/certs/device-compliant.pem", &[])
            .await
            .unwrap(),
    );
    let critical = check("deploy/demo/certs/device-critical.pem", &[])
        .await
        .unwrap();
    assert_critical_denied(&critical);
    assert!(
        critical
            .1
            .contains("fix: Open Settings > Privacy & security"),
        "{}",
        critical.1
    );
    let (code, out, _) = check(
        "deploy/demo/certs/device-noncritical.pem",
        &["--context", "app=payroll"],
    )
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        out.contains("route: payroll") && out.contains("failing_any_policy"),
        "{out}"
    );
    // The deny page's facts: what was blocked, when Fleet last heard from
    // the device, what to do (never a per-host Fleet link), the bypass
    // offered for a non-critical failure, who to ask.
    for fact in [
        "  blocked: Payroll\n",
        "  fleet last heard from it: ",
        "  what to do:\n    1. Open Fleet Desktop",
        "\"My device\"",
        "    3. Click \"Refetch\"",
        "    4. Try again.\n",
        "  bypass: may continue for 1h with a reason, from the deny page in a browser (2 of 2 left in 24h)\n",
        "  support: IT help desk https://help.example.com/device\n",
        "  request id: fleet-authz-cli\n",
    ] {
        assert!(out.contains(fact), "{fact:?} missing from\n{out}");
    }
    assert!(!out.contains("remediation:"), "{out}");
    assert!(!critical.1.contains("bypass:"), "{}", critical.1);
    let (code, out, _) = check("deploy/demo/certs/device-unknown.pem", &["--xfcc"])
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("- unknown_device"), "{out}");
    server.shutdown().await;
    let (code, _, err) = check("deploy/demo/certs/device-compliant.pem", &[])
        .await
        .unwrap();
    assert_eq!(code, 69, "{err}");
}

/// `listen.grpc: unix:…`: Checks over the socket get the same decisions,
/// a second server on a live socket exits 64, and shutdown removes the file.
#[tokio::test]
async fn serves_checks_on_a_unix_socket() {
    let dir = TempDir::new().unwrap();
    let socket = dir.path().join("grpc.sock");
    let policy = std::fs::read_to_string(repo("deploy/demo/policy.yaml")).unwrap();
    // gRPC's `unix:///abs` spelling; `check` gets the `unix:/abs` one.
    let listen = format!("unix://{}", socket.display());
    let config = config_listening(&dir, &listen, "", &policy);
    let loaded = fleet_authz::config::Config::load(Path::new(&config)).unwrap();
    let server = fleet_authz::server::start(loaded).await.unwrap();
    assert_eq!(
        server.grpc_listen(),
        &fleet_authz::config::GrpcListen::Unix(socket.clone())
    );
    let addr = format!("unix:{}", socket.display());
    let blocking = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let check = |cert: &str| {
        blocking(
            ["check", "--cert", cert, "--addr", &addr]
                .map(str::to_owned)
                .to_vec(),
        )
    };
    assert_compliant_allowed(
        &check("deploy/demo/certs/device-compliant.pem")
            .await
            .unwrap(),
    );
    assert_critical_denied(
        &check("deploy/demo/certs/device-critical.pem")
            .await
            .unwrap(),
    );
    // A second `serve` on the same, live socket: refused, socket untouched.
    let (code, _, err) = blocking(["serve", "--config", &config].map(str::to_owned).to_vec())
        .await
        .unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("listen.grpc: cannot bind unix:")
            && err.contains("another process is serving on this socket"),
        "{err}"
    );
    let (code, _, _) = check("deploy/demo/certs/device-compliant.pem")
        .await
        .unwrap();
    assert_eq!(code, 0, "the first server still answers");
    server.shutdown().await;
    assert!(!socket.exists(), "shutdown removes the socket file");
    let (code, _, err) = check("deploy/demo/certs/device-compliant.pem")
        .await
        .unwrap();
    assert_eq!(code, 69, "{err}");
}
