//! Memory and lookup latency at scale (issue 6): RSS of a `PostureStore`
//! holding N hosts, each with 3 fingerprints, 20 policy results (one shared
//! catalogue entry per policy) and 5 CVEs (interned), built the way the Fleet
//! mapper builds them; and the latency of `lookup` + `evaluate` at each size.
//!
//! Run: `cargo bench --bench memory` (sizes 10k, 100k, 1M, each measured in a
//! fresh child process so one size's heap does not inflate the next). A single
//! size: `cargo bench --bench memory -- 100000`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark")]

use std::{
    collections::HashMap,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use fleet_authz::{
    fingerprint::Fingerprint,
    policy::{RequestFacts, Subject, evaluate, parse_policy},
    posture::{HostPosture, PolicyMeta, PolicyResponse, PolicyResult, PostureStore, Team},
};

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fp(id: u64, k: u64) -> Fingerprint {
    Fingerprint::of_der(format!("host-{id}-cert-{k}").as_bytes())
}

fn build(n: u64) -> Arc<PostureStore> {
    let now = SystemTime::now();
    let metas: Vec<Arc<PolicyMeta>> = (1..=20u64)
        .map(|i| {
            PolicyMeta::new(
                i,
                format!("Policy {i}: a realistic policy name"),
                i % 5 == 0,
                Some(format!("Resolution for policy {i}: open Settings and turn it on.").into()),
            )
        })
        .collect();
    let cves: Vec<Arc<str>> = (0..50)
        .map(|i| Arc::from(format!("CVE-2024-{:04}", 1000 + i)))
        .collect();
    let teams: Vec<Team> = (1..=10)
        .map(|t| Team {
            id: Some(t),
            name: Arc::from(format!("Team {t}")),
        })
        .collect();
    let platforms: Vec<Arc<str>> = ["darwin", "windows", "ubuntu"]
        .into_iter()
        .map(Arc::from)
        .collect();
    let versions: Vec<Arc<str>> = ["macOS 15.1.1", "Windows 11 Pro 23H2", "Ubuntu 22.04.4 LTS"]
        .into_iter()
        .map(Arc::from)
        .collect();
    let hosts: Vec<HostPosture> = (1..=n)
        .map(|id| {
            let mut h = HostPosture::new(id, format!("host-{id:07}.corp.example"));
            h.uuid = format!("{id:08x}-0000-4000-8000-{id:012x}");
            h.team = Some(teams[(id % 10) as usize].clone());
            h.platform = Arc::clone(&platforms[(id % 3) as usize]);
            h.os_version = Arc::clone(&versions[(id % 3) as usize]);
            h.last_seen = Some(now - Duration::from_secs(id % 3600));
            let failing = id % 20 == 0;
            h.policies = metas
                .iter()
                .map(|m| {
                    PolicyResult::new(
                        Arc::clone(m),
                        if failing && m.id == 5 {
                            PolicyResponse::Fail
                        } else {
                            PolicyResponse::Pass
                        },
                    )
                })
                .collect();
            h.cves = (0..5)
                .map(|k| Arc::clone(&cves[((id + k * 7) % 50) as usize]))
                .collect();
            h.fingerprints = (0..3).map(|k| fp(id, k)).collect();
            h
        })
        .collect();
    let store = Arc::new(PostureStore::new());
    store.replace_all(hosts, now);
    store
}

fn measure(n: u64) {
    let before = rss_kib("VmRSS:");
    let store = build(n);
    let rss = rss_kib("VmRSS:");
    let peak = rss_kib("VmHWM:");
    let policy = parse_policy(
        "version: 1\ndefaults:\n  deny: {failing_critical_policy: true, vulnerabilities: [CVE-2024-1003], last_seen_over: 24h}\n",
        "bench.yaml".as_ref(),
    )
    .unwrap();
    let context = HashMap::new();
    let facts = RequestFacts {
        context: &context,
        authority: "app",
        path: "/",
        posture_age: Some(Duration::from_secs(10)),
        max_staleness: Some(Duration::from_secs(900)),
    };
    let route = policy.route(&facts);
    let now = SystemTime::now();
    // Look up fingerprints spread over the whole store, in a scrambled order.
    let probes: Vec<Fingerprint> = (0..100_000u64)
        .map(|i| fp(1 + (i * 7_919) % n, i % 3))
        .collect();
    let mut lookups = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        let mut ids = 0u64;
        for p in &probes {
            ids = ids.wrapping_add(store.lookup(black_box(p)).unwrap().id.0);
        }
        black_box(ids);
        lookups.push(t.elapsed().as_nanos() as f64 / probes.len() as f64);
    }
    lookups.sort_by(f64::total_cmp);
    let mut samples = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        let mut allowed = 0usize;
        for p in &probes {
            let host = store.lookup(black_box(p)).unwrap();
            allowed += usize::from(evaluate(route, &facts, Subject::Host(&host), now).allowed);
        }
        black_box(allowed);
        samples.push(t.elapsed().as_nanos() as f64 / probes.len() as f64);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "{n:>9} hosts  RSS {:>7.1} MiB (store {:>7.1} MiB, {:>5.0} B/host)  peak {:>7.1} MiB  lookup median {:>5.0} ns  lookup+evaluate median {:>5.0} ns  p90 {:>5.0} ns",
        rss as f64 / 1024.0,
        (rss - before) as f64 / 1024.0,
        (rss - before) as f64 * 1024.0 / n as f64,
        peak as f64 / 1024.0,
        lookups[lookups.len() / 2],
        samples[samples.len() / 2],
        samples[samples.len() * 9 / 10],
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(n) = args.first().and_then(|a| a.parse::<u64>().ok()) {
        measure(n);
        return;
    }
    let me = std::env::current_exe().unwrap();
    for n in [10_000u64, 100_000, 1_000_000] {
        let status = std::process::Command::new(&me)
            .arg(n.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}
