//! Helpers shared by the integration tests; each test binary uses a subset.
#![allow(dead_code)]

pub mod certs;
pub mod echo;
pub mod envoy;
