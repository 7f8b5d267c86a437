//! The posture snapshot: round trip, atomic replace, and refusal of
//! truncated, corrupt and unknown-version files.

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::fake_fleet::{FakeFleet, FakeSpec, Fault};
use fleet_authz::{
    fingerprint::Fingerprint,
    fleet::Poller,
    fleet::snapshot::{self, SnapshotError},
    posture::{HostPosture, PolicyMeta, PolicyResponse, PolicyResult, PostureStore, Team},
    proto::v1,
};
use prost::Message;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn host(id: u64, failing_since: Option<SystemTime>) -> HostPosture {
    let mut h = HostPosture::new(id, format!("Mac {id}"));
    h.uuid = format!("uuid-{id}");
    h.team = Some(Team {
        id: Some(2),
        name: "Workstations".into(),
    });
    h.platform = "darwin".into();
    h.os_version = "macOS 14.1.2".into();
    h.last_seen = Some(t(1_700_000_000) + Duration::from_millis(123));
    h.cves = vec!["CVE-2024-3094".into()];
    h.fingerprints = vec![Fingerprint::of_der(format!("cert-{id}").as_bytes())];
    h.policies = vec![
        PolicyResult::new(
            PolicyMeta::new(1, "Gatekeeper enabled", true, Some("Turn it on".into())),
            PolicyResponse::Fail,
        )
        .with_failing_since(failing_since),
        PolicyResult::new(
            PolicyMeta::new(2, "Disk encrypted", false, None),
            PolicyResponse::NotRun,
        ),
    ];
    h
}

fn saved_store(dir: &std::path::Path) -> (std::path::PathBuf, Arc<PostureStore>) {
    let store = Arc::new(PostureStore::new());
    let mut plain = HostPosture::new(3, "no team");
    plain.last_seen = None;
    store.replace_all(
        vec![host(1, Some(t(1_600_000_000))), host(2, None), plain],
        t(1_700_000_000),
    );
    let path = dir.join("snapshot.pb");
    snapshot::save(&path, &store).unwrap_or_else(|e| panic!("{e}"));
    (path, store)
}

#[test]
fn save_then_load_round_trips_hosts_and_failing_since() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = saved_store(dir.path());
    let loaded = snapshot::load(&path).unwrap();
    assert_eq!(loaded.synced_at, t(1_700_000_000));
    let held: Vec<HostPosture> = store.all_hosts().iter().map(|h| (**h).clone()).collect();
    assert_eq!(loaded.hosts, held);
    assert_eq!(
        loaded.hosts[0].policies[0].failing_since(),
        Some(t(1_600_000_000))
    );
    // Host 2's failure had no start time and was present at the store's
    // first publish: its start is unknown, and stays unknown in the file.
    assert_eq!(loaded.hosts[1].policies[0].failing_since(), None);
    assert_eq!(loaded.hosts[2].team, None);
    // Names repeated across hosts are shared again after loading.
    assert!(Arc::ptr_eq(
        &loaded.hosts[0].policies[0].meta.name,
        &loaded.hosts[1].policies[0].meta.name
    ));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["snapshot.pb"]);

    // What the lead does at start: replace_all keeps the loaded failing_since.
    let restored = PostureStore::new();
    restored.replace_all(loaded.hosts, loaded.synced_at);
    assert_eq!(restored.synced_at(), Some(t(1_700_000_000)));
    let h1 = restored.lookup(&Fingerprint::of_der(b"cert-1")).unwrap();
    assert_eq!(h1.policies[0].failing_since(), Some(t(1_600_000_000)));
}

#[test]
fn every_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = saved_store(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    for len in 0..bytes.len() {
        std::fs::write(&path, &bytes[..len]).unwrap();
        match snapshot::load(&path) {
            Err(SnapshotError::Corrupt { .. }) => {}
            other => panic!("cut at {len} of {}: {other:?}", bytes.len()),
        }
    }
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = snapshot::load(&path).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "snapshot {}: corrupt: length prefix says",
            path.display()
        )),
        "{msg}"
    );
}

#[test]
fn garbage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.pb");
    std::fs::write(&path, b"hosts:\n  - id: 1\n").unwrap();
    assert!(matches!(
        snapshot::load(&path),
        Err(SnapshotError::Corrupt { .. })
    ));
    // A well-framed message full of nonsense fields is refused too.
    let mut junk = vec![0xff_u8; 40];
    junk.insert(0, 40);
    std::fs::write(&path, &junk).unwrap();
    assert!(matches!(
        snapshot::load(&path),
        Err(SnapshotError::Corrupt { .. })
    ));
}

#[test]
fn unknown_version_and_bad_fingerprints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.pb");
    let newer = v1::Snapshot {
        version: 2,
        synced_at_unix_ms: 1,
        hosts: vec![],
    };
    std::fs::write(&path, newer.encode_length_delimited_to_vec()).unwrap();
    let msg = snapshot::load(&path).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "snapshot {}: unknown format version 2 (this build reads version 1)",
            path.display()
        )
    );

    let bad = v1::Snapshot {
        version: 1,
        synced_at_unix_ms: 1,
        hosts: vec![v1::Host {
            id: 9,
            fingerprints: vec![vec![1, 2, 3]],
            ..Default::default()
        }],
    };
    std::fs::write(&path, bad.encode_length_delimited_to_vec()).unwrap();
    let msg = snapshot::load(&path).unwrap_err().to_string();
    assert!(
        msg.ends_with("corrupt: host 9: fingerprint has 3 bytes, not 20"),
        "{msg}"
    );
}

#[test]
fn missing_file_and_unsynced_store_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.pb");
    let msg = snapshot::load(&path).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("snapshot {}: cannot read:", path.display())),
        "{msg}"
    );
    let err = snapshot::save(&path, &PostureStore::new())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "snapshot {}: nothing to save: the posture was never synced",
            path.display()
        )
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn poller_writes_a_snapshot_after_each_good_sync_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.pb");
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let config = fake.config();
    let store = Arc::new(PostureStore::new());
    let poller = Poller::new(Arc::new(fake.client(&config)), Arc::clone(&store), &config)
        .with_snapshot(path.clone());
    poller.poll_once().await.unwrap();
    let loaded = snapshot::load(&path).unwrap();
    assert_eq!(loaded.hosts.len(), 10);
    assert_eq!(
        Some(loaded.synced_at),
        store.synced_at().map(|s| {
            // The file keeps milliseconds.
            let ms = s.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            UNIX_EPOCH + Duration::from_millis(ms)
        })
    );
    let before = std::fs::read(&path).unwrap();

    fake.remove_host(1);
    fake.set_fault("query_report", Fault::Status(503));
    poller.poll_once().await.unwrap_err();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a failed cycle writes nothing"
    );
    fake.clear_faults();
    poller.poll_once().await.unwrap();
    assert_eq!(snapshot::load(&path).unwrap().hosts.len(), 9);
    assert_eq!(poller.handle().status().snapshot_error, None);
}

/// Older builds wrote a `grants` field (4) that nothing read; such files
/// still load, the field skipped.
#[test]
fn a_snapshot_with_the_retired_grants_field_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _store) = saved_store(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let mut body = &bytes[..];
    let len = prost::encoding::decode_varint(&mut body).unwrap();
    assert_eq!(len as usize, body.len());
    // Field 4, length-delimited, holding {id: 7}.
    let mut message = body.to_vec();
    message.extend_from_slice(&[0x22, 0x02, 0x08, 0x07]);
    let mut old = Vec::new();
    prost::encoding::encode_varint(message.len() as u64, &mut old);
    old.extend_from_slice(&message);
    let loaded = snapshot::decode(&old).unwrap();
    assert_eq!(loaded, snapshot::decode(&bytes).unwrap());
    assert_eq!(loaded.hosts.len(), 3);
}
