//! The Fleet sync while this replica leads or is alone: a poller built by
//! the Fleet adapter as in standalone mode, started when the role comes to
//! sync and stopped when it goes (a cycle in progress is abandoned, which
//! the poller allows). Each term has its own poller; the CVE list the policy
//! names is carried from one to the next. A term starts with a sync at once
//! (the poller's first tick), so a new leader serves what it has and then
//! syncs.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::Instrument;

use super::{Node, stopped};

/// Runs terms until shutdown.
pub(super) async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut role = node.role.subscribe();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            changed = role.wait_for(|s| s.role.syncs()) => if changed.is_err() { return },
        }
        let source = match crate::fleet::adapter::build(
            &node.fleet,
            &node.store,
            &node.metrics,
            node.snapshot.clone(),
        ) {
            Ok(source) => source,
            Err(error) => {
                // The token file may be mid-rotation: try again shortly.
                tracing::error!(%error, "cannot start the Fleet sync");
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(node.config.lease_ttl / 3) => continue,
                }
            }
        };
        source
            .handle
            .set_cves(node.cves.cves().iter().map(|c| c.to_string()).collect());
        node.term.store(Some(Arc::new(source.handle.clone())));
        tracing::info!(role = node.role().role.as_str(), "Fleet sync started");
        let (mut stop_term, mut role_term) = (stop.clone(), node.role.subscribe());
        let end = async move {
            tokio::select! {
                () = stopped(&mut stop_term) => {}
                _ = role_term.wait_for(|s| !s.role.syncs()) => {}
            }
        };
        let poller = source
            .poller
            .run(end)
            .instrument(tracing::info_span!("fleet_poller"));
        match crate::fleet::spawn_low_priority("fleet-sync", poller) {
            Ok(done) => {
                let _ = done.await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the Fleet sync thread");
                tokio::time::sleep(node.config.lease_ttl / 3).await;
            }
        }
        node.term.store(None);
        tracing::info!(role = node.role().role.as_str(), "Fleet sync stopped");
    }
}
