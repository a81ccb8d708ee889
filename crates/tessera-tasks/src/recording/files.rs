//! A recording's files on disk: recovery after a crash, the file list of playlists found in the
//! task's directory, and the conversion at the end (MP4/AAC remux, the result, events 310–312).

use super::hls::Storage;
use super::{lock, FileInfo, RecordingSpec, RecordingState, RecordingTask, TaskEvents};
use crate::persist::write_atomic;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tessera_engine::outputs::hls::segment_entry;
use tessera_model::events::{CommittedFile, FileMessage, TaskEvent};

/// MP4 parts are also cut before 2 GiB.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// After a crash: each interrupted `.part` segment is cut to whole 188-byte TS packets and kept
/// (appended to its playlist) if it holds media, else deleted; every playlist gets
/// `#EXT-X-ENDLIST` (RECORDING.md §8).
pub(super) fn recover_segments(final_dir: &Path, spool: &Path) {
    if let Ok(entries) = std::fs::read_dir(spool) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(segment) = name.strip_suffix(".part").filter(|n| is_segment(n)) else {
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            let len = std::fs::metadata(e.path()).map(|m| m.len()).unwrap_or(0);
            // A TS is cut to whole packets; a fragmented MP4 reads up to its last whole fragment.
            let fmp4 = segment.ends_with(".m4s");
            let whole = if fmp4 { len } else { len - len % 188 };
            let init = if fmp4 { tessera_transcode::mux::fmp4_init_len(&e.path()) } else { Some(0) };
            let duration = if whole >= 188 * 8 && init.is_some() {
                if !fmp4 {
                    let _ = std::fs::OpenOptions::new().write(true).open(e.path()).and_then(|f| f.set_len(whole));
                }
                tessera_transcode::mux::probe_duration(&e.path()).filter(|d| *d > 0.0)
            } else {
                None
            };
            let playlist = segment.rsplit_once('_').map(|(stem, _)| final_dir.join(format!("{stem}.m3u8")));
            match (duration, playlist) {
                (Some(d), Some(pl)) if std::fs::rename(e.path(), final_dir.join(segment)).is_ok() => {
                    let mut text = std::fs::read_to_string(&pl).unwrap_or_default();
                    if text.is_empty() {
                        continue;
                    }
                    text = text.replace("#EXT-X-ENDLIST\n", "");
                    text.push_str(&segment_entry(segment, d, init.filter(|_| fmp4).map(|init| (init, whole))));
                    let _ = write_atomic(&pl, text.as_bytes(), 0o644);
                }
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    for pl in scan_playlists(final_dir) {
        let path = final_dir.join(&pl.name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.contains("#EXT-X-ENDLIST") {
            let _ = write_atomic(&path, format!("{text}#EXT-X-ENDLIST\n").as_bytes(), 0o644);
        }
    }
}

/// A playlist found in the task's directory.
pub(super) struct PlaylistInfo {
    name: String,
    /// The name without `ha<N>_` and without `.m3u8`: the same for a playlist and its
    /// continuations after crashes.
    stem: String,
    restart: u32,
    segments: Vec<(String, f64)>,
}

fn split_ha(name: &str) -> (u32, &str) {
    if let Some(rest) = name.strip_prefix("ha") {
        if let Some((n, tail)) = rest.split_once('_') {
            if let Ok(n) = n.parse::<u32>() {
                return (n, tail);
            }
        }
    }
    (0, name)
}

pub(super) fn scan_playlists(dir: &Path) -> Vec<PlaylistInfo> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(base) = name.strip_suffix(".m3u8") else { continue };
        let (restart, stem) = split_ha(base);
        // A master playlist lists playlists, not segments.
        if is_master(stem) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut segments = Vec::new();
        let mut duration = None;
        for l in text.lines() {
            if let Some(d) = l.strip_prefix("#EXTINF:") {
                duration = d.trim_end_matches(',').parse::<f64>().ok();
            } else if !l.starts_with('#') && !l.is_empty() {
                segments.push((l.to_string(), duration.take().unwrap_or(0.0)));
            }
        }
        out.push(PlaylistInfo { name: name.clone(), stem: stem.to_string(), restart, segments });
    }
    out.sort_by(|a, b| (a.stem.as_str(), a.restart).cmp(&(b.stem.as_str(), b.restart)));
    out
}

/// The playlists in a recording's folder as `GET /v1/recordings/{id}` lists them while it
/// records and after: `{file_name, url, kind: "master" | "media", user_id, media_id,
/// track_type}` (a master's `track_type` is `audio_video`: it ties the two together).
pub fn playlists(dir: &Path, url_base: &str) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".m3u8")).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let (_, stem) = split_ha(name.trim_end_matches(".m3u8"));
            let master = is_master(stem);
            let (user, media, kind) = if master { identify(&format!("{stem}_audio_video")) } else { identify(stem) };
            serde_json::json!({
                "file_name": name, "url": format!("{url_base}/{name}"), "kind": if master { "master" } else { "media" },
                "user_id": user, "media_id": media, "track_type": kind,
            })
        })
        .collect()
}

/// A single-stream master playlist's stem ends at the media id, `…__UserId_e_<MediaId>`; the
/// spec's playlists go on with `_<Type>` (user ids are base64 in names: no `_` in them).
fn is_master(stem: &str) -> bool {
    stem.split_once("__UserId_e_").is_some_and(|(_, tail)| !tail.contains('_'))
}

/// (user id, media id, track type) from a stem (RECORDING.md §4; ids are decoded back).
pub(super) fn identify(stem: &str) -> (String, String, String) {
    use base64::Engine as _;
    let Some((_, rest)) = stem.split_once("__UserId_s_") else { return (String::new(), "mix".into(), "audio_video".into()) };
    let (user_b64, tail) = rest.split_once("__UserId_e_").unwrap_or((rest, "main"));
    let user = base64::engine::general_purpose::STANDARD.decode(user_b64.replace('-', "/").replace('.', "=")).ok().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
    let (media, kind) = tail.split_once('_').unwrap_or((tail, "audio_video"));
    (user, media.to_string(), kind.to_string())
}

/// A media segment's file: MPEG-TS, or an AV1 original's fragmented MP4.
fn is_segment(name: &str) -> bool {
    name.ends_with(".ts") || name.ends_with(".m4s")
}

fn begin_of(segment: &str) -> i64 {
    // `..._<YYYYMMDDhhmmssSSS>.ts` (or `.m4s`) → Unix ms.
    crate::merge::parse_stamp(segment.trim_end_matches(".ts").trim_end_matches(".m4s").rsplit('_').next().unwrap_or("")).unwrap_or(0)
}

/// What each playlist in `final_dir` lists: its segments, then the playlist itself (with the
/// span and size of all its segments). The file list of a finished task, and of a resumed one
/// from the moment it resumes (issue 10, defect 14).
pub(super) fn listed_files(playlists: &[PlaylistInfo], final_dir: &Path, storage: &dyn Storage, start_unix: i64) -> Vec<Vec<FileInfo>> {
    let mut out = Vec::new();
    for pl in playlists {
        let mut files = Vec::new();
        let (user, media, kind) = identify(&pl.stem);
        let mut first_begin = None;
        let mut total = 0f64;
        for (seg, dur) in &pl.segments {
            let begin = begin_of(seg);
            first_begin.get_or_insert(begin);
            total += dur;
            files.push(FileInfo {
                file_name: seg.clone(),
                user_id: user.clone(),
                media_id: media.clone(),
                track_type: kind.clone(),
                begin_ts: begin,
                end_ts: begin + (dur * 1000.0) as i64,
                duration_ms: (dur * 1000.0) as i64,
                size: std::fs::metadata(final_dir.join(seg)).map(|m| m.len()).unwrap_or(0),
                url: storage.url(seg),
                stored: storage.stored_now(seg),
                play_time_ms: 0,
            });
        }
        let begin = first_begin.unwrap_or(0);
        files.push(FileInfo {
            file_name: pl.name.clone(),
            user_id: user.clone(),
            media_id: media.clone(),
            track_type: kind.clone(),
            begin_ts: begin,
            end_ts: begin + (total * 1000.0) as i64,
            duration_ms: (total * 1000.0) as i64,
            size: std::fs::metadata(final_dir.join(&pl.name)).map(|m| m.len()).unwrap_or(0),
            url: storage.url(&pl.name),
            stored: storage.stored_now(&pl.name),
            play_time_ms: (begin - start_unix).max(0),
        });
        out.push(files);
    }
    out
}

/// STOPPED → FINISHED: MP4s from the playlists (each with its `ha<N>_` continuations), the file
/// list from what is stored, and the result (RECORDING.md §4.2, §5).
pub(super) fn finish_task(task: &RecordingTask, spec: &RecordingSpec, final_dir: &Path, spool: &Path, storage: &dyn Storage, error: Option<String>, events: &TaskEvents) {
    let _ = std::fs::create_dir_all(spool);
    let playlists = scan_playlists(final_dir);
    let mut files: Vec<FileInfo> = Vec::new();
    let mut finals: Vec<(FileInfo, &'static str, u8)> = Vec::new();
    let video_type = |media: &str| match media {
        "main" => 0u8,
        "aux" => 1,
        _ => 2,
    };
    let start_unix = lock(&task.status).started_at.unwrap_or(0);
    for (pl, listed) in playlists.iter().zip(listed_files(&playlists, final_dir, storage, start_unix)) {
        let (_, media, _) = identify(&pl.stem);
        let info = listed.last().cloned().expect("a playlist's own entry comes last");
        files.extend(listed);
        if !spec.mp4() && !spec.aac() {
            finals.push((info, "m3u8", video_type(&media)));
        }
    }
    let mut remux_failed: Option<String> = None;
    if spec.mp4() || spec.aac() {
        // One MP4 (or ADTS .aac) per user stream or for the mix: each track's playlists joined,
        // split at split_minutes or 2 GiB (then every part is `_<Index>`).
        let (format, ext, kind) = if spec.mp4() { ("mp4", "mp4", "mp4") } else { ("adts", "aac", "aac") };
        let mut groups: Vec<(String, Vec<&PlaylistInfo>)> = Vec::new();
        for pl in &playlists {
            let (user, media, _) = identify(&pl.stem);
            let key = format!("{user}\u{0}{media}");
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1.push(pl),
                None => groups.push((key, vec![pl])),
            }
        }
        for (_, pls) in &groups {
            let (user, media, _) = identify(&pls[0].stem);
            let base = match pls[0].stem.rsplit_once('_') {
                Some((b, "video" | "audio" | "audio_video")) if !user.is_empty() => b.to_string(),
                _ => pls[0].stem.clone(),
            };
            // Per track (stem): its playlists in restart order, as one playlist in the spool.
            let mut inputs = Vec::new();
            let mut stems: Vec<&str> = pls.iter().map(|p| p.stem.as_str()).collect();
            stems.dedup();
            for stem in stems {
                let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:60\n");
                for (k, pl) in pls.iter().filter(|p| p.stem == stem).enumerate() {
                    if k > 0 {
                        text.push_str("#EXT-X-DISCONTINUITY\n");
                    }
                    for (seg, dur) in &pl.segments {
                        let path = final_dir.join(seg);
                        // An AV1 original's fragmented MP4 segment: its own init section first.
                        let init = seg.ends_with(".m4s").then(|| tessera_transcode::mux::fmp4_init_len(&path)).flatten();
                        let init = init.map(|init| (init, std::fs::metadata(&path).map(|m| m.len()).unwrap_or(init)));
                        text.push_str(&segment_entry(&path.display().to_string(), *dur, init));
                    }
                }
                text.push_str("#EXT-X-ENDLIST\n");
                let path = spool.join(format!("{stem}.joined.m3u8"));
                if std::fs::write(&path, text).is_ok() {
                    inputs.push(path);
                }
            }
            let refs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
            let part_path = |n: usize| spool.join(format!("{base}_{n}.{ext}.part"));
            let max_s = spec.split_minutes as f64 * 60.0;
            match tessera_transcode::mux::remux_split(&refs, format, &part_path, max_s, MAX_FILE_BYTES) {
                Ok(parts) => {
                    let single = parts.len() == 1;
                    let mut offset_ms = 0i64;
                    for (n, (path, seconds)) in parts.iter().enumerate() {
                        let name = if single { format!("{base}.{ext}") } else { format!("{base}_{}.{ext}", n + 1) };
                        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                        if storage.store(path, &name).is_err() {
                            continue;
                        }
                        let first =
                            files.iter().filter(|f| f.user_id == user && f.media_id == media && is_segment(&f.file_name)).map(|f| f.begin_ts).min().unwrap_or(0) + offset_ms;
                        let duration_ms = (seconds * 1000.0) as i64;
                        offset_ms += duration_ms;
                        let info = FileInfo {
                            file_name: name.clone(),
                            user_id: user.clone(),
                            media_id: media.clone(),
                            track_type: if format == "adts" {
                                "audio".into()
                            } else if inputs.len() > 1 {
                                "audio_video".into()
                            } else {
                                identify(&pls[0].stem).2
                            },
                            begin_ts: first,
                            end_ts: first + duration_ms,
                            duration_ms,
                            size,
                            url: storage.url(&name),
                            stored: true,
                            play_time_ms: (first - start_unix).max(0),
                        };
                        files.push(info.clone());
                        finals.push((info, kind, video_type(&media)));
                    }
                }
                Err(e) => {
                    tracing::warn!("{ext} remux of {base} failed: {e}");
                    remux_failed.get_or_insert(format!("{ext} remux of {base} failed: {e}"));
                }
            }
        }
        // 310: the MP4 (or .aac) files, each with its user, track and time span.
        let made: Vec<&FileInfo> = finals.iter().map(|(f, ..)| f).filter(|f| !f.file_name.ends_with(".m3u8")).collect();
        let status = if made.is_empty() && !playlists.is_empty() {
            2
        } else if remux_failed.is_some() {
            1
        } else {
            0
        };
        events.emit(TaskEvent::Mp4Stopped {
            status,
            file_list: made.iter().map(|f| f.file_name.clone()).collect(),
            file_message: made
                .iter()
                .map(|f| FileMessage {
                    file_name: f.file_name.clone(),
                    user_id: f.user_id.clone(),
                    track_type: f.track_type.clone(),
                    media_id: f.media_id.clone(),
                    start_time_stamp: f.begin_ts,
                    end_time_stamp: f.end_ts,
                })
                .collect(),
        });
        if !spec.hls_kept() {
            // `mp4` or `aac` alone: the HLS was only the crash-safe intermediate.
            let keep = |n: &str| n.ends_with(".mp4") || n.ends_with(".aac");
            for f in files.iter().filter(|f| !keep(&f.file_name)) {
                storage.remove(&f.file_name);
            }
            files.retain(|f| keep(&f.file_name));
        }
    }
    // The spool's own files go (joined playlists, parts); a bucket's working copy (a folder
    // in it) goes once every file is uploaded.
    if let Ok(entries) = std::fs::read_dir(spool) {
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()) && e.file_name() != "uploaded.txt") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(spool);
    // A bucket gets a moment for the final files; one that does not answer gets them later.
    if !spec.storage.is_local() {
        super::s3::uploads().drain(&spec.id, Duration::from_secs(20));
        for f in files.iter_mut() {
            f.stored = storage.stored_now(&f.file_name);
        }
        for (f, ..) in finals.iter_mut() {
            f.stored = storage.stored_now(&f.file_name);
        }
    }
    let mut st = lock(&task.status);
    st.files = files.clone();
    let total_time = st.clock_ms;
    // A conversion that failed is the task's failure, never a silent success (issue 10, defect 6).
    let error = error.or(remux_failed);
    let failed = error.is_some() || st.leave_code == Some(104);
    let mut result = json!({
        "TaskId": spec.id, "Status": if failed { "failed" } else { "ok" }, "RoomId": spec.room, "GroupId": "", "RecordUserId": format!("rec_{}", spec.id),
        "RecordStartTime": st.started_at.unwrap_or(task.created_at) / 1000, "RecordStopTime": st.stopped_at.unwrap_or(0) / 1000,
        "TotalTime": total_time, "ReplayUrl": "",
        "VideoInfos": finals.iter().map(|(f, format, vt)| json!({
            "VideoPlayTime": f.play_time_ms, "VideoSize": f.size, "VideoFormat": format, "VideoDuration": f.duration_ms,
            "VideoUrl": f.url, "VideoId": tessera_model::TaskId::generate().as_str(), "VideoType": vt, "UserId": f.user_id,
        })).collect::<Vec<_>>(),
        "Files": files.iter().map(|f| json!({"FileName": f.file_name, "UserId": f.user_id, "MediaId": f.media_id, "TrackType": f.track_type,
            "BeginTimeStamp": f.begin_ts, "EndTimeStamp": f.end_ts, "Size": f.size, "DurationMs": f.duration_ms, "Url": f.url, "Stored": f.stored})).collect::<Vec<_>>(),
    });
    if let Some(e) = error.clone().or_else(|| st.error.clone()) {
        result["error"] = json!(e);
    }
    if let Some(e) = error {
        st.error = Some(e);
    }
    st.result = Some(result.clone());
    st.state = RecordingState::Finished;
    drop(st);
    // 311 commits each final file, 312 closes the task.
    for (f, ..) in &finals {
        let file_info = CommittedFile {
            file_name: f.file_name.clone(),
            user_id: f.user_id.clone(),
            track_type: f.track_type.clone(),
            media_id: f.media_id.clone(),
            url: f.url.clone(),
            size: f.size,
            start_time_stamp: f.begin_ts,
            end_time_stamp: f.end_ts,
        };
        let (status, errmsg) = if f.stored { (0, String::new()) } else { (1, "still in the spool: stored when the storage takes it (305 Status 2)".to_string()) };
        events.emit(TaskEvent::FileCommitted { status, errmsg, file_info });
    }
    events.emit(TaskEvent::RecordingFinished { status: if failed { 1 } else { 0 }, result });
    if !spec.storage.is_local() {
        let left = super::s3::uploads().end(&spec.id);
        if left > 0 {
            tracing::warn!(recording = %spec.id, files = left, "recording finished with files in the spool; they are uploaded when the storage answers");
        }
    }
    tracing::info!(recording = %spec.id, files = files.len(), "recording finished");
}

#[cfg(test)]
mod tests {
    #[test]
    fn master_playlists_are_told_by_name() {
        assert!(super::is_master("default_Y2xhc3Mx__UserId_s_YWxpY2U.__UserId_e_main"));
        assert!(!super::is_master("default_Y2xhc3Mx__UserId_s_YWxpY2U.__UserId_e_main_video"));
        assert!(!super::is_master("default_Y2xhc3Mx__UserId_s_YWxpY2U.__UserId_e_aux_audio_video"));
        assert!(!super::is_master("default_Y2xhc3Mx"), "a mixed playlist");
    }
}
