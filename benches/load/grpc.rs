//! The gRPC load client: `Authorization/Check` over `connections` HTTP/2
//! connections, either closed-loop (`concurrency` callers, each sending its
//! next Check when the last one is answered: the maximum throughput) or
//! open-loop at a fixed rate (latency measured from when each request was
//! due, so a stalled server is not hidden by a stalled client: no
//! coordinated omission). Requests are pre-encoded, so the client spends its
//! CPU on HTTP/2, not on protobuf.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use envoy_types::pb::google::rpc;
use hdrhistogram::Histogram;
use prost::{
    Message,
    bytes::{BufMut, Bytes},
};
use tokio::time::Instant;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};

use crate::report::{Counts, RunResult, histogram, wait_until_due};

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

/// How to drive the server.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `n` callers in a loop.
    Closed(usize),
    /// Requests per second, open loop.
    Rate(u64),
}

/// Sends pre-encoded requests; reads only the response's `status.code`.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

/// `CheckResponse` with every field but `status` skipped.
#[derive(Clone, PartialEq, Message)]
struct StatusOnly {
    #[prost(message, optional, tag = "1")]
    status: Option<rpc::Status>,
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = i32;
    type Encoder = Self;
    type Decoder = Self;
    fn encoder(&mut self) -> Self {
        *self
    }
    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = i32;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<i32>, Status> {
        let head =
            StatusOnly::decode(src).map_err(|e| Status::internal(format!("bad response: {e}")))?;
        Ok(Some(head.status.map_or(-1, |s| s.code)))
    }
}

async fn check(channel: Channel, body: Bytes) -> Result<i32, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_static(CHECK);
    Ok(grpc
        .unary(tonic::Request::new(body), path, RawCodec)
        .await?
        .into_inner())
}

fn count(counts: &Counts, result: &Result<i32, Status>) {
    let c = match result {
        Ok(code) if *code == rpc::Code::Ok as i32 => &counts.allow,
        Ok(code) if *code == rpc::Code::PermissionDenied as i32 => &counts.deny,
        _ => &counts.errors,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// Runs one load against `addr`: `warmup` unrecorded, then `duration`.
pub async fn run(
    addr: SocketAddr,
    requests: Arc<Vec<Bytes>>,
    mode: Mode,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
        channels.push(endpoint.connect().await?);
    }
    let start = Instant::now() + Duration::from_millis(10);
    let record_from = start + warmup;
    let end = record_from + duration;
    let counts = Arc::new(Counts::default());
    let hist = match mode {
        Mode::Closed(n) => closed(channels, requests, n, record_from, end, counts.clone()).await,
        Mode::Rate(rps) => {
            open(
                channels,
                requests,
                rps,
                start,
                record_from,
                end,
                counts.clone(),
            )
            .await
        }
    };
    Ok(RunResult::new(&hist, &counts, duration))
}

async fn closed(
    channels: Vec<Channel>,
    requests: Arc<Vec<Bytes>>,
    callers: usize,
    record_from: Instant,
    end: Instant,
    counts: Arc<Counts>,
) -> Histogram<u64> {
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let channel = channels[c % channels.len()].clone();
        let (requests, counts) = (requests.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut i = c * 7919;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let body = requests[i % requests.len()].clone();
                i += 1;
                let result = check(channel.clone(), body).await;
                if sent >= record_from {
                    let _ = hist.record(sent.elapsed().as_micros() as u64);
                    count(&counts, &result);
                }
            }
            hist
        }));
    }
    merged(tasks).await
}

/// The callers' histograms, added up once every caller has finished.
async fn merged(tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>) -> Histogram<u64> {
    let mut all = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(h);
        }
    }
    all
}

/// Callers of the open loop: the most requests it keeps in flight. A server
/// that falls behind makes requests late, and their latency counts from when
/// each was due, so the cap hides nothing.
const OPEN_CALLERS: u64 = 256;

/// The open loop, paced per caller (as wrk2 does): caller `k` sends requests
/// `k`, `k + OPEN_CALLERS`, … each at its due time on one schedule at `rps`,
/// or at once when it is already late. No task per request and no shared
/// histogram: at tens of thousands of requests a second the client's own
/// cost stays below the server's.
async fn open(
    channels: Vec<Channel>,
    requests: Arc<Vec<Bytes>>,
    rps: u64,
    start: Instant,
    record_from: Instant,
    end: Instant,
    counts: Arc<Counts>,
) -> Histogram<u64> {
    let interval = Duration::from_secs_f64(1.0 / rps.max(1) as f64);
    let mut tasks = Vec::with_capacity(OPEN_CALLERS as usize);
    for k in 0..OPEN_CALLERS {
        let channel = channels[k as usize % channels.len()].clone();
        let (requests, counts) = (requests.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut i = k;
            while let Some(due) = wait_until_due(start, interval, i, end).await {
                let body = requests[i as usize % requests.len()].clone();
                let result = check(channel.clone(), body).await;
                if due >= record_from {
                    let _ = hist.record(due.elapsed().as_micros() as u64);
                    count(&counts, &result);
                }
                i += OPEN_CALLERS;
            }
            hist
        }));
    }
    merged(tasks).await
}
