//! Criterion benchmarks of the decision path with 100,000 hosts in the store
//! (3 fingerprints and 20 policy results each, 5% failing a critical policy):
//! - `check/xfcc_allow` and `check/xfcc_deny`: the whole in-process Check
//!   handler (XFCC parse, URL/PEM/base64 decode, SHA-1, lookup, route,
//!   evaluate, build the CheckResponse, record metrics);
//! - `identify/xfcc`, `lookup`, `evaluate`: the parts on their own.
//!
//! Run: `cargo bench --bench check`. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::{
    collections::HashMap,
    hint::black_box,
    sync::Arc,
    time::{Duration, SystemTime},
};

#[path = "support/synthetic.rs"]
mod synthetic;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use fleet_authz::{
    authz::request::{build_check_request, request_headers, url_encode_pem},
    decision::Authorizer,
    fingerprint::Fingerprint,
    identity::{IdentityConfig, identify},
    policy::{RequestFacts, Subject, evaluate, parse_policy},
    posture::{HostId, HostPosture, PolicyMeta, PostureStore, Team},
    telemetry::metrics::Metrics,
};

const HOSTS: u64 = 100_000;

fn certificate() -> (String, Fingerprint) {
    // A ~1 KB RSA-2048-sized certificate is what devices present; rcgen's
    // default ECDSA one is smaller, so use the demo's RSA certificate.
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/demo/certs/device-compliant.pem"
    ))
    .unwrap();
    let der = fleet_authz::identity::url_pem_to_der(&pem).unwrap();
    (pem, Fingerprint::of_der(&der))
}

fn fill_store(real: Fingerprint, failing: bool) -> Arc<PostureStore> {
    let metas: Vec<Arc<PolicyMeta>> = (0..20u64)
        .map(|i| PolicyMeta::new(i + 1, format!("policy {i}"), i == 0, None))
        .collect();
    let team = Team {
        id: Some(1),
        name: Arc::from("Workstations"),
    };
    let now = SystemTime::now();
    let hosts: Vec<HostPosture> = (1..=HOSTS)
        .map(|id| {
            let fail = (id % 20 == 0) || (id == 1 && failing);
            let mut h = synthetic::host(id, &metas, &team, now, fail);
            if id == 1 {
                h.fingerprints[0] = real;
            }
            h
        })
        .collect();
    let store = Arc::new(PostureStore::new());
    store.replace_all(hosts, now);
    store
}

fn authorizer(store: Arc<PostureStore>) -> Authorizer {
    Authorizer {
        store,
        policy: Arc::new(ArcSwap::from_pointee(
            parse_policy(synthetic::POLICY, "bench.yaml".as_ref()).unwrap(),
        )),
        identity: IdentityConfig::default(),
        remediation_url: Some("https://fleet.example.com/device/{host_id}".into()),
        max_staleness: Some(Duration::from_secs(900)),
        metrics: Arc::new(Metrics::new()),
        refresh: None,
        grants: None,
        fingerprints: Default::default(),
    }
}

fn benches(c: &mut Criterion) {
    let (pem, fp) = certificate();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // XFCC source, as from an Istio gateway, plus the usual request headers.
    let mut req = build_check_request(&pem, &[], "app.example.com", "/reports/q3", true);
    let headers = request_headers(&mut req);
    for (k, v) in [
        ("user-agent", "Mozilla/5.0"),
        ("accept", "*/*"),
        ("x-request-id", "4f1c2b7e-1d2a-4b8e-9c1e-2b7d9e0a1f3c"),
    ] {
        headers.insert(k.into(), v.into());
    }
    let allow = authorizer(fill_store(fp, false));
    let deny = authorizer(fill_store(fp, true));
    let mut group = c.benchmark_group("check");
    group.bench_function("xfcc_allow", |b| {
        b.iter(|| rt.block_on(allow.check(black_box(&req))))
    });
    group.bench_function("xfcc_deny", |b| {
        b.iter(|| rt.block_on(deny.check(black_box(&req))))
    });
    group.finish();

    let xfcc = HashMap::from([(
        "x-forwarded-client-cert".to_owned(),
        format!("Cert=\"{}\"", url_encode_pem(&pem)),
    )]);
    let cfg = IdentityConfig::default();
    c.bench_function("identify/xfcc", |b| {
        b.iter(|| identify(&cfg, "", black_box(&xfcc)).unwrap().sha1)
    });
    c.bench_function("lookup", |b| {
        b.iter(|| allow.store.lookup(black_box(&fp)).unwrap().id)
    });
    let host = allow.store.host(HostId(1)).unwrap();
    let policy = allow.policy.load();
    let context = HashMap::new();
    let facts = RequestFacts {
        context: &context,
        authority: "app.example.com",
        path: "/",
        posture_age: Some(Duration::from_secs(30)),
        max_staleness: Some(Duration::from_secs(900)),
    };
    let now = SystemTime::now();
    c.bench_function("evaluate", |b| {
        b.iter(|| {
            evaluate(
                policy.route(&facts),
                &facts,
                Subject::Host(black_box(&host)),
                now,
            )
            .allowed
        })
    });
}

criterion_group!(check, benches);
criterion_main!(check);
