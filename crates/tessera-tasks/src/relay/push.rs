//! One connection attempt of a relay URL: TCP (or TLS for rtmps) to the CDN, the RTMP handshake,
//! connect and publish through `RtmpPushSession` (sans-IO), then FLV tags until the relay's task
//! closes it or the connection breaks; each connection's timestamps start at 0.

use super::{lock, short, AttemptReport, Feed, RelayMedia, Tag};
use std::sync::Arc;
use std::time::Duration;
use tessera_engine::outputs::relay::AttemptEnd;
use tessera_rtmp::client::{PushTarget, RtmpPushSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection attempt to one URL.
pub(super) struct Attempt {
    pub(super) url: String,
    pub(super) id: u64,
    /// The URL takes Enhanced RTMP (an HEVC or AV1 original) rather than the H.264 fallback.
    pub(super) enhanced: bool,
    pub(super) feed: Arc<Feed>,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) reports: mpsc::UnboundedSender<(String, u64, AttemptReport)>,
}

/// The spec's failure while pushing one URL: (error_code, message, whether it had been running).
struct Failure(u32, String, bool);

impl Attempt {
    pub(super) async fn run(self, mut rx: broadcast::Receiver<Tag>, mut closed: watch::Receiver<bool>) {
        let end = match PushTarget::parse(&self.url) {
            Err(e) => AttemptEnd::Failed { code: 1, msg: e.to_string(), was_running: false },
            Ok(target) => match self.connect_and_push(&target, &mut rx, &mut closed).await {
                Ok(()) => AttemptEnd::Closed,
                Err(Failure(code, msg, was_running)) => {
                    tracing::info!(url = %short(&self.url), code, "relay URL failed: {msg}");
                    AttemptEnd::Failed { code, msg, was_running }
                }
            },
        };
        let _ = self.reports.send((self.url.clone(), self.id, AttemptReport::Ended(end)));
    }

    fn running(&self) {
        let _ = self.reports.send((self.url.clone(), self.id, AttemptReport::Running));
    }
    async fn connect(&self, target: &PushTarget) -> Result<Box<dyn Connection>, Failure> {
        let tcp = crate::outbound::connect(&target.host, target.port, CONNECT_TIMEOUT).await.map_err(|e| Failure(1, e.to_string(), false))?;
        let _ = tcp.set_nodelay(true);
        if !target.tls {
            return Ok(Box::new(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| Failure(1, format!("bad TLS server name: {e}"), false))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp))
            .await
            .map_err(|_| Failure(2, "TLS handshake timed out".into(), false))?
            .map_err(|e| Failure(2, format!("TLS handshake failed: {e}"), false))?;
        Ok(Box::new(tls))
    }

    /// Connects, publishes, then pushes tags until closed (`Ok`) or broken (`Err`).
    async fn connect_and_push(&self, target: &PushTarget, rx: &mut broadcast::Receiver<Tag>, closed: &mut watch::Receiver<bool>) -> Result<(), Failure> {
        let mut socket = tokio::select! {
            s = self.connect(target) => s?,
            _ = closed.changed() => return Ok(()),
        };
        let mut session = RtmpPushSession::new(target.clone()).map_err(|e| Failure(e.code(), e.to_string(), false))?;
        let mut buf = vec![0u8; 16 * 1024];
        // Handshake, connect and publish.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        while !session.is_publishing() {
            if !session.outbound.is_empty() {
                socket.write_all(&session.outbound).await.map_err(|e| Failure(2, format!("write failed: {e}"), false))?;
                session.outbound.clear();
            }
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, socket.read(&mut buf)) => r,
                _ = closed.changed() => return Ok(()),
            };
            let n =
                read.map_err(|_| Failure(2, "no answer to the RTMP handshake/connect within 10 s".into(), false))?.map_err(|e| Failure(2, format!("read failed: {e}"), false))?;
            if n == 0 {
                return Err(Failure(2, "the server closed the connection during connect".into(), false));
            }
            session.feed(&buf[..n]).map_err(|e| Failure(e.code(), e.to_string(), false))?;
        }
        // Publishing: sequence headers, then media from the next keyframe.
        let mut running = false;
        let mut skip_to_keyframe = false;
        let mut sent_headers = (None::<Arc<[u8]>>, None::<Arc<[u8]>>);
        // Timestamps start at 0 on every connection (a CDN expects a fresh stream).
        let mut base: Option<u32> = None;
        loop {
            let tag = tokio::select! {
                _ = closed.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.shutdown()).await;
                    return Ok(());
                }
                t = rx.recv() => t,
                r = socket.read(&mut buf) => {
                    match r {
                        Ok(0) | Err(_) => return Err(Failure(4, "the server closed the connection".into(), running)),
                        Ok(n) => { let _ = session.feed(&buf[..n]); continue; }
                    }
                }
            };
            let tag = match tag {
                Ok(t) => t,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // This connection fell behind: video resumes at the next keyframe.
                    skip_to_keyframe = true;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            // Sequence headers whenever they are new (first, or a source switch).
            let vh = lock(if self.enhanced { &self.feed.enhanced_video_header } else { &self.feed.video_header }).clone();
            let ah = lock(&self.feed.audio_header).clone();
            if vh.is_some() && vh.as_ref().map(|h| h.as_ptr()) != sent_headers.0.as_ref().map(|h| h.as_ptr()) {
                if let Some(h) = &vh {
                    session.send_video(h, base.map(|b| tag_ts(&tag).wrapping_sub(b)).unwrap_or(0)).map_err(|e| Failure(4, e.to_string(), running))?;
                }
                sent_headers.0 = vh;
            }
            if ah.is_some() && ah.as_ref().map(|h| h.as_ptr()) != sent_headers.1.as_ref().map(|h| h.as_ptr()) {
                if let Some(h) = &ah {
                    session.send_audio(h, base.map(|b| tag_ts(&tag).wrapping_sub(b)).unwrap_or(0)).map_err(|e| Failure(4, e.to_string(), running))?;
                }
                sent_headers.1 = ah;
            }
            match &tag {
                Tag::Video { lane, .. } if !lane.for_url(self.enhanced) => continue,
                Tag::Video { body, ts, keyframe, .. } => {
                    if skip_to_keyframe && !keyframe {
                        continue;
                    }
                    skip_to_keyframe = false;
                    if base.is_none() {
                        if !keyframe {
                            continue;
                        }
                        base = Some(*ts);
                    }
                    let t = ts.wrapping_sub(base.unwrap_or(0));
                    session.send_video(body, t).map_err(|e| Failure(4, e.to_string(), running))?;
                    if *keyframe && !running {
                        running = true;
                        self.running();
                    }
                }
                Tag::Audio { body, ts } => {
                    // Audio-only relays start at once; otherwise audio waits for the first keyframe.
                    if base.is_none() && self.feed.media != RelayMedia::Audio {
                        continue;
                    }
                    let b = *base.get_or_insert(*ts);
                    session.send_audio(body, ts.wrapping_sub(b)).map_err(|e| Failure(4, e.to_string(), running))?;
                    if !running && self.feed.media == RelayMedia::Audio {
                        running = true;
                        self.running();
                    }
                }
            }
            if !session.outbound.is_empty() {
                tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(&session.outbound))
                    .await
                    .map_err(|_| Failure(4, "write timed out".into(), running))?
                    .map_err(|e| Failure(4, format!("write failed: {e}"), running))?;
                session.outbound.clear();
            }
        }
    }
}

/// The relay's connection to a CDN: TCP, or TLS over it for rtmps.
trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Connection for T {}

fn tag_ts(tag: &Tag) -> u32 {
    match tag {
        Tag::Video { ts, .. } | Tag::Audio { ts, .. } => *ts,
    }
}
