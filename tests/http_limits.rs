//! The HTTP port's bounds (README, "Limits"): a slowloris connection (half
//! a request line, then nothing, or a byte at a time) is closed after
//! `listen.http_header_timeout`; a keep-alive connection left idle is closed
//! after `listen.http_idle_timeout`; both are counted; ordinary requests
//! still work; and a 100 MB POST is answered 413 on every POST route.
//! Raw TCP clients, so nothing between the test and the server hides what
//! the server does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::time::{Duration, Instant};

use common::server::{install_crypto_provider, start, write_files};
use fleet_authz::server::RunningServer;
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A server with the demo posture and the given timeouts.
async fn server(dir: &TempDir, header: &str, idle: &str) -> RunningServer {
    let posture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/demo/posture.yaml"
    ))
    .unwrap();
    let files = write_files(dir.path(), "version: 1\n", &posture);
    let yaml = format!(
        "listen: {{grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", \
         http_header_timeout: {header}, http_idle_timeout: {idle}}}\n{files}"
    );
    start(&yaml, dir.path()).await
}

/// Reads until the server closes the connection; what it sent, and when
/// it closed. A reset counts as closed.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&got).into_owned(), Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn limit_hits(server: &RunningServer, limit: &str) -> u64 {
    install_crypto_provider();
    let text = reqwest::get(format!("http://{}/metrics", server.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("fleet_authz_limits_hit_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.parse().unwrap())
}

/// Bounds of a close expected `after` the start: not before it (less a
/// little timer slack), and well within 3 s.
fn assert_closed_after(started: Instant, closed: Instant, after: Duration, what: &str) {
    let took = closed - started;
    assert!(
        took >= after - Duration::from_millis(50) && took < Duration::from_secs(3),
        "{what}: closed after {took:?}"
    );
}

#[tokio::test]
async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
    let dir = TempDir::new().unwrap();
    let server = server(&dir, "400ms", "60s").await;
    // Half a request line, then nothing.
    let mut stream = TcpStream::connect(server.http_addr()).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET /livez HT").await.unwrap();
    let (_, closed) = read_until_closed(&mut stream).await;
    assert_closed_after(started, closed, Duration::from_millis(400), "half a line");
    // A byte every 100 ms keeps the connection busy but never finishes the
    // headers: the header timeout still closes it.
    let mut stream = TcpStream::connect(server.http_addr()).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        for byte in b"GET /livez HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = reader.read(&mut buf).await {
            let _ = n;
        }
        Instant::now()
    };
    let ((), closed) = tokio::join!(trickle, closed);
    assert_closed_after(
        started,
        closed,
        Duration::from_millis(400),
        "a byte at a time",
    );
    assert_eq!(limit_hits(&server, "http_header_timeout").await, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = TempDir::new().unwrap();
    let server = server(&dir, "60s", "400ms").await;
    let mut stream = TcpStream::connect(server.http_addr()).await.unwrap();
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: fleet-authz\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(!answer.contains("connection: close"), "{answer}");
    assert_closed_after(started, closed, Duration::from_millis(400), "idle");
    assert_eq!(limit_hits(&server, "http_idle_timeout").await, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn ordinary_requests_still_work_with_short_timeouts() {
    let dir = TempDir::new().unwrap();
    let server = server(&dir, "300ms", "300ms").await;
    install_crypto_provider();
    let client = reqwest::Client::new();
    for path in ["/livez", "/readyz", "/metrics", "/livez"] {
        let resp = client
            .get(format!("http://{}{path}", server.http_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert_eq!(limit_hits(&server, "http_header_timeout").await, 0);
    server.shutdown().await;
}

/// 100 MB announced and sent as fast as the server reads: every POST route
/// answers 413.
#[tokio::test]
async fn a_100_mb_post_is_answered_413() {
    let dir = TempDir::new().unwrap();
    let server = server(&dir, "10s", "120s").await;
    for (path, kind) in [
        ("/v1/sync", "application/json"),
        ("/v1/break-glass", "application/json"),
        ("/.fleet-authz/bypass", "application/x-www-form-urlencoded"),
    ] {
        let mut stream = TcpStream::connect(server.http_addr()).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: fleet-authz\r\nContent-Type: {kind}\r\n\
             Content-Length: 104857600\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut reader, mut writer) = stream.split();
        let body = async {
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..100 {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        };
        let answer = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        };
        let ((), answer) = tokio::join!(body, answer);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{path}: {answer}");
    }
    server.shutdown().await;
}
