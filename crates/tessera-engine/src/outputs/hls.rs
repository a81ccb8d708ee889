//! The HLS recording rules (RECORDING.md §4, §7) as plain values: when a segment ends, what the
//! playlist says, and what a storage failure leads to. Times are task-clock milliseconds; the
//! recording's writer (in `tessera-tasks`) owns the muxer and the files and asks these.

/// How long storage may keep failing before the recording ends (a storage failure is reported
/// with 308 and retried for up to 10 minutes).
pub const STORAGE_RETRY_MS: i64 = 10 * 60 * 1000;
/// 308 at most this often per playlist while the storage keeps failing.
pub const STORAGE_REPORT_MS: i64 = 5_000;

/// When segments end (RECORDING.md §4.1): at the first keyframe once `segment_ms` have passed,
/// or regardless at 1.5 × `segment_ms` (a source that sends no keyframe still gets segments).
/// The playlist's target duration is that hard cut rounded up: players start about three
/// target durations behind live, so it is kept as small as the hard cut allows (with 2 s
/// segments a player starts ≈ 9 s behind, not the 18 s a 3 × `segment_s` target gave).
#[derive(Debug, Clone, Copy)]
pub struct CutRules {
    pub segment_ms: i64,
    pub target_s: u32,
}

impl CutRules {
    pub fn for_segment(segment_s: u32) -> CutRules {
        let segment_s = segment_s.max(1);
        CutRules { segment_ms: segment_s as i64 * 1000, target_s: (3 * segment_s).div_ceil(2) }
    }

    /// The open segment (started at `first_ms`) has reached its length.
    pub fn due(&self, first_ms: Option<i64>, clock_ms: i64) -> bool {
        first_ms.is_some_and(|f| clock_ms - f >= self.segment_ms)
    }

    /// Time to ask a WebRTC source for a keyframe, so that one arrives about when the segment
    /// is due (a request takes a round trip and an encode): 500 ms ahead, a quarter of short
    /// segments.
    pub fn keyframe_soon(&self, first_ms: Option<i64>, clock_ms: i64) -> bool {
        let lead = (self.segment_ms / 4).min(500);
        first_ms.is_some_and(|f| clock_ms - f >= self.segment_ms - lead)
    }

    /// Whether a video frame at `clock_ms` ends the open segment before it is written.
    pub fn cut_before_video(&self, first_ms: Option<i64>, clock_ms: i64, keyframe: bool) -> bool {
        let hard = first_ms.is_some_and(|f| clock_ms - f >= self.segment_ms * 3 / 2);
        (keyframe && self.due(first_ms, clock_ms)) || hard
    }
}

/// The video playlist of a master playlist.
#[derive(Debug, Clone)]
pub struct MasterVideo<'a> {
    pub uri: &'a str,
    /// Peak bits per second of its segments (audio added by the caller).
    pub bandwidth: u64,
    pub size: Option<(u32, u32)>,
    /// RFC 6381 codec of the video (e.g. `avc1.42e01f`), when known.
    pub codec: Option<&'a str>,
}

/// A master playlist tying a user stream's separate audio and video playlists together, so any
/// HLS player plays picture and sound: the audio as the default rendition of an `AUDIO` group.
pub fn master_playlist(video: Option<&MasterVideo>, audio_uri: Option<&str>, version: u32) -> String {
    let mut t = format!("#EXTM3U\n#EXT-X-VERSION:{version}\n");
    match (video, audio_uri) {
        (Some(v), audio) => {
            let mut inf = format!("#EXT-X-STREAM-INF:BANDWIDTH={}", v.bandwidth.max(1));
            if let Some((w, h)) = v.size {
                inf.push_str(&format!(",RESOLUTION={w}x{h}"));
            }
            if let Some(codec) = v.codec {
                let codecs = if audio.is_some() { format!("{codec},mp4a.40.2") } else { codec.to_owned() };
                inf.push_str(&format!(",CODECS=\"{codecs}\""));
            }
            if let Some(a) = audio {
                t.push_str(&format!("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"audio\",DEFAULT=YES,AUTOSELECT=YES,URI=\"{a}\"\n"));
                inf.push_str(",AUDIO=\"audio\"");
            }
            t.push_str(&format!("{inf}\n{}\n", v.uri));
        }
        (None, Some(a)) => t.push_str(&format!("#EXT-X-STREAM-INF:BANDWIDTH=96000,CODECS=\"mp4a.40.2\"\n{a}\n")),
        (None, None) => {}
    }
    t
}

/// A playlist's text: its header (target duration, the TRTC start time and video size) and one
/// entry per stored segment, with a discontinuity before the first segment after a gap.
#[derive(Debug, Clone, Default)]
pub struct Playlist {
    pub target_s: u32,
    /// Unix ms of the first sample (`#EXT-X-TRTC-START-REC-TIME`).
    pub start_rec_time: Option<i64>,
    pub video_size: Option<(u32, u32)>,
    lines: Vec<String>,
    discontinuity: bool,
    segments: usize,
    /// Some segment names its init section (`#EXT-X-MAP`): version 6.
    maps: bool,
}

impl Playlist {
    pub fn new(target_s: u32) -> Playlist {
        Playlist { target_s, ..Default::default() }
    }

    /// The next segment follows a gap (a pause, a lost segment).
    pub fn mark_discontinuity(&mut self) {
        self.discontinuity = true;
    }

    pub fn add_segment(&mut self, name: &str, duration_ms: i64) {
        self.push_segment(name, duration_ms, None);
    }

    fn push_segment(&mut self, name: &str, duration_ms: i64, init: Option<(u64, u64)>) {
        if std::mem::take(&mut self.discontinuity) {
            self.lines.push("#EXT-X-DISCONTINUITY".into());
        }
        self.lines.push(segment_entry(name, duration_ms as f64 / 1000.0, init).trim_end().to_owned());
        self.segments += 1;
    }

    /// A self-initializing fragmented MP4 segment of `len` bytes whose first `init` bytes are
    /// its init section (`ftyp`, `moov`): HLS v6's `#EXT-X-MAP` and `#EXT-X-BYTERANGE`, so
    /// each segment is also an MP4 file that plays alone.
    pub fn add_segment_with_init(&mut self, name: &str, duration_ms: i64, init: u64, len: u64) {
        self.maps = true;
        self.push_segment(name, duration_ms, Some((init, len)));
    }

    pub fn segments(&self) -> usize {
        self.segments
    }

    /// HLS version: 6 with `#EXT-X-MAP` (fragmented MP4 segments), else 3.
    pub fn version(&self) -> u32 {
        if self.maps {
            6
        } else {
            3
        }
    }

    /// The playlist as written; `end` closes it (`#EXT-X-ENDLIST`).
    pub fn text(&self, end: bool) -> String {
        let version = self.version();
        let mut t = format!("#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-ALLOW-CACHE:NO\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:{}\n", self.target_s);
        if let Some(s) = self.start_rec_time {
            t.push_str(&format!("#EXT-X-TRTC-START-REC-TIME:{s}\n"));
        }
        if let Some((w, h)) = self.video_size {
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
}

/// One segment's lines in a playlist (each ending in a newline): its duration and URI, and for
/// a self-initializing fragmented MP4 of `len` bytes (`init`, `len`) its init section and the
/// media after it.
pub fn segment_entry(uri: &str, duration_s: f64, init: Option<(u64, u64)>) -> String {
    match init {
        Some((init, len)) => {
            format!("#EXT-X-MAP:URI=\"{uri}\",BYTERANGE=\"{init}@0\"\n#EXTINF:{duration_s:.3},\n#EXT-X-BYTERANGE:{}@{init}\n{uri}\n", len.saturating_sub(init))
        }
        None => format!("#EXTINF:{duration_s:.3},\n{uri}\n"),
    }
}

/// What a refused file leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureVerdict {
    /// Send 308 now (at most every `STORAGE_REPORT_MS`).
    pub report: bool,
    /// The storage has failed for `STORAGE_RETRY_MS`: the recording ends.
    pub give_up: bool,
}

/// A playlist's storage trouble (issue 10, defect 13): a refused segment is skipped and counted,
/// reported now and then, and only a storage that keeps failing ends the recording. A segment
/// that cannot be opened is retried a segment's length later, so it counts once.
#[derive(Debug, Clone, Default)]
pub struct StorageFailures {
    failing_since: Option<i64>,
    reported_ms: Option<i64>,
    open_retry_at: Option<i64>,
    /// Segments lost so far.
    pub skipped: u32,
}

impl StorageFailures {
    /// A file was refused at `clock_ms`; `lost_segment` when it was a segment (a playlist
    /// refused is rewritten with the next one).
    pub fn failed(&mut self, clock_ms: i64, lost_segment: bool) -> FailureVerdict {
        self.skipped += u32::from(lost_segment);
        let since = *self.failing_since.get_or_insert(clock_ms);
        let report = self.reported_ms.is_none_or(|t| clock_ms - t >= STORAGE_REPORT_MS);
        if report {
            self.reported_ms = Some(clock_ms);
        }
        FailureVerdict { report, give_up: clock_ms - since >= STORAGE_RETRY_MS }
    }

    /// A file was stored; returns whether this ends a run of failures.
    pub fn stored(&mut self) -> bool {
        self.failing_since.take().is_some()
    }

    /// Whether a segment may be opened now (not within a segment's length of a failed open).
    pub fn may_open(&self, clock_ms: i64) -> bool {
        self.open_retry_at.is_none_or(|at| clock_ms >= at)
    }

    pub fn opened(&mut self) {
        self.open_retry_at = None;
    }

    /// Opening a segment failed: the next try waits `segment_ms`.
    pub fn open_failed(&mut self, clock_ms: i64, segment_ms: i64) {
        self.open_retry_at = Some(clock_ms + segment_ms);
    }
}

/// Sample times handed to a muxer: strictly increasing per track.
#[derive(Debug, Clone, Copy)]
pub struct RisingClock(i64);

impl Default for RisingClock {
    fn default() -> Self {
        RisingClock(i64::MIN / 2)
    }
}

impl RisingClock {
    pub fn next(&mut self, ms: i64) -> i64 {
        self.0 = ms.max(self.0 + 1);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_end_at_a_keyframe_after_their_length_or_at_one_and_a_half_regardless() {
        let rules = CutRules::for_segment(6);
        assert_eq!(rules.target_s, 9);
        assert_eq!(CutRules::for_segment(2).target_s, 3);
        assert_eq!(CutRules::for_segment(5).target_s, 8, "rounded up: no segment is longer");
        assert!(!rules.cut_before_video(None, 50_000, true), "nothing open");
        assert!(!rules.cut_before_video(Some(0), 5_999, true));
        assert!(rules.cut_before_video(Some(0), 6_000, true));
        assert!(!rules.cut_before_video(Some(0), 8_999, false), "waits for a keyframe");
        assert!(rules.cut_before_video(Some(0), 9_000, false), "but not past 1.5 × the length");
        assert!(rules.due(Some(1_000), 7_000) && !rules.due(Some(1_000), 6_999));
        assert!(!rules.keyframe_soon(Some(0), 5_499) && rules.keyframe_soon(Some(0), 5_500), "asked 500 ms ahead");
        assert!(CutRules::for_segment(1).keyframe_soon(Some(0), 750), "a quarter of a short segment");
    }

    #[test]
    fn a_master_playlist_names_the_video_and_its_audio_group() {
        let video = MasterVideo { uri: "s_video.m3u8", bandwidth: 1_200_000, size: Some((640, 360)), codec: Some("avc1.42c01e") };
        assert_eq!(
            master_playlist(Some(&video), Some("s_audio.m3u8"), 3),
            "#EXTM3U\n#EXT-X-VERSION:3\n\
             #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"audio\",DEFAULT=YES,AUTOSELECT=YES,URI=\"s_audio.m3u8\"\n\
             #EXT-X-STREAM-INF:BANDWIDTH=1200000,RESOLUTION=640x360,CODECS=\"avc1.42c01e,mp4a.40.2\",AUDIO=\"audio\"\n\
             s_video.m3u8\n"
        );
        let alone = master_playlist(None, Some("s_audio.m3u8"), 3);
        assert!(alone.ends_with("#EXT-X-STREAM-INF:BANDWIDTH=96000,CODECS=\"mp4a.40.2\"\ns_audio.m3u8\n"), "{alone}");
    }

    #[test]
    fn the_playlist_names_its_start_size_segments_and_gaps() {
        let mut p = Playlist::new(6);
        p.start_rec_time = Some(1_763_805_600_101);
        p.video_size = Some((1280, 720));
        p.add_segment("a_1.ts", 6_000);
        p.mark_discontinuity();
        p.add_segment("a_2.ts", 2_345);
        assert_eq!(p.segments(), 2);
        assert_eq!(
            p.text(true),
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-ALLOW-CACHE:NO\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:6\n\
             #EXT-X-TRTC-START-REC-TIME:1763805600101\n#EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n\
             #EXTINF:6.000,\na_1.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:2.345,\na_2.ts\n#EXT-X-ENDLIST\n"
        );
        assert!(!p.text(false).contains("ENDLIST"));
        // An AV1 original's fragmented MP4 segments name their own init sections.
        let mut p = Playlist::new(6);
        p.add_segment_with_init("b_1.m4s", 2_000, 700, 9_000);
        assert_eq!(
            p.text(false),
            "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-ALLOW-CACHE:NO\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:6\n\
             #EXT-X-MAP:URI=\"b_1.m4s\",BYTERANGE=\"700@0\"\n#EXTINF:2.000,\n#EXT-X-BYTERANGE:8300@700\nb_1.m4s\n"
        );
    }

    #[test]
    fn storage_failures_are_reported_every_5_s_and_end_the_recording_after_10_min() {
        let mut f = StorageFailures::default();
        assert_eq!(f.failed(0, true), FailureVerdict { report: true, give_up: false });
        assert_eq!(f.failed(2_000, true), FailureVerdict { report: false, give_up: false });
        assert_eq!(f.failed(5_000, false), FailureVerdict { report: true, give_up: false });
        assert!(f.stored(), "a stored file ends the run");
        assert!(!f.stored());
        // A new run counts from its own start: 10 minutes of it end the recording.
        assert!(!f.failed(100_000, true).give_up);
        assert!(!f.failed(100_000 + STORAGE_RETRY_MS - 1, true).give_up);
        assert!(f.failed(100_000 + STORAGE_RETRY_MS, true).give_up);
        assert_eq!(f.skipped, 5, "the refused playlist lost no segment");
        // A failed open waits a segment before the next try.
        f.open_failed(1_000, 6_000);
        assert!(!f.may_open(6_999) && f.may_open(7_000));
        f.opened();
        assert!(f.may_open(0));
    }

    #[test]
    fn muxer_times_always_rise() {
        let mut c = RisingClock::default();
        assert_eq!((c.next(100), c.next(100), c.next(50), c.next(300)), (100, 101, 102, 300));
    }
}
