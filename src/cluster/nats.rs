//! The NATS side: one connection (credentials and CA from the config,
//! reconnecting by itself forever), and the JetStream resources of §8,
//! found or created once NATS answers: KV `<name>-leader` and
//! `<name>-grants`, Object Store `<name>-snapshots`, stream `<name>-audit`.
//!
//! The connection is made with `retry_on_initial_connect`, so a NATS that is
//! down at start never holds up serving: the replica decides on its local
//! snapshot meanwhile and, after `lease_ttl`, syncs Fleet alone.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};

use super::ClusterConfig;

/// Object name of the posture in `<name>-snapshots`.
pub const POSTURE_OBJECT: &str = "posture";
/// Key of the lease in `<name>-leader`.
pub const LEASE_KEY: &str = "leader";
/// How long the audit stream keeps an entry.
pub const AUDIT_MAX_AGE: Duration = Duration::from_secs(400 * 24 * 3600);
/// Chunk size of posture objects (NATS's default is 128 KiB; fewer chunks,
/// fewer acknowledged round trips per publish).
pub const CHUNK_SIZE: usize = 512 * 1024;

/// The names §8 derives from `cluster.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// KV `<name>-leader`: the lease.
    pub leader_bucket: String,
    /// KV `<name>-grants`: break-glass grants (and bypasses).
    pub grants_bucket: String,
    /// Object Store `<name>-snapshots`: the leader's posture.
    pub snapshots_bucket: String,
    /// Stream `<name>-audit`.
    pub audit_stream: String,
    /// The audit stream's subject, `<name>.audit`.
    pub audit_subject: String,
    /// Request/reply to the leader, `<name>.recheck`.
    pub recheck_subject: String,
    /// Where the leader sends every fresh host, for every replica to apply.
    pub fresh_subject: String,
    /// Request/reply to the leader for `POST /v1/sync`, `<name>.sync`.
    pub sync_subject: String,
}

impl Names {
    /// The names for prefix `name`.
    pub fn new(name: &str) -> Self {
        Self {
            leader_bucket: format!("{name}-leader"),
            grants_bucket: format!("{name}-grants"),
            snapshots_bucket: format!("{name}-snapshots"),
            audit_stream: format!("{name}-audit"),
            audit_subject: format!("{name}.audit"),
            recheck_subject: format!("{name}.recheck"),
            fresh_subject: format!("{name}.recheck.fresh"),
            sync_subject: format!("{name}.sync"),
        }
    }
}

/// The connection and the resources on it. Cheap to clone.
#[derive(Clone)]
pub struct Nats {
    /// Core NATS (request/reply, subscriptions).
    pub client: async_nats::Client,
    /// JetStream on it (publishing audit entries).
    pub js: jetstream::Context,
    /// The lease bucket.
    pub leader: kv::Store,
    /// The grants bucket.
    pub grants: kv::Store,
    /// The posture object store.
    pub snapshots: object_store::ObjectStore,
    /// The audit stream.
    pub audit: stream::Stream,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats").finish_non_exhaustive()
    }
}

/// Connects in the background: returns at once, whether NATS is up or not.
pub async fn connect(config: &ClusterConfig, replica: &str) -> anyhow::Result<async_nats::Client> {
    let step = (config.lease_ttl / 6).max(Duration::from_millis(100));
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("fleet-authz {replica}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(config.lease_ttl / 3)
        .request_timeout(Some(config.lease_ttl / 3))
        // Back in reach soon after NATS returns: linear steps up to ttl/6.
        .reconnect_delay_callback(move |attempts| {
            step.min(Duration::from_millis(50) * attempts as u32)
        });
    if let Some(path) = &config.nats_credentials_file {
        options = options.credentials_file(path).await.map_err(|e| {
            anyhow::anyhow!("cluster.nats_credentials_file: {}: {e}", path.display())
        })?;
    }
    if let Some(path) = &config.nats_ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    let servers: Vec<&str> = config.nats_url.split(',').map(str::trim).collect();
    let addrs = servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("cluster.nats_url: {e}"))?;
    Ok(options.connect(addrs).await?)
}

/// Finds or creates every resource. Fails while NATS is out of reach.
pub async fn resources(client: &async_nats::Client, names: &Names) -> anyhow::Result<Nats> {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(client.timeout().unwrap_or(Duration::from_secs(5)));
    let replicas = replicas(client);
    let leader = kv_bucket(
        &js,
        &names.leader_bucket,
        "fleet-authz leader lease",
        replicas,
    )
    .await?;
    let grants = kv_bucket(
        &js,
        &names.grants_bucket,
        "fleet-authz break-glass grants and bypasses (signed)",
        replicas,
    )
    .await?;
    let snapshots = match js.get_object_store(&names.snapshots_bucket).await {
        Ok(store) => store,
        Err(_) => {
            js.create_object_store(object_store::Config {
                bucket: names.snapshots_bucket.clone(),
                description: Some("fleet-authz posture published by the leader (signed)".into()),
                num_replicas: replicas,
                ..Default::default()
            })
            .await?
        }
    };
    let audit = js
        .get_or_create_stream(stream::Config {
            name: names.audit_stream.clone(),
            description: Some("fleet-authz grants, revocations and bypasses (signed)".into()),
            subjects: vec![names.audit_subject.clone()],
            max_age: AUDIT_MAX_AGE,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    Ok(Nats {
        client: client.clone(),
        js,
        leader,
        grants,
        snapshots,
        audit,
    })
}

/// KV bucket `name` (one value per key), found or created.
async fn kv_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    Ok(js
        .create_key_value(kv::Config {
            bucket: name.to_owned(),
            description: description.to_owned(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?)
}

/// Three copies on a JetStream cluster of three or more, else one: the
/// server tells its peers' client URLs in its INFO.
fn replicas(client: &async_nats::Client) -> usize {
    let info = client.server_info();
    if info.cluster.is_some() && info.connect_urls.len() >= 3 {
        3
    } else {
        1
    }
}
