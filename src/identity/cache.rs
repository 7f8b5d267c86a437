//! A bounded cache from the raw certificate value Envoy sends (peer
//! certificate, XFCC, …) to its SHA-1, so a device's repeated requests skip
//! percent-decoding, PEM/base64 decoding and hashing.
//!
//! Entries are keyed by a fast hash of (source, value) but always compared in
//! full: a hash collision is a miss, never someone else's fingerprint. Only
//! successful decodes are cached, and a value is at most
//! [`identity::MAX_SOURCE_BYTES`] long (longer ones never decode). When the
//! entry budget or the byte budget is reached, the cache is cleared rather
//! than tracking recency: devices come back within seconds, so it refills at
//! once, and memory stays bounded (~1.5 KB per entry, and never more than
//! the byte budget of values however long each is).

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicUsize, Ordering},
};

use dashmap::DashMap;

use crate::{
    fingerprint::Fingerprint,
    identity::{self, Headers, IdentityConfig, IdentityError},
};

/// Default number of cached certificates.
pub const DEFAULT_CAPACITY: usize = 16_384;
/// Default budget for the cached values' bytes: 16,384 typical 2 KB values.
pub const DEFAULT_BYTE_BUDGET: usize = 32 * 1024 * 1024;

/// Raw certificate value → fingerprint.
#[derive(Debug)]
pub struct FingerprintCache {
    map: DashMap<u64, Entry>,
    hasher: foldhash::fast::RandomState,
    capacity: usize,
    byte_budget: usize,
    /// Bytes of the values held (approximate under concurrent inserts).
    bytes: AtomicUsize,
}

#[derive(Debug)]
struct Entry {
    source: usize,
    value: Box<[u8]>,
    fingerprint: Fingerprint,
}

impl Default for FingerprintCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl FingerprintCache {
    /// A cache holding at most `capacity` certificates (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self::with_budget(capacity, DEFAULT_BYTE_BUDGET)
    }

    /// A cache holding at most `capacity` certificates whose values come to
    /// at most `byte_budget` bytes.
    pub fn with_budget(capacity: usize, byte_budget: usize) -> Self {
        Self {
            map: DashMap::new(),
            hasher: foldhash::fast::RandomState::default(),
            capacity,
            byte_budget,
            bytes: AtomicUsize::new(0),
        }
    }

    /// Bytes of the cached values.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Certificates held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The fingerprint of the request's certificate, as `identity::identify`
    /// would compute it, from the cache when the same value was seen before.
    pub fn fingerprint(
        &self,
        cfg: &IdentityConfig,
        peer_certificate: &(impl AsRef<[u8]> + ?Sized),
        headers: &impl Headers,
    ) -> Result<Fingerprint, IdentityError> {
        let (source, value) = identity::select(cfg, peer_certificate.as_ref(), headers)
            .ok_or(IdentityError::Missing)?;
        // The index of the source in the config tells sources apart cheaply.
        let index = cfg
            .sources
            .iter()
            .position(|s| std::ptr::eq(s, source))
            .unwrap_or(usize::MAX);
        let key = self.hasher.hash_one((index, value));
        if let Some(hit) = self.map.get(&key)
            && hit.source == index
            && *hit.value == *value
        {
            return Ok(hit.fingerprint);
        }
        let fingerprint = Fingerprint::of_der(&identity::decode(cfg, source, value)?);
        if self.capacity > 0 && value.len() <= self.byte_budget {
            if self.map.len() >= self.capacity
                || self.bytes.load(Ordering::Relaxed) + value.len() > self.byte_budget
            {
                self.map.clear();
                self.bytes.store(0, Ordering::Relaxed);
            }
            self.bytes.fetch_add(value.len(), Ordering::Relaxed);
            self.map.insert(
                key,
                Entry {
                    source: index,
                    value: value.into(),
                    fingerprint,
                },
            );
        }
        Ok(fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::identity::Source;

    fn pem() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/demo/certs/device-compliant.pem"
        ))
        .unwrap()
    }

    #[test]
    fn hit_equals_fresh_decode_and_sources_are_kept_apart() {
        let cache = FingerprintCache::new(4);
        let cfg = IdentityConfig::default();
        let pem = pem();
        let fresh = identity::identify(&cfg, &pem, &HashMap::new())
            .unwrap()
            .sha1;
        assert_eq!(
            cache.fingerprint(&cfg, &pem, &HashMap::new()).unwrap(),
            fresh
        );
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.fingerprint(&cfg, &pem, &HashMap::new()).unwrap(),
            fresh
        );
        assert_eq!(cache.len(), 1);
        // The same text as an XFCC value is a different source: not a hit.
        let headers = HashMap::from([("x-forwarded-client-cert".to_owned(), pem.clone())]);
        assert!(cache.fingerprint(&cfg, "", &headers).is_err());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn errors_are_not_cached_and_capacity_bounds_memory() {
        let cache = FingerprintCache::new(2);
        let cfg = IdentityConfig {
            sources: vec![Source::PeerCertificate],
            ..IdentityConfig::default()
        };
        assert!(
            cache
                .fingerprint(&cfg, "not a certificate", &HashMap::new())
                .unwrap_err()
                .to_string()
                .contains("peer certificate")
        );
        assert!(
            cache
                .fingerprint(&cfg, "", &HashMap::new())
                .unwrap_err()
                .is_missing()
        );
        assert!(cache.is_empty());
        let pem = pem();
        let variants = [pem.clone(), pem.replace('\n', "\r\n"), format!("{pem}\n")];
        for v in &variants {
            cache.fingerprint(&cfg, v, &HashMap::new()).unwrap();
            assert!(cache.len() <= 2);
        }
    }

    #[test]
    fn the_byte_budget_bounds_memory_whatever_the_entry_count() {
        let pem = pem();
        let cfg = IdentityConfig {
            sources: vec![Source::PeerCertificate],
            ..IdentityConfig::default()
        };
        // Room for two values of this length, not three.
        let long = |pad: usize| format!("{pem}{}", " ".repeat(pad));
        let budget = 2 * long(10).len() + 5;
        let cache = FingerprintCache::with_budget(1_000, budget);
        for pad in 10..20 {
            cache
                .fingerprint(&cfg, &long(pad), &HashMap::new())
                .unwrap();
            assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
            assert!(cache.len() <= 2);
        }
        // A value over the whole budget is answered, never kept.
        let tiny = FingerprintCache::with_budget(1_000, 100);
        tiny.fingerprint(&cfg, &pem, &HashMap::new()).unwrap();
        assert_eq!((tiny.len(), tiny.bytes()), (0, 0));
    }
}
