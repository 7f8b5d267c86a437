//! Health: `/livez`, `/readyz` with what is missing, `grpc.health.v1` SERVING
//! only once ready, gRPC reflection listing every service, and a start from
//! files the binary has already read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use common::ops::{Env, allowed, check, get, reason_header};
use common::server::channel;
use fleet_authz::{
    policy::load_policy,
    posture::{PostureStore, load_posture_file},
    server::{Extensions, Preloaded, start, start_with},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const AUTHZ: &str = "envoy.service.auth.v3.Authorization";

async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn not_ready_until_a_posture_is_in_memory_then_serving() {
    let env = Env::new();
    // The caller's store stays empty, as with a Fleet source before its
    // first sync.
    let store = Arc::new(PostureStore::new());
    let ext = Extensions {
        store: Some(Arc::clone(&store)),
        ..Extensions::default()
    };
    let server = start_with(env.config(""), ext).await.unwrap();
    let http = server.http_addr();

    assert_eq!(get(http, "/livez", None).await, (200, "ok\n".to_owned()));
    let (code, body) = get(http, "/readyz", None).await;
    assert_eq!(code, 503);
    assert!(
        body.starts_with("not ready: no posture in memory yet"),
        "{body}"
    );

    let mut health = HealthClient::new(channel(server.grpc_addr()).await);
    assert_eq!(
        status(&mut health, AUTHZ).await,
        ServingStatus::NotServing as i32
    );
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().status;
    assert_ne!(first, ServingStatus::Serving as i32);

    let now = SystemTime::now();
    store.replace_all(load_posture_file(&env.posture, now).unwrap().hosts, now);

    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("health changes once the posture is loaded")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::Serving as i32);
    assert_eq!(
        status(&mut health, AUTHZ).await,
        ServingStatus::Serving as i32
    );
    let (code, body) = get(http, "/readyz", None).await;
    assert_eq!(
        (code, body.as_str()),
        (200, "ready: 2 hosts, 2 fingerprints\n")
    );
    drop(watch);
    server.shutdown().await;
}

#[tokio::test]
async fn reflection_lists_every_service_and_describes_envoy_check() {
    let env = Env::new();
    let server = start(env.config("")).await.unwrap();
    let mut client = ServerReflectionClient::new(channel(server.grpc_addr()).await);
    let ask = |message: MessageRequest| {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message),
        }])
    };

    let mut answers = client
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            AUTHZ,
            "fleet_authz.v1.Admin",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );

    let mut answers = client
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(AUTHZ.to_owned())))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors for {AUTHZ}");
    };
    use prost::Message;
    let names: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|b| {
            prost_types::FileDescriptorProto::decode(b.as_slice())
                .unwrap()
                .name()
                .to_owned()
        })
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n == "envoy/service/auth/v3/external_auth.proto"),
        "{names:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_preloaded_policy_and_posture_are_served_without_reading_the_files_again() {
    // `fleet-authz serve` validates both files before it starts and hands
    // them over: the server must use those, not read the files a second time.
    let env = Env::new();
    let preloaded = Preloaded {
        policy: load_policy(&env.policy).unwrap(),
        posture: Some(load_posture_file(&env.posture, SystemTime::now()).unwrap()),
    };
    std::fs::remove_file(&env.policy).unwrap();
    std::fs::remove_file(&env.posture).unwrap();
    let ext = Extensions {
        preloaded: Some(preloaded),
        ..Extensions::default()
    };
    let server = start_with(env.config(""), ext).await.unwrap();

    assert_eq!(get(server.http_addr(), "/readyz", None).await.0, 200);
    let good = check(server.grpc_addr(), &env.good.pem, &[]).await;
    assert!(allowed(&good), "{good:?}");
    let bad = check(server.grpc_addr(), &env.bad.pem, &[]).await;
    assert_eq!(reason_header(&bad), "failing_critical_policy");
    server.shutdown().await;
}
