//! Crash safety (#20): the real binary is killed with SIGKILL at random
//! moments while it rewrites the posture snapshot (a Fleet sync, asked for
//! over and over) and the break-glass grants file (a grant, over and over),
//! 200 times. After every kill the files on disk are whole: the snapshot
//! decodes with every host, the grants file parses and holds every grant
//! the service acknowledged, and the next start serves from them. Left-over
//! temporaries of killed processes do not pile up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Child,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    cluster::wait_for,
    fake_fleet::{FakeFleet, FakeSpec},
    ops::{POLICY, http_client},
    server::{free_port, spawn_serve},
};
use fleet_authz::{fleet::snapshot, grants::GrantStore};
use serde_json::json;
use tempfile::TempDir;

const KILLS: usize = 200;
const HOSTS: u64 = 500;
const TOKEN: &str = "crash-admin-token";
/// The longest a process lives after it answers; each kill lands at a
/// random moment in this window.
const LIFE_MS: u64 = 400;
/// After a write is seen to begin, the kill lands within this many ms.
const WRITE_MS: u64 = 4;
const SNAPSHOT: &str = "snapshot.pb";
const GRANTS: &str = "grants.json";

/// The fake Fleet, the config and the two files under test.
struct Lab {
    fake: FakeFleet,
    dir: TempDir,
    snapshot: PathBuf,
    grants: PathBuf,
}

impl Lab {
    async fn new() -> Self {
        let fake = FakeFleet::start(FakeSpec {
            hosts: HOSTS,
            report_cap: 10 * HOSTS as usize,
            ..FakeSpec::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("policy.yaml"), POLICY).unwrap();
        std::fs::write(d.join("fleet-token"), fake.token()).unwrap();
        std::fs::write(d.join("admin-token"), TOKEN).unwrap();
        Self {
            snapshot: d.join(SNAPSHOT),
            grants: d.join(GRANTS),
            fake,
            dir,
        }
    }

    /// Starts the binary on fresh ports; returns it and its HTTP address.
    fn spawn(&self) -> (Child, SocketAddr) {
        let (http, grpc) = (free_port(), free_port());
        let d = self.dir.path().display();
        let yaml = format!(
            "listen: {{grpc: \"127.0.0.1:{grpc}\", http: \"127.0.0.1:{http}\"}}
fleet:
  url: {url}
  token_file: {d}/fleet-token
  certificate_query_id: 42
  page_size: 500
  request_timeout: 5s
  sync_interval: 1h
snapshot: {{path: {snap}}}
policy_file: {d}/policy.yaml
admin: {{token_file: {d}/admin-token, grants_file: {grants}}}
telemetry: {{log_format: json}}
",
            url = self.fake.url(),
            snap = self.snapshot.display(),
            grants = self.grants.display(),
        );
        let config = self.dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let child = spawn_serve(&config, &self.dir.path().join("service.log"));
        (child, SocketAddr::from(([127, 0, 0, 1], http)))
    }

    /// Whether process `pid` left a temporary of the file named `of`.
    fn left_temporary(&self, of: &str, pid: u32) -> bool {
        self.dir.path().join(format!(".{of}.tmp-{pid}")).exists()
    }

    /// Temporary files of writes in progress (or interrupted) now, of the
    /// file named `of` (`""`: of either file).
    fn temporaries(&self, of: &str) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.contains(".tmp-") && name.contains(of)
            })
            .count()
    }

    /// Waits (polling every millisecond, at most 1.5 s) until process `pid`
    /// writes the file named `of`.
    async fn writing(&self, of: &str, pid: u32) {
        let deadline = Instant::now() + Duration::from_millis(1500);
        while !self.left_temporary(of, pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The grant ids the service lists, once it answers.
async fn listed_grants(http: SocketAddr) -> Option<Vec<u64>> {
    let response = http_client()
        .get(format!("http://{http}/v1/break-glass"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    let grants = body.as_array().or_else(|| body["grants"].as_array())?;
    Some(grants.iter().filter_map(|g| g["id"].as_u64()).collect())
}

/// What the writers saw acknowledged before a kill.
#[derive(Default)]
struct Acknowledged {
    grants: Vec<u64>,
    syncs: usize,
}

/// Asks for syncs (each rewrites the snapshot) and grants (each rewrites the
/// grants file) back to back until aborted, recording each acknowledgement.
async fn hammer(http: SocketAddr, seen: Arc<Mutex<Acknowledged>>, round: usize) {
    let client = http_client();
    let syncs = {
        let (client, seen) = (client.clone(), seen.clone());
        async move {
            loop {
                let answer = client
                    .post(format!("http://{http}/v1/sync"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status() == 200) {
                    seen.lock().unwrap().syncs += 1;
                }
            }
        }
    };
    let grants = async move {
        for n in 0u64.. {
            let sha1 = format!("{:040x}", (round as u64) << 32 | n);
            let answer = client
                .post(format!("http://{http}/v1/break-glass"))
                .bearer_auth(TOKEN)
                .json(&json!({"sha1": sha1, "reason": "crash test", "duration": "4h"}))
                .send()
                .await;
            let Ok(answer) = answer else { continue };
            if answer.status() == 201
                && let Ok(body) = answer.json::<serde_json::Value>().await
                && let Some(id) = body["id"].as_u64()
            {
                seen.lock().unwrap().grants.push(id);
            }
        }
    };
    tokio::join!(syncs, grants);
}

/// The files on disk after a kill: a whole snapshot (once any sync was
/// acknowledged) and a grants file holding every acknowledged grant.
fn assert_whole(lab: &Lab, seen: &Acknowledged, round: usize) {
    if seen.syncs > 0 || lab.snapshot.exists() {
        let loaded = snapshot::load(&lab.snapshot)
            .unwrap_or_else(|e| panic!("round {round}: the snapshot is torn: {e}"));
        assert_eq!(loaded.hosts.len() as u64, HOSTS, "round {round}");
    }
    if seen.grants.is_empty() && !lab.grants.exists() {
        return;
    }
    let store = GrantStore::open(&lab.grants)
        .unwrap_or_else(|e| panic!("round {round}: the grants file is torn: {e}"));
    let on_file: Vec<u64> = store
        .active(SystemTime::now())
        .iter()
        .map(|g| g.id)
        .collect();
    let lost: Vec<_> = seen
        .grants
        .iter()
        .filter(|id| !on_file.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "round {round}: acknowledged grants lost: {lost:?}"
    );
}

/// A small deterministic generator for the kill moments; the seed is printed
/// so a failing run can be replayed with `CRASH_SEED`.
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// How many kills interrupted a write of each file.
#[derive(Debug, Default)]
struct Interrupted {
    snapshot: usize,
    grants: usize,
}

/// Where a round's kill lands: at a random moment of the process's life,
/// or a random moment after a write of one of the files began.
async fn kill_moment(lab: &Lab, pid: u32, round: usize, moments: &mut Moments) {
    match round % 3 {
        0 => {}
        1 => lab.writing(SNAPSHOT, pid).await,
        _ => lab.writing(GRANTS, pid).await,
    }
    let within = if round.is_multiple_of(3) {
        LIFE_MS
    } else {
        WRITE_MS
    };
    tokio::time::sleep(Duration::from_millis(moments.next_ms(within))).await;
}

/// Kills and restarts the service; checks the files after each kill and
/// that each restart lists every grant acknowledged so far.
async fn run(lab: &Lab, moments: &mut Moments) -> (Interrupted, usize) {
    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    let mut interrupted = Interrupted::default();
    for round in 0..KILLS {
        let (mut child, http) = lab.spawn();
        let listed = wait_for(Duration::from_secs(30), "the service to answer", || {
            listed_grants(http)
        })
        .await;
        let lost: Vec<_> = seen
            .lock()
            .unwrap()
            .grants
            .iter()
            .filter(|id| !listed.contains(id))
            .copied()
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: the restart lost grants {lost:?}"
        );
        let writer = tokio::spawn(hammer(http, seen.clone(), round));
        if round == 0 {
            // Whatever the kills' timing on a slow machine, at least one
            // sync is acknowledged, so the snapshot is checked against it.
            wait_for(Duration::from_secs(30), "a forced sync answered", || {
                let syncs = seen.lock().unwrap().syncs;
                async move { (syncs > 0).then_some(()) }
            })
            .await;
        }
        kill_moment(lab, child.id(), round, moments).await;
        child.kill().unwrap();
        child.wait().unwrap();
        writer.abort();
        let _ = writer.await;
        let pid = child.id();
        interrupted.snapshot += usize::from(lab.left_temporary(SNAPSHOT, pid));
        interrupted.grants += usize::from(lab.left_temporary(GRANTS, pid));
        assert_whole(lab, &seen.lock().unwrap(), round);
    }
    let syncs = seen.lock().unwrap().syncs;
    (interrupted, syncs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_writing_never_leaves_a_torn_snapshot_or_grants_file() {
    let lab = Lab::new().await;

    let seed = seed();
    eprintln!("CRASH_SEED={seed}");
    let started = Instant::now();
    let (interrupted, syncs) = run(&lab, &mut Moments(seed)).await;
    eprintln!(
        "{KILLS} kills in {:?}: writes interrupted {interrupted:?}, {syncs} syncs acknowledged",
        started.elapsed()
    );
    // The kills did land inside writes of both files: they left temporaries.
    assert!(
        interrupted.snapshot > 0,
        "no kill interrupted a snapshot write"
    );
    assert!(interrupted.grants > 0, "no kill interrupted a grants write");
    assert!(syncs > 0, "no sync finished between kills");
    // Each successful write removes dead processes' temporaries: at most the
    // last kill's two (snapshot and grants) remain.
    let left = lab.temporaries("");
    assert!(left <= 2, "{left} temporaries piled up");
}
