//! Prometheus metrics, all named `fleet_authz_*`, in one registry. Handlers
//! and background tasks record through [`Metrics`]; `/metrics` encodes it.
//! Gauges that mirror state (hosts held, posture age) are set at scrape time.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Upper bounds, in seconds, of the Check latency histogram, for
/// Prometheus and OTLP alike: 1 µs doubling to ~1 s (21 buckets). A Check
/// answered from memory takes a few µs, so the low end needs µs steps to
/// tell p50 from p99. The top covers a recheck against Fleet (bounded by
/// `recheck.budget`, 150 ms by default).
pub fn check_duration_bounds() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 21)
}

/// Labels of `fleet_authz_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow`, `deny` or `dry_run_deny`.
    pub decision: &'static str,
    /// The first reason kind, or `none`.
    pub reason: &'static str,
    pub route: RouteLabel,
}

/// A route's name as a label value: shares the policy's string, so
/// counting a Check allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel(pub Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

/// Labels of `fleet_authz_decision_reasons_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
    pub route: RouteLabel,
}

/// Labels of `fleet_authz_fleet_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetRequestLabels {
    pub endpoint: &'static str,
    /// HTTP status, or `error` for a transport failure.
    pub status: String,
}

/// Labels with a single `result` / `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Labels of `fleet_authz_limits_hit_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// Which bound: `grpc_connections`, `grpc_accept_error`, …
    pub limit: &'static str,
}

/// Labels of `fleet_authz_cluster_rejected_total`: what was refused
/// (`lease`, `grant`, `snapshot`, `audit`, `recheck`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub reasons: Family<ReasonLabels, Counter>,
    pub check_duration: Histogram,
    pub hosts: Gauge,
    pub fingerprints: Gauge,
    pub posture_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `fleet.max_staleness` in seconds (0 when staleness does not apply),
    /// so an alert can compare the age with it without a copied number.
    pub max_staleness_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub fleet_requests: Family<FleetRequestLabels, Counter>,
    pub fleet_bytes: Counter,
    pub sync_duration: Histogram,
    pub syncs: Family<ResultLabels, Counter>,
    pub report_clipped: Counter,
    /// 1 while the published posture came from a clipped certificate report.
    pub fleet_report_clipped: Gauge,
    /// Hosts in the published posture with no certificate fingerprint.
    pub hosts_without_fingerprint: Gauge,
    /// 1 while the shrink guard holds the last cycle back.
    pub shrink_guard_holding: Gauge,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub posture_reloads: Family<ResultLabels, Counter>,
    pub rechecks: Family<ResultLabels, Counter>,
    pub break_glass_active: Gauge,
    /// Inputs refused or slowed by a bound (README, "Limits").
    pub limits_hit: Family<LimitLabels, Counter>,
    /// Self-service bypass requests by result (`granted`, or why refused).
    pub bypass_requests: Family<ResultLabels, Counter>,
    /// Self-service bypasses in force.
    pub bypass_active: Gauge,
    /// Cluster mode: values read from NATS that failed the signature check.
    pub cluster_rejected: Family<KindLabels, Counter>,
    /// Cluster mode: 1 while this replica holds the leader lease.
    pub cluster_leader: Gauge,
    /// Cluster mode: 1 while NATS is out of reach and this replica syncs alone.
    pub cluster_degraded: Gauge,
    /// 1 when `cluster:` is configured: tells a replica that leads nothing
    /// from one that runs alone by design.
    pub cluster_enabled: Gauge,
    /// The decision counter and latency mirrored over OTLP (no-ops unless
    /// telemetry installed a meter provider before this was created).
    pub otel: crate::telemetry::OtelInstruments,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fleet_authz");
        let decisions = Family::<DecisionLabels, Counter>::default();
        let reasons = Family::<ReasonLabels, Counter>::default();
        let check_duration = Histogram::new(check_duration_bounds());
        let sync_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 14),
        );
        let m = Self {
            decisions,
            reasons,
            check_duration,
            hosts: Gauge::default(),
            fingerprints: Gauge::default(),
            posture_age_seconds: Gauge::default(),
            max_staleness_seconds: Gauge::default(),
            fleet_requests: Family::default(),
            fleet_bytes: Counter::default(),
            sync_duration,
            syncs: Family::default(),
            report_clipped: Counter::default(),
            fleet_report_clipped: Gauge::default(),
            hosts_without_fingerprint: Gauge::default(),
            shrink_guard_holding: Gauge::default(),
            policy_reloads: Family::default(),
            posture_reloads: Family::default(),
            rechecks: Family::default(),
            break_glass_active: Gauge::default(),
            limits_hit: Family::default(),
            bypass_requests: Family::default(),
            bypass_active: Gauge::default(),
            cluster_rejected: Family::default(),
            cluster_leader: Gauge::default(),
            cluster_degraded: Gauge::default(),
            cluster_enabled: Gauge::default(),
            otel: crate::telemetry::OtelInstruments::default(),
            registry: Registry::default(),
        };
        m.register_check(&mut registry);
        m.register_posture(&mut registry);
        m.register_fleet(&mut registry);
        m.register_bypass(&mut registry);
        m.register_cluster(&mut registry);
        m.start_known_series_at_zero();
        Self { registry, ..m }
    }

    /// Creates, at 0, the series whose label values are a closed set. A
    /// counter first seen at 1 has no earlier sample, so `increase()` and
    /// `rate()` miss that first event: the first failed sync, bound hit or
    /// rejected cluster value would not alert. Open sets (routes, Fleet
    /// statuses) appear on first use.
    fn start_known_series_at_zero(&self) {
        // fleet::adapter, server::listen, fleet::adapter, cluster::sign.
        for result in ["success", "failure"] {
            self.syncs.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        for limit in ["grpc_connections", "grpc_accept_error"] {
            self.limits_hit
                .get_or_create(&LimitLabels { limit })
                .inc_by(0);
        }
        for result in ["fresh", "timed_out", "failed", "skipped"] {
            self.rechecks
                .get_or_create(&ResultLabels { result })
                .inc_by(0);
        }
        for kind in ["lease", "grant", "snapshot", "audit", "recheck"] {
            self.cluster_rejected
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
        }
    }

    /// Decisions, their latency, grants and bounds.
    fn register_check(&self, registry: &mut Registry) {
        registry.register(
            "decisions",
            "Check decisions by decision, first reason kind and route",
            self.decisions.clone(),
        );
        registry.register(
            "decision_reasons",
            "Reason kinds given, by route",
            self.reasons.clone(),
        );
        registry.register(
            "check_duration_seconds",
            "Time to answer a Check",
            self.check_duration.clone(),
        );
        registry.register(
            "break_glass_grants_active",
            "Break-glass grants in force",
            self.break_glass_active.clone(),
        );
        registry.register(
            "limits_hit",
            "Inputs refused or slowed by a bound, by bound",
            self.limits_hit.clone(),
        );
    }

    /// Cluster mode.
    fn register_cluster(&self, registry: &mut Registry) {
        registry.register(
            "cluster_rejected",
            "Cluster values read from NATS and refused for a missing or wrong signature, by kind",
            self.cluster_rejected.clone(),
        );
        registry.register(
            "cluster_leader",
            "1 while this replica holds the cluster leader lease",
            self.cluster_leader.clone(),
        );
        registry.register(
            "cluster_degraded",
            "1 while NATS is out of reach and this replica syncs Fleet alone",
            self.cluster_degraded.clone(),
        );
        registry.register(
            "cluster_enabled",
            "1 when cluster mode is configured",
            self.cluster_enabled.clone(),
        );
    }

    /// Self-service bypasses.
    fn register_bypass(&self, registry: &mut Registry) {
        registry.register(
            "bypass_requests",
            "Self-service bypass requests by result",
            self.bypass_requests.clone(),
        );
        registry.register(
            "bypass_grants_active",
            "Self-service bypasses in force",
            self.bypass_active.clone(),
        );
    }

    /// The posture held, its age, reloads and rechecks.
    fn register_posture(&self, registry: &mut Registry) {
        registry.register("hosts", "Hosts held in memory", self.hosts.clone());
        registry.register(
            "fingerprints",
            "Certificate fingerprints held in memory",
            self.fingerprints.clone(),
        );
        registry.register(
            "posture_age_seconds",
            "Seconds since the last good posture sync",
            self.posture_age_seconds.clone(),
        );
        registry.register(
            "max_staleness_seconds",
            "fleet.max_staleness in seconds; 0 when staleness does not apply",
            self.max_staleness_seconds.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy file reloads by result",
            self.policy_reloads.clone(),
        );
        registry.register(
            "posture_file_reloads",
            "Posture file reloads by result",
            self.posture_reloads.clone(),
        );
        registry.register(
            "rechecks",
            "Live rechecks by outcome",
            self.rechecks.clone(),
        );
    }

    /// The Fleet sync: requests, bytes, cycles, the certificate report.
    fn register_fleet(&self, registry: &mut Registry) {
        registry.register(
            "fleet_requests",
            "Fleet API requests by endpoint and status",
            self.fleet_requests.clone(),
        );
        registry.register(
            "fleet_received_bytes",
            "Fleet API response body bytes, counted after gzip is inflated",
            self.fleet_bytes.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Duration of Fleet sync cycles",
            self.sync_duration.clone(),
        );
        registry.register("syncs", "Fleet sync cycles by result", self.syncs.clone());
        registry.register(
            "report_clipped",
            "Published sync cycles whose certificate query report was clipped",
            self.report_clipped.clone(),
        );
        registry.register(
            "fleet_report_clipped",
            "1 while the published posture came from a clipped certificate query report",
            self.fleet_report_clipped.clone(),
        );
        registry.register(
            "hosts_without_fingerprint",
            "Hosts in the published posture with no certificate fingerprint",
            self.hosts_without_fingerprint.clone(),
        );
        registry.register(
            "shrink_guard_holding",
            "1 while the shrink guard holds the last Fleet sync cycle back",
            self.shrink_guard_holding.clone(),
        );
    }

    /// Sets the gauges that mirror the configuration: `max_staleness`
    /// (`None`: staleness does not apply) and whether cluster mode is on.
    pub fn set_config(&self, max_staleness: Option<std::time::Duration>, cluster: bool) {
        self.max_staleness_seconds
            .set(max_staleness.map_or(0.0, |d| d.as_secs_f64()));
        self.cluster_enabled.set(i64::from(cluster));
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_gauges_show_max_staleness_and_cluster_mode() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains("\nfleet_authz_max_staleness_seconds 0.0\n"),
            "{text}"
        );
        assert!(text.contains("\nfleet_authz_cluster_enabled 0\n"), "{text}");
        assert!(
            text.contains("\nfleet_authz_shrink_guard_holding 0\n"),
            "{text}"
        );
        m.set_config(Some(std::time::Duration::from_secs(900)), true);
        let text = m.encode();
        assert!(
            text.contains("\nfleet_authz_max_staleness_seconds 900.0\n"),
            "{text}"
        );
        assert!(text.contains("\nfleet_authz_cluster_enabled 1\n"), "{text}");
        m.set_config(None, false);
        assert!(
            m.encode()
                .contains("\nfleet_authz_max_staleness_seconds 0.0\n")
        );
    }

    #[test]
    fn closed_label_sets_are_exported_at_zero_before_any_event() {
        let text = Metrics::new().encode();
        for series in [
            r#"fleet_authz_syncs_total{result="failure"} 0"#,
            r#"fleet_authz_syncs_total{result="success"} 0"#,
            r#"fleet_authz_limits_hit_total{limit="grpc_connections"} 0"#,
            r#"fleet_authz_limits_hit_total{limit="grpc_accept_error"} 0"#,
            r#"fleet_authz_rechecks_total{result="timed_out"} 0"#,
            r#"fleet_authz_cluster_rejected_total{kind="snapshot"} 0"#,
        ] {
            assert!(
                text.contains(&format!("\n{series}\n")),
                "{series} missing: {text}"
            );
        }
    }
}
