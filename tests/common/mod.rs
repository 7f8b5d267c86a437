//! The one test toolkit, shared by the integration tests (each test binary
//! uses a subset, so unused items are expected; helpers are test code, so
//! they may unwrap):
//! - `tools`: external tools (Envoy, kubectl, kubernetes-validate) found or
//!   installed into `target/`, and Envoy's admin API (the benches use it too);
//! - `server`: fleet-authz on port 0, a connected client, [`server::Verdict`];
//! - `certs`: the one maker of test certificates (the benches use it too);
//! - `envoy`, `echo`: a real Envoy from the shipped `envoy.yaml`, and the app
//!   behind it;
//! - `fake_fleet`: a Fleet REST API on 127.0.0.1:0;
//! - `ops`: the `ops_*` tests' posture, policy and clients;
//! - `deploy`: readers and checks for the files under `deploy/`;
//! - `monitoring`: the alert rules, their promtool runs, the dashboard.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err
)]

pub mod browser;
pub mod certs;
pub mod cluster;
pub mod deploy;
pub mod echo;
pub mod envoy;
pub mod fake_fleet;
pub mod monitoring;
pub mod nats;
pub mod ops;
pub mod server;
pub mod tools;
