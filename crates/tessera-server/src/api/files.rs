//! `GET /files/{app}/{path}` (PRODUCT.md §11): recorded files, streamed from disk.
//!
//! Files are read in `CHUNK`-sized pieces whatever their size or the range asked for, so a
//! request costs one buffer, not the file. Only regular files whose canonical path stays under
//! `recordings/<app>` are served (no symlink leaves the storage root). A token needs privilege 32
//! for anything that carries video and 8 for audio-only files, judged by what the recording
//! wrote into the file, not by its name.

use super::auth::bearer;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use std::io::SeekFrom;
use std::path::PathBuf;
use tessera_model::Privileges;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes read from disk at a time per response.
const CHUNK: usize = 64 * 1024;
/// Playlists are rewritten in memory (segment URIs get the token); they are small, and a bigger
/// one is not a playlist we wrote.
const MAX_PLAYLIST_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    token: Option<String>,
}

fn no_such_file() -> ApiError {
    ApiError::not_found("file_not_found", "no such file")
}

/// The file's canonical path if it is a regular file under `root` (itself canonicalized).
async fn resolve(root: PathBuf, path: &str) -> ApiResult<(PathBuf, u64)> {
    let root = tokio::fs::canonicalize(&root).await.map_err(|_| no_such_file())?;
    let full = tokio::fs::canonicalize(root.join(path)).await.map_err(|_| no_such_file())?;
    if !full.starts_with(&root) {
        return Err(no_such_file());
    }
    let meta = tokio::fs::metadata(&full).await.map_err(|_| no_such_file())?;
    if !meta.is_file() {
        return Err(no_such_file());
    }
    Ok((full, meta.len()))
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` of a `total`-byte file: `Ok(None)` for no (or an
/// unparsable) Range header, `Err(())` for one that cannot be satisfied.
fn byte_range(headers: &HeaderMap, total: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some((a, b)) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) else {
        return Ok(None);
    };
    let last = total.checked_sub(1).ok_or(())?;
    let (start, end) = match (a.trim().parse::<u64>().ok(), b.trim().parse::<u64>().ok()) {
        (Some(s), Some(e)) => (s, e.min(last)),
        (Some(s), None) => (s, last),
        (None, Some(n)) if n > 0 => (total.saturating_sub(n), last),
        _ => return Err(()),
    };
    if start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// `len` bytes of `file` from `start`, read `CHUNK` bytes at a time as the client takes them.
fn stream(file: tokio::fs::File, len: u64) -> Body {
    let chunks = futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (left as usize).min(CHUNK)];
        match file.read(&mut buf).await {
            Ok(0) => None, // truncated under us: end the body early (the length tells the client)
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    Body::from_stream(chunks)
}

#[utoipa::path(get, operation_id = "files.get", path = "/files/{app}/{path}", tag = "files",
    params(("app" = String, Path, description = "app id"), ("path" = String, Path, description = "a recording's file, as its result lists it"), ("token" = Option<String>, Query, description = "a user token of the file's room, instead of an API key")),
    responses((status = 200, description = "The file (Range supported: 206)", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "Refused", body = crate::error::ErrorBody)),
    security(("api_key" = []), ("user_token" = [])))]
pub async fn file(State(state): State<AppState>, Path((app, path)): Path<(String, String)>, Query(q): Query<FileQuery>, headers: HeaderMap) -> ApiResult<Response> {
    let app = tessera_model::AppId::parse(&app).map_err(|_| no_such_file())?;
    if path.split('/').any(|s| s.is_empty() || s == ".." || s == ".") {
        return Err(no_such_file());
    }
    let root = state.config.data_dir.join("recordings").join(app.as_str());
    let mut via_token = None;
    match (bearer(&headers), &q.token) {
        (Some(key), _) => {
            let (key_app, record) = state.store.authenticate_key(key).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "api_key_invalid", "the API key is not valid"))?;
            if key_app != app || record.policy.decide("files.get") != tessera_model::PolicyDecision::Allowed {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "action_denied", "this API key may not perform 'files.get'"));
            }
        }
        (None, Some(raw)) => {
            let token = crate::entry::verify_raw(&state, raw, false)?;
            let task = state.tasks.recordings.owner_of(&app, &path).ok_or_else(no_such_file)?;
            let room = task.spec.lock().expect("spec").room.clone();
            if token.app != app || token.room != room {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "token_room_mismatch", "the token is not for this recording's room"));
            }
            let file_name = path.rsplit('/').next().unwrap_or(&path);
            let needed = if task.file_has_video(file_name) { Privileges::SUBSCRIBE_VIDEO } else { Privileges::SUBSCRIBE_AUDIO };
            if !token.privileges.contains(needed) {
                return Err(crate::entry::privilege_missing(needed));
            }
            via_token = Some(raw.clone());
        }
        (None, None) => return Err(ApiError::new(StatusCode::UNAUTHORIZED, "api_key_missing", "send an API key, or ?token= with a user token of the room")),
    }
    // A recording in a bucket: its working copy while a file waits in the spool, else the
    // bucket (RECORDING.md §7).
    let mut root = root;
    let mut path = path;
    if let Some(task) = state.tasks.recordings.owner_of(&app, &path) {
        let spec = task.spec.lock().expect("spec").clone();
        if !spec.storage.is_local() {
            let (working, _, _) = spec.places(&state.config.data_dir);
            let name = path.rsplit('/').next().unwrap_or(&path).to_string();
            if tokio::fs::metadata(working.join(&name)).await.is_ok_and(|m| m.is_file()) {
                root = working;
                path = name;
            } else {
                return from_bucket(&app, &spec, &path, &headers, via_token).await;
            }
        }
    }
    let (full, total) = resolve(root, &path).await?;
    let extension = full.extension().and_then(|e| e.to_str()).unwrap_or("");
    let builder = Response::builder().header(header::CONTENT_TYPE, content_type(extension)).header(header::ACCEPT_RANGES, "bytes");
    if let (Some(t), "m3u8") = (&via_token, extension) {
        // Segment and playlist URIs carry the same token (the stored playlist is not changed):
        // URI lines, and the `URI="…"` of tags (a master's audio rendition, an init section).
        if total > MAX_PLAYLIST_BYTES {
            return Err(no_such_file());
        }
        let bytes = tokio::fs::read(&full).await.map_err(|_| no_such_file())?;
        let text = String::from_utf8_lossy(&bytes).lines().map(|l| with_token(l, t)).collect::<Vec<_>>().join("\n");
        return builder.status(StatusCode::OK).body(Body::from(format!("{text}\n"))).map_err(|e| ApiError::internal(e.to_string()));
    }
    let mut file = tokio::fs::File::open(&full).await.map_err(|_| no_such_file())?;
    let response = match byte_range(&headers, total) {
        Err(()) => Response::builder().status(StatusCode::RANGE_NOT_SATISFIABLE).header(header::CONTENT_RANGE, format!("bytes */{total}")).body(Body::empty()),
        Ok(None) => builder.status(StatusCode::OK).header(header::CONTENT_LENGTH, total).body(stream(file, total)),
        Ok(Some((start, end))) => {
            file.seek(SeekFrom::Start(start)).await.map_err(|e| ApiError::internal(e.to_string()))?;
            builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{total}"))
                .header(header::CONTENT_LENGTH, end - start + 1)
                .body(stream(file, end - start + 1))
        }
    };
    response.map_err(|e| ApiError::internal(e.to_string()))
}

fn content_type(extension: &str) -> &'static str {
    match extension {
        "m3u8" => "application/vnd.apple.mpegurl",
        "ts" => "video/mp2t",
        "mp4" | "m4s" => "video/mp4",
        "aac" => "audio/aac",
        _ => "application/octet-stream",
    }
}

/// The head of a bucket's answer: status, length, range.
type BucketHead = (u16, Option<String>, Option<String>);

/// `path` (`<Prefix>/<TaskId>/<file>`) from the recording's bucket, streamed as the client
/// takes it; the client's `Range` is passed on and the bucket's 200/206 with it.
async fn from_bucket(
    app: &tessera_model::AppId,
    spec: &tessera_tasks::recording::RecordingSpec,
    path: &str,
    headers: &HeaderMap,
    via_token: Option<String>,
) -> ApiResult<Response> {
    let (settings, secret) =
        tessera_tasks::recording::resolve_storage(app, &spec.storage).map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "storage_unavailable", e))?.ok_or_else(no_such_file)?;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let rel = path.to_string();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<Result<BucketHead, tessera_tasks::recording::s3::S3Error>>();
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let client = match tessera_tasks::recording::s3::S3Client::new(&settings, &secret) {
            Ok(c) => c,
            Err(e) => return drop(head_tx.send(Err(e))),
        };
        let resp = match client.get(&client.key(&rel), range.as_deref()) {
            Ok(r) => r,
            Err(e) => return drop(head_tx.send(Err(e))),
        };
        let head = (resp.status(), resp.header("Content-Length").map(str::to_string), resp.header("Content-Range").map(str::to_string));
        if head_tx.send(Ok(head)).is_err() {
            return;
        }
        let mut reader = resp.into_reader();
        loop {
            let mut buf = vec![0u8; CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if body_tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the client went away
                    }
                }
                Err(e) => return drop(body_tx.blocking_send(Err(e))),
            }
        }
    });
    let (status, length, content_range) = match head_rx.await.map_err(|_| ApiError::internal("the bucket reader ended"))? {
        Ok(h) => h,
        Err(e) if e.code == "NoSuchKey" || e.code == "Http404" => return Err(no_such_file()),
        Err(e) if e.code == "InvalidRange" => return Err(ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", e.message)),
        Err(e) => return Err(ApiError::new(StatusCode::BAD_GATEWAY, "storage_unavailable", format!("the bucket answered {e}"))),
    };
    let extension = path.rsplit_once('.').map_or("", |(_, e)| e);
    let mut builder = Response::builder().header(header::CONTENT_TYPE, content_type(extension)).header(header::ACCEPT_RANGES, "bytes");
    let chunks = futures_util::stream::unfold(body_rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    if let (Some(t), "m3u8") = (&via_token, extension) {
        use futures_util::StreamExt as _;
        let mut bytes = Vec::new();
        let mut chunks = Box::pin(chunks);
        while let Some(c) = chunks.next().await {
            bytes.extend_from_slice(&c.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "storage_unavailable", e.to_string()))?);
            if bytes.len() as u64 > MAX_PLAYLIST_BYTES {
                return Err(no_such_file());
            }
        }
        let text = String::from_utf8_lossy(&bytes).lines().map(|l| with_token(l, t)).collect::<Vec<_>>().join("\n");
        return builder.status(StatusCode::OK).body(Body::from(format!("{text}\n"))).map_err(|e| ApiError::internal(e.to_string()));
    }
    if let Some(l) = length {
        builder = builder.header(header::CONTENT_LENGTH, l);
    }
    if let Some(r) = content_range {
        builder = builder.header(header::CONTENT_RANGE, r);
    }
    builder.status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK)).body(Body::from_stream(chunks)).map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, total: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        byte_range(&h, total)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-0", 10), Ok(Some((0, 0))));
        assert_eq!(range("bytes=5-", 10), Ok(Some((5, 9))));
        assert_eq!(range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(range("bytes=2-100", 10), Ok(Some((2, 9))));
        assert_eq!(range("bytes=10-", 10), Err(()));
        assert_eq!(range("bytes=5-2", 10), Err(()));
        assert_eq!(range("bytes=-0", 10), Err(()));
        assert_eq!(range("bytes=0-0", 0), Err(()));
        assert_eq!(byte_range(&HeaderMap::new(), 10), Ok(None));
    }
}

/// One playlist line with `?token=` added to what it points at.
fn with_token(line: &str, token: &str) -> String {
    if line.is_empty() {
        return String::new();
    }
    if !line.starts_with('#') {
        return format!("{line}?token={token}");
    }
    match line.find("URI=\"") {
        Some(at) => {
            let start = at + 5;
            match line[start..].find('"') {
                Some(len) => format!("{}?token={token}{}", &line[..start + len], &line[start + len..]),
                None => line.to_string(),
            }
        }
        None => line.to_string(),
    }
}

#[cfg(test)]
mod token_tests {
    #[test]
    fn playlist_lines_and_uri_attributes_get_the_token() {
        assert_eq!(super::with_token("a_video.m3u8", "T"), "a_video.m3u8?token=T");
        assert_eq!(super::with_token("#EXTINF:2.000,", "T"), "#EXTINF:2.000,");
        assert_eq!(
            super::with_token("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",URI=\"a_audio.m3u8\"", "T"),
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",URI=\"a_audio.m3u8?token=T\""
        );
        assert_eq!(super::with_token("#EXT-X-MAP:URI=\"s.m4s\",BYTERANGE=\"800@0\"", "T"), "#EXT-X-MAP:URI=\"s.m4s?token=T\",BYTERANGE=\"800@0\"");
    }
}
