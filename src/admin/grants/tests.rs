//! Unit tests of the grant store and its file.

use std::time::UNIX_EPOCH;

use super::*;

fn fp(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; 20])
}

fn request(subject: GrantSubject, secs: u64) -> GrantRequest {
    GrantRequest {
        subject,
        reason: "incident 42".to_owned(),
        granted_by: "admin".to_owned(),
        duration: Duration::from_secs(secs),
        bypass_route: None,
    }
}

#[test]
fn a_grant_covers_its_device_until_it_expires() {
    let store = GrantStore::in_memory();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let g = store
        .grant(request(GrantSubject::Host(HostId(7)), 60), t0)
        .unwrap();
    assert_eq!(g.id, 1);
    assert_eq!(
        store.find(Some(HostId(7)), &fp(1), t0 + Duration::from_secs(59)),
        Some((1, "incident 42".to_owned()))
    );
    assert_eq!(store.find(Some(HostId(8)), &fp(1), t0), None);
    assert_eq!(
        store.find(Some(HostId(7)), &fp(1), t0 + Duration::from_secs(60)),
        None
    );
    assert!(store.active(t0 + Duration::from_secs(61)).is_empty());
}

#[test]
fn certificate_grants_match_unknown_devices_and_revoke_removes_them() {
    let store = GrantStore::in_memory();
    let t0 = UNIX_EPOCH + Duration::from_secs(5_000);
    let g = store
        .grant(request(GrantSubject::Certificate(fp(3)), 600), t0)
        .unwrap();
    assert_eq!(store.find(None, &fp(3), t0).map(|(id, _)| id), Some(g.id));
    assert!(store.revoke(g.id, t0).unwrap());
    assert!(!store.revoke(g.id, t0).unwrap());
    assert_eq!(store.find(None, &fp(3), t0), None);
}

#[test]
fn grants_round_trip_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grants.json");
    let now = SystemTime::now();
    {
        let store = GrantStore::open(&path).unwrap();
        store
            .grant(request(GrantSubject::Host(HostId(9)), 3600), now)
            .unwrap();
        store
            .grant(request(GrantSubject::Certificate(fp(4)), 3600), now)
            .unwrap();
    }
    let reopened = GrantStore::open(&path).unwrap();
    let active = reopened.active(now);
    assert_eq!(active.len(), 2);
    assert_eq!(active[0].subject, GrantSubject::Host(HostId(9)));
    assert_eq!(active[1].subject, GrantSubject::Certificate(fp(4)));
    let next = reopened
        .grant(request(GrantSubject::Host(HostId(1)), 1), now)
        .unwrap();
    assert_eq!(next.id, 3);
}

#[test]
fn a_corrupt_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grants.json");
    std::fs::write(&path, b"{not json").unwrap();
    let err = GrantStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("grants.json"), "{err}");
    assert!(err.contains("invalid break-glass grants file"), "{err}");
}
