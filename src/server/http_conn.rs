//! The HTTP listener's connections (probes, metrics, admin API), with the
//! two timeouts `axum::serve` does not set: an outside test held the port
//! with slowloris connections (half a request line, then nothing) that were
//! never closed.
//!
//! - **Header timeout** (`listen.http_header_timeout`): a request's headers
//!   must arrive whole within it (hyper's `header_read_timeout`); counted as
//!   `fleet_authz_limits_hit_total{limit="http_header_timeout"}`.
//! - **Idle timeout** (`listen.http_idle_timeout`): a connection on which no
//!   byte moves either way for this long is closed, also between requests
//!   of a keep-alive connection ([`IdleClosing`]); counted as
//!   `limit="http_idle_timeout"`.
//!
//! Stopping: no new connections, each open one finishes its request in
//! flight and closes (hyper's graceful shutdown).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    task::JoinSet,
    time::{Instant, Sleep},
};

use crate::telemetry::metrics::{LimitLabels, Metrics};

/// The two timeouts of an HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Longest wait for a request's whole header block.
    pub header: Duration,
    /// Longest time with no byte read or written.
    pub idle: Duration,
}

/// Serves `app` on `listener` until `stop` resolves, then lets the open
/// connections finish their requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    timeouts: HttpTimeouts,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let (closing, _) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    let mut warned: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // EMFILE and the like: pause rather than spin, and
                    // log at most every 10 s.
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        warned = Some(Instant::now());
                        tracing::warn!(%error, "http accept failed; pausing");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let conn = serve_connection(stream, app.clone(), timeouts, Arc::clone(&metrics));
        let mut closing = closing.subscribe();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let stopping = tokio::select! {
                () = &mut conn => false,
                _ = closing.wait_for(|c| *c) => true,
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                conn.await;
            }
        });
    }
    closing.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One connection; a header timeout that closes it is counted.
struct Connection {
    conn: hyper::server::conn::http1::Connection<
        TokioIo<IdleClosing<tokio::net::TcpStream>>,
        TowerToHyperService<axum::Router>,
    >,
    metrics: Arc<Metrics>,
}

fn serve_connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    timeouts: HttpTimeouts,
    metrics: Arc<Metrics>,
) -> ConnectionFuture {
    let io = TokioIo::new(IdleClosing::new(
        stream,
        timeouts.idle,
        Arc::clone(&metrics),
    ));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .serve_connection(io, TowerToHyperService::new(app));
    ConnectionFuture(Box::pin(Connection { conn, metrics }))
}

/// A served connection as a future that ends when it closes.
struct ConnectionFuture(Pin<Box<Connection>>);

impl ConnectionFuture {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        Pin::new(&mut self.get_mut().0.conn).graceful_shutdown();
    }
}

impl Future for ConnectionFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = self.0.as_mut().get_mut();
        if let Err(error) = ready!(Pin::new(&mut inner.conn).poll(cx)) {
            if error.is_timeout() {
                let limit = "http_header_timeout";
                inner
                    .metrics
                    .limits_hit
                    .get_or_create(&LimitLabels { limit })
                    .inc();
            }
            tracing::debug!(%error, "http connection closed");
        }
        Poll::Ready(())
    }
}

/// A stream that fails with `TimedOut` once no byte was read or written
/// for `idle`; hyper then closes the connection.
/// The timeout is counted in `limit="http_idle_timeout"` (hyper closes an
/// idle keep-alive connection quietly, so the count cannot come from it).
pub struct IdleClosing<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    timed_out: bool,
}

impl<S> IdleClosing<S> {
    /// Wraps `inner`, closing it after `idle` without traffic.
    pub fn new(inner: S, idle: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            metrics,
            timed_out: false,
        }
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// `Pending` from the stream: still pending, or `TimedOut` once idle.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        ready!(self.deadline.as_mut().poll(cx));
        if !std::mem::replace(&mut self.timed_out, true) {
            let limit = "http_idle_timeout";
            self.metrics
                .limits_hit
                .get_or_create(&LimitLabels { limit })
                .inc();
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "http connection idle past listen.http_idle_timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleClosing<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.moved();
                Poll::Ready(result)
            }
            Poll::Pending => this.waiting(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleClosing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.moved();
                Poll::Ready(result)
            }
            Poll::Pending => this.waiting(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
