//! A cluster under test: a real nats-server, one fake Fleet, and replicas
//! of fleet-authz started through the library (or as a child process, to be
//! killed with SIGKILL), each with its own config and admin token.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use fleet_authz::{config::Config, server::RunningServer};
use serde_json::Value;
use tempfile::TempDir;

use super::{
    certs::{Leaf, TestPki},
    fake_fleet::{FakeFleet, FakeSpec},
    nats::NatsServer,
    ops::{get, json},
    server::{free_port, spawn_serve},
};

/// The admin token every replica wants.
pub const TOKEN: &str = "cluster-admin-token";
/// The lease in these tests.
pub const TTL: Duration = Duration::from_secs(2);
/// Host 1 holds the device's certificate and fails policy 1.
pub const HOST: u64 = 1;
const POLICY: &str =
    "version: 1\ndefaults:\n  deny: {failing_any_policy: true}\nbreak_glass: {max_duration: 4h}\n";

/// NATS, Fleet and the files every replica shares.
pub struct Fixture {
    pub nats: NatsServer,
    pub fake: FakeFleet,
    pub device: Leaf,
    pub dir: TempDir,
}

impl Fixture {
    /// A fake Fleet of 10 hosts; host 1 holds `device` and fails policy 1.
    pub async fn new() -> Self {
        // The replicas' logs, shown with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "fleet_authz=info".into()),
            )
            .try_init();
        let nats = NatsServer::start().await;
        let fake = FakeFleet::start(FakeSpec {
            hosts: 10,
            ..FakeSpec::default()
        })
        .await;
        let device = TestPki::new().device("laptop");
        fake.add_report_row(HOST, &device.fingerprint.to_hex().to_uppercase());
        fake.update_host(HOST, |h| {
            for r in h.responses.values_mut() {
                *r = "pass".into();
            }
            h.responses.insert(1, "fail".into());
        });
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        std::fs::write(d.join("policy.yaml"), POLICY).unwrap();
        std::fs::write(d.join("token"), format!("{}\n", fake.token())).unwrap();
        std::fs::write(d.join("admin-token"), TOKEN).unwrap();
        std::fs::write(d.join("cluster-key"), format!("{}\n", "k3y".repeat(16))).unwrap();
        Self {
            nats,
            fake,
            device,
            dir,
        }
    }

    /// The config YAML of replica `name`; `sync` is `fleet.sync_interval`,
    /// `extra` goes under `fleet:` (e.g. a recheck block).
    pub fn yaml(
        &self,
        name: &str,
        nats_url: &str,
        sync: &str,
        fleet_extra: &str,
        listen: &str,
    ) -> String {
        let d = self.dir.path().display();
        format!(
            "listen: {listen}
fleet:
  url: {url}
  token_file: {d}/token
  certificate_query_id: 42
  page_size: 10
  request_timeout: 2s
  sync_interval: {sync}
  {fleet_extra}
snapshot: {{path: {d}/snapshot-{name}.pb}}
policy_file: {d}/policy.yaml
admin: {{token_file: {d}/admin-token{grants}}}
telemetry: {{log_format: json}}
cluster:
  nats_url: {nats_url}
  key_file: {d}/cluster-key
  lease_ttl: 2s
",
            url = self.fake.url(),
            grants = self.grants_file(name),
        )
    }

    /// `, grants_file: …` when the test wrote `grants-<name>.json` for
    /// replica `name`; no file otherwise (every change to one is fsynced,
    /// on the runtime the replicas share with the test).
    fn grants_file(&self, name: &str) -> String {
        let path = self.dir.path().join(format!("grants-{name}.json"));
        if path.exists() {
            format!(", grants_file: {}", path.display())
        } else {
            String::new()
        }
    }

    /// A replica started through the library.
    pub async fn replica(&self, name: &str, sync: &str, fleet_extra: &str) -> RunningServer {
        self.replica_at(name, &self.nats.url(), sync, fleet_extra)
            .await
    }

    /// Replicas `names`, started one after the other, and their HTTP addresses.
    pub async fn replicas(
        &self,
        names: &[&str],
        sync: &str,
        fleet_extra: &str,
    ) -> (Vec<RunningServer>, Vec<SocketAddr>) {
        let mut replicas = Vec::new();
        for name in names {
            replicas.push(self.replica(name, sync, fleet_extra).await);
        }
        let addrs = replicas.iter().map(RunningServer::http_addr).collect();
        (replicas, addrs)
    }

    /// The grants bucket, through a NATS client of the test's own.
    pub async fn grants_bucket(&self) -> async_nats::jetstream::kv::Store {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        async_nats::jetstream::new(client)
            .get_key_value("fleet-authz-grants")
            .await
            .unwrap()
    }

    /// A replica that reaches NATS at `nats_url`.
    pub async fn replica_at(
        &self,
        name: &str,
        nats_url: &str,
        sync: &str,
        fleet_extra: &str,
    ) -> RunningServer {
        let listen = "{grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\"}";
        let yaml = self.yaml(name, nats_url, sync, fleet_extra, listen);
        let path = self.dir.path().join(format!("config-{name}.yaml"));
        let config = Config::from_yaml(&yaml, &path).unwrap();
        fleet_authz::server::start(config).await.unwrap()
    }

    /// A replica as a child process of the real binary; returns it with its
    /// HTTP address.
    pub fn child(&self, name: &str, sync: &str) -> (std::process::Child, SocketAddr) {
        let (http, grpc) = (free_port(), free_port());
        let listen = format!("{{grpc: \"127.0.0.1:{grpc}\", http: \"127.0.0.1:{http}\"}}");
        let yaml = self.yaml(name, &self.nats.url(), sync, "", &listen);
        let path: PathBuf = self.dir.path().join(format!("config-{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let child = spawn_serve(&path, &self.dir.path().join(format!("{name}.log")));
        (child, SocketAddr::from(([127, 0, 0, 1], http)))
    }
}

/// `GET /v1/cluster`, or `None` while the replica does not answer.
pub async fn cluster_state(addr: SocketAddr) -> Option<Value> {
    let response = super::ops::http_client()
        .get(format!("http://{addr}/v1/cluster"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    serde_json::from_str(&response.text().await.ok()?).ok()
}

/// The role a replica reports (`""` while it does not answer).
pub async fn role(addr: SocketAddr) -> String {
    cluster_state(addr)
        .await
        .and_then(|s| s["role"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Polls `probe` every 25 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until(limit, what, || {
        let seen = probe();
        async move { seen.await.ok_or("nothing yet") }
    })
    .await
}

/// Polls `probe` every 25 ms until it returns `Ok`, for at most `limit`;
/// a timeout shows the last `Err` (what was seen instead).
pub async fn wait_until<T, E, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; last seen: {seen:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until exactly one of `addrs` leads, the others follow it, and all
/// hold the same posture version ≥ 1; returns the leader's index.
pub async fn settled(addrs: &[SocketAddr]) -> usize {
    // A timeout shows what each replica last said, so where it stuck.
    wait_until(
        TTL * 8,
        "one leader, the others following its posture",
        || async {
            let mut states = Vec::new();
            for addr in addrs {
                states.push(cluster_state(*addr).await);
            }
            one_leader_followed(&states).ok_or(states)
        },
    )
    .await
}

/// The leader's index when exactly one replica leads, the others follow it
/// and all hold the same posture version >= 1.
fn one_leader_followed(states: &[Option<Value>]) -> Option<usize> {
    let states: Vec<&Value> = states.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let leaders: Vec<usize> = (0..states.len())
        .filter(|i| states[*i]["role"] == "leader")
        .collect();
    let [leader] = leaders[..] else { return None };
    let version = states[leader]["posture_version"].as_u64()?;
    let all_follow = states.iter().enumerate().all(|(i, s)| {
        i == leader || (s["role"] == "follower" && s["leader"] == states[leader]["leader"])
    });
    let same = states
        .iter()
        .all(|s| s["posture_version"].as_u64() == Some(version));
    (version >= 1 && all_follow && same).then_some(leader)
}

/// `/metrics` of `addr`: the sum of every sample of `name` (any labels).
pub async fn metric_sum(addr: SocketAddr, name: &str) -> f64 {
    let (_, text) = get(addr, "/metrics", None).await;
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET path` with the admin token, as JSON.
pub async fn admin_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{path}: {body}");
    json(&body)
}
