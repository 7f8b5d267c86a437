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
fn a_revocation_stays_on_file_until_expiry_so_the_grant_cannot_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grants.json");
    let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let given = {
        let store = GrantStore::open(&path).unwrap();
        let g = store
            .grant(request(GrantSubject::Host(HostId(9)), 600), t0)
            .unwrap();
        assert!(store.revoke(g.id, t0 + Duration::from_secs(10)).unwrap());
        g
    };
    // After a restart, the cluster's stale copy of the grant is refused.
    let reopened = GrantStore::open(&path).unwrap();
    let later = t0 + Duration::from_secs(20);
    let revocations = reopened.revocations(later);
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].grant, given);
    assert_eq!(revocations[0].at, t0 + Duration::from_secs(10));
    assert!(
        !reopened
            .apply_remote(RemoteChange::Granted(given.clone()), later)
            .unwrap()
    );
    assert_eq!(reopened.find(Some(HostId(9)), &fp(1), later), None);
    assert!(reopened.active(later).is_empty());
    // Once the grant would have expired the revocation goes, on the next write.
    let after = t0 + Duration::from_secs(601);
    assert!(reopened.revocations(after).is_empty());
    reopened
        .grant(request(GrantSubject::Host(HostId(1)), 60), after)
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("revoked"), "{text}");
}

#[test]
fn grants_held_back_allow_nothing_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grants.json");
    let now = SystemTime::now();
    let (host, cert) = {
        let store = GrantStore::open(&path).unwrap();
        (
            store
                .grant(request(GrantSubject::Host(HostId(9)), 3600), now)
                .unwrap(),
            store
                .grant(request(GrantSubject::Certificate(fp(4)), 3600), now)
                .unwrap(),
        )
    };
    let store = GrantStore::open(&path).unwrap();
    assert_eq!(store.hold_unconfirmed(), 2);
    assert_eq!(store.find(Some(HostId(9)), &fp(1), now), None);
    assert_eq!(store.find(None, &fp(4), now), None);
    assert_eq!(store.active(now).len(), 2, "held back, not dropped");
    // The cluster's copy of one confirms that one only.
    assert!(
        !store
            .apply_remote(RemoteChange::Granted(host.clone()), now)
            .unwrap()
    );
    assert_eq!(
        store.find(Some(HostId(9)), &fp(1), now).map(|(id, _)| id),
        Some(host.id)
    );
    assert_eq!(store.find(None, &fp(4), now), None);
    // A grant given after the hold is honoured at once.
    let new = store
        .grant(request(GrantSubject::Certificate(fp(5)), 60), now)
        .unwrap();
    assert_eq!(
        store.find(None, &fp(5), now).map(|(id, _)| id),
        Some(new.id)
    );
    assert_eq!(store.confirm_held(), 1);
    assert_eq!(
        store.find(None, &fp(4), now).map(|(id, _)| id),
        Some(cert.id)
    );
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

fn bypass(host: u64, secs: u64) -> GrantRequest {
    GrantRequest {
        subject: GrantSubject::Host(HostId(host)),
        reason: "demo".to_owned(),
        granted_by: "self-service".to_owned(),
        duration: Duration::from_secs(secs),
        bypass_route: Some("default".to_owned()),
    }
}

#[test]
fn bypasses_hold_their_route_their_daily_limit_and_spend_their_token() {
    let store = GrantStore::in_memory();
    let t0 = UNIX_EPOCH + Duration::from_secs(10_000_000);
    let limits = |issued| BypassLimits {
        max_per_day: 2,
        token_issued_at: issued,
    };
    let first = store
        .grant_bypass(HostId(3), bypass(3, 60), limits(t0), t0)
        .unwrap()
        .unwrap();
    // Only its route, and never as break-glass.
    assert_eq!(
        store.find_bypass_grant(HostId(3), "default", t0),
        Some((first.id, t0 + Duration::from_secs(60)))
    );
    assert_eq!(store.find_bypass_grant(HostId(3), "payroll", t0), None);
    assert_eq!(store.find(Some(HostId(3)), &fp(1), t0), None);
    // The same page's token again: spent.
    let again = store.grant_bypass(
        HostId(3),
        bypass(3, 60),
        limits(t0),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(again.unwrap(), Err(BypassRefusal::TokenSpent));
    // Revoked, it stops at once but still counts.
    let t1 = t0 + Duration::from_secs(10);
    assert!(store.revoke(first.id, t1).unwrap());
    assert_eq!(store.find_bypass_grant(HostId(3), "default", t1), None);
    assert_eq!(store.bypasses_in_day(HostId(3), "default", t1), 1);
    store
        .grant_bypass(HostId(3), bypass(3, 60), limits(t1), t1)
        .unwrap()
        .unwrap();
    let t2 = t1 + Duration::from_secs(120);
    let third = store.grant_bypass(HostId(3), bypass(3, 60), limits(t2), t2);
    assert_eq!(third.unwrap(), Err(BypassRefusal::LimitReached(2)));
    // Another device has its own budget; a day later the first has too.
    assert!(
        store
            .grant_bypass(HostId(4), bypass(4, 60), limits(t2), t2)
            .unwrap()
            .is_ok()
    );
    let t3 = t0 + Duration::from_secs(24 * 3600 + 11);
    assert_eq!(store.bypasses_in_day(HostId(3), "default", t3), 0);
    assert!(
        store
            .grant_bypass(HostId(3), bypass(3, 60), limits(t3), t3)
            .unwrap()
            .is_ok()
    );
}

#[test]
fn bypasses_from_other_replicas_count_toward_the_daily_limit_expired_or_revoked() {
    let store = GrantStore::in_memory();
    let t0 = UNIX_EPOCH + Duration::from_secs(10_000_000);
    let remote = |id: u64, at: SystemTime| Grant {
        id,
        subject: GrantSubject::Host(HostId(3)),
        reason: "demo".to_owned(),
        granted_by: "self-service".to_owned(),
        granted_at: at,
        expires_at: at + Duration::from_secs(60),
        bypass_route: Some("default".to_owned()),
    };
    let t1 = t0 + Duration::from_secs(600);
    // One given elsewhere and already over (read back after a restart),
    // one given elsewhere and revoked there.
    assert!(
        store
            .apply_remote(RemoteChange::Granted(remote(1, t0)), t1)
            .unwrap()
    );
    let live = remote(2, t1);
    assert!(
        store
            .apply_remote(RemoteChange::Granted(live.clone()), t1)
            .unwrap()
    );
    assert_eq!(
        store.find_bypass_grant(HostId(3), "default", t1),
        Some((2, live.expires_at))
    );
    assert!(
        store
            .apply_remote(RemoteChange::Revoked(live.clone()), t1)
            .unwrap()
    );
    assert_eq!(store.find_bypass_grant(HostId(3), "default", t1), None);
    assert_eq!(store.bypasses_in_day(HostId(3), "default", t1), 2);
    let limits = BypassLimits {
        max_per_day: 2,
        token_issued_at: t1 + Duration::from_secs(1),
    };
    let refused = store.grant_bypass(
        HostId(3),
        bypass(3, 60),
        limits,
        t1 + Duration::from_secs(1),
    );
    assert_eq!(refused.unwrap(), Err(BypassRefusal::LimitReached(2)));
    // A revoked one never comes back from a replay.
    assert!(!store.apply_remote(RemoteChange::Granted(live), t1).unwrap());
    assert_eq!(store.find_bypass_grant(HostId(3), "default", t1), None);
}
