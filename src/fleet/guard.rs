//! The shrink guard (DESIGN.md §7): a cycle that sees far fewer hosts or
//! fingerprints than the last good posture is held back rather than
//! published.
//!
//! Two things a real Fleet does make a whole cycle look fine while half the
//! company vanishes from it: editing the certificate query's SQL deletes its
//! stored rows (every host then has no fingerprint until it reports again),
//! and a token whose user is moved to a team sees only that team's hosts.
//! Published, either would deny everyone left out, and with the snapshot
//! that survives a restart. Held back, the last good posture keeps serving,
//! ages like after any failed cycle, and an operator who knows the drop is
//! real publishes it with `POST /v1/sync {"accept_drop": true}`.

use super::FleetError;
use crate::posture::{HostPosture, PostureStore};

/// The sizes the guard compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub hosts: usize,
    /// Fingerprints summed over hosts.
    pub fingerprints: usize,
}

impl Counts {
    /// The sizes of a posture about to be published.
    pub fn of(hosts: &[HostPosture]) -> Self {
        Self {
            hosts: hosts.len(),
            fingerprints: hosts.iter().map(|h| h.fingerprints.len()).sum(),
        }
    }

    /// The sizes of the posture in `store`, or `None` before the first one.
    pub fn held(store: &PostureStore) -> Option<Self> {
        if !store.is_loaded() {
            return None;
        }
        let hosts = store.all_hosts();
        Some(Self {
            hosts: hosts.len(),
            fingerprints: hosts.iter().map(|h| h.fingerprints.len()).sum(),
        })
    }
}

/// `Err(Shrunk)` when `after` falls below `(1 - max_drop)` of `before` in
/// hosts or in fingerprints. Nothing held yet (`None`) passes.
pub(super) fn check(
    before: Option<Counts>,
    after: Counts,
    max_drop: f64,
) -> Result<(), FleetError> {
    let Some(before) = before else {
        return Ok(());
    };
    let floor = |n: usize| n as f64 * (1.0 - max_drop);
    let pairs = [
        ("hosts", before.hosts, after.hosts),
        ("fingerprints", before.fingerprints, after.fingerprints),
    ];
    match pairs.into_iter().find(|&(_, b, a)| (a as f64) < floor(b)) {
        None => Ok(()),
        Some((what, before, after)) => Err(FleetError::Shrunk {
            what,
            before,
            after,
            max_drop,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(hosts: usize, fingerprints: usize) -> Counts {
        Counts {
            hosts,
            fingerprints,
        }
    }

    #[test]
    fn a_drop_past_max_drop_is_held_back_and_one_within_it_passes() {
        let before = Some(counts(100, 300));
        assert_eq!(check(before, counts(50, 150), 0.5), Ok(()));
        assert_eq!(check(before, counts(100, 600), 0.5), Ok(()));
        assert_eq!(check(None, counts(0, 0), 0.5), Ok(()));
        let err = check(before, counts(49, 300), 0.5).unwrap_err();
        assert_eq!(
            err,
            FleetError::Shrunk {
                what: "hosts",
                before: 100,
                after: 49,
                max_drop: 0.5
            }
        );
        assert_eq!(
            err.to_string(),
            "fleet sync not published: hosts fell from 100 to 49, more than fleet.max_drop (0.5) \
             allows; if Fleet is right, POST /v1/sync {\"accept_drop\": true} publishes it"
        );
        let err = check(before, counts(100, 0), 0.5).unwrap_err();
        assert!(matches!(
            err,
            FleetError::Shrunk {
                what: "fingerprints",
                before: 300,
                after: 0,
                ..
            }
        ));
        // max_drop 0 refuses any drop; 1 refuses none.
        assert!(check(before, counts(99, 300), 0.0).is_err());
        assert_eq!(check(before, counts(0, 0), 1.0), Ok(()));
    }
}
