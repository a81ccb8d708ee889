//! The HLS writer of one playlist: MPEG-TS segments cut at keyframes, written in the spool and
//! handed to the storage whole, the playlist rewritten after each (RECORDING.md §4), and what
//! happens when the storage refuses a file (308, skipped segments, a 10-minute limit).

use super::{FileInfo, TaskEvents};
use crate::persist::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_model::events::TaskEvent;
use tessera_transcode::mux::{AudioTrack, TsSegment};

/// Where a recording's finished files go (RECORDING.md §7). Files are written to the spool
/// first and handed over whole; an S3 backend implements the same calls (upload with retries).
pub trait Storage: Send + Sync {
    /// Moves a finished file out of the spool to `name` in the task's place.
    fn store(&self, spooled: &Path, name: &str) -> Result<(), String>;
    /// Replaces a small object (a playlist) in one step.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String>;
    fn remove(&self, name: &str);
    /// The URL players fetch `name` at.
    fn url(&self, name: &str) -> String;
}

/// `recordings/<app>/<prefix>/<task>/` under the data dir, served at `/files/<app>/…`.
pub struct LocalStorage {
    pub dir: PathBuf,
    pub url_base: String,
}

impl Storage for LocalStorage {
    fn store(&self, spooled: &Path, name: &str) -> Result<(), String> {
        std::fs::rename(spooled, self.dir.join(name)).map_err(|e| format!("storing {name}: {e}"))
    }
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        write_atomic(&self.dir.join(name), bytes, 0o644).map_err(|e| format!("storing {name}: {e}"))
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

/// One playlist: its segments and the one being written.
pub(super) struct HlsWriter {
    pub(super) events: TaskEvents,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) spool: PathBuf,
    pub(super) playlist: String,
    pub(super) segment_stem: String,
    pub(super) user_id: String,
    pub(super) media_id: String,
    pub(super) track_type: String,
    pub(super) segment_ms: i64,
    pub(super) target: u32,
    pub(super) video: bool,
    pub(super) audio: Option<AudioTrack>,
    pub(super) size: Option<(u32, u32)>,
    pub(super) start_rec_time: Option<i64>,
    pub(super) lines: Vec<String>,
    pub(super) current: Option<Segment>,
    pub(super) discontinuity: bool,
    pub(super) files: Vec<FileInfo>,
    pub(super) first_play_ms: Option<i64>,
    pub(super) last_ms: i64,
    /// Asked the source for a keyframe for the pending cut.
    pub(super) keyframe_asked: bool,
    /// Last timestamps written per track: the muxer needs them increasing.
    pub(super) last_video_ms: i64,
    pub(super) last_audio_ms: i64,
    /// Since when (task clock) the storage has refused this writer's files, if it does now.
    pub(super) failing_since: Option<i64>,
    /// When 308 was last sent for this writer (one a few seconds is enough to say it).
    pub(super) reported_ms: Option<i64>,
    /// Segments lost to storage failures.
    pub(super) skipped: u32,
    /// After a segment could not be opened, the next attempt waits a segment's length (so one
    /// lost segment counts once, not once per frame).
    pub(super) open_retry_at: Option<i64>,
}

/// How long storage may keep failing before the recording ends (PRODUCT.md: a storage failure
/// is reported with 308 and retried for up to 10 minutes).
const STORAGE_RETRY_MS: i64 = 10 * 60 * 1000;
/// 308 at most this often per writer while the storage keeps failing.
const STORAGE_REPORT_MS: i64 = 5_000;

/// A sample the muxer refused is dropped, not the recording: logged, and the next one goes on.
fn not_written(track: &str, r: Result<(), tessera_transcode::TranscodeError>) {
    if let Err(e) = r {
        tracing::debug!("{track} not written: {e}");
    }
}

impl HlsWriter {
    fn playlist_text(&self, end: bool) -> String {
        let mut t = format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-ALLOW-CACHE:NO\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:{}\n", self.target);
        if let Some(s) = self.start_rec_time {
            t.push_str(&format!("#EXT-X-TRTC-START-REC-TIME:{s}\n"));
        }
        if let (true, Some((w, h))) = (self.video, self.size) {
            t.push_str(&format!("#EXT-X-TRTC-VIDEO-METADATA:WIDTH:{w} HEIGHT:{h}\n"));
        }
        for l in &self.lines {
            t.push_str(l);
            t.push('\n');
        }
        if end {
            t.push_str("#EXT-X-ENDLIST\n");
        }
        t
    }

    /// A file the storage refused (issue 10, defect 13): reported with 308 (at most every few
    /// seconds), the segment skipped and counted, a discontinuity marked; only after
    /// `STORAGE_RETRY_MS` of failures does the recording end.
    fn storage_trouble(&mut self, error: String, clock_ms: i64) -> Result<(), String> {
        let since = *self.failing_since.get_or_insert(clock_ms);
        if self.reported_ms.is_none_or(|t| clock_ms - t >= STORAGE_REPORT_MS) {
            self.reported_ms = Some(clock_ms);
            self.events.storage_error(&error);
        }
        self.discontinuity = true;
        if clock_ms - since >= STORAGE_RETRY_MS {
            return Err(format!("storage failing for {} s: {error}", STORAGE_RETRY_MS / 1000));
        }
        tracing::warn!(playlist = %self.playlist, "storage refused a segment; retrying with the next one: {error}");
        Ok(())
    }

    fn storage_ok(&mut self) {
        if self.failing_since.take().is_some() {
            tracing::info!(playlist = %self.playlist, skipped = self.skipped, "storage works again");
        }
    }

    /// Opens the next segment; a storage failure leaves none open (the samples until the next
    /// attempt are skipped).
    fn open(&mut self, clock_ms: i64, unix_ms: i64) -> Result<(), String> {
        if self.open_retry_at.is_some_and(|at| clock_ms < at) {
            return Ok(());
        }
        match self.open_segment(clock_ms, unix_ms) {
            Ok(()) => {
                self.open_retry_at = None;
                Ok(())
            }
            Err(e) => {
                self.skipped += 1;
                self.open_retry_at = Some(clock_ms + self.segment_ms);
                self.storage_trouble(e, clock_ms)
            }
        }
    }

    fn open_segment(&mut self, clock_ms: i64, unix_ms: i64) -> Result<(), String> {
        let name = format!("{}_{}.ts", self.segment_stem, utc17(unix_ms));
        let part = self.spool.join(format!("{name}.part"));
        let ts = TsSegment::create(&part, if self.video { self.size } else { None }, self.audio.as_ref()).map_err(|e| e.to_string())?;
        self.start_rec_time.get_or_insert(unix_ms);
        self.first_play_ms.get_or_insert(clock_ms);
        self.current = Some(Segment { ts, part, name, first_ms: clock_ms, begin_unix: unix_ms });
        Ok(())
    }

    /// Closes the current segment: renamed into place, listed, the playlist rewritten. A segment
    /// the storage refuses is skipped (see `storage_trouble`).
    pub(super) fn cut(&mut self, end_ms: i64) -> Result<(), String> {
        let Some(part) = self.current.as_ref().map(|s| s.part.clone()) else { return Ok(()) };
        match self.cut_segment(end_ms) {
            Ok(()) => {
                self.storage_ok();
                Ok(())
            }
            Err(e) => {
                // What was not stored frees its space at once.
                let _ = std::fs::remove_file(&part);
                self.skipped += 1;
                self.storage_trouble(e, end_ms)
            }
        }
    }

    fn cut_segment(&mut self, end_ms: i64) -> Result<(), String> {
        let Some(seg) = self.current.take() else { return Ok(()) };
        seg.ts.finish().map_err(|e| e.to_string())?;
        let size = std::fs::metadata(&seg.part).map(|m| m.len()).unwrap_or(0);
        self.storage.store(&seg.part, &seg.name)?;
        let duration_ms = (end_ms - seg.first_ms).max(1);
        if std::mem::take(&mut self.discontinuity) {
            self.lines.push("#EXT-X-DISCONTINUITY".into());
        }
        self.lines.push(format!("#EXTINF:{:.3},", duration_ms as f64 / 1000.0));
        self.lines.push(seg.name.clone());
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
            stored: true,
            play_time_ms: seg.first_ms,
        });
        if let Err(e) = self.write_playlist(false) {
            // The segment is stored and listed; the next playlist write will name it.
            return self.storage_trouble(e, end_ms);
        }
        if self.files.len() == 1 {
            // The playlist's first segment is stored: 307 names it, 304 the playlist.
            self.events.emit(TaskEvent::SegmentCut {
                file_name: seg.name.clone(),
                user_id: self.user_id.clone(),
                track_type: self.track_type.to_string(),
                media_id: self.media_id.clone(),
                begin_time_stamp: self.start_rec_time.unwrap_or(seg.begin_unix),
            });
            self.events.emit(TaskEvent::PlaylistStored { file_list: vec![self.playlist.clone()] });
        }
        Ok(())
    }

    pub(super) fn write_playlist(&self, end: bool) -> Result<(), String> {
        self.storage.put(&self.playlist, self.playlist_text(end).as_bytes())
    }

    /// Whether a video frame at `clock_ms` should start a new segment.
    pub(super) fn due(&self, clock_ms: i64) -> bool {
        self.current.as_ref().is_some_and(|s| clock_ms - s.first_ms >= self.segment_ms)
    }

    pub(super) fn video(&mut self, clock_ms: i64, unix_ms: i64, annex_b: &[u8], keyframe: bool) -> Result<(), String> {
        if self.current.is_none() && !keyframe {
            return Ok(());
        }
        let hard = self.current.as_ref().is_some_and(|s| clock_ms - s.first_ms >= self.target as i64 * 1000);
        if (keyframe && self.due(clock_ms)) || hard {
            self.cut(clock_ms)?;
            self.keyframe_asked = false;
        }
        if self.current.is_none() {
            self.open(clock_ms, unix_ms)?;
        }
        let clock_ms = clock_ms.max(self.last_video_ms + 1);
        self.last_video_ms = clock_ms;
        let Some(seg) = self.current.as_mut() else { return Ok(()) }; // storage refused it
        not_written("video", seg.ts.write_video(annex_b, clock_ms, keyframe));
        self.last_ms = clock_ms + 40;
        Ok(())
    }

    pub(super) fn audio(&mut self, clock_ms: i64, unix_ms: i64, aac: &[u8]) -> Result<(), String> {
        let clock_ms = clock_ms.max(self.last_audio_ms + 1);
        if self.video {
            // Muxed: audio rides in the video's segments.
            if let Some(seg) = self.current.as_mut() {
                self.last_audio_ms = clock_ms;
                not_written("audio", seg.ts.write_audio(aac, clock_ms));
            }
            return Ok(());
        }
        self.last_audio_ms = clock_ms;
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

    pub(super) fn finish(&mut self) -> Result<(), String> {
        let end = self.last_ms;
        self.cut(end)?;
        if self.start_rec_time.is_some() {
            self.write_playlist(true).inspect_err(|e| self.events.storage_error(e))?;
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
