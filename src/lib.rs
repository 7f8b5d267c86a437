//! fleet-authz: an Envoy ext_authz (gRPC, v3) service that allows or denies
//! each request by the FleetDM posture of the device whose client certificate
//! Envoy forwards.
//!
//! ```text
//! client --mTLS--> Envoy --Check--> authz --> decision::Authorizer --lookup--> posture::PostureStore
//!                                                      \--evaluate--> policy (pure)
//! Fleet REST <--poll-- fleet::Poller --publish--> PostureStore
//! ```
//!
//! The layers, each importing only those below it:
//! - the pure domain: [`fingerprint`], [`identity`], [`posture`], [`policy`]
//!   (no Envoy, Fleet or HTTP types; no I/O but the posture file reader);
//! - the core: [`decision`], the [`Authorizer`](decision::Authorizer) and the
//!   ports ([`Refresh`](decision::Refresh), [`Grants`](decision::Grants),
//!   [`SyncTrigger`](decision::SyncTrigger)) that adapters implement;
//! - adapters: [`authz`] (Envoy), [`fleet`] (Fleet, the snapshot), [`admin`]
//!   (admin API, probes), [`bypass`] (the self-service bypass a deny page
//!   offers), [`cluster`] (NATS JetStream: one Fleet sync, shared grants and
//!   audit for many replicas), over [`grants`] (break-glass and bypass
//!   grants, behind the `Grants` port), with [`telemetry`] for logs and
//!   metrics;
//! - wiring: [`server`] starts everything; [`cli`] is the command line.

pub mod admin;
pub mod atomic_file;
pub mod authz;
pub mod bypass;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod decision;
pub mod duration;
pub mod fingerprint;
pub mod fleet;
pub mod grants;
pub mod html;
pub mod identity;
pub mod input;

#[doc(hidden)]
pub mod fuzzing;
pub mod policy;
pub mod posture;
pub mod proto;
pub mod server;
pub mod telemetry;
