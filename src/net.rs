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

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// A TCP connection that asks h2 to coalesce frames under 1 KiB.
#[derive(Debug)]
pub struct Coalescing(TcpStream);

impl Coalescing {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Self {
        Self(stream)
    }
}

/// `incoming`'s connections, each wrapped in [`Coalescing`].
pub fn coalescing(
    incoming: TcpIncoming,
) -> impl Stream<Item = Result<Coalescing, io::Error>> + Send + 'static {
    incoming.map(|accepted| accepted.map(Coalescing::new))
}

impl Connected for Coalescing {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl AsyncRead for Coalescing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalescing {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn passes_bytes_both_ways_and_declines_vectored_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            buf
        });
        let mut incoming = Box::pin(coalescing(TcpIncoming::from(listener)));
        let mut conn = incoming.next().await.unwrap().unwrap();
        assert!(!conn.is_write_vectored());
        assert_eq!(conn.connect_info().local_addr(), Some(addr));
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
    }
}
