//! The Fleet REST API as a posture source (DESIGN.md §2, §7).
//!
//! Fleet's JSON is parsed into the DTOs of [`model`] and mapped to the domain's
//! `HostPosture` at this edge; nothing outside `fleet/` (tests aside) uses the
//! DTOs. [`FleetClient`] does HTTP (token, timeouts, paging, retries, the
//! renamed path sets), [`Poller`] runs the sync cycle and publishes whole
//! postures to the store, [`Recheck`] refreshes one host on a would-deny.

pub mod adapter;
mod body;
mod client;
mod config;
mod cycle;
mod error;
mod guard;
mod map;
pub mod model;
mod paths;
mod poller;
mod recheck;
mod report;
mod request;
mod retry;
pub mod snapshot;
mod status;
mod stream;
mod thread;

pub use client::FleetClient;
pub use config::{FleetConfig, MembershipMode, RecheckConfig, Token};
pub use cycle::POPULATE_POLICIES_MAX;
pub use error::FleetError;
pub use map::{Catalogue, CatalogueEntry, Interner};
pub use poller::{Poller, PollerHandle};
pub use recheck::{Recheck, RecheckOutcome, SkipReason};
pub use report::{FingerprintRow, PageMeta, ReportFingerprints, Sha1Column};
pub use retry::{FleetStats, Observer, RetryPolicy};
pub use status::{SyncReport, SyncStatus};
pub use thread::spawn_low_priority;

/// For the fuzz targets (`crate::fuzzing`): how the client reads a body.
pub(crate) use request::parse_answer;
