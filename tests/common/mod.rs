//! Helpers shared by the integration tests. Each test binary uses a subset,
//! so unused items are expected; helpers are test code, so they may unwrap.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err
)]

pub mod browser;
pub mod certs;
pub mod echo;
pub mod envoy;
pub mod fake_fleet;
pub mod ops;
