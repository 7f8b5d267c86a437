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
    Revoked(u64),
}

/// The grants in force, optionally persisted to a file.
#[derive(Debug)]
pub struct GrantStore {
    path: Option<PathBuf>,
    state: Mutex<State>,
    replica: std::sync::OnceLock<std::sync::Arc<dyn GrantReplica>>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    grants: Vec<Grant>,
}

impl GrantStore {
    /// An empty store kept in memory only.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            state: Mutex::new(State {
                next_id: 1,
                grants: Vec::new(),
            }),
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                next_id: 1,
                grants: Vec::new(),
            },
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

    /// Applies a grant or revocation made through another replica: kept
    /// (and persisted) like a local one, not sent back. `Ok(false)` when it
    /// changes nothing (already held, expired, or not held).
    pub fn apply_remote(&self, change: RemoteChange, now: SystemTime) -> Result<bool, GrantsError> {
        let mut state = self.lock();
        let mut next = State {
            next_id: state.next_id,
            grants: state
                .grants
                .iter()
                .filter(|g| g.is_active(now))
                .cloned()
                .collect(),
        };
        match change {
            RemoteChange::Granted(grant) => {
                if !grant.is_active(now) || next.grants.iter().any(|g| g.id == grant.id) {
                    return Ok(false);
                }
                next.next_id = next.next_id.max(grant.id + 1);
                next.grants.push(grant);
                next.grants.sort_by_key(|g| (g.granted_at, g.id));
            }
            RemoteChange::Revoked(id) => {
                let before = next.grants.len();
                next.grants.retain(|g| g.id != id);
                if next.grants.len() == before {
                    return Ok(false);
                }
            }
        }
        self.persist(&next)?;
        *state = next;
        Ok(true)
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
        let mut next = State {
            next_id: id + 1,
            grants: state.grants.clone(),
        };
        next.grants.retain(|g| g.is_kept(now));
        next.grants.push(grant.clone());
        self.persist(&next)?;
        *state = next;
        if let Some(replica) = self.replica.get() {
            replica.granted(&grant);
        }
        Ok(grant)
    }

    /// Revokes grant `id`; `Ok(false)` when there is no such grant.
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
        let next = State {
            next_id: state.next_id,
            grants: state
                .grants
                .iter()
                .filter(|g| g.is_kept(now))
                .filter_map(|g| g.revoked(id, now))
                .collect(),
        };
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
        self.lock()
            .grants
            .iter()
            .find(|g| g.bypass_route.is_none() && g.is_active(now) && g.covers(host, fingerprint))
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
}

fn encode(state: &State) -> Vec<u8> {
    let file = FileV1 {
        version: 1,
        next_id: state.next_id,
        grants: state
            .grants
            .iter()
            .map(|g| {
                let (host_id, sha1) = match g.subject {
                    GrantSubject::Host(id) => (Some(id.0), None),
                    GrantSubject::Certificate(fp) => (None, Some(fp)),
                };
                FileGrant {
                    id: g.id,
                    host_id,
                    sha1,
                    bypass_route: g.bypass_route.clone(),
                    reason: g.reason.clone(),
                    granted_by: g.granted_by.clone(),
                    granted_at_unix_ms: unix_ms(g.granted_at),
                    expires_at_unix_ms: unix_ms(g.expires_at),
                }
            })
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
        let subject = match (g.host_id, g.sha1) {
            (Some(id), None) => GrantSubject::Host(HostId(id)),
            (None, Some(fp)) => GrantSubject::Certificate(fp),
            _ => return Err(format!("grant {}: give exactly one of host_id, sha1", g.id)),
        };
        grants.push(Grant {
            id: g.id,
            subject,
            reason: g.reason,
            granted_by: g.granted_by,
            granted_at: from_unix_ms(g.granted_at_unix_ms),
            expires_at: from_unix_ms(g.expires_at_unix_ms),
            bypass_route: g.bypass_route,
        });
    }
    let max_id = grants.iter().map(|g| g.id).max().unwrap_or(0);
    Ok(State {
        next_id: file.next_id.max(max_id + 1),
        grants,
    })
}

#[cfg(test)]
mod tests;
