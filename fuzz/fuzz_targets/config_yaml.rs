//! The configuration file: `Config::from_yaml` behind the bounded read.
//!
//! Must hold: it returns `Err`, never panics; a config that loads has no
//! YAML alias, exactly one posture source, and its derived values
//! (staleness) can be read.

#![no_main]

mod common;

use std::path::Path;

use common::selector_and_text;
use fleet_authz::{config::Config, input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((_, text)) = selector_and_text(data, input::MAX_POLICY_BYTES) else {
        return;
    };
    let Ok(config) = Config::from_yaml(&text, Path::new("fuzz.yaml")) else {
        return;
    };
    assert_eq!(input::refuse_aliases(&text), Ok(()), "loaded with an alias");
    assert!(
        config.fleet.is_some() != config.posture_file.is_some(),
        "exactly one posture source"
    );
    let _ = config.max_staleness();
});
