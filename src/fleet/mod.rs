//! The Fleet REST API as a posture source (DESIGN.md §2).
//!
//! Fleet's JSON is parsed into the DTOs of [`model`] and mapped to the domain's
//! `HostPosture` at this edge; nothing outside `fleet/` (tests aside) uses the
//! DTOs. [`FleetClient`] does HTTP (token, timeouts, paging, retries),
//! [`Poller`] runs the sync cycle and publishes whole postures to the store,
//! [`Recheck`] refreshes one host on a would-deny.

pub mod adapter;
mod client;
mod config;
mod error;
mod map;
pub mod model;
mod poller;
mod recheck;
mod retry;
pub mod snapshot;
mod stream;
mod thread;

pub use client::FleetClient;
pub use config::{FleetConfig, MembershipMode, RecheckConfig, Token};
pub use error::FleetError;
pub use map::{Catalogue, CatalogueEntry, Interner};
pub use poller::{POPULATE_POLICIES_MAX, Poller, PollerHandle, SyncReport, SyncStatus};
pub use recheck::{Recheck, RecheckOutcome, SkipReason};
pub use retry::{FleetStats, Observer, RetryPolicy};
pub use stream::{FingerprintRow, ReportFingerprints};
pub use thread::spawn_low_priority;
