//! What the service decides with, built before anything is bound: policy,
//! posture store (from the posture file, or empty for Fleet to fill),
//! grants, the Fleet source, cluster mode's node, the authorizer, the
//! reloader, the admin state and the bypass door.

use std::{sync::Arc, time::SystemTime};

use arc_swap::ArcSwap;

use super::{
    Extensions,
    reload::{FileSync, Reloader},
};
use crate::{
    admin::{AdminState, AdminToken, GrantStore, SyncTrigger},
    bypass::{Door, TokenKey},
    cluster::{
        Node,
        http::{ClusterRefresh, ClusterSync},
    },
    config::Config,
    decision::{Authorizer, Grants},
    fleet::adapter::{FleetSource, FleetSync},
    policy::{Policy, load_policy},
    posture::{PostureFile, PostureStore, load_posture_file},
    telemetry::metrics::Metrics,
};

/// Everything the service decides with, built before anything is bound.
pub(super) struct Parts {
    pub(super) store: Arc<PostureStore>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) authorizer: Arc<Authorizer>,
    pub(super) reloader: Arc<Reloader>,
    pub(super) admin: AdminState,
    pub(super) fleet: Option<FleetSource>,
    /// The self-service bypass: offers on deny pages, the endpoint.
    pub(super) door: Arc<Door>,
    /// Cluster mode: the node that replaces the poller's own schedule.
    pub(super) cluster: Option<Arc<Node>>,
}

/// Policy, posture store, grants, Fleet source, authorizer, reloader and
/// admin state: everything but the listeners and tasks.
pub(super) fn build_parts(config: &Config, ext: Extensions) -> anyhow::Result<Parts> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_config(config.max_staleness(), config.cluster.is_some());
    let (policy, posture) = match ext.preloaded {
        Some(p) => (p.policy, p.posture),
        None => (load_policy(&config.policy_file)?, None),
    };
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let store = match ext.store {
        Some(store) => store,
        None => file_store(config, posture)?,
    };
    let (token, grants) = admin_inputs(config)?;
    let fleet = fleet_source(config, &store, &metrics, &policy)?;
    let cluster = cluster_node(config, &store, &metrics, fleet.as_ref())?;
    let cluster_refresh = cluster
        .as_ref()
        .filter(|_| config.fleet.as_ref().is_some_and(|f| f.recheck.enabled))
        .map(|node| {
            Arc::new(ClusterRefresh(Arc::clone(node))) as Arc<dyn crate::decision::Refresh>
        });
    if let Some(node) = &cluster {
        grants.set_replica(node.grant_replica());
        // Held grants wait for the cluster's copy (cluster::grants), from
        // before the first Check can be served.
        grants.hold_unconfirmed();
    }
    let authorizer = Arc::new(Authorizer {
        store: Arc::clone(&store),
        policy: Arc::clone(&policy),
        identity: config.identity.clone(),
        remediation_url: config.remediation_url.clone(),
        max_staleness: config.max_staleness(),
        metrics: Arc::clone(&metrics),
        refresh: ext.refresh.or(cluster_refresh).or_else(|| {
            (cluster.is_none())
                .then(|| fleet.as_ref().and_then(|f| f.refresh.clone()))
                .flatten()
        }),
        grants: Some(Arc::clone(&grants) as Arc<dyn Grants>),
        fingerprints: Default::default(),
    });
    let reloader = Arc::new(reloader(
        config,
        &policy,
        &store,
        &metrics,
        fleet.as_ref(),
        cluster.as_ref(),
    ));
    let sync = ext
        .sync
        .or_else(|| sync_trigger(config, fleet.as_ref(), cluster.as_ref(), &reloader));
    let key = match &config.bypass.key_file {
        Some(path) => TokenKey::from_file(path)?,
        None => TokenKey::random(),
    };
    let door = Arc::new(Door::new(
        Arc::clone(&authorizer),
        Arc::clone(&grants),
        key,
        config.identity.xfcc_element,
    ));
    let admin = AdminState {
        authorizer: Arc::clone(&authorizer),
        sync,
        token,
        grants,
    };
    admin.update_grant_gauge(SystemTime::now());
    Ok(Parts {
        store,
        metrics,
        authorizer,
        reloader,
        admin,
        fleet,
        door,
        cluster,
    })
}

/// Cluster mode's node, when `cluster:` is set (config.rs makes sure
/// `fleet:` is too).
fn cluster_node(
    config: &Config,
    store: &Arc<PostureStore>,
    metrics: &Arc<Metrics>,
    fleet: Option<&FleetSource>,
) -> anyhow::Result<Option<Arc<Node>>> {
    let (Some(cluster), Some(fleet_config), Some(source)) = (&config.cluster, &config.fleet, fleet)
    else {
        return Ok(None);
    };
    Node::build(crate::cluster::Parts {
        config: cluster.clone(),
        fleet: fleet_config.clone(),
        snapshot: config.snapshot.as_ref().map(|s| s.path.clone()),
        store: Arc::clone(store),
        metrics: Arc::clone(metrics),
        cves: source.handle.clone(),
    })
    .map(Some)
}

/// The admin token and the grant store (from `admin.grants_file`, else in
/// memory).
fn admin_inputs(config: &Config) -> anyhow::Result<(Option<AdminToken>, Arc<GrantStore>)> {
    let admin_config = config.admin.clone().unwrap_or_default();
    let token = match &admin_config.token_file {
        Some(path) => Some(AdminToken::from_file(path)?),
        None => None,
    };
    let grants = Arc::new(match &admin_config.grants_file {
        Some(path) => GrantStore::open(path)?,
        None => GrantStore::in_memory(),
    });
    Ok((token, grants))
}

/// What `POST /v1/sync` runs: the cluster's sync, the Fleet poller, or a
/// posture file re-read; none without a source.
fn sync_trigger(
    config: &Config,
    fleet: Option<&FleetSource>,
    cluster: Option<&Arc<Node>>,
    reloader: &Arc<Reloader>,
) -> Option<Arc<dyn SyncTrigger>> {
    match (cluster, fleet, &config.posture_file) {
        (Some(node), _, _) => Some(Arc::new(ClusterSync(Arc::clone(node)))),
        (None, Some(f), _) => Some(Arc::new(FleetSync(f.handle.clone()))),
        (None, None, Some(_)) => Some(Arc::new(FileSync(Arc::clone(reloader)))),
        (None, None, None) => None,
    }
}

/// A store holding `posture_file`'s hosts (read now unless preloaded), or
/// an empty one for a Fleet source to fill.
fn file_store(config: &Config, posture: Option<PostureFile>) -> anyhow::Result<Arc<PostureStore>> {
    let store = Arc::new(PostureStore::new());
    if let Some(path) = &config.posture_file {
        let now = SystemTime::now();
        let file = match posture {
            Some(file) => file,
            None => load_posture_file(path, now)?,
        };
        store.replace_all(file.hosts, now);
    }
    Ok(store)
}

/// The Fleet source, after restoring the snapshot into `store`, asking
/// Fleet about the CVEs the policy names.
fn fleet_source(
    config: &Config,
    store: &Arc<PostureStore>,
    metrics: &Arc<Metrics>,
    policy: &ArcSwap<Policy>,
) -> anyhow::Result<Option<FleetSource>> {
    let Some(fleet) = &config.fleet else {
        return Ok(None);
    };
    if let Some(snap) = &config.snapshot {
        crate::fleet::snapshot::restore(&snap.path, store);
    }
    let snapshot = config.snapshot.as_ref().map(|s| s.path.clone());
    let source = crate::fleet::adapter::build(fleet, store, metrics, snapshot)?;
    source
        .handle
        .set_cves(policy.load().cves().iter().map(|c| c.to_string()).collect());
    Ok(Some(source))
}

/// The policy and posture file reloader; with Fleet, a policy reload also
/// tells the poller which CVEs to ask about.
fn reloader(
    config: &Config,
    policy: &Arc<ArcSwap<Policy>>,
    store: &Arc<PostureStore>,
    metrics: &Arc<Metrics>,
    fleet: Option<&FleetSource>,
    cluster: Option<&Arc<Node>>,
) -> Reloader {
    let mut reloader = Reloader::new(
        config.policy_file.clone(),
        Arc::clone(policy),
        config.posture_file.clone(),
        Arc::clone(store),
        Arc::clone(metrics),
    );
    if let Some(node) = cluster.cloned() {
        // Through the node: it also tells the poller of the current term.
        reloader.on_policy = Some(Box::new(move |p| {
            node.set_cves(p.cves().iter().map(|c| c.to_string()).collect())
        }));
    } else if let Some(handle) = fleet.map(|f| f.handle.clone()) {
        // The poller asks Fleet about exactly the CVEs the policy names.
        reloader.on_policy = Some(Box::new(move |p| {
            handle.set_cves(p.cves().iter().map(|c| c.to_string()).collect())
        }));
    }
    reloader
}
