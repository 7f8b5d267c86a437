//! The h2load second opinion on the Envoy runs: one h2load round against an
//! Envoy, and the tables of added latency and of each Check as Envoy timed
//! it, with the rounds sorted into quiet and noisy by stolen CPU time.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::{Options, Server, median};
use crate::{
    envoy::{Authz, Envoy},
    http,
    report::{CpuTimes, histogram, ms},
};

/// One h2load round: its latencies, the CPU time stolen meanwhile, and
/// (with ext_authz) how long each of its Checks took as Envoy timed it.
#[derive(Debug, Clone)]
pub(super) struct H2loadRound {
    hist: Histogram<u64>,
    steal_percent: f64,
    check: Option<Histogram<u64>>,
}

/// Rounds with less CPU time stolen than this (in both the variant's round
/// and the same round with no ext_authz) are the quiet ones. On this VM a
/// round is either near 1% or several times that (sampled 0.4–1.2% and
/// 8–15% in 10 s windows); with several percent stolen, more than 1% of
/// requests overlap a stall, and the p99 measures the stalls.
const QUIET_STEAL_PERCENT: f64 = 2.0;

/// An h2load run against `envoy` at the options' rate, the share of the
/// machine's CPU time stolen meanwhile, and (when `authz` is a server) each
/// Check as Envoy timed it.
pub(super) async fn h2load_round(
    envoy: &Envoy,
    authz: &Authz,
    pems: &[String],
    o: &Options,
) -> Option<H2loadRound> {
    let before = CpuTimes::now();
    let (hist, from) =
        http::h2load_http(envoy.addr, &pems[0], o.envoy_rps, o.warmup, o.duration).await?;
    let steal_percent = CpuTimes::now().steal_percent_since(before);
    let check = match authz {
        Authz::At(_) => envoy.check_latencies(from, hist.len()).await,
        Authz::None => None,
    };
    Some(H2loadRound {
        check,
        hist,
        steal_percent,
    })
}

/// h2load's runs: those with no ext_authz, and each server's, each with the
/// index of the run with no ext_authz it is compared with (the last before).
#[derive(Debug, Default)]
pub(super) struct H2loadRuns {
    none: Vec<H2loadRound>,
    servers: Vec<Vec<(usize, H2loadRound)>>,
}

impl H2loadRuns {
    /// Records the run of variant `i` (0: no ext_authz, then the servers).
    pub(super) fn record(&mut self, i: usize, run: H2loadRound) {
        if i == 0 {
            self.none.push(run);
            return;
        }
        if self.servers.len() < i {
            self.servers.resize_with(i, Vec::new);
        }
        let reference = self.none.len().saturating_sub(1);
        self.servers[i - 1].push((reference, run));
    }

    /// Whether any run was recorded (a run with no ext_authz comes first).
    pub(super) fn ran(&self) -> bool {
        !self.none.is_empty()
    }

    /// Whether both runs of a pair had little CPU time stolen.
    fn quiet(&self, (reference, run): &(usize, H2loadRound)) -> bool {
        run.steal_percent < QUIET_STEAL_PERCENT
            && self.none[*reference].steal_percent < QUIET_STEAL_PERCENT
    }

    /// The h2load second opinion on item 3: pooled, median-of-rounds and
    /// quiet-rounds added latency per ext_authz server; then each Check as
    /// Envoy timed it in the same runs.
    pub(super) fn table(&self, servers: &[(&str, &Server)]) -> String {
        let none = merge_all(self.none.iter().map(|r| &r.hist));
        let mut out = format!(
            "\nh2load second opinion (HTTP/1.1, one connection at the same rate, one fixed XFCC device; latency from its per-request log). Quiet rounds: less than {QUIET_STEAL_PERCENT}% of the machine's CPU time stolen by the hypervisor, in the server's run and in the run with no ext_authz it is compared with.\n\n| variant | pooled p50 / p99 ms | added p50 / p99 ms (pooled) | added p50 / p99 ms (median of rounds) | added p50 / p99 ms (median of quiet rounds) | stolen CPU % per run |\n|---|---|---|---|---|---|\n",
        );
        let steal = |runs: &mut dyn Iterator<Item = &H2loadRound>| {
            runs.map(|r| format!("{:.1}", r.steal_percent))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "| no ext_authz | {} / {} | – | – | – | {} |",
            ms(none.value_at_quantile(0.5)),
            ms(none.value_at_quantile(0.99)),
            steal(&mut self.none.iter())
        );
        for ((name, _), runs) in servers.iter().zip(&self.servers) {
            let pooled = merge_all(runs.iter().map(|(_, r)| &r.hist));
            let added = |q: f64, quiet_only: bool| {
                median(
                    runs.iter()
                        .filter(|pair| !quiet_only || self.quiet(pair))
                        .map(|(reference, r)| {
                            let none = &self.none[*reference].hist;
                            r.hist.value_at_quantile(q) as f64 - none.value_at_quantile(q) as f64
                        })
                        .collect(),
                ) / 1000.0
            };
            let quiet = runs.iter().filter(|pair| self.quiet(pair)).count();
            let pooled_added = |q: f64| {
                (pooled.value_at_quantile(q) as f64 - none.value_at_quantile(q) as f64) / 1000.0
            };
            let quiet_added = if quiet == 0 {
                "–".to_owned()
            } else {
                format!("{:.3} / {:.3}", added(0.5, true), added(0.99, true))
            };
            let _ = writeln!(
                out,
                "| {name} | {} / {} | {:.3} / {:.3} | {:.3} / {:.3} | {quiet_added} ({quiet} of {}) | {} |",
                ms(pooled.value_at_quantile(0.5)),
                ms(pooled.value_at_quantile(0.99)),
                pooled_added(0.5),
                pooled_added(0.99),
                added(0.5, false),
                added(0.99, false),
                runs.len(),
                steal(&mut runs.iter().map(|(_, r)| r)),
            );
        }
        out.push_str(&self.check_table(servers));
        out
    }

    /// Each Check of the h2load runs as Envoy's ext_authz filter timed it:
    /// the hop alone, measured per request, with no run to subtract.
    fn check_table(&self, servers: &[(&str, &Server)]) -> String {
        let mut out = String::from(
            "\nEach Check as Envoy timed it, in the same h2load runs (ext_authz filter state `latency_us`, one value per request): from the `CheckRequest` built to the answer received, before Envoy applies it. Envoy's own work to build the request and apply the answer is not in it. Quiet rounds as above.\n\n| ext_authz server | pooled p50 / p90 / p99 / p99.9 ms | p50 / p99 ms (median of rounds) | p99 ms (median of quiet rounds) | Checks timed |\n|---|---|---|---|---|\n",
        );
        for ((name, _), runs) in servers.iter().zip(&self.servers) {
            let timed: Vec<(&Histogram<u64>, bool)> = runs
                .iter()
                .filter_map(|pair| pair.1.check.as_ref().map(|h| (h, self.quiet(pair))))
                .collect();
            if timed.len() < runs.len() {
                let _ = writeln!(
                    out,
                    "| {name} | Envoy's log had {} of {} runs | – | – | – |",
                    timed.len(),
                    runs.len()
                );
                continue;
            }
            let pooled = merge_all(timed.iter().map(|(h, _)| *h));
            let at = |q: f64, quiet_only: bool| {
                median(
                    timed
                        .iter()
                        .filter(|(_, quiet)| !quiet_only || *quiet)
                        .map(|(h, _)| h.value_at_quantile(q) as f64)
                        .collect(),
                ) / 1000.0
            };
            let quiet = timed.iter().filter(|(_, quiet)| *quiet).count();
            let quiet_p99 = if quiet == 0 {
                "–".to_owned()
            } else {
                format!("{:.3} ({quiet} of {})", at(0.99, true), timed.len())
            };
            let _ = writeln!(
                out,
                "| {name} | {} / {} / {} / {} | {:.3} / {:.3} | {quiet_p99} | {} |",
                ms(pooled.value_at_quantile(0.5)),
                ms(pooled.value_at_quantile(0.9)),
                ms(pooled.value_at_quantile(0.99)),
                ms(pooled.value_at_quantile(0.999)),
                at(0.5, false),
                at(0.99, false),
                pooled.len(),
            );
        }
        out
    }
}

/// All of `hists` in one histogram.
fn merge_all<'a>(hists: impl Iterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut all = histogram();
    for h in hists {
        let _ = all.add(h);
    }
    all
}
