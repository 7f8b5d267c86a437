//! The posture in the snapshot format of §2, encoded and decoded a thousand
//! hosts at a time. `fleet::snapshot::encode`/`decode` build or parse the
//! whole `fleet_authz.v1.Snapshot` message at once, so at 100,000 hosts
//! every host's strings exist twice (as protobuf and as posture) for a
//! moment, and the allocator keeps that peak: a follower held 17-26% more
//! than a standalone instance (docs/bench-log/2026-11-30-cluster.md).
//!
//! A repeated field is its entries' encodings one after the other, so the
//! hosts of many small messages concatenated are the hosts of one large
//! message. Encoding joins the host fields of per-batch encodings behind one
//! copy of the other fields; decoding splits the host fields into batches
//! that each go through `snapshot::decode` with the other fields. The bytes
//! are the same as `snapshot::encode`'s, and every field the format has or
//! gains is carried over as it is.

use std::{ops::Range, sync::Arc, time::SystemTime};

use bytes::Buf;
use prost::encoding::{decode_varint, encode_varint};

use crate::{
    fleet::snapshot::{self, LoadedSnapshot},
    posture::HostPosture,
};

/// Hosts per batch: small next to 100,000, large enough that per-batch
/// work (one interner, one header copy) does not show.
const BATCH: usize = 1000;
/// `Snapshot.hosts`.
const HOSTS_FIELD: u64 = 3;

/// The message's fields: everything but the hosts, and each host field
/// (key, length and body), as ranges of `message`.
struct Fields {
    other: Vec<Range<usize>>,
    hosts: Vec<Range<usize>>,
}

fn fields(message: &[u8]) -> Result<Fields, String> {
    let mut fields = Fields {
        other: Vec::new(),
        hosts: Vec::new(),
    };
    let mut rest = message;
    while !rest.is_empty() {
        let start = message.len() - rest.len();
        let key = decode_varint(&mut rest).map_err(|e| e.to_string())?;
        match key & 7 {
            0 => drop(decode_varint(&mut rest).map_err(|e| e.to_string())?),
            1 if rest.len() >= 8 => rest.advance(8),
            5 if rest.len() >= 4 => rest.advance(4),
            2 => {
                let len = decode_varint(&mut rest).map_err(|e| e.to_string())?;
                let len = usize::try_from(len).ok().filter(|l| *l <= rest.len());
                rest.advance(len.ok_or("a field runs past the end")?);
            }
            other => return Err(format!("wire type {other} at byte {start}")),
        }
        let range = start..message.len() - rest.len();
        if key >> 3 == HOSTS_FIELD && key & 7 == 2 {
            fields.hosts.push(range);
        } else {
            fields.other.push(range);
        }
    }
    Ok(fields)
}

/// The message inside a length-delimited encoding.
fn unwrap(bytes: &[u8]) -> Result<&[u8], String> {
    let mut rest = bytes;
    let len = decode_varint(&mut rest).map_err(|e| e.to_string())?;
    if len != rest.len() as u64 {
        return Err(format!(
            "length prefix says {len} bytes but {} follow",
            rest.len()
        ));
    }
    Ok(rest)
}

fn delimited(parts: impl Iterator<Item = impl AsRef<[u8]>> + Clone) -> Vec<u8> {
    let len: usize = parts.clone().map(|p| p.as_ref().len()).sum();
    let mut out = Vec::with_capacity(len + 10);
    encode_varint(len as u64, &mut out);
    for part in parts {
        out.extend_from_slice(part.as_ref());
    }
    out
}

/// The same bytes as `snapshot::encode(hosts, synced_at)`.
pub fn encode(hosts: &[Arc<HostPosture>], synced_at: SystemTime) -> Vec<u8> {
    let mut other = None;
    let mut host_fields = Vec::new();
    for batch in hosts.chunks(BATCH) {
        let bytes = snapshot::encode(batch.iter().map(|h| &**h), synced_at);
        // Our own encoding: it parses, or nothing is left to publish.
        let Ok(message) = unwrap(&bytes) else {
            return bytes;
        };
        let Ok(f) = fields(message) else { return bytes };
        for range in f.hosts {
            host_fields.extend_from_slice(&message[range]);
        }
        other.get_or_insert_with(|| {
            f.other
                .iter()
                .flat_map(|r| message[r.clone()].iter().copied())
                .collect::<Vec<u8>>()
        });
    }
    match other {
        Some(other) => delimited([other, host_fields].iter()),
        None => snapshot::encode(std::iter::empty(), synced_at),
    }
}

/// Decodes `bytes` a batch at a time, handing each batch to `each` with
/// the number of hosts in all; the sync time once every batch decoded.
/// A batch handed over may be followed by an error: keep nothing until
/// this returns `Ok`.
pub fn decode_batches(
    bytes: &[u8],
    mut each: impl FnMut(usize, Vec<HostPosture>),
) -> Result<SystemTime, String> {
    let message = unwrap(bytes)?;
    let f = fields(message)?;
    let total = f.hosts.len();
    if total <= BATCH {
        let loaded = snapshot::decode(bytes).map_err(|e| format!("{e:?}"))?;
        each(total, loaded.hosts);
        return Ok(loaded.synced_at);
    }
    let mut synced_at = None;
    for batch in f.hosts.chunks(BATCH) {
        let parts = f.other.iter().chain(batch).map(|r| &message[r.clone()]);
        let loaded = snapshot::decode(&delimited(parts)).map_err(|e| format!("{e:?}"))?;
        synced_at = Some(loaded.synced_at);
        each(total, loaded.hosts);
    }
    synced_at.ok_or_else(|| "no hosts".to_owned())
}

/// Decodes a batch at a time and copies each batch's hosts on a thread of
/// their own as it comes, dropping the decoded batch there. Decoding leaves
/// each host's strings and lists among the freed pieces of its protobuf,
/// so the allocator could hand back few pages; copied where nothing else is
/// allocated they sit together. A batch at a time, the decoded copies never
/// exist for every host at once beside the copies (copying the whole
/// decoded posture held both, 105 MiB more at 100,000 hosts, for a moment
/// the allocator then kept).
pub fn decode_compact(bytes: &[u8]) -> Result<LoadedSnapshot, String> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<HostPosture>)>(1);
        let copier = s.spawn(move || {
            let mut hosts = Vec::new();
            for (total, batch) in rx {
                hosts.reserve_exact(total.saturating_sub(hosts.len()));
                hosts.extend(batch.iter().map(HostPosture::clone));
            }
            hosts
        });
        let synced_at = decode_batches(bytes, |total, batch| {
            let _ = tx.send((total, batch));
        });
        drop(tx);
        let hosts = copier
            .join()
            .map_err(|_| "the copying thread failed".to_owned())?;
        Ok(LoadedSnapshot {
            hosts,
            synced_at: synced_at?,
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{
        fingerprint::Fingerprint,
        posture::{PolicyMeta, PolicyResponse, PolicyResult},
    };

    fn host(id: u64) -> Arc<HostPosture> {
        let mut h = HostPosture::new(id, format!("host-{id}"));
        h.fingerprints = vec![Fingerprint::from_bytes([(id % 251) as u8; 20])];
        h.policies = vec![PolicyResult::new(
            PolicyMeta::new(1, "disk encryption", true, Some("Turn it on.".into())),
            if id.is_multiple_of(3) {
                PolicyResponse::Fail
            } else {
                PolicyResponse::Pass
            },
        )];
        h.cves = vec!["CVE-2024-3094".into()];
        Arc::new(h)
    }

    #[test]
    fn batches_give_the_bytes_and_hosts_of_the_whole_message() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for n in [0, 1, 999, 1000, 1001, 2500] {
            let hosts: Vec<_> = (1..=n).map(host).collect();
            let whole = snapshot::encode(hosts.iter().map(|h| &**h), at);
            assert_eq!(encode(&hosts, at), whole, "{n} hosts");
            let expected = snapshot::decode(&whole).unwrap();
            assert_eq!(decode_compact(&whole).unwrap(), expected, "{n} hosts");
        }
        let mut cut = snapshot::encode(
            (1..=1500)
                .map(host)
                .collect::<Vec<_>>()
                .iter()
                .map(|h| &**h),
            at,
        );
        cut.truncate(cut.len() - 3);
        assert!(decode_compact(&cut).is_err());
    }
}
