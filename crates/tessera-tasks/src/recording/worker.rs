//! A recording's driver and worker. The driver is a tokio task: it taps the room, asks the
//! SFU for the room's publishers every 300 ms, forwards both to the worker over one channel
//! (bounded by a count: a worker that falls behind loses packets, never memory) and carries
//! the worker's keyframe requests to the SFU. The worker is a thread (FFmpeg muxing, AAC and
//! VP8 work, file I/O): it runs the engine's `RecordingControl` and `Selection` on what
//! arrives and feeds the HLS writers.

use super::files::{finish_task, listed_files, scan_playlists};
use super::hls::{id_in_name, HlsWriter, LocalStorage, Storage};
use super::s3;
use super::{lock, save, FileInfo, RecordingError, RecordingSpec, RecordingState, RecordingTask, TaskEvents};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_engine::outputs::hls::{master_playlist, CutRules, MasterVideo};
use tessera_engine::outputs::recording::{Mode, RecordingControl, RecordingEvent, Selection};
use tessera_engine::outputs::tap_input::{OpusToAac, VideoInput, VideoUnit};
use tessera_engine::{PublisherInfo, RoomKey, RtcHandle, TapPacket};
use tessera_media::{h264, Codec, KeyframeThrottle, StreamKind};
use tessera_model::events::TaskEvent;
use tessera_model::UserId;
use tessera_transcode::decode::{AacEncoder, VideoCodec, VideoDecoder};
use tessera_transcode::mux::AudioTrack;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Packets waiting for the worker beyond this are dropped (the writers resume at a keyframe).
const MAX_QUEUED_PACKETS: usize = 2048;
/// A lost video unit asks its source for a keyframe at most this often.
const KEYFRAME_RETRY: Duration = Duration::from_secs(1);
/// How long a stopping recording waits for its bucket to take the files in the spool.
const UPLOAD_WAIT_AT_STOP: Duration = Duration::from_secs(10);

/// What the worker takes in, in order.
pub(super) enum Input {
    Packet(TapPacket),
    Publishers(Vec<PublisherInfo>),
    Pause,
    Resume,
    Stop,
    /// Stop with a LeaveCode (2: the room was dismissed).
    StopWith(u32),
    /// The server stops: close the playlists, leave the task live for the next start.
    Shutdown,
    Select(Selection),
    /// The driver lost the SFU.
    Failed(RecordingError),
}

/// Starts a task's driver (which starts its worker thread once the room is tapped).
pub(super) fn spawn(task: Arc<RecordingTask>, data_dir: PathBuf, rtc: RtcHandle, events: TaskEvents) {
    let (tx, rx) = std::sync::mpsc::channel();
    *lock(&task.inputs) = Some(tx.clone());
    task.working.store(true, Ordering::SeqCst);
    let id = lock(&task.spec).id.clone();
    let span = tracing::info_span!("recording", id = %id);
    tokio::spawn(tracing::Instrument::instrument(drive(task, data_dir, rtc, events, tx, rx), span));
}

async fn drive(task: Arc<RecordingTask>, data_dir: PathBuf, rtc: RtcHandle, events: TaskEvents, inputs: Sender<Input>, worker_inputs: Receiver<Input>) {
    let spec = lock(&task.spec).clone();
    let room = RoomKey { app: spec.app.clone(), room: spec.room.clone() };
    let tap = match UserId::parse(&format!("rec_{}", spec.id)) {
        Ok(owner) => rtc.add_output_tap(room.clone(), tessera_engine::TapKind::Recording, owner).await.map_err(|e| RecordingError::Tap(e.to_string())),
        Err(e) => Err(RecordingError::Tap(e.to_string())),
    };
    let (tap_id, mut packets) = match tap {
        Ok((id, packets)) => (Some(id), Some(packets)),
        Err(e) => {
            let _ = inputs.send(Input::Failed(e));
            (None, None)
        }
    };
    let queued = Arc::new(AtomicUsize::new(0));
    let (keyframe_tx, mut keyframes) = unbounded_channel();
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
    let worker_queued = queued.clone();
    let name = format!("rec-{}", spec.id);
    let tapped = tap_id.is_some();
    let started = std::thread::Builder::new().name(name).spawn(move || {
        work(task, data_dir, events, tapped, worker_inputs, worker_queued, keyframe_tx);
        let _ = done_tx.send(());
    });
    if let Err(e) = started {
        tracing::error!("cannot start the recording's worker: {e}");
    } else {
        // Who publishes, as it changes (the worker's selection and stop rules need it).
        let mut publishers = match rtc.watch_publishers(room.clone()).await {
            Ok(w) => Some(w),
            Err(e) => {
                let _ = inputs.send(Input::Failed(RecordingError::Tap(e.to_string())));
                None
            }
        };
        let mut dropped = 0u64;
        loop {
            tokio::select! {
                _ = &mut done => break,
                p = async { packets.as_mut()?.recv().await }, if packets.is_some() => match p {
                    Some(p) if queued.load(Ordering::Relaxed) < MAX_QUEUED_PACKETS => {
                        queued.fetch_add(1, Ordering::Relaxed);
                        let _ = inputs.send(Input::Packet(p));
                    }
                    Some(_) => {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(dropped, "the recording falls behind; packets dropped");
                        }
                    }
                    None => {
                        let _ = inputs.send(Input::Failed(RecordingError::Tap("the room's tap closed".into())));
                        packets = None;
                    }
                },
                changed = async { publishers.as_mut()?.list.changed().await.ok() }, if publishers.is_some() => match changed {
                    Some(()) => {
                        let list = publishers.as_mut().expect("watched").list.borrow_and_update().clone();
                        let _ = inputs.send(Input::Publishers(list));
                    }
                    None => {
                        publishers = None;
                        let _ = inputs.send(Input::Failed(RecordingError::Tap(tessera_engine::RtcServerError::Stopped.to_string())));
                    }
                },
                Some((user, stream)) = keyframes.recv() => {
                    let _ = rtc.request_keyframe(room.clone(), user, stream).await;
                }
            }
        }
    }
    if let Some(id) = tap_id {
        let _ = rtc.remove_tap(id).await;
    }
}

/// Everything recorded from one user stream (or the mix).
struct StreamRec {
    video_writer: Option<usize>,
    audio_writer: Option<usize>,
    video: VideoInput,
    probe: Option<VideoDecoder>,
    audio: Option<OpusToAac>,
    keyframe_requests: KeyframeThrottle,
    /// RFC 6381 codec of the video (H.264: from its SPS), for the master playlist.
    video_codec: Option<String>,
    /// Which of (video, audio) the master playlist lists so far.
    master_lists: (bool, bool),
}

struct Worker {
    spec: RecordingSpec,
    events: TaskEvents,
    /// `ha<N>_` after the N-th crash restart.
    ha: String,
    storage: Arc<dyn Storage>,
    spool: PathBuf,
    writers: Vec<HlsWriter>,
    streams: HashMap<(UserId, StreamKind), StreamRec>,
    /// Files of earlier runs (before a crash or restart), listed ahead of this run's.
    earlier: Vec<FileInfo>,
    keyframes: UnboundedSender<(UserId, StreamKind)>,
    /// The server is stopping (not the task).
    shutting_down: bool,
}

impl Worker {
    fn base_name(&self, user: &UserId, stream: StreamKind) -> String {
        let room = id_in_name(self.spec.room.as_str());
        match &self.spec.mode {
            Mode::Mixed { .. } => format!("{}_{room}", self.spec.app),
            Mode::Single { .. } => format!("{}_{room}__UserId_s_{}__UserId_e_{}", self.spec.app, id_in_name(user.as_str()), stream.as_str()),
        }
    }

    fn writer(&mut self, user: &UserId, stream: StreamKind, kind: &str, video: bool, audio: Option<AudioTrack>) -> usize {
        let base = self.base_name(user, stream);
        let ha = &self.ha;
        let (playlist, stem, track_type, user_id, media_id) = match (&self.spec.mode, kind) {
            (Mode::Mixed { .. }, _) => (format!("{ha}{base}.m3u8"), format!("{ha}{base}"), "audio_video".to_string(), String::new(), "mix".to_string()),
            (Mode::Single { .. }, k) => (format!("{ha}{base}_{k}.m3u8"), format!("{ha}{base}_{k}"), k.to_string(), user.to_string(), stream.as_str().to_string()),
        };
        self.writers.push(HlsWriter::new(
            self.events.clone(),
            self.storage.clone(),
            self.spool.clone(),
            (playlist, stem),
            (user_id, media_id, track_type),
            CutRules::for_segment(self.spec.segment_s),
            video,
            audio,
        ));
        self.writers.len() - 1
    }

    /// A split single-stream recording's master playlist per user stream,
    /// `[ha<N>_]<AppId>_<RoomId>__UserId_s_<UserId>__UserId_e_<MediaId>.m3u8`: the video playlist
    /// with the audio playlist as its audio rendition, so HLS players play picture and sound.
    /// Written when a playlist gets its first segment, and at the end (`force`) with the peak
    /// bitrate.
    fn update_masters(&mut self, force: bool) {
        if !matches!(self.spec.mode, Mode::Single { split: true, .. }) {
            return;
        }
        let keys: Vec<(UserId, StreamKind)> = self.streams.keys().cloned().collect();
        for key in keys {
            let s = &self.streams[&key];
            let listed = |i: Option<usize>| i.filter(|&i| !self.writers[i].files.is_empty());
            let (video, audio) = (listed(s.video_writer), listed(s.audio_writer));
            let lists = (video.is_some(), audio.is_some());
            if lists == (false, false) || (!force && lists == s.master_lists) {
                continue;
            }
            let peak = |i: usize| self.writers[i].files.iter().map(|f| f.size * 8 * 1000 / f.duration_ms.max(1) as u64).max().unwrap_or(0);
            let audio_bps = if audio.is_some() { 128_000 } else { 0 };
            let master_video = video.map(|i| MasterVideo {
                uri: &self.writers[i].playlist,
                bandwidth: peak(i) + audio_bps,
                size: self.writers[i].text.video_size,
                codec: s.video_codec.as_deref(),
            });
            let version = video.map(|i| self.writers[i].text.version()).unwrap_or(3);
            let text = master_playlist(master_video.as_ref(), audio.map(|i| self.writers[i].playlist.as_str()), version);
            let name = format!("{}{}.m3u8", self.ha, self.base_name(&key.0, key.1));
            match self.storage.put(&name, text.as_bytes()) {
                Ok(()) => self.streams.get_mut(&key).expect("listed").master_lists = lists,
                Err(e) => tracing::warn!(recording = %self.spec.id, "master playlist not written: {e}"),
            }
        }
    }
}

fn work(
    task: Arc<RecordingTask>,
    data_dir: PathBuf,
    events: TaskEvents,
    tapped: bool,
    inputs: Receiver<Input>,
    queued: Arc<AtomicUsize>,
    keyframes: UnboundedSender<(UserId, StreamKind)>,
) {
    let spec = lock(&task.spec).clone();
    let (final_dir, spool, url_base) = spec.places(&data_dir);
    let restarts = lock(&task.status).restarts;
    let ha = if restarts > 0 { format!("ha{restarts}_") } else { String::new() };
    let opened = spec.open_storage(&data_dir, &events, &task);
    let storage: Arc<dyn Storage> = match &opened {
        Ok(s) => s.clone(),
        // Refused below with 303 Status 1; this only fills the worker.
        Err(_) => Arc::new(LocalStorage { dir: final_dir.clone(), url_base: url_base.clone() }),
    };
    // A resumed task lists what earlier runs wrote from the start, not only once it finishes.
    let earlier: Vec<FileInfo> = if restarts > 0 {
        let start_unix = lock(&task.status).started_at.unwrap_or(0);
        listed_files(&scan_playlists(&final_dir), &final_dir, storage.as_ref(), start_unix).into_iter().flatten().collect()
    } else {
        Vec::new()
    };
    lock(&task.status).files = earlier.clone();
    let mut w = Worker {
        spec: spec.clone(),
        events: events.clone(),
        ha,
        storage,
        spool: spool.clone(),
        writers: Vec::new(),
        streams: HashMap::new(),
        earlier,
        keyframes,
        shutting_down: false,
    };
    let outcome = (|| -> Result<u32, RecordingError> {
        let ready = std::fs::create_dir_all(&final_dir).and_then(|_| std::fs::create_dir_all(&spool));
        // 301 (or 306 after a crash restart), then 303 for the storage.
        let status = if tapped { 0 } else { 1 };
        events.emit(TaskEvent::RecordingStarted { status, restarted: restarts > 0 });
        events.emit(TaskEvent::StorageReady { status: if ready.is_ok() && opened.is_ok() { 0 } else { 1 } });
        ready.map_err(RecordingError::Folders)?;
        opened.as_ref().map_err(|e| RecordingError::Storage { name: "the storage".into(), reason: e.clone() })?;
        record(&task, &mut w, &inputs, &queued)
    })();
    let mut all_stored = true;
    for wr in &mut w.writers {
        if let Err(e) = wr.finish() {
            all_stored = false;
            tracing::warn!("finishing a playlist failed: {e}");
        }
    }
    w.update_masters(true);
    if w.shutting_down {
        // Closed, not stopped: the state stays RECORDING/PAUSED and the next start resumes.
        let _ = save(&task);
        task.working.store(false, Ordering::SeqCst);
        tracing::info!(recording = %spec.id, "recording closed for the server's stop; it continues at the next start");
        return;
    }
    let (code, error) = match outcome {
        Ok(c) => (c, None),
        Err(e) => {
            tracing::error!(recording = %spec.id, "recording failed: {e}");
            (104, Some(e.to_string()))
        }
    };
    {
        let mut st = lock(&task.status);
        st.state = RecordingState::Stopped;
        st.stopped_at = Some(crate::now_ms());
        st.leave_code = Some(code);
        st.error = error.clone();
    }
    let _ = save(&task);
    events.emit(TaskEvent::RecordingStopped { leave_code: code });
    // A bucket gets a moment to take what waits in the spool; what is left goes up later
    // (305 Status 2 then).
    let all_stored = all_stored && s3::uploads().drain(&spec.id, UPLOAD_WAIT_AT_STOP);
    let stored = if all_stored { 0 } else { 1 };
    events.emit(TaskEvent::UploadStopped { status: stored, leave_code: stored });
    finish_task(&task, &spec, &final_dir, &spool, w.storage.as_ref(), error, &events);
    let _ = save(&task);
    task.working.store(false, Ordering::SeqCst);
}

/// Records until the task stops; returns the LeaveCode.
fn record(task: &RecordingTask, w: &mut Worker, inputs: &Receiver<Input>, queued: &AtomicUsize) -> Result<u32, RecordingError> {
    let (clock_offset, paused) = {
        let st = lock(&task.status);
        (st.clock_ms, st.state == RecordingState::Paused)
    };
    let mix_user = match &w.spec.mode {
        Mode::Mixed { mix_user, .. } => Some(mix_user.clone()),
        Mode::Single { .. } => None,
    };
    let mut control = RecordingControl::new(Instant::now(), w.spec.max_idle, mix_user, clock_offset);
    if paused {
        // Resumed after a restart while paused: it stays paused until asked to resume.
        control.pause(Instant::now());
    }
    let mut selection = Selection { mode: w.spec.mode.clone(), subscribe: w.spec.subscribe.clone() };
    let mut publishers: Vec<PublisherInfo> = Vec::new();
    let mut started = false;
    loop {
        let now = Instant::now();
        let wait = control.poll_timeout().map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now)).min(Duration::from_secs(1));
        match inputs.recv_timeout(wait) {
            Ok(Input::Packet(p)) => {
                queued.fetch_sub(1, Ordering::Relaxed);
                if selection.wants(&p, &publishers) {
                    if let Some(ms) = control.sample(Instant::now()) {
                        on_packet(w, &p, ms, crate::now_ms())?;
                    }
                }
            }
            Ok(Input::Publishers(list)) => {
                publishers = list;
                control.publishers(&publishers, Instant::now());
            }
            Ok(Input::Pause) => control.pause(Instant::now()),
            Ok(Input::Resume) => control.resume(Instant::now()),
            Ok(Input::Stop) => control.stop(Instant::now()),
            Ok(Input::StopWith(code)) => control.stop_with(code, Instant::now()),
            Ok(Input::Shutdown) => {
                w.shutting_down = true;
                control.stop(Instant::now());
            }
            Ok(Input::Select(s)) => {
                w.spec.mode = s.mode.clone();
                w.spec.subscribe = s.subscribe.clone();
                selection = s;
            }
            Ok(Input::Failed(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => control.handle_timeout(Instant::now()),
            Err(RecvTimeoutError::Disconnected) => return Err(RecordingError::Tap("the recording's driver ended".into())),
        }
        while let Some(event) = control.poll_event() {
            match event {
                RecordingEvent::Started => {
                    started = true;
                    let mut st = lock(&task.status);
                    st.state = RecordingState::Recording;
                    st.started_at.get_or_insert(crate::now_ms());
                }
                RecordingEvent::Paused { at_ms } => {
                    for wr in &mut w.writers {
                        wr.cut(at_ms.max(wr.last_ms))?;
                        wr.mark_discontinuity();
                    }
                    lock(&task.status).state = RecordingState::Paused;
                    let _ = save(task);
                }
                RecordingEvent::Resumed { paused_ms } => {
                    let mut st = lock(&task.status);
                    st.state = RecordingState::Recording;
                    st.paused_ms = paused_ms;
                    drop(st);
                    let _ = save(task);
                }
                RecordingEvent::Stop { code, clock_ms } => {
                    if started {
                        lock(&task.status).clock_ms = clock_ms;
                    }
                    return Ok(code);
                }
            }
        }
        if started {
            let mut st = lock(&task.status);
            st.skipped_segments = w.writers.iter().map(|wr| wr.failures.skipped).sum();
            st.clock_ms = control.clock_ms(Instant::now());
            // The list is rebuilt only when a segment was added (this runs for every packet).
            let count = w.earlier.len() + w.writers.iter().map(|wr| wr.files.len()).sum::<usize>();
            if count != st.files.len() {
                let storage = w.storage.clone();
                st.files = w
                    .earlier
                    .iter()
                    .cloned()
                    .chain(w.writers.iter().flat_map(|wr| wr.files.iter().cloned()))
                    .map(|mut f| {
                        f.stored = storage.stored_now(&f.file_name);
                        f
                    })
                    .collect();
                drop(st);
                // Every new segment is on record before the next one starts.
                let _ = save(task);
                w.update_masters(false);
            }
        }
    }
}

fn on_packet(w: &mut Worker, p: &TapPacket, arrival: i64, unix_ms: i64) -> Result<(), RecordingError> {
    let key = (p.user.clone(), p.stream);
    if !w.streams.contains_key(&key) {
        w.streams.insert(
            key.clone(),
            StreamRec {
                video_writer: None,
                audio_writer: None,
                video: VideoInput::default(),
                probe: None,
                audio: None,
                keyframe_requests: KeyframeThrottle::new(KEYFRAME_RETRY),
                video_codec: None,
                master_lists: (false, false),
            },
        );
    }
    let split = matches!(w.spec.mode, Mode::Single { split: true, .. });
    match p.codec {
        Codec::Opus if w.spec.wants_audio() => {
            let s = w.streams.get_mut(&key).expect("inserted");
            if s.audio.is_none() {
                // A muxed TS declares its audio track (stereo) with the video's first keyframe.
                let muxed = !split && w.spec.wants_video();
                s.audio = if muxed { OpusToAac::stereo() } else { OpusToAac::new() }.ok();
            }
            let Some(audio) = s.audio.as_mut() else { return Ok(()) };
            let mut frames = Vec::new();
            audio.push(p.ts, &p.payload, arrival, &mut frames)?;
            // Nothing decoded yet: no encoder, no configuration.
            let Some(asc) = audio.audio_specific_config() else { return Ok(()) };
            let track = AudioTrack { sample_rate: 48_000, channels: audio.channels().unwrap_or(2) as u32, asc: asc.to_vec() };
            // The audio writer: its own playlist (split, audio-only content), or the muxed one.
            let writer = if split || !w.spec.wants_video() {
                match w.streams[&key].audio_writer {
                    Some(i) => i,
                    None => {
                        let i = w.writer(&key.0, key.1, "audio", false, Some(track));
                        w.streams.get_mut(&key).expect("inserted").audio_writer = Some(i);
                        i
                    }
                }
            } else {
                match w.streams[&key].video_writer {
                    Some(i) => i,
                    None => return Ok(()),
                }
            };
            for f in frames {
                w.writers[writer].audio(f.ms, unix_ms, &f.data)?;
            }
        }
        Codec::H264 | Codec::Vp8 | Codec::H265 | Codec::Av1 if w.spec.wants_video() => {
            let s = w.streams.get_mut(&key).expect("inserted");
            let (nalus, keyframe, ms, cts_ms, codec) = match s.video.push(p, arrival)? {
                VideoUnit::Unit { nalus, keyframe, ms, cts_ms, codec } => (nalus, keyframe, ms, cts_ms, codec),
                VideoUnit::Lost => {
                    if s.keyframe_requests.try_request(Instant::now()) {
                        let _ = w.keyframes.send(key.clone());
                    }
                    return Ok(());
                }
                VideoUnit::None => return Ok(()),
            };
            // H.264 and H.265 in Annex-B form; AV1 as its temporal unit (OBUs with sizes).
            let data = if codec == Codec::Av1 { nalus.concat() } else { h264::to_annex_b(&nalus) };
            let mut config = None;
            // The picture size, from the first keyframe, for the TS and the playlist.
            let writer = match s.video_writer {
                Some(i) => i,
                None => {
                    // The SPS says it (a stream with B-frames shows no picture for its first
                    // frames); a decoder when it cannot be read.
                    let sps_size = match codec {
                        Codec::H265 => {
                            use tessera_media::h265;
                            nalus.iter().filter(|n| h265::nal_type(n) == Some(h265::NAL_SPS)).find_map(|n| tessera_media::picture_size::hevc_sps_size(n))
                        }
                        Codec::Av1 => {
                            // The sequence header (ahead of every keyframe): the size, and the
                            // MP4's av1C.
                            let header = tessera_media::av1::sequence_header_obu(&data);
                            config = header.as_ref().map(|(obu, _)| obu.clone());
                            header.map(|(_, size)| size)
                        }
                        _ => nalus.iter().filter(|n| h264::nal_type(n) == Some(h264::NAL_SPS)).find_map(|n| tessera_media::picture_size::sps_size(n)),
                    };
                    let size = match sps_size {
                        Some(size) => size,
                        // An H.265 or AV1 stream without its SPS or sequence header at a
                        // keyframe cannot be recorded.
                        None if codec != Codec::H264 => return Ok(()),
                        None => {
                            let probe = match s.probe.as_mut() {
                                Some(d) => d,
                                None => s.probe.insert(VideoDecoder::new(VideoCodec::H264)?),
                            };
                            if !matches!(probe.decode(&data), Ok(true)) {
                                return Ok(());
                            }
                            let pic = probe.picture().expect("decoded");
                            (pic.width(), pic.height())
                        }
                    };
                    s.probe = None;
                    // Muxed layouts carry the audio in the same TS.
                    let audio = if !split && w.spec.wants_audio() {
                        Some(AudioTrack { sample_rate: 48_000, channels: 2, asc: AacEncoder::new(2, 96)?.audio_specific_config().to_vec() })
                    } else {
                        None
                    };
                    let i = w.writer(&key.0, key.1, if split { "video" } else { "audio_video" }, true, audio);
                    if codec == Codec::H264 {
                        let sps = nalus.iter().find(|n| h264::nal_type(n) == Some(h264::NAL_SPS) && n.len() >= 4);
                        w.streams.get_mut(&key).expect("inserted").video_codec = sps.map(|n| format!("avc1.{:02x}{:02x}{:02x}", n[1], n[2], n[3]));
                    }
                    w.writers[i].set_video(size, codec, config.take());
                    w.streams.get_mut(&key).expect("inserted").video_writer = Some(i);
                    i
                }
            };
            let wr = &mut w.writers[writer];
            if !keyframe && wr.keyframe_soon(ms) && !wr.keyframe_asked {
                wr.keyframe_asked = true;
                let _ = w.keyframes.send(key.clone());
            }
            wr.video(ms, cts_ms, unix_ms, &data, keyframe)?;
        }
        _ => {}
    }
    Ok(())
}
