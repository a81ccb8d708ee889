//! Listeners that a remote peer cannot exhaust (issue 10, defect 4).
//!
//! - **Connection cap:** a listener holds at most `max` connections; at the cap it stops
//!   accepting (the kernel's backlog holds the rest) until one closes.
//! - **Accept back-off:** an accept error (out of fds, out of memory) waits 10 ms, doubling to
//!   1 s, instead of spinning; the first success resets it.
//! - **Timeouts** ([`GuardedIo`], HTTP): a connection with no bytes either way for `idle` is
//!   closed (idle keep-alives, stalled peers), and so is one that has sent part of a request
//!   (headers or body) without it being answered within `request_read` while the server still
//!   waits for more of it (slowloris). A handler that takes long is not cut: the clocks only run
//!   while the server is reading.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Accepts connections under a cap, backing off on errors.
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
}

/// The HTTP listener: a [`GuardedListener`] whose connections carry the [`GuardedIo`] clocks.
pub struct HttpListener {
    guarded: GuardedListener,
    timeouts: Timeouts,
}

impl HttpListener {
    pub fn new(guarded: GuardedListener, timeouts: Timeouts) -> HttpListener {
        HttpListener { guarded, timeouts }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
    pub request_read: Duration,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, max_connections: usize) -> GuardedListener {
        let max = max_connections.max(1);
        GuardedListener { inner, slots: Arc::new(Semaphore::new(max)), max }
    }

    /// Connections currently held.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// The next connection, once a slot is free; never returns an error (they are waited out).
    pub async fn accept_guarded(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let permit = self.slots.clone().acquire_owned().await.expect("never closed");
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => return (stream, peer, permit),
                Err(e) => {
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = GuardedIo<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, peer, permit) = self.guarded.accept_guarded().await;
        let _ = stream.set_nodelay(true);
        (GuardedIo::new(stream, self.timeouts, Some(permit)), peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.guarded.inner.local_addr()
    }
}

/// The client's address, for handlers that need it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A connection with the idle and request-read clocks of the module doc; it holds its
/// listener slot until dropped.
pub struct GuardedIo<T> {
    inner: T,
    timeouts: Timeouts,
    /// When the connection last moved a byte either way.
    last_activity: Instant,
    /// When the first byte read since the last write arrived (a request in progress).
    unanswered_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<T> GuardedIo<T> {
    pub fn new(inner: T, timeouts: Timeouts, slot: Option<OwnedSemaphorePermit>) -> GuardedIo<T> {
        let now = Instant::now();
        GuardedIo { inner, timeouts, last_activity: now, unanswered_since: None, timer: Box::pin(tokio::time::sleep_until(now + timeouts.idle)), _slot: slot }
    }

    fn deadline(&self) -> Instant {
        let idle = self.last_activity + self.timeouts.idle;
        match self.unanswered_since {
            Some(t) => idle.min(t + self.timeouts.request_read),
            None => idle,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    self.last_activity = now;
                    self.unanswered_since.get_or_insert(now);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = self.deadline();
                if self.timer.deadline() != deadline {
                    self.timer.as_mut().reset(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle or request too slow"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.last_activity = Instant::now();
                self.unanswered_since = None;
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Timeouts = Timeouts { idle: Duration::from_secs(60), request_read: Duration::from_secs(10) };

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out() {
        let (a, _b) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(a, T, None);
        let started = Instant::now();
        let err = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed().as_secs(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_request_times_out_at_the_request_clock() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(a, T, None);
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if b.write_all(b"G").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut buf = [0u8; 8];
        let err = loop {
            match io.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed().as_secs(), 10, "one byte a second never resets the request clock");
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_resets_the_request_clock() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(a, T, None);
        b.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut [0u8; 8]).await.unwrap(), 3);
        tokio::time::sleep(Duration::from_secs(9)).await;
        io.write_all(b"200").await.unwrap();
        // Now idle: the next timeout is the idle one, 60 s after the answer.
        let t = Instant::now();
        assert!(io.read(&mut [0u8; 8]).await.is_err());
        assert_eq!(t.elapsed().as_secs(), 60);
    }

    #[tokio::test]
    async fn the_cap_holds_further_connections_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut guarded = GuardedListener::new(listener, 2);
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let _c3 = TcpStream::connect(addr).await.unwrap();
        let (_s1, _, p1) = guarded.accept_guarded().await;
        let (_s2, _, _p2) = guarded.accept_guarded().await;
        assert_eq!(guarded.open(), 2);
        let third = tokio::time::timeout(Duration::from_millis(200), guarded.accept_guarded()).await;
        assert!(third.is_err(), "a third connection waits while two are held");
        drop(p1);
        let third = tokio::time::timeout(Duration::from_secs(2), guarded.accept_guarded()).await;
        assert!(third.is_ok(), "a freed slot lets the next one in");
    }
}
