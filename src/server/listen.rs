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

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixListener, UnixStream},
};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming, UdsConnectInfo};

/// A connection (TCP or Unix) that asks h2 to coalesce frames under 1 KiB.
#[derive(Debug)]
pub struct Coalescing<S>(S);

impl<S> Coalescing<S> {
    /// Wraps an accepted connection.
    pub fn new(stream: S) -> Self {
        Self(stream)
    }
}

/// `incoming`'s connections, each wrapped in [`Coalescing`].
pub fn coalescing(
    incoming: TcpIncoming,
) -> impl Stream<Item = Result<Coalescing<TcpStream>, io::Error>> + Send + 'static {
    incoming.map(|accepted| accepted.map(Coalescing::new))
}

/// A Unix socket listener's connections, each wrapped in [`Coalescing`].
pub fn coalescing_unix(
    listener: UnixListener,
) -> impl Stream<Item = Result<Coalescing<UnixStream>, io::Error>> + Send + 'static {
    UnixListenerStream::new(listener).map(|accepted| accepted.map(Coalescing::new))
}

impl Connected for Coalescing<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl Connected for Coalescing<UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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

    #[tokio::test]
    async fn passes_bytes_both_ways_and_declines_vectored_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client =
            tokio::spawn(async move { ping(TcpStream::connect(addr).await.unwrap()).await });
        let mut incoming = Box::pin(coalescing(TcpIncoming::from(listener)));
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
        let mut incoming = Box::pin(coalescing_unix(listener));
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
