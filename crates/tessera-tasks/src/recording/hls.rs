//! The HLS writer of one playlist: MPEG-TS segments cut at keyframes, written in the spool and
//! handed to the storage whole, the playlist rewritten after each (RECORDING.md §4), and what
//! happens when the storage refuses a file (308, skipped segments, a 10-minute limit).

use super::{FileInfo, RecordingError, TaskEvents};
use crate::persist::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_engine::outputs::hls::{CutRules, Playlist, RisingClock, StorageFailures, STORAGE_RETRY_MS};
use tessera_media::Codec;
use tessera_model::events::TaskEvent;
use tessera_transcode::mux::{AudioTrack, TsSegment};

/// Where a recording's finished files go (RECORDING.md §7). Files are written to the spool
/// first and handed over whole; an S3 backend implements the same calls (upload with retries).
pub trait Storage: Send + Sync {
    /// Moves a finished file out of the spool to `name` in the task's place.
    fn store(&self, spooled: &Path, name: &str) -> Result<(), RecordingError>;
    /// Replaces a small object (a playlist) in one step.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), RecordingError>;
    fn remove(&self, name: &str);
    /// The URL players fetch `name` at.
    fn url(&self, name: &str) -> String;
    /// Whether `name` is in final storage now (an S3 upload may still wait in the spool).
    fn stored_now(&self, _name: &str) -> bool {
        true
    }
}

/// `recordings/<app>/<prefix>/<task>/` under the data dir, served at `/files/<app>/…`.
pub struct LocalStorage {
    pub dir: PathBuf,
    pub url_base: String,
}

impl Storage for LocalStorage {
    fn store(&self, spooled: &Path, name: &str) -> Result<(), RecordingError> {
        std::fs::rename(spooled, self.dir.join(name)).map_err(|e| RecordingError::Storage { name: name.into(), reason: e.to_string() })
    }
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), RecordingError> {
        write_atomic(&self.dir.join(name), bytes, 0o644).map_err(|e| RecordingError::Storage { name: name.into(), reason: e.to_string() })
    }
    fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }
    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.url_base)
    }
}

/// RECORDING.md §4: base64 of the UTF-8 bytes, `/` → `-`, `=` → `.`.
pub fn id_in_name(id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(id.as_bytes()).replace('/', "-").replace('=', ".")
}

/// `YYYYMMDDhhmmssSSS` (UTC) of a Unix ms time.
pub fn utc17(unix_ms: i64) -> String {
    let ms = unix_ms.rem_euclid(1000);
    let secs = unix_ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}{:02}{:02}{:02}{ms:03}", sod / 3600, sod % 3600 / 60, sod % 60)
}

pub(super) struct Segment {
    ts: TsSegment,
    part: PathBuf,
    name: String,
    first_ms: i64,
    begin_unix: i64,
}

/// One playlist: its segments and the one being written. The rules (when to cut, the
/// playlist's text, what a storage failure leads to) are the engine's `outputs::hls` values;
/// this owns the muxer and the files.
pub(super) struct HlsWriter {
    pub(super) events: TaskEvents,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) spool: PathBuf,
    pub(super) playlist: String,
    pub(super) segment_stem: String,
    pub(super) user_id: String,
    pub(super) media_id: String,
    pub(super) track_type: String,
    pub(super) rules: CutRules,
    pub(super) video: bool,
    pub(super) audio: Option<AudioTrack>,
    pub(super) text: Playlist,
    pub(super) current: Option<Segment>,
    pub(super) files: Vec<FileInfo>,
    pub(super) last_ms: i64,
    /// Asked the source for a keyframe for the pending cut.
    pub(super) keyframe_asked: bool,
    /// The video's codec: H.264, or an HEVC publisher's H.265 original (MPEG-TS segments both),
    /// or an AV1 publisher's original (fragmented MP4 segments, with its sequence header).
    codec: Codec,
    av1_sequence_header: Option<Vec<u8>>,
    video_clock: RisingClock,
    audio_clock: RisingClock,
    pub(super) failures: StorageFailures,
}

/// A sample the muxer refused is dropped, not the recording: logged, and the next one goes on.
fn not_written(track: &str, r: Result<(), tessera_transcode::TranscodeError>) {
    if let Err(e) = r {
        tracing::debug!("{track} not written: {e}");
    }
}

impl HlsWriter {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        events: TaskEvents,
        storage: Arc<dyn Storage>,
        spool: PathBuf,
        names: (String, String),
        ids: (String, String, String),
        rules: CutRules,
        video: bool,
        audio: Option<AudioTrack>,
    ) -> HlsWriter {
        let ((playlist, segment_stem), (user_id, media_id, track_type)) = (names, ids);
        HlsWriter {
            events,
            storage,
            spool,
            playlist,
            segment_stem,
            user_id,
            media_id,
            track_type,
            rules,
            video,
            audio,
            text: Playlist::new(rules.target_s),
            current: None,
            files: Vec::new(),
            last_ms: 0,
            keyframe_asked: false,
            codec: Codec::H264,
            av1_sequence_header: None,
            video_clock: RisingClock::default(),
            audio_clock: RisingClock::default(),
            failures: StorageFailures::default(),
        }
    }

    /// The picture size, known from the first keyframe (the playlist names it), and the
    /// video's codec (with AV1's sequence header OBU).
    pub(super) fn set_video(&mut self, size: (u32, u32), codec: Codec, av1_sequence_header: Option<Vec<u8>>) {
        self.text.video_size = self.video.then_some(size);
        self.codec = codec;
        self.av1_sequence_header = av1_sequence_header;
    }

    fn size(&self) -> Option<(u32, u32)> {
        self.text.video_size
    }

    /// A refused file (issue 10, defect 13): reported with 308 now and then, a discontinuity
    /// marked; only a storage that keeps failing for `STORAGE_RETRY_MS` ends the recording.
    fn storage_trouble(&mut self, error: RecordingError, clock_ms: i64, lost_segment: bool) -> Result<(), RecordingError> {
        let verdict = self.failures.failed(clock_ms, lost_segment);
        if verdict.report {
            self.events.storage_error(&error.to_string());
        }
        self.text.mark_discontinuity();
        if verdict.give_up {
            return Err(RecordingError::StorageFailing { seconds: STORAGE_RETRY_MS / 1000, last: Box::new(error) });
        }
        let what = if lost_segment { "a segment" } else { "the playlist" };
        tracing::warn!(playlist = %self.playlist, "storage refused {what}; retrying with the next one: {error}");
        Ok(())
    }

    /// Opens the next segment; a storage failure leaves none open (the samples until the next
    /// attempt are skipped).
    fn open(&mut self, clock_ms: i64, unix_ms: i64) -> Result<(), RecordingError> {
        if !self.failures.may_open(clock_ms) {
            return Ok(());
        }
        match self.open_segment(clock_ms, unix_ms) {
            Ok(()) => {
                self.failures.opened();
                Ok(())
            }
            Err(e) => {
                self.failures.open_failed(clock_ms, self.rules.segment_ms);
                self.storage_trouble(e, clock_ms, true)
            }
        }
    }

    fn open_segment(&mut self, clock_ms: i64, unix_ms: i64) -> Result<(), RecordingError> {
        let av1 = match (self.codec, self.size(), self.av1_sequence_header.as_deref()) {
            (Codec::Av1, Some(size), Some(header)) if self.video => Some((size, header)),
            _ => None,
        };
        let ext = if av1.is_some() { "m4s" } else { "ts" };
        let name = format!("{}_{}.{ext}", self.segment_stem, utc17(unix_ms));
        let part = self.spool.join(format!("{name}.part"));
        let video = if self.video { self.size() } else { None };
        let ts = match av1 {
            Some((size, header)) => TsSegment::create_av1_fmp4(&part, size, header, self.audio.as_ref())?,
            None if self.codec == Codec::H265 => TsSegment::create_hevc(&part, video, self.audio.as_ref())?,
            None => TsSegment::create(&part, video, self.audio.as_ref())?,
        };
        self.text.start_rec_time.get_or_insert(unix_ms);
        self.current = Some(Segment { ts, part, name, first_ms: clock_ms, begin_unix: unix_ms });
        Ok(())
    }

    /// Closes the current segment: renamed into place, listed, the playlist rewritten. A segment
    /// the storage refuses is skipped (see `storage_trouble`).
    pub(super) fn cut(&mut self, end_ms: i64) -> Result<(), RecordingError> {
        let Some(part) = self.current.as_ref().map(|s| s.part.clone()) else { return Ok(()) };
        match self.cut_segment(end_ms) {
            Ok(()) => {
                if self.failures.stored() {
                    tracing::info!(playlist = %self.playlist, skipped = self.failures.skipped, "storage works again");
                }
                Ok(())
            }
            Err((e, lost_segment)) => {
                // What was not stored frees its space at once.
                let _ = std::fs::remove_file(&part);
                self.storage_trouble(e, end_ms, lost_segment)
            }
        }
    }

    fn cut_segment(&mut self, end_ms: i64) -> Result<(), (RecordingError, bool)> {
        let Some(seg) = self.current.take() else { return Ok(()) };
        seg.ts.finish().map_err(|e| (e.into(), true))?;
        let size = std::fs::metadata(&seg.part).map(|m| m.len()).unwrap_or(0);
        // A fragmented MP4 segment names its own init section in the playlist.
        let init = if seg.name.ends_with(".m4s") { tessera_transcode::mux::fmp4_init_len(&seg.part) } else { None };
        self.storage.store(&seg.part, &seg.name).map_err(|e| (e, true))?;
        let duration_ms = (end_ms - seg.first_ms).max(1);
        match init {
            Some(init) => self.text.add_segment_with_init(&seg.name, duration_ms, init, size),
            None => self.text.add_segment(&seg.name, duration_ms),
        }
        self.files.push(FileInfo {
            file_name: seg.name.clone(),
            user_id: self.user_id.clone(),
            media_id: self.media_id.clone(),
            track_type: self.track_type.clone(),
            begin_ts: seg.begin_unix,
            end_ts: seg.begin_unix + duration_ms,
            duration_ms,
            size,
            url: self.storage.url(&seg.name),
            stored: self.storage.stored_now(&seg.name),
            play_time_ms: seg.first_ms,
        });
        // The segment is stored and listed; if the playlist is refused, the next write names it.
        self.write_playlist(false).map_err(|e| (e, false))?;
        if self.files.len() == 1 {
            // The playlist's first segment is stored: 307 names it, 304 the playlist.
            self.events.emit(TaskEvent::SegmentCut {
                file_name: seg.name.clone(),
                user_id: self.user_id.clone(),
                track_type: self.track_type.to_string(),
                media_id: self.media_id.clone(),
                begin_time_stamp: self.text.start_rec_time.unwrap_or(seg.begin_unix),
            });
            self.events.emit(TaskEvent::PlaylistStored { file_list: vec![self.playlist.clone()] });
        }
        Ok(())
    }

    pub(super) fn write_playlist(&self, end: bool) -> Result<(), RecordingError> {
        self.storage.put(&self.playlist, self.text.text(end).as_bytes())
    }

    /// Whether the open segment has reached its length (a keyframe would end it).
    pub(super) fn due(&self, clock_ms: i64) -> bool {
        self.rules.due(self.current.as_ref().map(|s| s.first_ms), clock_ms)
    }

    /// Whether to ask the source for the keyframe that ends the open segment.
    pub(super) fn keyframe_soon(&self, clock_ms: i64) -> bool {
        self.rules.keyframe_soon(self.current.as_ref().map(|s| s.first_ms), clock_ms)
    }

    /// The next pause or gap starts a new segment after a discontinuity.
    pub(super) fn mark_discontinuity(&mut self) {
        self.text.mark_discontinuity();
    }

    /// One access unit decoded at `clock_ms` and shown `cts_ms` later.
    pub(super) fn video(&mut self, clock_ms: i64, cts_ms: i32, unix_ms: i64, annex_b: &[u8], keyframe: bool) -> Result<(), RecordingError> {
        if self.current.is_none() && !keyframe {
            return Ok(());
        }
        if self.rules.cut_before_video(self.current.as_ref().map(|s| s.first_ms), clock_ms, keyframe) {
            self.cut(clock_ms)?;
            self.keyframe_asked = false;
        }
        if self.current.is_none() {
            self.open(clock_ms, unix_ms)?;
        }
        let clock_ms = self.video_clock.next(clock_ms);
        let Some(seg) = self.current.as_mut() else { return Ok(()) }; // storage refused it
        not_written("video", seg.ts.write_video(annex_b, clock_ms, cts_ms, keyframe));
        self.last_ms = clock_ms + 40;
        Ok(())
    }

    pub(super) fn audio(&mut self, clock_ms: i64, unix_ms: i64, aac: &[u8]) -> Result<(), RecordingError> {
        if self.video {
            // Muxed: audio rides in the video's segments.
            if let Some(seg) = self.current.as_mut() {
                let clock_ms = self.audio_clock.next(clock_ms);
                not_written("audio", seg.ts.write_audio(aac, clock_ms));
            }
            return Ok(());
        }
        let clock_ms = self.audio_clock.next(clock_ms);
        if self.due(clock_ms) {
            self.cut(clock_ms)?;
        }
        if self.current.is_none() {
            self.open(clock_ms, unix_ms)?;
        }
        let Some(seg) = self.current.as_mut() else { return Ok(()) }; // storage refused it
        not_written("audio", seg.ts.write_audio(aac, clock_ms));
        self.last_ms = clock_ms + 21;
        Ok(())
    }

    pub(super) fn finish(&mut self) -> Result<(), RecordingError> {
        let end = self.last_ms;
        self.cut(end)?;
        if self.text.start_rec_time.is_some() {
            self.write_playlist(true).inspect_err(|e| self.events.storage_error(&e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_names_follow_the_spec_examples() {
        assert_eq!(id_in_name("room1"), "cm9vbTE.");
        assert_eq!(id_in_name("class1"), "Y2xhc3Mx");
        assert_eq!(id_in_name("alice"), "YWxpY2U.");
        assert_eq!(id_in_name("teacher"), "dGVhY2hlcg..");
    }

    #[test]
    fn utc_stamps_have_17_digits() {
        assert_eq!(utc17(1_763_805_600_101), "20251122100000101");
        assert_eq!(utc17(0), "19700101000000000");
        assert_eq!(utc17(951_782_400_000), "20000229000000000", "a leap day");
    }
}
