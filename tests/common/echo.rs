//! The application behind Envoy in tests: an HTTP/1.1 server on 127.0.0.1:0
//! that answers every request with 200 and a JSON object of the request
//! headers it received, so a test can see exactly what reached the upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

use std::net::SocketAddr;

use axum::{Json, Router, http::HeaderMap};
use serde_json::{Map, Value};
use tokio::{net::TcpListener, task::JoinHandle};

/// A running echo server; stops when dropped.
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    /// Binds 127.0.0.1:0 and serves in the background.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(echo_headers);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Header name → value. A header received more than once is joined with
/// ", ", so a test comparing with a single value notices the duplicate.
async fn echo_headers(headers: HeaderMap) -> Json<Value> {
    let mut out = Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        out.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    Json(Value::Object(out))
}
