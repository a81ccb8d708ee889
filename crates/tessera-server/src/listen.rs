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

/// The client's address, for handlers that need it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Serves `router` on `listener` until `stop` turns true, then waits for open connections to
/// finish (the caller bounds that wait). HTTP/1.1 with upgrades (WebSocket) and HTTP/2 — over
/// TLS when `tls` is given (ALPN picks the version), else cleartext (HTTP/2 by prior knowledge).
/// Each connection runs on its own task, so a slow TLS handshake holds up no one else; it gets
/// the request-read time to finish.
pub async fn serve(mut listener: HttpListener, router: axum::Router, tls: Option<tokio_rustls::TlsAcceptor>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let timeouts = listener.timeouts;
    loop {
        let (stream, peer, permit) = tokio::select! {
            accepted = listener.guarded.accept_guarded() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let _ = stream.set_nodelay(true);
        let io = GuardedIo::new(stream, timeouts, Some(permit));
        let (router, watcher, tls) = (router.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(io, peer, router, watcher).await,
                Some(acceptor) => match tokio::time::timeout(timeouts.request_read, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => serve_connection(tls, peer, router, watcher).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    graceful.shutdown().await;
}

async fn serve_connection<I>(io: I, peer: SocketAddr, router: axum::Router, watcher: hyper_util::server::graceful::Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(axum::extract::ConnectInfo(PeerAddr(peer)));
        router.clone().oneshot(request)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service).into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(%peer, "HTTP connection ended: {e}");
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
