//! The driver of an RTMP publish's transcode (`tessera_engine::ingest_transcode`): a thread of
//! its own (decoding and encoding take milliseconds a frame and must not hold an async worker),
//! fed by the connection's task through a bounded queue, handing its RTP to the SFU and taking
//! viewers' keyframe requests between frames. Per-app counts enforce `rtmp.max_transcodes`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use tessera_engine::ingest_transcode::{IngestTranscoder, TranscodeInput, TranscodeStart};
use tessera_engine::{KeyframeRequests, RtcHandle};
use tessera_model::{AppId, TranscodeEncoder};

/// Frames queued for the transcoder; a transcoder this far behind (3 s at 30 fps) cannot keep
/// up, and frames are dropped up to the next keyframe.
const QUEUE_FRAMES: usize = 90;
/// The queue's bytes are bounded too: RTMP messages may be 8 MiB each, and 90 of them from a
/// hostile publisher would hold 720 MiB.
const QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// Transcodes running, per app.
#[derive(Default, Clone)]
pub struct TranscodeCounts(Arc<dashmap::DashMap<AppId, u32>>);

/// One transcode's place in its app's count; given back when dropped.
pub struct TranscodeSlot {
    counts: TranscodeCounts,
    app: AppId,
}

impl TranscodeCounts {
    /// A place for one more transcode of `app`, unless `max` already run.
    pub fn take(&self, app: &AppId, max: u32) -> Option<TranscodeSlot> {
        let mut n = self.0.entry(app.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(TranscodeSlot { counts: self.clone(), app: app.clone() })
    }

    pub fn total(&self) -> u32 {
        self.0.iter().map(|e| *e.value()).sum()
    }
}

impl Drop for TranscodeSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.counts.0.get_mut(&self.app) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A running transcode: what the connection's task holds.
pub struct TranscodeWorker {
    tx: SyncSender<TranscodeInput>,
    /// Bytes of frames queued and not yet taken by the thread.
    queued: Arc<AtomicUsize>,
    /// The queue overflowed: frames are dropped until the next keyframe.
    skipping: bool,
    _slot: TranscodeSlot,
}

impl TranscodeWorker {
    /// Starts the thread for publisher `id`. Fails when no decoder can be made of the header.
    pub fn start(start: &TranscodeStart, encoder: TranscodeEncoder, rtc: RtcHandle, id: u64, keyframes: KeyframeRequests, slot: TranscodeSlot) -> Result<TranscodeWorker, String> {
        let mut transcoder = IngestTranscoder::new(start, encoder).map_err(|e| e.to_string())?;
        let (tx, rx) = sync_channel::<TranscodeInput>(QUEUE_FRAMES);
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("rtmp-transcode".into())
            .spawn(move || {
                let _enter = span.enter();
                let mut out = Vec::new();
                let mut logged = false;
                // Ends when the connection drops its sender.
                while let Ok(input) = rx.recv() {
                    taken.fetch_sub(input_bytes(&input), Ordering::Relaxed);
                    if keyframes.take() {
                        transcoder.request_keyframe();
                    }
                    if let Err(e) = transcoder.push(input, &mut out) {
                        if !std::mem::replace(&mut logged, true) {
                            tracing::warn!("RTMP transcode: a frame did not transcode: {e}");
                        }
                    }
                    if !out.is_empty() && rtc.push_blocking(id, std::mem::take(&mut out)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(TranscodeWorker { tx, queued, skipping: false, _slot: slot })
    }

    /// Queues one input; when the thread is too far behind, frames are dropped up to the next
    /// keyframe (the decoder can start over there).
    pub fn send(&mut self, input: TranscodeInput) {
        if let TranscodeInput::Frame(f) = &input {
            if self.skipping && !f.keyframe {
                return;
            }
        }
        // Counted before it is sent, so the thread never takes away more than was added.
        let bytes = input_bytes(&input);
        let over = self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES;
        let sent = if over { Err(TrySendError::Full(input)) } else { self.tx.try_send(input) };
        if sent.is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => self.skipping = false,
            Err(TrySendError::Full(_)) => {
                if !self.skipping {
                    tracing::warn!("RTMP transcode cannot keep up; dropping frames up to the next keyframe");
                }
                self.skipping = true;
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn input_bytes(input: &TranscodeInput) -> usize {
    match input {
        TranscodeInput::Frame(f) => f.data.len(),
        TranscodeInput::Config(c) => c.len(),
        TranscodeInput::Start(s) => s.config.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcodes_are_counted_per_app_and_given_back() {
        let counts = TranscodeCounts::default();
        let (a, b) = (AppId::parse("a").unwrap(), AppId::parse("b").unwrap());
        let first = counts.take(&a, 2).expect("room for one");
        let second = counts.take(&a, 2).expect("and a second");
        assert!(counts.take(&a, 2).is_none(), "the third is over the limit");
        assert!(
            counts.take(&b, 2).is_some_and(|s| {
                drop(s);
                true
            }),
            "another app has its own"
        );
        assert_eq!(counts.total(), 2);
        drop(first);
        assert!(counts.take(&a, 2).is_some(), "a place came back");
        drop(second);
        assert!(counts.take(&a, 0).is_none(), "0 allows none");
    }
}
