//! OpenTelemetry over OTLP/gRPC: a `check` span per Check, child of the
//! `traceparent` Envoy forwarded, with the decision's attributes; `sync`
//! spans; the decision counter as an OTLP metric. An in-test collector on
//! 127.0.0.1:0 receives what the real exporters send.
//!
//! The OTel layer is installed as the global subscriber, so this binary holds
//! this one test only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::ops::{Env, reason_header};
use common::server::channel;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, any_value::Value},
    metrics::v1::metric,
    trace::v1::Span,
};
use tracing::Instrument;
use tracing_subscriber::prelude::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<String>>>,
    /// The bucket bounds of each exported Check latency data point.
    check_duration_bounds: Arc<Mutex<Vec<Vec<f64>>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self.metrics.lock().unwrap();
        let mut bounds = self.check_duration_bounds.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    if let (
                        "fleet_authz.check.duration",
                        Some(metric::Data::Histogram(histogram)),
                    ) = (metric.name.as_str(), &metric.data)
                    {
                        bounds.extend(
                            histogram
                                .data_points
                                .iter()
                                .map(|p| p.explicit_bounds.clone()),
                        );
                    }
                    names.push(metric.name);
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(AnyValue {
                value: Some(Value::StringValue(s)),
            }) => Some(s.clone()),
            Some(AnyValue {
                value: Some(Value::IntValue(i)),
            }) => Some(i.to_string()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_and_syncs_are_exported_as_spans_joined_to_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let (layer, guard) = fleet_authz::telemetry::otel_layer(&endpoint).unwrap();
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .init();

    let env = Env::new();
    let config = env.config(&format!("telemetry: {{otlp_endpoint: \"{endpoint}\"}}\n"));
    let server = fleet_authz::server::start(config).await.unwrap();
    let mut client = AuthorizationClient::new(channel(server.grpc_addr()).await);
    let mut request = fleet_authz::authz::request::build_check_request(
        &env.bad.pem,
        &[],
        "app.example.com",
        "/",
        false,
    );
    fleet_authz::authz::request::request_headers(&mut request).insert(
        "traceparent".to_owned(),
        format!("00-{TRACE_ID}-{PARENT_ID}-01"),
    );
    let answer = client.check(request).await.unwrap().into_inner();
    assert_eq!(reason_header(&answer), "failing_critical_policy");
    async { tracing::info!("posture published") }
        .instrument(fleet_authz::telemetry::sync_span("test"))
        .await;
    server.shutdown().await;

    // Dropping the guard flushes both pipelines; it blocks, so off the runtime.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let spans = collector.spans.lock().unwrap().clone();
    let check = spans.iter().find(|s| s.name == "check").unwrap_or_else(|| {
        panic!(
            "no check span among {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    });
    assert_eq!(hex::encode(&check.trace_id), TRACE_ID);
    assert_eq!(hex::encode(&check.parent_span_id), PARENT_ID);
    assert_eq!(attribute(check, "decision").as_deref(), Some("deny"));
    assert_eq!(attribute(check, "route").as_deref(), Some("default"));
    assert_eq!(
        attribute(check, "reasons").as_deref(),
        Some("failing_critical_policy")
    );
    assert_eq!(attribute(check, "host.id").as_deref(), Some("102"));
    assert_eq!(
        attribute(check, "request_id").as_deref(),
        Some("fleet-authz-cli")
    );
    let sync = spans
        .iter()
        .find(|s| s.name == "sync")
        .expect("the sync span is exported");
    assert_eq!(attribute(sync, "source").as_deref(), Some("test"));

    let metrics = collector.metrics.lock().unwrap().clone();
    assert!(
        metrics.iter().any(|m| m == "fleet_authz.decisions"),
        "{metrics:?}"
    );
    assert!(
        metrics.iter().any(|m| m == "fleet_authz.check.duration"),
        "{metrics:?}"
    );
    // The same buckets as Prometheus: 1 µs doubling to ~1 s, not the SDK's
    // default (0, 5, 10, … s), which puts every Check in one bucket.
    let expected: Vec<f64> = fleet_authz::telemetry::metrics::check_duration_bounds().collect();
    let bounds = collector.check_duration_bounds.lock().unwrap().clone();
    assert!(!bounds.is_empty(), "no Check latency data point exported");
    for exported in &bounds {
        assert_eq!(exported, &expected);
    }
    assert!((expected[0] - 1e-6).abs() < 1e-12, "{expected:?}");
}
