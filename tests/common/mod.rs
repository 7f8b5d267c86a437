//! Helpers shared by the integration tests. Each test binary uses a subset,
//! so unused items are expected.
#![allow(dead_code)]

pub mod fake_fleet;
