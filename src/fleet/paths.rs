//! Fleet's two path sets. Fleet 4.82 renamed `/teams` to `/fleets` and
//! `/queries` to `/reports`, keeping the old paths as deprecated aliases
//! that a later Fleet may drop; older Fleets know only the old ones.
//!
//! A cycle asks the new path first. On a 404 it asks the old one, and
//! whichever answered serves the rest of the cycle, so an old Fleet costs
//! one extra request per family per cycle and a new one none. The choice is
//! forgotten at the start of each cycle ([`FleetClient::begin_cycle`]): a
//! Fleet upgraded (or rolled back) between cycles is followed at once. A
//! 404 from both paths is the resource missing, not the path set; nothing
//! is remembered then.

use std::{
    future::Future,
    sync::atomic::{AtomicU8, Ordering},
};

use super::{FleetClient, FleetError};

/// A renamed family of paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// `/fleets/…`, formerly `/teams/…`.
    Teams,
    /// `/reports/…`, formerly `/queries/…`.
    Queries,
}

impl Family {
    fn renamed(self) -> &'static str {
        match self {
            Self::Teams => "fleets",
            Self::Queries => "reports",
        }
    }

    fn deprecated(self) -> &'static str {
        match self {
            Self::Teams => "teams",
            Self::Queries => "queries",
        }
    }
}

const UNKNOWN: u8 = 0;
const RENAMED: u8 = 1;
const DEPRECATED: u8 = 2;

/// The path set each family uses in this cycle.
#[derive(Debug, Default)]
pub(super) struct PathChoice {
    teams: AtomicU8,
    queries: AtomicU8,
}

impl PathChoice {
    fn slot(&self, family: Family) -> &AtomicU8 {
        match family {
            Family::Teams => &self.teams,
            Family::Queries => &self.queries,
        }
    }

    fn known(&self, family: Family) -> Option<&'static str> {
        match self.slot(family).load(Ordering::Relaxed) {
            RENAMED => Some(family.renamed()),
            DEPRECATED => Some(family.deprecated()),
            _ => None,
        }
    }

    fn remember(&self, family: Family, choice: u8) {
        self.slot(family).store(choice, Ordering::Relaxed);
    }

    fn forget(&self) {
        self.remember(Family::Teams, UNKNOWN);
        self.remember(Family::Queries, UNKNOWN);
    }
}

fn not_found<T>(result: &Result<T, FleetError>) -> bool {
    matches!(result, Err(FleetError::Status { status: 404, .. }))
}

impl FleetClient {
    /// Starts a sync cycle: the path sets are chosen afresh.
    pub fn begin_cycle(&self) {
        self.paths.forget();
    }

    /// Runs `call` with `family`'s path segment: the one this cycle settled
    /// on, else the new one and, on a 404, the old one (see the module docs).
    pub(super) async fn renamed<T, Fut>(
        &self,
        family: Family,
        mut call: impl FnMut(&'static str) -> Fut,
    ) -> Result<T, FleetError>
    where
        Fut: Future<Output = Result<T, FleetError>>,
    {
        if let Some(segment) = self.paths.known(family) {
            return call(segment).await;
        }
        let first = call(family.renamed()).await;
        if !not_found(&first) {
            self.paths.remember(family, RENAMED);
            return first;
        }
        let second = call(family.deprecated()).await;
        if !not_found(&second) {
            tracing::debug!(
                old = family.deprecated(),
                new = family.renamed(),
                "fleet answers only the old paths (Fleet before 4.82); using them this cycle"
            );
            self.paths.remember(family, DEPRECATED);
        }
        second
    }
}
