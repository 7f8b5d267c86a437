//! fleet-authz: an Envoy ext_authz (gRPC, v3) service that allows or denies
//! each request by the FleetDM posture of the device whose client certificate
//! Envoy forwards.
//!
//! ```text
//! client --mTLS--> Envoy --Check--> authz --lookup--> posture::PostureStore
//!                                        \--evaluate--> policy (pure)
//! Fleet REST <--poll-- fleet::Poller --publish--> PostureStore
//! ```
//!
//! Domain modules (`fingerprint`, `identity`, `posture`, `policy`) are pure and
//! know nothing of Envoy, Fleet or HTTP; adapters (`authz`, `fleet`, `admin`)
//! convert at the edge.

pub mod admin;
pub mod atomic_file;
pub mod authz;
pub mod cli;
pub mod config;
pub mod decision;
pub mod duration;
pub mod fingerprint;
pub mod fleet;
pub mod identity;

pub mod policy;
pub mod posture;
pub mod proto;
pub mod server;
pub mod telemetry;
