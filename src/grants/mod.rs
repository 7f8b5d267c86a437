//! Break-glass grants: an admin-given, time-limited allow for one device
//! (by Fleet host id or by certificate SHA-1), audited and capped by the
//! policy's `break_glass.max_duration`. [`GrantStore`] implements
//! [`Grants`](crate::decision::Grants), so `Authorizer::decide` turns a deny for
//! that device into an allow with reason `break_glass`.
//!
//! Grants survive a restart: with `admin.grants_file` set, every change is
//! written atomically (temp file, fsync, rename, fsync of the directory) as a
//! small JSON document, and the file is read at start. Expired grants are
//! dropped when the file is next written; they never match a Check.
//! Revocations stay on file until their grant would have expired, so a
//! grant revoked here is never taken back from another replica's copy.
//! Self-service bypasses (DESIGN.md §9) are grants too, scoped to one route
//! ([`bypass`]); they stay on file for a day after they were given, expired
//! or revoked, because the daily limit and the page token's replay check
//! count them.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

mod bypass;

pub use bypass::{BypassLimits, BypassRefusal};

use crate::{
    atomic_file::write_atomically,
    decision::Grants,
    duration::{from_unix_ms, unix_ms},
    fingerprint::Fingerprint,
    posture::HostId,
};

/// Why the grants file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("{path}: cannot read break-glass grants: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid break-glass grants file: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: cannot write break-glass grants: {source}")]
    Write {
        path: PathBuf,
        source: crate::atomic_file::AtomicWriteError,
    },
}

/// Which device a grant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSubject {
    /// Every certificate of this Fleet host.
    Host(HostId),
    /// This certificate, known to Fleet or not.
    Certificate(Fingerprint),
}

impl GrantSubject {
    /// As stored (file, cluster): `(host_id, sha1)`, exactly one set.
    pub fn to_parts(self) -> (Option<u64>, Option<Fingerprint>) {
        match self {
            Self::Host(id) => (Some(id.0), None),
            Self::Certificate(fp) => (None, Some(fp)),
        }
    }

    /// From [`Self::to_parts`]; `None` unless exactly one is set.
    pub fn from_parts(host_id: Option<u64>, sha1: Option<Fingerprint>) -> Option<Self> {
        match (host_id, sha1) {
            (Some(id), None) => Some(Self::Host(HostId(id))),
            (None, Some(fp)) => Some(Self::Certificate(fp)),
            _ => None,
        }
    }
}

/// One emergency grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Unique for the life of the grants file; never reused.
    pub id: u64,
    /// The device covered.
    pub subject: GrantSubject,
    /// Why it was given (required; shown in the decision log).
    pub reason: String,
    /// Who asked (free text from the request, `admin` by default).
    pub granted_by: String,
    /// When it was given.
    pub granted_at: SystemTime,
    /// First instant it no longer applies.
    pub expires_at: SystemTime,
    /// `Some(route)`: a self-service bypass, for that route only
    /// ([`bypass`]); `None`: a break-glass grant, for every route.
    pub bypass_route: Option<String>,
}

impl Grant {
    /// True while the grant is in force at `now`.
    pub fn is_active(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    fn covers(&self, host: Option<HostId>, fingerprint: &Fingerprint) -> bool {
        match self.subject {
            GrantSubject::Host(id) => host == Some(id),
            GrantSubject::Certificate(fp) => fp == *fingerprint,
        }
    }
}

/// What an admin asks for; `duration` is capped by the caller's maximum.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    /// The device to cover.
    pub subject: GrantSubject,
    /// Why (required by the HTTP API).
    pub reason: String,
    /// Who asks.
    pub granted_by: String,
    /// How long, already capped.
    pub duration: Duration,
    /// `Some(route)` for a self-service bypass of that route.
    pub bypass_route: Option<String>,
}

/// Where a store sends what is granted and revoked through it, so other
/// replicas hold it too (cluster mode). Called with the store's lock held:
/// an implementation only queues, never blocks.
pub trait GrantReplica: Send + Sync {
    /// The id of a new grant: unique across replicas, at least `local_next`.
    fn next_id(&self, local_next: u64) -> u64;
    /// A grant given through this replica, now in force here.
    fn granted(&self, grant: &Grant);
    /// A grant revoked through this replica at `at`.
    fn revoked(&self, grant: &Grant, at: SystemTime);
}

impl std::fmt::Debug for dyn GrantReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantReplica")
    }
}

/// A grant or revocation made through another replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteChange {
    Granted(Grant),
    /// The grant as it was given (its expiry bounds the revocation's life).
    Revoked(Grant),
}

/// A grant revoked here or by another replica, remembered (and kept on
/// file) until the grant would have expired: "revoked wins" must survive a
/// restart, or a replica that revoked while NATS was down could take the
/// grant back from the cluster's copy when it returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The grant as it was given.
    pub grant: Grant,
    /// When it was revoked.
    pub at: SystemTime,
}

/// The grants in force, optionally persisted to a file.
#[derive(Debug)]
pub struct GrantStore {
    path: Option<PathBuf>,
    state: Mutex<State>,
    replica: std::sync::OnceLock<std::sync::Arc<dyn GrantReplica>>,
}

#[derive(Debug, Clone)]
struct State {
    next_id: u64,
    grants: Vec<Grant>,
    revoked: Vec<Revocation>,
    /// Grants held at start that no allow may use yet ([`GrantStore::hold_unconfirmed`]).
    /// Never on file.
    unconfirmed: Vec<u64>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            next_id: 1,
            grants: Vec::new(),
            revoked: Vec::new(),
            unconfirmed: Vec::new(),
        }
    }
}

impl State {
    /// A copy without what can no longer matter at `now`: expired grants
    /// (bypasses stay a day, [`Grant::is_kept`]) and the revocations of
    /// expired grants.
    fn pruned(&self, now: SystemTime) -> Self {
        Self {
            next_id: self.next_id,
            grants: self
                .grants
                .iter()
                .filter(|g| g.is_kept(now))
                .cloned()
                .collect(),
            revoked: self
                .revoked
                .iter()
                .filter(|r| r.grant.is_active(now))
                .cloned()
                .collect(),
            unconfirmed: self.unconfirmed.clone(),
        }
    }

    /// Revokes `grant` as it was given: a break-glass grant goes, a bypass
    /// stays, expired (the daily limit counts it), and the revocation is
    /// remembered while the grant would still be in force. Returns whether
    /// it was newly remembered.
    fn revoke(&mut self, grant: Grant, now: SystemTime) -> bool {
        let id = grant.id;
        self.grants = self
            .grants
            .iter()
            .filter_map(|g| g.revoked(id, now))
            .collect();
        self.unconfirmed.retain(|u| *u != id);
        let remember = grant.is_active(now) && !self.is_revoked(id);
        if remember {
            self.revoked.push(Revocation { grant, at: now });
        }
        remember
    }

    fn is_revoked(&self, id: u64) -> bool {
        self.revoked.iter().any(|r| r.grant.id == id)
    }

    /// True when an allow may rest on `grant` now.
    fn honours(&self, grant: &Grant, now: SystemTime) -> bool {
        grant.is_active(now) && !self.unconfirmed.contains(&grant.id)
    }
}

impl GrantStore {
    /// An empty store kept in memory only.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            state: Mutex::new(State::default()),
            replica: std::sync::OnceLock::new(),
        }
    }

    /// A store persisted at `path`, loaded from it when it exists.
    pub fn open(path: &Path) -> Result<Self, GrantsError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => decode(&bytes).map_err(|message| GrantsError::Invalid {
                path: path.to_owned(),
                message,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(GrantsError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(Self {
            path: Some(path.to_owned()),
            state: Mutex::new(state),
            replica: std::sync::OnceLock::new(),
        })
    }

    /// Sends every later grant and revocation made here to `replica`
    /// (cluster mode). Set once; a second call is ignored.
    pub fn set_replica(&self, replica: std::sync::Arc<dyn GrantReplica>) {
        let _ = self.replica.set(replica);
    }

    /// Stops every grant held now from allowing anything until
    /// [`Self::confirm_held`]: a replica starting in cluster mode on its own
    /// file may hold a grant the others revoked while it was down, and must
    /// not honour it before it has read the cluster's copy. Grants given or
    /// applied later are not affected. Returns how many are held back.
    pub fn hold_unconfirmed(&self) -> usize {
        let mut state = self.lock();
        state.unconfirmed = state.grants.iter().map(|g| g.id).collect();
        state.unconfirmed.len()
    }

    /// Lets the grants held back by [`Self::hold_unconfirmed`] allow again
    /// (those the cluster revoked are gone by then). Returns how many.
    pub fn confirm_held(&self) -> usize {
        std::mem::take(&mut self.lock().unconfirmed).len()
    }

    /// Applies a grant or revocation made through another replica: kept
    /// (and persisted) like a local one, not sent back. `Ok(false)` when it
    /// changes nothing (already held, expired, revoked, or not held).
    pub fn apply_remote(&self, change: RemoteChange, now: SystemTime) -> Result<bool, GrantsError> {
        let mut state = self.lock();
        let mut next = state.pruned(now);
        let (applied, dirty) = match change {
            RemoteChange::Granted(grant) => {
                // Held already: the cluster's copy confirms it.
                next.unconfirmed.retain(|id| *id != grant.id);
                // A bypass given within the day is kept though expired: the
                // daily limit counts it.
                let new = grant.is_kept(now)
                    && !next.is_revoked(grant.id)
                    && !next.grants.iter().any(|g| g.id == grant.id);
                if new {
                    next.next_id = next.next_id.max(grant.id + 1);
                    next.grants.push(grant);
                    next.grants.sort_by_key(|g| (g.granted_at, g.id));
                }
                (new, new)
            }
            RemoteChange::Revoked(grant) => {
                let id = grant.id;
                let held = next.grants.iter().find(|g| g.id == id).cloned();
                let remember = next.revoke(grant, now);
                let was_active = held.as_ref().is_some_and(|g| g.is_active(now));
                let changed =
                    held.is_some_and(|g| Some(&g) != next.grants.iter().find(|n| n.id == id));
                (was_active, remember || changed)
            }
        };
        if dirty {
            self.persist(&next)?;
            *state = next;
        } else {
            state.unconfirmed = next.unconfirmed;
        }
        Ok(applied)
    }

    /// Gives a grant starting at `now`; persisted before it is returned.
    pub fn grant(&self, request: GrantRequest, now: SystemTime) -> Result<Grant, GrantsError> {
        self.grant_locked(&mut self.lock(), request, now)
    }

    /// [`Self::grant`] with the lock already held by the caller.
    fn grant_locked(
        &self,
        state: &mut State,
        request: GrantRequest,
        now: SystemTime,
    ) -> Result<Grant, GrantsError> {
        let id = match self.replica.get() {
            Some(replica) => replica.next_id(state.next_id),
            None => state.next_id,
        };
        let grant = Grant {
            id,
            subject: request.subject,
            reason: request.reason,
            granted_by: request.granted_by,
            granted_at: now,
            expires_at: now + request.duration,
            bypass_route: request.bypass_route,
        };
        let mut next = state.pruned(now);
        next.next_id = id + 1;
        next.grants.push(grant.clone());
        self.persist(&next)?;
        *state = next;
        if let Some(replica) = self.replica.get() {
            replica.granted(&grant);
        }
        Ok(grant)
    }

    /// Revokes grant `id`; `Ok(false)` when there is no such grant. The
    /// revocation stays on file until the grant would have expired.
    pub fn revoke(&self, id: u64, now: SystemTime) -> Result<bool, GrantsError> {
        let mut state = self.lock();
        let Some(revoked) = state
            .grants
            .iter()
            .find(|g| g.id == id && g.is_active(now))
            .cloned()
        else {
            return Ok(false);
        };
        let mut next = state.pruned(now);
        next.revoke(revoked.clone(), now);
        self.persist(&next)?;
        *state = next;
        if let Some(replica) = self.replica.get() {
            replica.revoked(&revoked, now);
        }
        Ok(true)
    }

    /// The grants in force at `now`, oldest first.
    pub fn active(&self, now: SystemTime) -> Vec<Grant> {
        self.lock()
            .grants
            .iter()
            .filter(|g| g.is_active(now))
            .cloned()
            .collect()
    }

    /// The revocations of grants that would still be in force at `now`.
    pub fn revocations(&self, now: SystemTime) -> Vec<Revocation> {
        self.lock().pruned(now).revoked
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, state: &State) -> Result<(), GrantsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_atomically(path, &encode(state)).map_err(|source| GrantsError::Write {
            path: path.clone(),
            source,
        })
    }
}

impl Grants for GrantStore {
    fn find(
        &self,
        host: Option<HostId>,
        fingerprint: &Fingerprint,
        now: SystemTime,
    ) -> Option<(u64, String)> {
        let state = self.lock();
        state
            .grants
            .iter()
            .find(|g| {
                g.bypass_route.is_none() && state.honours(g, now) && g.covers(host, fingerprint)
            })
            .map(|g| (g.id, g.reason.clone()))
    }

    fn find_bypass(&self, host: HostId, route: &str, now: SystemTime) -> Option<(u64, SystemTime)> {
        self.find_bypass_grant(host, route, now)
    }
}

// === file format ===

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u32,
    next_id: u64,
    grants: Vec<FileGrant>,
    /// Revocations of grants not yet expired, each with `revoked_at_unix_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    revoked: Vec<FileGrant>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGrant {
    id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha1: Option<Fingerprint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bypass_route: Option<String>,
    reason: String,
    granted_by: String,
    granted_at_unix_ms: i64,
    expires_at_unix_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_at_unix_ms: Option<i64>,
}

impl FileGrant {
    fn new(g: &Grant, revoked_at: Option<SystemTime>) -> Self {
        let (host_id, sha1) = g.subject.to_parts();
        Self {
            id: g.id,
            host_id,
            sha1,
            bypass_route: g.bypass_route.clone(),
            reason: g.reason.clone(),
            granted_by: g.granted_by.clone(),
            granted_at_unix_ms: unix_ms(g.granted_at),
            expires_at_unix_ms: unix_ms(g.expires_at),
            revoked_at_unix_ms: revoked_at.map(unix_ms),
        }
    }

    fn into_grant(self) -> Result<Grant, String> {
        let Some(subject) = GrantSubject::from_parts(self.host_id, self.sha1) else {
            return Err(format!(
                "grant {}: give exactly one of host_id, sha1",
                self.id
            ));
        };
        Ok(Grant {
            id: self.id,
            subject,
            reason: self.reason,
            granted_by: self.granted_by,
            granted_at: from_unix_ms(self.granted_at_unix_ms),
            expires_at: from_unix_ms(self.expires_at_unix_ms),
            bypass_route: self.bypass_route,
        })
    }
}

fn encode(state: &State) -> Vec<u8> {
    let file = FileV1 {
        version: 1,
        next_id: state.next_id,
        grants: state
            .grants
            .iter()
            .map(|g| FileGrant::new(g, None))
            .collect(),
        revoked: state
            .revoked
            .iter()
            .map(|r| FileGrant::new(&r.grant, Some(r.at)))
            .collect(),
    };
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec_pretty(&file).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<State, String> {
    let file: FileV1 = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.version != 1 {
        return Err(format!(
            "version {} is not known (expected 1)",
            file.version
        ));
    }
    let mut grants = Vec::with_capacity(file.grants.len());
    for g in file.grants {
        if g.revoked_at_unix_ms.is_some() {
            return Err(format!(
                "grant {}: revoked_at_unix_ms belongs in \"revoked\"",
                g.id
            ));
        }
        grants.push(g.into_grant()?);
    }
    let mut revoked = Vec::with_capacity(file.revoked.len());
    for g in file.revoked {
        let Some(at) = g.revoked_at_unix_ms else {
            return Err(format!(
                "revoked grant {}: revoked_at_unix_ms is missing",
                g.id
            ));
        };
        revoked.push(Revocation {
            grant: g.into_grant()?,
            at: from_unix_ms(at),
        });
    }
    // A grant both held and revoked (a file edited by hand): revoked wins.
    grants.retain(|g| !revoked.iter().any(|r| r.grant.id == g.id));
    let max_id = grants
        .iter()
        .chain(revoked.iter().map(|r| &r.grant))
        .map(|g| g.id)
        .max()
        .unwrap_or(0);
    Ok(State {
        next_id: file.next_id.max(max_id + 1),
        grants,
        revoked,
        unconfirmed: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
