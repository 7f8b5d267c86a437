//! The gRPC listener's connections, tuned for many small answers.
//!
//! h2 writes a DATA frame larger than its chaining threshold as a separate
//! buffer, and while one is pending it encodes nothing else: the frame costs
//! a `writev` of its own. The threshold is 256 bytes when the socket says it
//! supports vectored writes and 1,024 bytes when it does not. An allow with
//! identity headers and dynamic metadata is ~250–350 bytes, a deny with its
//! JSON body ~600–900, so over a plain `TcpStream` most CheckResponses went
//! out one `writev` each (measured: 1.8 `writev` per Check against 0.9 for a
//! 5-byte answer, and the kernel's wake-ups of the reader were the largest
//! single cost). [`Coalescing`] reports no vectored-write support, so h2
//! copies answers under 1 KiB into its write buffer and sends many per
//! syscall; each answer is copied once more, which is far cheaper.
//!
//! The listener may also be a Unix socket (`listen.grpc: unix:/path`):
//! [`bind_unix`] binds it, and its connections are wrapped the same way.
//!
//! Accepting is bounded ([`guarded`]): at most [`MAX_GRPC_CONNECTIONS`]
//! connections at once (past that, new ones wait in the kernel's backlog),
//! and an accept error such as EMFILE (no file descriptors left) backs off
//! from 5 ms to 1 s instead of retrying at once, which spun a CPU.

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_stream::{
    Stream, StreamExt,
    wrappers::{ReceiverStream, UnixListenerStream},
};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming, UdsConnectInfo};

use crate::telemetry::metrics::{LimitLabels, Metrics};

/// gRPC connections served at once.
pub const MAX_GRPC_CONNECTIONS: usize = 512;
/// First and longest wait after an accept error.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));
/// At most one warning per this long for the same bound.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A connection (TCP or Unix) that asks h2 to coalesce frames under 1 KiB,
/// holding its place under the connection bound while it lives.
#[derive(Debug)]
pub struct Coalescing<S> {
    stream: S,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<S> Coalescing<S> {
    /// Wraps an accepted connection.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            _permit: None,
        }
    }
}

/// `incoming`'s connections, bounded by [`guarded`].
pub fn coalescing(
    incoming: TcpIncoming,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Coalescing<TcpStream>, io::Error>> + Send + 'static {
    guarded(incoming, MAX_GRPC_CONNECTIONS, metrics)
}

/// A Unix socket listener's connections, bounded by [`guarded`].
pub fn coalescing_unix(
    listener: UnixListener,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Coalescing<UnixStream>, io::Error>> + Send + 'static {
    guarded(
        UnixListenerStream::new(listener),
        MAX_GRPC_CONNECTIONS,
        metrics,
    )
}

/// Accepts from `incoming` on a task of its own: at most `max` connections
/// live at once, and an accept error is counted
/// (`fleet_authz_limits_hit_total{limit="grpc_accept_error"}`), logged at
/// most every 10 s, and followed by a growing pause. Ends when the server
/// stops taking connections.
pub fn guarded<S, C>(
    incoming: S,
    max: usize,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Coalescing<C>, io::Error>> + Send + 'static
where
    S: Stream<Item = Result<C, io::Error>> + Send + 'static,
    C: Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(max));
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        let (mut delay, mut warned) = (ACCEPT_BACKOFF.0, None::<Instant>);
        loop {
            if permits.available_permits() == 0 {
                hit(&metrics, "grpc_connections", &mut warned);
            }
            let permit = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => p,
                _ = tx.closed() => return,
            };
            let Ok(permit) = permit else { return };
            let next = tokio::select! {
                next = incoming.next() => next,
                _ = tx.closed() => return,
            };
            match next {
                None => return,
                Some(Ok(stream)) => {
                    delay = ACCEPT_BACKOFF.0;
                    let conn = Coalescing {
                        stream,
                        _permit: Some(permit),
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(Err(error)) => {
                    drop(permit);
                    if hit(&metrics, "grpc_accept_error", &mut warned) {
                        tracing::warn!(%error, ?delay, "gRPC accept failed; backing off");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(ACCEPT_BACKOFF.1);
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Counts a bound being hit; true when it is time to log it again.
fn hit(metrics: &Metrics, limit: &'static str, warned: &mut Option<Instant>) -> bool {
    metrics
        .limits_hit
        .get_or_create(&LimitLabels { limit })
        .inc();
    let due = warned.is_none_or(|at| at.elapsed() >= WARN_EVERY);
    if due {
        *warned = Some(Instant::now());
        if limit == "grpc_connections" {
            tracing::warn!(
                max = MAX_GRPC_CONNECTIONS,
                "gRPC connection bound reached; new connections wait"
            );
        }
    }
    due
}

impl Connected for Coalescing<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl Connected for Coalescing<UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    /// The point of the type: h2 then uses its larger copy threshold.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The mode of the gRPC Unix socket: owner and group may connect. Envoy in
/// another container reaches it through a shared directory and a shared
/// group (in Kubernetes, the pod's `fsGroup`); nobody else can.
pub const UNIX_SOCKET_MODE: u32 = 0o660;

/// Binds a Unix socket at `path` for the gRPC services.
///
/// A socket file left by a process that is gone (it crashed, or was killed
/// before it could remove it) is replaced: nothing answers on it. A socket
/// some process still answers on is refused, as is any other kind of file,
/// which is left untouched.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process is serving on this socket",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(UNIX_SOCKET_MODE))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limit_hits(metrics: &Metrics, limit: &'static str) -> u64 {
        metrics
            .limits_hit
            .get_or_create(&LimitLabels { limit })
            .get()
    }

    /// EMFILE on every accept: the loop pauses 5 ms, 10 ms, 20 ms, ... and
    /// never spins; the first good connection after it resets the pause.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&polls);
        let errors = tokio_stream::iter(0..7).map(move |i| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i < 6 {
                Err(io::Error::from_raw_os_error(24)) // EMFILE
            } else {
                Ok(())
            }
        });
        let metrics = Arc::new(Metrics::new());
        let started = tokio::time::Instant::now();
        let mut incoming = Box::pin(guarded(errors, 4, Arc::clone(&metrics)));
        assert!(incoming.next().await.unwrap().is_ok());
        // 5 + 10 + 20 + 40 + 80 + 160 ms of (virtual) pauses, seven accepts.
        assert_eq!(started.elapsed(), Duration::from_millis(315));
        assert_eq!(polls.load(std::sync::atomic::Ordering::Relaxed), 7);
        assert_eq!(limit_hits(&metrics, "grpc_accept_error"), 6);
    }

    /// Past the bound, the next connection waits until one closes.
    #[tokio::test]
    async fn at_most_max_connections_are_live() {
        let metrics = Arc::new(Metrics::new());
        let mut incoming = Box::pin(guarded(
            tokio_stream::iter([Ok::<_, io::Error>(1), Ok(2), Ok(3)]),
            2,
            Arc::clone(&metrics),
        ));
        let first = incoming.next().await.unwrap().unwrap();
        let second = incoming.next().await.unwrap().unwrap();
        assert_eq!((first.stream, second.stream), (1, 2));
        let waiting = tokio::time::timeout(Duration::from_millis(50), incoming.next()).await;
        assert!(waiting.is_err(), "a third connection was handed out");
        assert_eq!(limit_hits(&metrics, "grpc_connections"), 1);
        drop(first);
        assert_eq!(incoming.next().await.unwrap().unwrap().stream, 3);
    }

    #[tokio::test]
    async fn passes_bytes_both_ways_and_declines_vectored_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client =
            tokio::spawn(async move { ping(TcpStream::connect(addr).await.unwrap()).await });
        let mut incoming = Box::pin(coalescing(TcpIncoming::from(listener), Arc::default()));
        let conn = incoming.next().await.unwrap().unwrap();
        assert_eq!(conn.connect_info().local_addr(), Some(addr));
        pong(conn, client).await;
    }

    /// The client side: sends "ping", returns the 4 bytes answered.
    async fn ping(mut s: impl AsyncRead + AsyncWrite + Unpin) -> [u8; 4] {
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        buf
    }

    /// The server side: a coalescing connection reads "ping" and answers
    /// "pong", which `client` must get.
    async fn pong<S: AsyncRead + AsyncWrite + Unpin>(
        mut conn: Coalescing<S>,
        client: tokio::task::JoinHandle<[u8; 4]>,
    ) {
        assert!(!conn.is_write_vectored());
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
    }

    #[tokio::test]
    async fn unix_socket_is_group_only_and_carries_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpc.sock");
        let listener = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, UNIX_SOCKET_MODE);
        let client = tokio::spawn({
            let path = path.clone();
            async move { ping(UnixStream::connect(path).await.unwrap()).await }
        });
        let mut incoming = Box::pin(coalescing_unix(listener, Arc::default()));
        pong(incoming.next().await.unwrap().unwrap(), client).await;
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_and_other_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpc.sock");
        // Live: something accepts on it.
        let live = bind_unix(&path).unwrap();
        let err = bind_unix(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // Stale: the listener is gone, its file is not (as after a crash).
        drop(live);
        assert!(path.exists());
        let again = bind_unix(&path).unwrap();
        let connected = UnixStream::connect(&path).await;
        assert!(connected.is_ok(), "{connected:?}");
        drop(again);
        // Not a socket: refused, and the file keeps its content.
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind_unix(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
