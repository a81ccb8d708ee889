//! One mix job: a worker thread that owns its decoders, canvas, encoders and mixer, so nothing on
//! the network threads waits for codec work. The HTTP side reads `MixStatus` and replaces the
//! live parts of `MixSpec` (layout, audio, subscription) through the `MixHandle`.

use super::audio_mix::AudioMixer;
use super::layout::{InputKey, LayoutState, Placement};
use super::spec::*;
use crate::driver::RtcHandle;
use crate::sfu::{IngestPacket, PacketRoute, PublisherInfo, SessionSpec, SharedPicture, TapPacket};
use crate::{PeerRole, Quality};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use tessera_media::h264::{self, H264Packetizer};
use tessera_media::rtp::{AuAssembler, Push};
use tessera_media::{Codec, KeyframeThrottle, StreamKind};
use tessera_model::UserId;
use tessera_transcode::compose::{Canvas, Rect};
use tessera_transcode::decode::{OpusDecoder, OpusEncoder, VideoCodec, VideoDecoder};
use tessera_transcode::image::Overlay;
use tessera_transcode::video::{EncoderSettings, H264Encoder, OpenH264Encoder, VideoEncoder};
use tessera_transcode::OPUS_FRAME;

/// The most inputs a job takes (LAYOUTS.md §2).
pub const MAX_INPUTS: usize = 25;
/// A frame missing this long: the tile shows its placeholder.
const FROZEN_LIMIT: Duration = Duration::from_secs(2);
const KEYFRAME_RETRY: Duration = Duration::from_secs(1);
/// Decoded audio kept per input before the oldest is dropped (bounds latency after a stall).
const MAX_AUDIO_BUFFER: usize = 48_000 * 2 / 5;
/// Audio buffered before an input is mixed (the jitter buffer).
const AUDIO_PREROLL: usize = 48 * 2 * 60;
const MAX_RTP_PAYLOAD: usize = 1200;
/// x264 preset of mixes (`encoder: "x264"`): a 720p30 nine-grid costs ~0.3 cores with it,
/// ~0.4 with "veryfast" (BENCHMARKS.md).
const MIX_PRESET: &str = "superfast";

/// Images scaled for this canvas; remade when the layout's images change.
#[derive(Default)]
struct Overlays {
    identity: Vec<usize>,
    background: Option<Overlay>,
    placeholder: HashMap<(u32, u32), Overlay>,
    watermarks: Vec<(Overlay, u32, u32)>,
}

impl Overlays {
    fn refresh(&mut self, images: &MixImages, width: u32, height: u32) {
        let identity = images.identity();
        if identity == self.identity {
            return;
        }
        self.identity = identity;
        self.background = images.background.as_ref().and_then(|i| Overlay::new(i, width, height, true).ok());
        self.placeholder.clear();
        self.watermarks = images.watermarks.iter().filter_map(|w| Overlay::new(&w.image, w.width, w.height, false).ok().map(|o| (o, w.x, w.y))).collect();
    }
}

/// CPU seconds this thread has used (Linux: /proc/thread-self/stat, 10 ms resolution).
/// CPU seconds of the job: its own thread and the threads it started (x264's and FFmpeg's
/// workers), which Linux names after their creator — the job thread's unique `mix-<id>`
/// name, cut to the kernel's 15 characters. Clock ticks are 100 Hz (USER_HZ).
fn job_cpu_seconds(thread_name: &str) -> f64 {
    let comm: String = thread_name.chars().take(15).collect();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if stat[open + 1..close] != comm {
            continue;
        }
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (ticks(11) + ticks(12)) / 100.0;
    }
    total
}

/// The output clock: frame `tick` is shown at `tick / fps` s, so timestamps sit on a regular
/// grid whatever the wall clock did while the frame was made (RTP at 90 kHz).
fn tick_ms(tick: u64, fps: u32) -> i64 {
    (tick * 1000 / fps.max(1) as u64) as i64
}

fn tick_rtp(pts_ms: i64, fps: u32) -> u32 {
    let fps = fps.max(1) as u64;
    let tick = (pts_ms.max(0) as u64 * fps + 500) / 1000;
    (tick * 90_000 / fps) as u32
}

/// What the job's thread is told, in order.
enum MixCommand {
    /// The live parts of the spec changed (PATCH).
    Update(Box<MixSpec>),
    /// Stop with this LeaveCode (0 DELETE, 105 owner stopped).
    Stop(u32),
}

/// The HTTP side's handle on a running job: commands go to the job's thread over a channel;
/// the spec and status are kept here for readers.
pub struct MixHandle {
    spec: Mutex<MixSpec>,
    status: Mutex<MixStatus>,
    commands: Mutex<std::sync::mpsc::Sender<MixCommand>>,
}

impl MixHandle {
    pub fn spec(&self) -> MixSpec {
        lock(&self.spec).clone()
    }

    pub fn status(&self) -> MixStatus {
        lock(&self.status).clone()
    }

    /// Replaces the live parts of the spec; the job applies it at its next frame.
    pub fn update(&self, f: impl FnOnce(&mut MixSpec)) {
        let mut spec = lock(&self.spec);
        f(&mut spec);
        let _ = lock(&self.commands).send(MixCommand::Update(Box::new(spec.clone())));
    }

    /// Stops the job as `DELETE` does (LeaveCode 0).
    pub fn stop(&self) {
        self.stop_with(0);
    }

    /// Stops the job with a LeaveCode (105 when its owning recording stopped).
    /// The first stop wins.
    pub fn stop_with(&self, code: u32) {
        let _ = lock(&self.commands).send(MixCommand::Stop(code));
    }

    /// Starts the job's thread; `on_stop` runs on it with the leave code once the job has
    /// stopped (the server records the final state).
    pub fn start(spec: MixSpec, rtc: RtcHandle, on_stop: Box<dyn FnOnce(u32) + Send>) -> std::io::Result<Arc<MixHandle>> {
        let (commands, inbox) = std::sync::mpsc::channel();
        let handle = Arc::new(MixHandle {
            spec: Mutex::new(spec.clone()),
            status: Mutex::new(MixStatus { state: MixState::Starting, inputs: Vec::new(), stats: MixStats::default(), stopped_at: None, leave_code: None, error: None }),
            commands: Mutex::new(commands),
        });
        let h = handle.clone();
        let span = tracing::info_span!("mix", id = %spec.id, room = %spec.room.room);
        std::thread::Builder::new().name(format!("mix-{}", spec.id)).spawn(move || {
            let _span = span.entered();
            let (code, error) = match run(&h, &rtc, &inbox) {
                Ok(code) => (code, None),
                Err(e) => {
                    tracing::error!(job = %spec.id, "mix job failed: {e}");
                    (104, Some(e.to_string()))
                }
            };
            {
                let mut st = lock(&h.status);
                st.state = MixState::Stopped;
                st.stopped_at = Some(unix_ms());
                st.leave_code = Some(code);
                st.error = error;
            }
            tracing::info!(job = %spec.id, leave_code = code, "mix job stopped");
            on_stop(code);
        })?;
        Ok(handle)
    }
}

/// A poisoned lock still holds a whole value (every writer leaves it whole).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// An access unit being reassembled from RTP, or the pictures of a transcoded ingest.
struct VideoIn {
    codec: Codec,
    decoder: Option<VideoDecoder>,
    /// The last picture a transcoding ingest shared (`PacketRoute::Pictures`): no decoding here.
    shared: Option<SharedPicture>,
    au: AuAssembler,
    waiting_keyframe: bool,
    last_picture: Option<Instant>,
    keyframe_requests: KeyframeThrottle,
}

struct AudioIn {
    decoder: Option<OpusDecoder>,
    buffer: VecDeque<f32>,
    primed: bool,
    /// The level (dBov) its last packet carried, if any.
    level: Option<u8>,
}

struct Input {
    video: Option<VideoIn>,
    audio: Option<AudioIn>,
}

/// p50 of the last samples.
#[derive(Default)]
struct Timing(VecDeque<f64>);

impl Timing {
    fn add(&mut self, ms: f64) {
        if self.0.len() >= 100 {
            self.0.pop_front();
        }
        self.0.push_back(ms);
    }
    fn p50(&self) -> f64 {
        let mut v: Vec<f64> = self.0.iter().copied().collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v.get(v.len() / 2).copied().map(|x| (x * 100.0).round() / 100.0).unwrap_or(0.0)
    }
}

fn run(handle: &MixHandle, rtc: &RtcHandle, inbox: &std::sync::mpsc::Receiver<MixCommand>) -> Result<u32, MixError> {
    let mut spec = handle.spec();
    let enc = spec.encode;
    let (tap, mut packets) = rtc.add_tap_blocking(spec.room.clone(), spec.user.clone())?;
    let out_spec = SessionSpec {
        sid: tessera_model::random::session_id(),
        room: spec.room.clone(),
        user: spec.user.clone(),
        role: PeerRole::Publish,
        stream: StreamKind::Main,
        source_user: None,
        rejected_mids: Vec::new(),
        quality: Quality::Auto,
        join: crate::JoinInfo::anchor(crate::presence::user_type::MIX),
    };
    let (publisher, keyframe_requests) = rtc.add_ingest_blocking(out_spec)?;
    let result = (|| -> Result<u32, MixError> {
        let mut membership = rtc.watch_publishers_blocking(spec.room.clone())?;
        let mut canvas = if spec.video { Some(Canvas::new(enc.width, enc.height)) } else { None };
        let mut encoder = if spec.video {
            let settings = EncoderSettings { width: enc.width, height: enc.height, fps: enc.fps, kbps: enc.kbps, gop_frames: enc.fps * enc.gop_s.max(1), preset: MIX_PRESET };
            Some(if enc.openh264 { VideoEncoder::OpenH264(OpenH264Encoder::new(settings)?) } else { VideoEncoder::X264(H264Encoder::new(settings)?) })
        } else {
            None
        };
        let mut opus = if spec.audio != AudioMode::None { Some(OpusEncoder::new(enc.audio_channels, enc.audio_kbps)?) } else { None };
        let mut mixer: AudioMixer<InputKey> = AudioMixer::new(spec.max_voices);
        let mut packetizer = H264Packetizer::new(MAX_RTP_PAYLOAD);
        let (video_ssrc, audio_ssrc) = (tessera_model::random::ssrc(), tessera_model::random::ssrc());
        let (mut video_seq, mut audio_seq) = (1u64, 1u64);
        let mut layout = LayoutState::default();
        let mut overlays = Overlays::default();
        let mut layout_config = spec.layout.clone();
        let mut inputs: HashMap<InputKey, Input> = HashMap::new();
        let mut publishers: Vec<PublisherInfo> = Vec::new();
        let mut placements: Vec<Placement> = Vec::new();
        let mut tap_sizes: Vec<((UserId, StreamKind), (u32, u32))> = Vec::new();
        let mut selected: Vec<InputKey> = Vec::new();
        let (mut decode_t, mut compose_t, mut encode_t) = (Timing::default(), Timing::default(), Timing::default());
        let mut stats = MixStats::default();
        let start = Instant::now();
        let frame_time = Duration::from_secs_f64(1.0 / enc.fps.max(1) as f64);
        let mut next_frame = start;
        let mut next_audio = start;
        let mut idle_since: Option<Instant> = None;
        let mut fps_window = (start, 0u64);
        let thread_name = std::thread::current().name().unwrap_or("").to_owned();
        let mut cpu_mark = job_cpu_seconds(&thread_name);
        // Output frames since the start, skipped ones included.
        let mut tick: u64 = 0;
        let mut mix_pcm = vec![0.0f32; OPUS_FRAME * 2];
        let mut encoded = Vec::new();
        let mut opus_out = Vec::new();
        loop {
            for command in inbox.try_iter() {
                match command {
                    MixCommand::Update(new) => spec = *new,
                    MixCommand::Stop(code) => return Ok(code),
                }
            }
            mixer.max_voices = spec.max_voices;
            let now = Instant::now();
            // Room membership: who is an input, in join order (pushed by the SFU as it changes).
            if membership.list.has_changed().map_err(|_| crate::RtcServerError::Stopped)? {
                publishers = membership.list.borrow_and_update().clone();
                publishers.retain(|p| !p.user.is_mix());
                let present: Vec<InputKey> = publishers.iter().map(|p| InputKey::new(p.user.as_str(), p.stream.as_str())).collect();
                inputs.retain(|k, _| present.contains(k));
            }
            match (!publishers.is_empty(), idle_since) {
                (true, _) => idle_since = None,
                (false, None) => idle_since = Some(now),
                (false, Some(t)) if now - t >= spec.max_idle => return Ok(99),
                _ => {}
            }
            // Packets from the tap: reassemble and decode.
            let t0 = Instant::now();
            let mut keyframe_wanted: Vec<InputKey> = Vec::new();
            while let Ok(p) = packets.try_recv() {
                let key = InputKey::new(p.user.as_str(), p.stream.as_str());
                if !publishers.iter().any(|x| x.user == p.user && x.stream == p.stream) {
                    continue;
                }
                let input = inputs.entry(key.clone()).or_insert(Input { video: None, audio: None });
                if p.codec == Codec::Opus {
                    if spec.audio == AudioMode::None || !wants_audio(&spec, &key) {
                        continue;
                    }
                    let a = input.audio.get_or_insert_with(|| AudioIn { decoder: OpusDecoder::new().ok(), buffer: VecDeque::new(), primed: false, level: None });
                    a.level = p.audio_level.or(a.level);
                    if let Some(d) = a.decoder.as_mut() {
                        let mut pcm = Vec::new();
                        if d.decode(&p.payload, &mut pcm).is_ok() {
                            a.buffer.extend(pcm);
                            while a.buffer.len() > MAX_AUDIO_BUFFER {
                                a.buffer.pop_front();
                            }
                        }
                    }
                } else if spec.video && spec.subscribe.video(&key.user) {
                    let v = input.video.get_or_insert_with(|| VideoIn {
                        codec: p.codec,
                        decoder: None,
                        shared: None,
                        au: AuAssembler::default(),
                        waiting_keyframe: true,
                        last_picture: None,
                        keyframe_requests: KeyframeThrottle::new(KEYFRAME_RETRY),
                    });
                    let shown = placements.is_empty() || placements.iter().any(|x| x.input.as_ref() == Some(&key));
                    if !shown {
                        // No tile shows it (a custom layout, more inputs than tiles): not decoded,
                        // and its decoder's buffers are freed; it starts again from a keyframe,
                        // asked for when it gets a tile.
                        v.decoder = None;
                        v.shared = None;
                        v.au = AuAssembler::default();
                        v.waiting_keyframe = true;
                        v.last_picture = None;
                    } else if let Some(picture) = &p.picture {
                        stats.shared_pictures += 1;
                        v.shared = Some(picture.clone());
                        v.waiting_keyframe = false;
                        v.last_picture = Some(Instant::now());
                    } else if on_video_packet(v, &p) {
                        keyframe_wanted.push(key.clone());
                    }
                }
            }
            decode_t.add(t0.elapsed().as_secs_f64() * 1000.0);
            for (key, input) in inputs.iter_mut() {
                let shown = placements.is_empty() || placements.iter().any(|x| x.input.as_ref() == Some(key));
                if let Some(v) = input.video.as_mut().filter(|_| shown) {
                    let stale = v.last_picture.is_none_or(|t| now - t > Duration::from_millis(500));
                    if (v.waiting_keyframe || stale) && v.keyframe_requests.ready(now) {
                        keyframe_wanted.push(key.clone());
                    }
                }
            }
            keyframe_wanted.sort();
            keyframe_wanted.dedup();
            for key in keyframe_wanted {
                if let Some(v) = inputs.get_mut(&key).and_then(|i| i.video.as_mut()) {
                    v.keyframe_requests.sent(now);
                }
                if let (Ok(user), Some(stream)) = (UserId::parse(&key.user), StreamKind::parse(&key.stream)) {
                    let _ = rtc.request_keyframe_blocking(spec.room.clone(), user, stream);
                }
            }

            // Video: one canvas per output tick.
            if let (Some(canvas), Some(encoder)) = (canvas.as_mut(), encoder.as_mut()) {
                if now >= next_frame {
                    let behind = now - next_frame;
                    if behind > frame_time * 2 {
                        // Under CPU pressure whole ticks are skipped (and counted): the next
                        // frame keeps its place on the output grid.
                        let missed = (behind.as_secs_f64() / frame_time.as_secs_f64()) as u64;
                        stats.dropped_frames += missed;
                        tick += missed;
                        next_frame += frame_time * missed as u32;
                    }
                    next_frame += frame_time;
                    let t1 = Instant::now();
                    let candidates = candidates(&spec, &publishers);
                    if spec.layout != layout_config {
                        // A new layout (PATCH) starts from join order, not the old slot list.
                        layout = LayoutState::default();
                        layout_config = spec.layout.clone();
                    }
                    placements = layout.compute(&spec.layout, enc.width, enc.height, &candidates);
                    // Each source's tile size: the SFU sends the simulcast layer that covers
                    // it (decoding a 720p layer for a 426x240 tile is four times the work).
                    let sizes = tile_sizes(&placements, &inputs);
                    if sizes != tap_sizes {
                        rtc.set_tap_sizes_blocking(spec.room.clone(), tap, sizes.clone())?;
                        tap_sizes = sizes;
                    }
                    let bg = spec.background;
                    overlays.refresh(&spec.images, enc.width, enc.height);
                    canvas.fill(Rect { x: 0, y: 0, width: enc.width, height: enc.height }, (bg.0, bg.1, bg.2));
                    if let Some(o) = &overlays.background {
                        canvas.blend(o, 0, 0);
                    }
                    let mut order: Vec<usize> = (0..placements.len()).collect();
                    order.sort_by_key(|i| placements[*i].tile.z_order);
                    for i in order {
                        let p = &placements[i];
                        let t = p.tile;
                        let rect = Rect { x: t.x, y: t.y, width: t.width, height: t.height };
                        let tile_bg = t.background.unwrap_or(bg);
                        let picture = p
                            .input
                            .as_ref()
                            .and_then(|k| inputs.get(k))
                            .and_then(|input| input.video.as_ref())
                            .filter(|v| v.last_picture.is_some_and(|at| now - at < FROZEN_LIMIT))
                            .and_then(|v| v.shared.as_ref().map(|p| &*p.0).or_else(|| v.decoder.as_ref().and_then(|d| d.picture())));
                        match picture {
                            Some(frame) => {
                                let _ = canvas.draw(i, frame, rect, t.fill_mode == super::layout::FillMode::Fill, (tile_bg.0, tile_bg.1, tile_bg.2));
                            }
                            None => {
                                canvas.fill(rect, (tile_bg.0, tile_bg.1, tile_bg.2));
                                // An input without a picture (audio-only, muted, frozen for 2 s)
                                // shows the placeholder; an empty tile only its background.
                                if let (Some(image), Some(_)) = (&spec.images.placeholder, &p.input) {
                                    let size = (rect.width, rect.height);
                                    if let std::collections::hash_map::Entry::Vacant(slot) = overlays.placeholder.entry(size) {
                                        if let Ok(o) = Overlay::new(image, rect.width, rect.height, true) {
                                            slot.insert(o);
                                        }
                                    }
                                    if let Some(o) = overlays.placeholder.get(&size) {
                                        canvas.paint(o, rect);
                                    }
                                }
                            }
                        }
                    }
                    for (o, x, y) in &overlays.watermarks {
                        canvas.blend(o, *x, *y);
                    }
                    compose_t.add(t1.elapsed().as_secs_f64() * 1000.0);
                    let t2 = Instant::now();
                    if keyframe_requests.take() {
                        encoder.request_keyframe();
                    }
                    let pts_ms = tick_ms(tick, enc.fps);
                    tick += 1;
                    encoded.clear();
                    encoder.encode(canvas.frame_mut(), pts_ms, &mut encoded)?;
                    encode_t.add(t2.elapsed().as_secs_f64() * 1000.0);
                    let mut out = Vec::new();
                    for e in &encoded {
                        let nalus = h264::split_annex_b(&e.data);
                        let mut payloads = Vec::new();
                        packetizer.push(&nalus, tick_rtp(e.pts_ms, enc.fps), &mut payloads);
                        for pl in payloads {
                            out.push(IngestPacket {
                                ssrc: video_ssrc,
                                seq: video_seq,
                                ts: pl.ts,
                                marker: pl.marker,
                                keyframe: pl.keyframe,
                                codec: Codec::H264,
                                payload: Arc::from(pl.payload),
                                audio_level: None,
                                route: PacketRoute::All,
                                composition_ms: 0,
                                picture: None,
                                rid: None,
                            });
                            video_seq += 1;
                        }
                    }
                    if !out.is_empty() {
                        rtc.push_blocking(publisher, out)?;
                    }
                    stats.frames += 1;
                    fps_window.1 += 1;
                }
            }

            // Audio: one 20 ms mix per tick.
            if let Some(opus) = opus.as_mut() {
                while Instant::now() >= next_audio {
                    next_audio += Duration::from_millis(20);
                    let mut blocks: Vec<(InputKey, Vec<f32>, Option<u8>)> = Vec::new();
                    for (key, input) in inputs.iter_mut() {
                        let Some(a) = input.audio.as_mut() else { continue };
                        if !a.primed {
                            a.primed = a.buffer.len() >= AUDIO_PREROLL;
                            if !a.primed {
                                continue;
                            }
                        }
                        let n = (OPUS_FRAME * 2).min(a.buffer.len());
                        let mut block: Vec<f32> = a.buffer.drain(..n).collect();
                        if block.len() < OPUS_FRAME * 2 {
                            // Ran dry: play what there is and wait for the pre-roll again.
                            a.primed = false;
                            block.resize(OPUS_FRAME * 2, 0.0);
                        }
                        blocks.push((key.clone(), block, a.level));
                    }
                    let refs: Vec<(InputKey, &[f32], Option<u8>)> = blocks.iter().map(|(k, b, l)| (k.clone(), b.as_slice(), *l)).collect();
                    selected = mixer.mix_with_levels(&refs, &mut mix_pcm);
                    opus_out.clear();
                    opus.encode(&mix_pcm, &mut opus_out)?;
                    let out: Vec<IngestPacket> = opus_out
                        .drain(..)
                        .map(|f| {
                            audio_seq += 1;
                            // Opus timestamps on the video's clock (ms since start × 48).
                            let ts = (next_audio - start).as_millis() as u64 * 48 - 960;
                            IngestPacket {
                                ssrc: audio_ssrc,
                                seq: audio_seq,
                                ts: ts as u32,
                                marker: false,
                                keyframe: true,
                                codec: Codec::Opus,
                                payload: Arc::from(f.data),
                                audio_level: f.level,
                                route: PacketRoute::All,
                                composition_ms: 0,
                                picture: None,
                                rid: None,
                            }
                        })
                        .collect();
                    if !out.is_empty() {
                        rtc.push_blocking(publisher, out)?;
                    }
                }
            }

            // Status for GET.
            if fps_window.0.elapsed() >= Duration::from_secs(1) {
                let elapsed = fps_window.0.elapsed().as_secs_f64();
                stats.fps = (fps_window.1 as f64 / elapsed * 10.0).round() / 10.0;
                let cpu = job_cpu_seconds(&thread_name);
                stats.cpu_cores = ((cpu - cpu_mark) / elapsed * 100.0).round() / 100.0;
                cpu_mark = cpu;
                fps_window = (Instant::now(), 0);
            }
            stats.decode_ms_p50 = decode_t.p50();
            stats.compose_ms_p50 = compose_t.p50();
            stats.encode_ms_p50 = encode_t.p50();
            {
                let mut st = lock(&handle.status);
                if stats.frames > 0 || (!spec.video && !selected.is_empty()) {
                    st.state = MixState::Running;
                }
                st.stats = stats.clone();
                st.inputs = publishers
                    .iter()
                    .map(|p| {
                        let key = InputKey::new(p.user.as_str(), p.stream.as_str());
                        let decoded = inputs
                            .get(&key)
                            .and_then(|i| i.video.as_ref())
                            .and_then(|v| v.shared.as_ref().map(|p| &*p.0).or_else(|| v.decoder.as_ref().and_then(|d| d.picture())).map(|f| (f.width(), f.height())));
                        InputStatus {
                            decoded,
                            tile: placements.iter().find(|x| x.input.as_ref() == Some(&key)).map(|x| x.tile),
                            voice_selected: selected.contains(&key),
                            has_video: p.has_video,
                            has_audio: p.has_audio,
                            join_order: p.join_order,
                            key,
                        }
                    })
                    .collect();
            }
            // Sleep until the next tick (packets queue in the tap meanwhile).
            let mut next = Instant::now() + Duration::from_millis(10);
            if canvas.is_some() {
                next = next.min(next_frame);
            }
            if opus.is_some() {
                next = next.min(next_audio);
            }
            let wait = next.saturating_duration_since(Instant::now()).min(Duration::from_millis(10));
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    })();
    let _ = rtc.remove_tap_blocking(tap);
    let _ = rtc.remove_ingest_blocking(publisher);
    result
}

fn wants_audio(spec: &MixSpec, key: &InputKey) -> bool {
    if !spec.subscribe.audio(&key.user) {
        return false;
    }
    match &spec.audio {
        AudioMode::All => true,
        AudioMode::Users(users) => users.contains(&key.user),
        AudioMode::None => false,
    }
}

/// The layout's candidates (LAYOUTS.md §2): every `main` stream that passes `subscribe`; `aux`
/// only with `include_aux` or when named by `main` or a region; in join order, at most 25.
fn candidates(spec: &MixSpec, publishers: &[PublisherInfo]) -> Vec<InputKey> {
    let named: Vec<&InputKey> = spec.layout.main.iter().chain(spec.layout.regions.iter().filter_map(|r| r.input.as_ref())).collect();
    publishers
        .iter()
        .filter(|p| spec.subscribe.video(p.user.as_str()) || spec.subscribe.audio(p.user.as_str()))
        .map(|p| InputKey::new(p.user.as_str(), p.stream.as_str()))
        .filter(|k| k.stream == "main" || spec.include_aux || named.contains(&k))
        .take(MAX_INPUTS)
        .collect()
}

/// Adds one RTP packet to its access unit and decodes the unit when complete. Returns whether a
/// keyframe should be asked for (a gap, a decode error).
/// The size each placed source's picture is drawn at (the largest, if it has several tiles):
/// its tile's, or, once its aspect is known, the picture scaled to cover the tile (`fill`) or
/// to fit in it (`fit`).
fn tile_sizes(placements: &[Placement], inputs: &HashMap<InputKey, Input>) -> Vec<((UserId, StreamKind), (u32, u32))> {
    let mut out: Vec<((UserId, StreamKind), (u32, u32))> = Vec::new();
    for p in placements {
        let Some(k) = &p.input else { continue };
        let (Ok(user), Some(stream)) = (UserId::parse(&k.user), StreamKind::parse(&k.stream)) else { continue };
        let picture = inputs.get(k).and_then(|i| i.video.as_ref()).and_then(|v| v.decoder.as_ref()).and_then(|d| d.picture()).map(|f| (f.width(), f.height()));
        let size = match picture.filter(|(w, h)| *w > 0 && *h > 0) {
            Some((w, h)) => {
                let (sx, sy) = (p.tile.width as f64 / w as f64, p.tile.height as f64 / h as f64);
                let scale = if p.tile.fill_mode == super::layout::FillMode::Fill { sx.max(sy) } else { sx.min(sy) };
                ((w as f64 * scale).round() as u32, (h as f64 * scale).round() as u32)
            }
            None => (p.tile.width, p.tile.height),
        };
        match out.iter_mut().find(|(s, _)| s.0 == user && s.1 == stream) {
            Some((_, s)) => *s = (s.0.max(size.0), s.1.max(size.1)),
            None => out.push(((user, stream), size)),
        }
    }
    out.sort_by(|a, b| (a.0 .0.as_str(), a.0 .1.as_str()).cmp(&(b.0 .0.as_str(), b.0 .1.as_str())));
    out
}

fn on_video_packet(v: &mut VideoIn, p: &TapPacket) -> bool {
    if p.layer_switch {
        // Another simulcast layer from here (at its keyframe): the old layer's unfinished
        // access unit is dropped, not completed with the new one's packets.
        v.au = AuAssembler::default();
        v.waiting_keyframe = true;
    }
    let push = v.au.push(p.seq, p.ts, p.marker, p.payload.clone());
    if v.au.take_abandoned() {
        v.waiting_keyframe = true;
    }
    let au = match push {
        Push::Pending => return false,
        Push::Gap => {
            v.waiting_keyframe = true;
            return true;
        }
        Push::Unit(au) => au,
    };
    let (data, keyframe, codec) = match v.codec {
        Codec::H264 => {
            let payloads: Vec<Vec<u8>> = au.iter().map(|p| p.to_vec()).collect();
            let nalus = h264::depacketize(&payloads);
            let key = nalus.iter().any(|n| h264::nal_type(n) == Some(h264::NAL_IDR));
            (h264::to_annex_b(&nalus), key, VideoCodec::H264)
        }
        Codec::Vp8 => {
            let mut frame = Vec::new();
            for p in &au {
                if let Some((_, body)) = tessera_media::vp8::depacketize(p) {
                    frame.extend_from_slice(body);
                }
            }
            let key = tessera_media::vp8::is_keyframe(&frame);
            (frame, key, VideoCodec::Vp8)
        }
        // H.265 and AV1 are originals only outputs and viewers take; a mix's tap never gets
        // them (it takes the decoded pictures).
        Codec::Opus | Codec::H265 | Codec::Av1 => return false,
    };
    if v.waiting_keyframe && !keyframe {
        return false;
    }
    if v.decoder.is_none() {
        v.decoder = VideoDecoder::new(codec).ok();
    }
    let Some(decoder) = v.decoder.as_mut() else { return false };
    match decoder.decode(&data) {
        Ok(got) => {
            v.waiting_keyframe = false;
            if got {
                v.last_picture = Some(Instant::now());
            }
            false
        }
        Err(_) => {
            v.waiting_keyframe = true;
            true
        }
    }
}

#[cfg(test)]
mod clock_tests {
    use super::{tick_ms, tick_rtp};

    #[test]
    fn frames_sit_on_the_output_grid() {
        // 30 fps: 3000 ticks of 90 kHz apart, whatever rounding the ms stamps had.
        let rtp: Vec<u32> = (0..7).map(|t| tick_rtp(tick_ms(t, 30), 30)).collect();
        assert_eq!(rtp, [0, 3000, 6000, 9000, 12000, 15000, 18000]);
        // A skipped tick leaves a gap of exactly two periods.
        assert_eq!(tick_rtp(tick_ms(9, 30), 30) - tick_rtp(tick_ms(7, 30), 30), 6000);
        // 15 and 24 fps.
        assert_eq!(tick_rtp(tick_ms(5, 15), 15), 30_000);
        assert_eq!(tick_rtp(tick_ms(3, 24), 24), 11_250);
        // An hour in: no drift.
        let hour = 30 * 3600;
        assert_eq!(tick_rtp(tick_ms(hour, 30), 30), 3600 * 90_000);
    }
}
