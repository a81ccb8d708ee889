//! ICE over TCP, the driver side (RFC 6544 passive candidates, RFC 4571 framing): for clients
//! whose UDP is blocked. Each accepted connection gets a reader task, which hands complete frames
//! to the media task, and a writer task, which frames what the media task sends to it. The SFU
//! sees frames as it sees datagrams; str0m's transmits say which transport they take.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Connections open at once; more are refused (each is a peer's fallback path).
const MAX_CONNECTIONS: usize = 1024;
/// A connection must send its first frame (a STUN binding request) within this.
const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(10);
/// Frames waiting to be written to one connection before new ones are dropped (media is lossy:
/// a slow TCP path loses packets, it does not hold up the media task).
const WRITE_QUEUE: usize = 1024;

/// What the TCP tasks tell the media task.
pub enum TcpEvent {
    Opened { remote: SocketAddr, writer: mpsc::Sender<Vec<u8>> },
    Frame { remote: SocketAddr, local: SocketAddr, data: Vec<u8> },
    Closed { remote: SocketAddr },
}

/// Accepts connections until the media task goes away.
pub async fn accept(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("ICE-TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            tracing::warn!(%remote, "ICE-TCP connection refused: {MAX_CONNECTIONS} open");
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (events, open) = (events.clone(), open.clone());
        tokio::spawn(async move {
            serve(stream, remote, events).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve(stream: TcpStream, remote: SocketAddr, events: mpsc::Sender<TcpEvent>) {
    let Ok(local) = stream.local_addr() else { return };
    let _ = stream.set_nodelay(true);
    tracing::info!(%remote, %local, "ICE-TCP connection");
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    if events.send(TcpEvent::Opened { remote, writer: tx }).await.is_err() {
        return;
    }
    let write = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut first = true;
    loop {
        let frame = read_frame(&mut reader);
        let frame = if first { tokio::time::timeout(FIRST_FRAME_WITHIN, frame).await.unwrap_or(None) } else { frame.await };
        first = false;
        let Some(data) = frame else { break };
        if events.send(TcpEvent::Frame { remote, local, data }).await.is_err() {
            break;
        }
    }
    write.abort();
    let _ = events.send(TcpEvent::Closed { remote }).await;
    tracing::info!(%remote, "ICE-TCP connection closed");
}

/// One RFC 4571 frame: a 16-bit big-endian length, then that many bytes. `None` at the end of
/// the stream or on an empty frame (which no ICE, DTLS or RTP packet is).
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).await.ok()?;
    let len = u16::from_be_bytes(len) as usize;
    if len == 0 {
        return None;
    }
    let mut data = vec![0u8; len];
    reader.read_exact(&mut data).await.ok()?;
    Some(data)
}

/// A packet framed for the wire.
pub fn frame(data: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(data.len()).ok()?;
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_an_empty_or_cut_frame_ends_the_stream() {
        let mut wire = frame(b"stun").unwrap();
        wire.extend(frame(&[7u8; 1500]).unwrap());
        wire.extend([0, 9, 1, 2]); // cut short
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r).await.as_deref(), Some(&b"stun"[..]));
        assert_eq!(read_frame(&mut r).await.map(|d| d.len()), Some(1500));
        assert_eq!(read_frame(&mut r).await, None);
        assert_eq!(read_frame(&mut &[0u8, 0][..]).await, None);
        assert!(frame(&vec![0u8; 70_000]).is_none());
    }
}
