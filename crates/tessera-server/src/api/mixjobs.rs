//! `/v1/mix-jobs` (LAYOUTS.md §1): start, read, update live and stop MCU mix jobs.
//!
//! A request is checked completely (every field of LAYOUTS.md with `details.field` on error)
//! and turned into a `MixSpec` before anything starts, so no job is left half-started. The
//! response echoes the stored job with every default filled in.

use super::auth::Caller;
use super::json::ApiJson;
use super::{ApiQuery, AppState, ListQuery, Page};
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use dashmap::DashMap;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_engine::mcu::{
    AudioMode, EncodeSettings, FillMode, InputKey, LayoutConfig, MixHandle, MixImages, MixSpec, MixState, Region, Rgb, Subscribe, Template, Tile, Watermark,
};
use tessera_engine::RoomKey;
use tessera_model::events::EventInfo;
use tessera_model::{AppId, RoomId, UserId};

/// Every mix job of the server.
#[derive(Default)]
pub struct MixJobs {
    jobs: DashMap<String, Arc<MixJob>>,
}

pub struct MixJob {
    app: AppId,
    /// Set at server shut-down: the job ends without recording STOPPED, so it resumes.
    shutting_down: Arc<std::sync::atomic::AtomicBool>,
    created_at: i64,
    /// The normalized request (defaults filled), replaced section by section by PATCH.
    request: Mutex<Value>,
    /// Images that could not be fetched or decoded (the job runs on without them).
    image_errors: Mutex<Vec<Value>>,
    handle: Arc<MixHandle>,
}

impl MixJobs {
    /// Stops a job because its owning recording stopped (LeaveCode 105).
    pub fn stop_owned(&self, app: &AppId, id: &str) {
        if let Some(j) = self.jobs.get(id).filter(|j| j.app == *app) {
            j.handle.stop_with(105);
        }
    }

    pub fn exists(&self, app: &AppId, id: &str) -> bool {
        self.jobs.get(id).is_some_and(|j| j.app == *app)
    }

    pub fn running(&self) -> usize {
        self.jobs.iter().filter(|j| j.handle.status().state != MixState::Stopped).count()
    }

    /// Stops every job (server shut-down).
    pub fn shutdown(&self) {
        for j in self.jobs.iter() {
            j.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
            j.handle.stop();
        }
    }
}

fn field(name: &str, reason: impl Into<String>) -> ApiError {
    ApiError::invalid_parameter(name, reason)
}

fn obj<'a>(v: &'a Value, name: &str) -> ApiResult<Option<&'a serde_json::Map<String, Value>>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(field(name, "must be an object")),
    }
}

fn known(map: &serde_json::Map<String, Value>, section: &str, keys: &[&str]) -> ApiResult<()> {
    match map.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(field(&format!("{section}.{k}"), "unknown field")),
        None => Ok(()),
    }
}

fn get_u64(map: &serde_json::Map<String, Value>, section: &str, key: &str) -> ApiResult<Option<u64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| field(&format!("{section}.{key}"), "must be a non-negative integer")),
    }
}

fn get_str<'a>(map: &'a serde_json::Map<String, Value>, section: &str, key: &str) -> ApiResult<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field(&format!("{section}.{key}"), "must be a string")),
    }
}

fn get_users(map: &serde_json::Map<String, Value>, section: &str, key: &str) -> ApiResult<Option<Vec<String>>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|u| u.as_str().and_then(|s| UserId::parse(s).ok()).map(|u| u.as_str().to_owned()).ok_or_else(|| field(&format!("{section}.{key}"), "must be a list of user ids")))
            .collect::<ApiResult<Vec<String>>>()
            .map(Some),
        Some(_) => Err(field(&format!("{section}.{key}"), "must be a list of user ids")),
    }
}

fn colour(map: &serde_json::Map<String, Value>, section: &str, key: &str, default: Rgb) -> ApiResult<Rgb> {
    match get_str(map, section, key)? {
        None => Ok(default),
        Some(s) => Rgb::parse(s).ok_or_else(|| field(&format!("{section}.{key}"), "must be a colour like #1a2b3c")),
    }
}

fn stream_of(s: Option<&str>, name: &str, default: &str) -> ApiResult<String> {
    match s.unwrap_or(default) {
        "main" => Ok("main".into()),
        "aux" => Ok("aux".into()),
        _ => Err(field(name, "must be 'main' or 'aux'")),
    }
}

/// The image URLs of a layout, checked but not fetched yet.
#[derive(Debug, Clone, Default)]
struct ImageRefs {
    background: Option<String>,
    placeholder: Option<String>,
    watermarks: Vec<(String, u32, u32, u32, u32)>,
}

const MAX_IMAGE_URL: usize = 8 * 1024 * 1024;

fn image_url(s: &str, name: &str) -> ApiResult<String> {
    let ok =
        s.len() <= MAX_IMAGE_URL && (s.starts_with("http://") || s.starts_with("https://") || s.starts_with("data:image/png;base64,") || s.starts_with("data:image/jpeg;base64,"));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(field(name, "must be an http(s):// URL or a data:image/png|jpeg;base64, URI"))
    }
}

/// Fetches and decodes a layout's images in parallel (5 s each). A failure leaves that image
/// out and is reported (LAYOUTS.md §3.5: the job runs on without it).
async fn load_images(refs: &ImageRefs) -> (MixImages, Vec<Value>) {
    use std::sync::Arc as A;
    let fetch = |url: String| {
        tokio::task::spawn_blocking(move || {
            let image = crate::outbound::check_url_blocking(&url).and_then(|()| tessera_transcode::image::fetch_image(&url, Duration::from_secs(5)).map_err(|e| e.to_string()));
            (url.clone(), image)
        })
    };
    let background = refs.background.clone().map(fetch);
    let placeholder = refs.placeholder.clone().map(fetch);
    let marks: Vec<_> = refs.watermarks.iter().map(|(u, ..)| fetch(u.clone())).collect();
    let mut errors = Vec::new();
    let mut take = |r: Result<(String, Result<tessera_transcode::image::RgbaImage, String>), tokio::task::JoinError>| match r {
        Ok((_, Ok(img))) => Some(A::new(img)),
        Ok((url, Err(e))) => {
            let shown: String = url.chars().take(100).collect();
            tracing::warn!(url = %shown, "mix image not loaded: {e}");
            errors.push(json!({"url": shown, "error": e}));
            None
        }
        Err(_) => None,
    };
    let mut images = MixImages::default();
    if let Some(h) = background {
        images.background = take(h.await);
    }
    if let Some(h) = placeholder {
        images.placeholder = take(h.await);
    }
    for (h, (_, x, y, w, hh)) in marks.into_iter().zip(&refs.watermarks) {
        if let Some(image) = take(h.await) {
            images.watermarks.push(Watermark { image, x: *x, y: *y, width: *w, height: *hh });
        }
    }
    (images, errors)
}

/// `layout` → the engine's config, the background colour, include_aux, and its normalized JSON.
fn parse_layout(v: Option<&serde_json::Map<String, Value>>, width: u32, height: u32) -> ApiResult<(LayoutConfig, Rgb, bool, Value, ImageRefs)> {
    let empty = serde_json::Map::new();
    let m = v.unwrap_or(&empty);
    known(m, "layout", &["template", "max_tiles", "main", "regions", "include_aux", "background_color", "background_image", "placeholder_image", "watermarks"])?;
    let template_name = get_str(m, "layout", "template")?.unwrap_or("nine_grid");
    let template = Template::parse(template_name).ok_or_else(|| field("layout.template", "must be nine_grid, float, screen_share_left, screen_share_right or custom"))?;
    let max = template.max_tiles();
    let max_tiles = get_u64(m, "layout", "max_tiles")?.unwrap_or(max as u64) as usize;
    if max_tiles < 1 || max_tiles > max {
        return Err(field("layout.max_tiles", format!("must be 1 to {max} for {}", template.as_str())));
    }
    let main = match obj(&Value::Object(m.clone()), "main").map_err(|_| field("layout.main", "must be an object or null"))? {
        None => None,
        Some(mm) => {
            known(mm, "layout.main", &["user", "stream"])?;
            let user = get_str(mm, "layout.main", "user")?.ok_or_else(|| field("layout.main.user", "is required"))?;
            let user = UserId::parse(user).map_err(|e| field("layout.main.user", e.reason))?;
            let default_stream = if matches!(template, Template::ScreenShareLeft | Template::ScreenShareRight) { "aux" } else { "main" };
            Some(InputKey::new(user.as_str(), &stream_of(get_str(mm, "layout.main", "stream")?, "layout.main.stream", default_stream)?))
        }
    };
    let background = colour(m, "layout", "background_color", Rgb(0, 0, 0))?;
    let include_aux = match m.get("include_aux") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field("layout.include_aux", "must be true or false")),
    };
    let mut images = ImageRefs::default();
    if let Some(u) = get_str(m, "layout", "background_image")? {
        images.background = Some(image_url(u, "layout.background_image")?);
    }
    if let Some(u) = get_str(m, "layout", "placeholder_image")? {
        images.placeholder = Some(image_url(u, "layout.placeholder_image")?);
    }
    let mut marks_json = Vec::new();
    match m.get("watermarks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            if a.len() > 25 {
                return Err(field("layout.watermarks", "at most 25 watermarks"));
            }
            for (i, wm) in a.iter().enumerate() {
                let name = format!("layout.watermarks[{i}]");
                let wm = wm.as_object().ok_or_else(|| field(&name, "must be an object"))?;
                known(wm, &name, &["image", "x", "y", "width", "height"])?;
                let url = image_url(get_str(wm, &name, "image")?.ok_or_else(|| field(&format!("{name}.image"), "is required"))?, &format!("{name}.image"))?;
                let num = |k: &str| -> ApiResult<u32> { Ok(get_u64(wm, &name, k)?.ok_or_else(|| field(&format!("{name}.{k}"), "is required"))?.min(u32::MAX as u64) as u32 & !1) };
                let (x, y, w, h) = (num("x")?, num("y")?, num("width")?, num("height")?);
                if w < 2 || h < 2 || x + w > width || y + h > height {
                    return Err(field(&name, format!("the box must lie inside the {width}x{height} canvas")));
                }
                marks_json.push(json!({"image": url, "x": x, "y": y, "width": w, "height": h}));
                images.watermarks.push((url, x, y, w, h));
            }
        }
        Some(_) => return Err(field("layout.watermarks", "must be a list")),
    }
    let mut regions = Vec::new();
    let mut regions_json = Vec::new();
    match m.get("regions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            if a.len() > 25 {
                return Err(field("layout.regions", "at most 25 regions"));
            }
            for (i, r) in a.iter().enumerate() {
                let name = format!("layout.regions[{i}]");
                let rm = r.as_object().ok_or_else(|| field(&name, "must be an object"))?;
                known(rm, &name, &["x", "y", "width", "height", "z_order", "fill_mode", "background_color", "user", "stream"])?;
                let num = |k: &str| -> ApiResult<u32> { Ok(get_u64(rm, &name, k)?.ok_or_else(|| field(&format!("{name}.{k}"), "is required"))?.min(u32::MAX as u64) as u32 & !1) };
                let (x, y, w, h) = (num("x")?, num("y")?, num("width")?, num("height")?);
                if w < 2 || h < 2 || x + w > width || y + h > height {
                    return Err(field(&name, format!("must lie inside the {width}x{height} canvas with width and height of at least 2")));
                }
                let z = get_u64(rm, &name, "z_order")?.unwrap_or(0);
                if z > 100 {
                    return Err(field(&format!("{name}.z_order"), "must be 0 to 100"));
                }
                let fill_mode = match get_str(rm, &name, "fill_mode")?.unwrap_or("fill") {
                    "fill" => FillMode::Fill,
                    "fit" => FillMode::Fit,
                    _ => return Err(field(&format!("{name}.fill_mode"), "must be 'fill' or 'fit'")),
                };
                let bg = colour(rm, &name, "background_color", background)?;
                let input = match get_str(rm, &name, "user")? {
                    None => None,
                    Some(u) => {
                        let u = UserId::parse(u).map_err(|e| field(&format!("{name}.user"), e.reason))?;
                        Some(InputKey::new(u.as_str(), &stream_of(get_str(rm, &name, "stream")?, &format!("{name}.stream"), "main")?))
                    }
                };
                regions_json.push(json!({"x": x, "y": y, "width": w, "height": h, "z_order": z, "fill_mode": fill_mode.as_str(), "background_color": bg.to_string(),
                    "user": input.as_ref().map(|k| k.user.clone()), "stream": input.as_ref().map(|k| k.stream.clone()).unwrap_or_else(|| "main".into())}));
                regions.push(Region { tile: Tile { x, y, width: w, height: h, z_order: z as u32, fill_mode, background: Some(bg) }, input });
            }
        }
        Some(_) => return Err(field("layout.regions", "must be a list")),
    }
    if template == Template::Custom && regions.is_empty() {
        return Err(field("layout.regions", "a custom layout needs at least one region"));
    }
    let normalized = json!({
        "template": template.as_str(), "max_tiles": max_tiles,
        "main": main.as_ref().map(|k| json!({"user": k.user, "stream": k.stream})),
        "regions": regions_json, "include_aux": include_aux, "background_color": background.to_string(),
        "background_image": images.background, "placeholder_image": images.placeholder, "watermarks": marks_json,
    });
    Ok((LayoutConfig { template, max_tiles, main, regions }, background, include_aux, normalized, images))
}

fn parse_subscribe(v: Option<&serde_json::Map<String, Value>>) -> ApiResult<(Subscribe, Value)> {
    let empty = serde_json::Map::new();
    let m = v.unwrap_or(&empty);
    known(m, "subscribe", &["video_allow", "video_deny", "audio_allow", "audio_deny"])?;
    let s = Subscribe {
        video_allow: get_users(m, "subscribe", "video_allow")?,
        video_deny: get_users(m, "subscribe", "video_deny")?.unwrap_or_default(),
        audio_allow: get_users(m, "subscribe", "audio_allow")?,
        audio_deny: get_users(m, "subscribe", "audio_deny")?.unwrap_or_default(),
    };
    let j = json!({"video_allow": s.video_allow, "video_deny": s.video_deny, "audio_allow": s.audio_allow, "audio_deny": s.audio_deny});
    Ok((s, j))
}

fn parse_audio(v: Option<&serde_json::Map<String, Value>>) -> ApiResult<(AudioMode, usize, Value)> {
    let empty = serde_json::Map::new();
    let m = v.unwrap_or(&empty);
    known(m, "audio", &["mode", "users", "max_voices"])?;
    let users = get_users(m, "audio", "users")?.unwrap_or_default();
    let mode = match get_str(m, "audio", "mode")?.unwrap_or("all") {
        "all" => AudioMode::All,
        "users" => AudioMode::Users(users.clone()),
        "none" => AudioMode::None,
        _ => return Err(field("audio.mode", "must be 'all', 'users' or 'none'")),
    };
    let max_voices = get_u64(m, "audio", "max_voices")?.unwrap_or(16);
    if !(1..=16).contains(&max_voices) {
        return Err(field("audio.max_voices", "must be 1 to 16"));
    }
    let mode_name = match mode {
        AudioMode::All => "all",
        AudioMode::Users(_) => "users",
        AudioMode::None => "none",
    };
    Ok((mode, max_voices as usize, json!({"mode": mode_name, "users": users, "max_voices": max_voices})))
}

/// `encode` (LAYOUTS.md §4) → settings, the normalized section and `effective`.
fn parse_encode(v: Option<&serde_json::Map<String, Value>>) -> ApiResult<(EncodeSettings, Value)> {
    let empty = serde_json::Map::new();
    let m = v.unwrap_or(&empty);
    known(
        m,
        "encode",
        &["template", "width", "height", "fps", "video_kbps", "gop_s", "encoder", "audio_profile", "audio_sample_rate", "audio_channels", "audio_kbps", "audio_codec_type"],
    )?;
    let template = get_str(m, "encode", "template")?.unwrap_or("1280x720_15_1500");
    let resolved = match template {
        "360p" => "640x360_15_800",
        "540p" => "960x540_15_1200",
        "720p" => "1280x720_15_1500",
        "1080p" => "1920x1080_15_2500",
        t => t,
    };
    let (w, h, fps, kbps) = parse_encode_template(resolved).ok_or_else(|| field("encode.template", "must look like 1280x720_15_1500 or be 360p, 540p, 720p or 1080p"))?;
    let width = get_u64(m, "encode", "width")?.map(|v| v as u32).unwrap_or(w);
    let height = get_u64(m, "encode", "height")?.map(|v| v as u32).unwrap_or(h);
    let fps = get_u64(m, "encode", "fps")?.map(|v| v as u32).unwrap_or(fps);
    let kbps = get_u64(m, "encode", "video_kbps")?.map(|v| v as u32).unwrap_or(kbps);
    let gop_s = get_u64(m, "encode", "gop_s")?.map(|v| v as u32).unwrap_or(3);
    if width % 2 == 1 || height % 2 == 1 || !(64..=1920).contains(&width) || !(64..=1920).contains(&height) || width as u64 * height as u64 > 1920 * 1080 {
        return Err(field("encode.width", "width and height must be even, 64 to 1920, and at most 1920x1080 in area"));
    }
    if !(1..=60).contains(&fps) {
        return Err(field("encode.fps", "must be 1 to 60"));
    }
    if !(100..=10_000).contains(&kbps) {
        return Err(field("encode.video_kbps", "must be 100 to 10000"));
    }
    if !(1..=10).contains(&gop_s) {
        return Err(field("encode.gop_s", "must be 1 to 10"));
    }
    let encoder = get_str(m, "encode", "encoder")?.unwrap_or("openh264");
    if !matches!(encoder, "openh264" | "x264") {
        return Err(field("encode.encoder", "must be 'openh264' or 'x264'"));
    }
    let profile = get_str(m, "encode", "audio_profile")?.unwrap_or("default");
    let (mut channels, mut akbps) = match profile {
        "speech" | "default" => (1u64, 50u64),
        "music" => (2, 60),
        _ => return Err(field("encode.audio_profile", "must be 'speech', 'default' or 'music'")),
    };
    let rate = get_u64(m, "encode", "audio_sample_rate")?.unwrap_or(48_000);
    if rate != 48_000 && rate != 44_100 {
        return Err(field("encode.audio_sample_rate", "must be 48000 or 44100"));
    }
    if let Some(c) = get_u64(m, "encode", "audio_channels")? {
        if c != 1 && c != 2 {
            return Err(field("encode.audio_channels", "must be 1 or 2"));
        }
        channels = c;
    }
    if let Some(k) = get_u64(m, "encode", "audio_kbps")? {
        if !(32..=192).contains(&k) {
            return Err(field("encode.audio_kbps", "must be 32 to 192"));
        }
        akbps = k;
    }
    if let Some(t) = get_u64(m, "encode", "audio_codec_type")? {
        if t > 2 {
            return Err(field("encode.audio_codec_type", "must be 0, 1 or 2"));
        }
    }
    let level = if fps > 30 {
        "42e02a"
    } else if width as u64 * height as u64 > 1280 * 720 {
        "42e028"
    } else {
        "42e01f"
    };
    let settings = EncodeSettings { width, height, fps, kbps, gop_s, audio_channels: channels as usize, audio_kbps: akbps as u32, openh264: encoder == "openh264" };
    let normalized = json!({
        "template": template, "gop_s": gop_s, "encoder": encoder, "audio_profile": profile,
        "effective": {
            "width": width, "height": height, "fps": fps, "kbps": kbps, "gop_s": gop_s,
            "encoder": encoder, "profile_level_id": level,
            "audio_codec": "opus", "audio_sample_rate": 48_000, "audio_channels": channels, "audio_kbps": akbps,
        },
    });
    Ok((settings, normalized))
}

/// `^([1-9][0-9]{1,3})x([1-9][0-9]{1,3})_([1-9][0-9]?)_([1-9][0-9]{1,4})$`
pub fn parse_encode_template(s: &str) -> Option<(u32, u32, u32, u32)> {
    let (size, rest) = s.split_once('_')?;
    let (fps, kbps) = rest.split_once('_')?;
    let (w, h) = size.split_once('x')?;
    let num = |t: &str, min_len: usize, max_len: usize| -> Option<u32> {
        (t.len() >= min_len && t.len() <= max_len && t.bytes().all(|b| b.is_ascii_digit()) && !t.starts_with('0')).then(|| t.parse().ok()).flatten()
    };
    Some((num(w, 2, 4)?, num(h, 2, 4)?, num(fps, 1, 2)?, num(kbps, 2, 5)?))
}

fn max_idle(v: &Value) -> ApiResult<u64> {
    match v.get("max_idle_time") {
        None | Some(Value::Null) => Ok(30),
        Some(x) => x.as_u64().filter(|n| (1..=86_400).contains(n)).ok_or_else(|| field("max_idle_time", "must be 1 to 86400 seconds")),
    }
}

/// `outputs`: the RTMP URLs of the job's own relay (checked here, started with the job).
fn check_outputs(v: &Value) -> ApiResult<Vec<String>> {
    let Some(m) = obj(v, "outputs")? else { return Ok(Vec::new()) };
    known(m, "outputs", &["rtmp_urls", "recording"])?;
    if m.get("recording").is_some_and(|r| !r.is_null()) {
        return Err(field("outputs.recording", "recording outputs are not supported yet"));
    }
    let urls: Vec<String> = match m.get("rtmp_urls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            a.iter().map(|u| u.as_str().map(str::to_owned).ok_or_else(|| field("outputs.rtmp_urls", "must be a list of rtmp:// URLs"))).collect::<ApiResult<_>>()?
        }
        Some(_) => return Err(field("outputs.rtmp_urls", "must be a list of rtmp:// URLs")),
    };
    if !urls.is_empty() {
        super::relays::check_urls(&urls).map_err(|e| field("outputs.rtmp_urls", e.message))?;
    }
    Ok(urls)
}

fn view(id: &str, job: &MixJob) -> Value {
    let mut v = job.request.lock().expect("mix request").clone();
    let status = job.handle.status();
    let spec = job.handle.spec();
    v["id"] = json!(id);
    v["user"] = json!(spec.user);
    v["state"] = json!(status.state.as_str());
    v["created_at"] = json!(job.created_at);
    v["whep_url"] = json!(format!("/whep/{}/{}/main", spec.room.room, spec.user));
    v["inputs"] = status
        .inputs
        .iter()
        .map(|i| {
            json!({"user": i.key.user, "stream": i.key.stream, "join_order": i.join_order,
                "tile": i.tile.map(|t| json!({"x": t.x, "y": t.y, "width": t.width, "height": t.height, "z_order": t.z_order, "fill_mode": t.fill_mode.as_str()})),
                "has_video": i.has_video, "has_audio": i.has_audio, "voice_selected": i.voice_selected})
        })
        .collect();
    let s = &status.stats;
    v["stats"] = json!({"fps": s.fps, "decode_ms_p50": s.decode_ms_p50, "compose_ms_p50": s.compose_ms_p50, "encode_ms_p50": s.encode_ms_p50, "dropped_frames": s.dropped_frames, "frames": s.frames, "cpu_cores": s.cpu_cores});
    v["stopped_at"] = json!(status.stopped_at);
    v["leave_code"] = json!(status.leave_code);
    v["error"] = json!(status.error);
    v["image_errors"] = json!(*job.image_errors.lock().expect("image errors"));
    v
}

pub async fn start(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiJson(body): ApiJson<Value>) -> ApiResult<(StatusCode, Json<Value>)> {
    let (id, job) = start_job(&state, &caller.app, body, None).await?;
    Ok((StatusCode::CREATED, Json(view(&id, &job))))
}

fn task_path(state: &AppState, id: &str) -> std::path::PathBuf {
    state.config.data_dir.join("tasks").join(format!("{id}.json"))
}

/// Saves the job's request and state to `tasks/<id>.json` (RECORDING.md §8).
fn save(path: &std::path::Path, app: &AppId, id: &str, created_at: i64, request: &Value, state: &str) {
    let record = json!({"kind": "mix_job", "id": id, "app": app, "created_at": created_at, "request": request, "state": state});
    if let Err(e) = crate::store::write_atomic(path, &serde_json::to_vec_pretty(&record).unwrap_or_default(), 0o600) {
        tracing::warn!(job = %id, "cannot save the mix job: {e}");
    }
}

/// Restarts the jobs a previous run left running, with the same ids and `mix_<id>` users.
pub async fn resume(state: &AppState) {
    for v in crate::task_file::read_all(&state.config.data_dir.join("tasks"), "mix_job") {
        if v["state"] == "STOPPED" {
            continue;
        }
        let (Some(id), Ok(app)) = (v["id"].as_str(), AppId::parse(v["app"].as_str().unwrap_or(""))) else { continue };
        let mut body = v["request"].clone();
        // The owned relay is made again from its URLs.
        body["outputs"] = json!({"rtmp_urls": body["outputs"]["rtmp_urls"].clone()});
        if let Some(e) = body["encode"].as_object_mut() {
            e.remove("effective");
        }
        match start_job(state, &app, body, Some((id.to_string(), v["created_at"].as_i64().unwrap_or(0)))).await {
            Ok(_) => tracing::info!(job = %id, "mix job resumed"),
            Err(e) => tracing::warn!(job = %id, "mix job not resumed: {}", e.message),
        }
    }
}

/// Checks a request and starts the job (and its relay); `resumed` keeps the id of a job from
/// before a restart.
/// The checks `start_job` makes of a body before anything starts (the `json_bodies` fuzz target).
pub(crate) fn check_body(body: &Value) -> ApiResult<()> {
    let top = body.as_object().ok_or_else(|| ApiError::invalid_json("the body must be a JSON object"))?;
    if let Some(room) = top.get("room").and_then(|r| r.as_str()) {
        RoomId::parse(room).map_err(|e| field("room", e.reason))?;
    }
    let (encode, _) = parse_encode(obj(body, "encode")?)?;
    parse_layout(obj(body, "layout")?, encode.width, encode.height)?;
    parse_subscribe(obj(body, "subscribe")?)?;
    parse_audio(obj(body, "audio")?)?;
    max_idle(body)?;
    check_outputs(body)?;
    Ok(())
}

pub(crate) async fn start_job(state: &AppState, app: &AppId, body: Value, resumed: Option<(String, i64)>) -> ApiResult<(String, Arc<MixJob>)> {
    let caller_app = app;
    if !body.is_object() {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    }
    let top = body.as_object().expect("checked");
    known(top, "body", &["room", "layout", "subscribe", "audio", "encode", "video", "max_idle_time", "outputs"]).map_err(|_| {
        let k = top.keys().find(|k| !["room", "layout", "subscribe", "audio", "encode", "video", "max_idle_time", "outputs"].contains(&k.as_str())).cloned().unwrap_or_default();
        field(&k, "unknown field")
    })?;
    let room = body.get("room").and_then(|r| r.as_str()).ok_or_else(|| field("room", "is required"))?;
    let room = RoomId::parse(room).map_err(|e| field("room", e.reason))?;
    let (encode, encode_json) = parse_encode(obj(&body, "encode")?)?;
    let (layout, background, include_aux, layout_json, image_refs) = parse_layout(obj(&body, "layout")?, encode.width, encode.height)?;
    let (subscribe, subscribe_json) = parse_subscribe(obj(&body, "subscribe")?)?;
    let (audio, max_voices, audio_json) = parse_audio(obj(&body, "audio")?)?;
    let video = match body.get("video") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field("video", "must be true or false")),
    };
    if !video && audio == AudioMode::None {
        return Err(field("audio.mode", "an audio-only job (video: false) needs audio"));
    }
    let idle = max_idle(&body)?;
    let rtmp_urls = check_outputs(&body)?;
    if let Some(u) = rtmp_urls.iter().find(|u| state.relays.url_in_use(u, None)) {
        return Err(ApiError::new(StatusCode::CONFLICT, "url_in_use", format!("another relay already pushes to {}", u.rsplit_once('/').map(|(a, _)| a).unwrap_or(u))));
    }
    let limit = state.config.limits.concurrent_mix_jobs.map(|n| n as usize).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if state.mix_jobs.running() >= limit {
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "capacity_exceeded", format!("this server runs at most {limit} mix jobs at once")).with_details(json!({"limit": limit}))
        );
    }
    let (images, image_errors) = load_images(&image_refs).await;
    let (id, created_at) = resumed.unwrap_or_else(|| (tessera_model::TaskId::generate().as_str().to_owned(), crate::now_ms()));
    let user = UserId::parse(&format!("mix_{id}")).map_err(|e| ApiError::internal(e.reason))?;
    let spec = MixSpec {
        id: id.clone(),
        room: RoomKey { app: caller_app.clone(), room: room.clone() },
        user,
        layout,
        images,
        background,
        include_aux,
        subscribe,
        audio,
        max_voices,
        encode,
        video,
        max_idle: Duration::from_secs(idle),
    };
    let mix_user = spec.user.clone();
    let relay_media = if !video {
        crate::relay::RelayMedia::Audio
    } else if spec.audio == AudioMode::None {
        crate::relay::RelayMedia::Video
    } else {
        crate::relay::RelayMedia::AudioVideo
    };
    let path = task_path(state, &id);
    let saved_request: Arc<Mutex<Value>> = Arc::new(Mutex::new(Value::Null));
    let shutting_down: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let on_stop: Box<dyn FnOnce(u32) + Send> = {
        let (path, app, id, room, request, shutting, hooks) =
            (path.clone(), caller_app.clone(), id.clone(), room.clone(), saved_request.clone(), shutting_down.clone(), state.hooks.clone());
        Box::new(move |code| {
            // A job ended by the server's shut-down resumes with the next start: not a stop.
            if !shutting.load(std::sync::atomic::Ordering::SeqCst) {
                save(&path, &app, &id, created_at, &request.lock().expect("request"), "STOPPED");
                hooks.emit(&app, 802, mix_event(&room, &id, json!({"LeaveCode": code})));
            }
        })
    };
    let handle = match MixHandle::start(spec, state.rtc.clone(), on_stop) {
        Ok(h) => h,
        Err(e) => {
            state.hooks.emit(caller_app, 801, mix_event(&room, &id, json!({"Status": 1, "ErrorMsg": e.to_string()})));
            return Err(ApiError::internal(format!("cannot start the mix job: {e}")));
        }
    };
    state.hooks.emit(caller_app, 801, mix_event(&room, &id, json!({"Status": 0, "ErrorMsg": ""})));
    report_image_errors(state, caller_app, &room, &id, &image_errors);
    // Mixed relay: the job's own relay of `mix_<id>`, stopped with it (RECORDING.md §1).
    let relay_id = if rtmp_urls.is_empty() {
        None
    } else {
        let new = crate::relay::NewRelay {
            resumed: None,
            app: caller_app.clone(),
            room: room.clone(),
            source: crate::relay::SourceRef { user: mix_user, stream: tessera_media::StreamKind::Main },
            media: relay_media,
            urls: rtmp_urls.clone(),
            max_idle: Duration::from_secs(idle + 5),
            owner: Some(id.clone()),
        };
        match state.relays.start(new, state.rtc.clone()) {
            Ok(r) => Some(r.id),
            Err(e) => {
                handle.stop();
                return Err(ApiError::internal(format!("cannot start the mix job's relay: {e}")));
            }
        }
    };
    let outputs = json!({"rtmp_urls": rtmp_urls, "recording": null, "relay_id": relay_id, "recording_id": null});
    let request = json!({"room": room, "layout": layout_json, "subscribe": subscribe_json, "audio": audio_json, "encode": encode_json, "video": video, "max_idle_time": idle, "outputs": outputs});
    *saved_request.lock().expect("request") = request.clone();
    save(&path, caller_app, &id, created_at, &request, "RUNNING");
    let job = Arc::new(MixJob { app: caller_app.clone(), shutting_down, created_at, request: Mutex::new(request), image_errors: Mutex::new(image_errors), handle });
    state.mix_jobs.jobs.insert(id.clone(), job.clone());
    tracing::info!(job = %id, room = %room, "mix job started");
    Ok((id, job))
}

/// A mix job's event: its room, user `mix_<id>` and task id.
fn mix_event(room: &RoomId, id: &str, payload: Value) -> EventInfo {
    EventInfo::task(room.as_str(), format!("mix_{id}"), id).with_payload(payload)
}

/// Event 309 for each layout image that could not be loaded (EVENTS.md §5, group 3).
fn report_image_errors(state: &AppState, app: &AppId, room: &RoomId, id: &str, errors: &[Value]) {
    for e in errors {
        state.hooks.emit(app, 309, mix_event(room, id, json!({"Url": e["url"]})));
    }
}

fn find(state: &AppState, app: &AppId, id: &str) -> ApiResult<Arc<MixJob>> {
    state.mix_jobs.jobs.get(id).map(|j| j.clone()).filter(|j| j.app == *app).ok_or_else(|| ApiError::not_found("task_not_found", format!("the app has no mix job with id '{id}'")))
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Value>>> {
    let items = state.mix_jobs.jobs.iter().filter(|j| j.app == caller.app).map(|j| view(j.key(), j.value())).collect();
    Ok(Json(q.page(items, |v| v["id"].as_str().unwrap_or(""))?))
}

pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state, &caller.app, &id)?;
    Ok(Json(view(&id, &job)))
}

/// Each section present replaces that section entirely; applied at the job's next frame.
pub async fn update(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>, ApiJson(body): ApiJson<Value>) -> ApiResult<Json<Value>> {
    apply_patch(&state, &caller, &id, body).await.map(Json)
}

/// A PATCH of a job (its own route, or a recording's owned `mix`).
pub(crate) async fn apply_patch(state: &AppState, caller: &Caller, id: &str, body: Value) -> ApiResult<Value> {
    let (state, id) = (state.clone(), id.to_owned());
    let job = find(&state, &caller.app, &id)?;
    let top = body.as_object().ok_or_else(|| ApiError::invalid_json("the body must be a JSON object"))?;
    if let Some(k) = top.keys().find(|k| !["layout", "subscribe", "audio", "encode", "video", "outputs"].contains(&k.as_str())) {
        return Err(field(k, "cannot be changed by PATCH"));
    }
    if job.handle.status().state == MixState::Stopped {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", "the mix job has stopped").with_details(json!({"state": "STOPPED"})));
    }
    let spec = job.handle.spec();
    if top.contains_key("encode") {
        return Err(ApiError::new(StatusCode::CONFLICT, "encode_immutable", "a running job's encoding cannot change"));
    }
    if top.get("video").is_some_and(|v| v.as_bool() != Some(spec.video)) {
        return Err(ApiError::new(StatusCode::CONFLICT, "media_fixed", "a running job cannot switch video on or off"));
    }
    let layout = match obj(&body, "layout")? {
        Some(m) => Some(parse_layout(Some(m), spec.encode.width, spec.encode.height)?),
        None => None,
    };
    let images = match &layout {
        Some((.., refs)) => Some(load_images(refs).await),
        None => None,
    };
    let subscribe = if top.contains_key("subscribe") { Some(parse_subscribe(obj(&body, "subscribe")?)?) } else { None };
    let audio = if top.contains_key("audio") { Some(parse_audio(obj(&body, "audio")?)?) } else { None };
    if let Some((mode, _, _)) = &audio {
        if (*mode == AudioMode::None) != (spec.audio == AudioMode::None) {
            return Err(ApiError::new(StatusCode::CONFLICT, "media_fixed", "a running job cannot switch its audio to or from 'none'"));
        }
    }
    let new_urls = if top.contains_key("outputs") { Some(check_outputs(&body)?) } else { None };
    if let Some(urls) = &new_urls {
        let relay_id = job.request.lock().expect("mix request")["outputs"]["relay_id"].as_str().map(str::to_owned);
        match (relay_id.and_then(|r| state.relays.get(&caller.app, &r)), urls.is_empty()) {
            (Some(relay), false) => {
                if let Some(u) = urls.iter().find(|u| state.relays.url_in_use(u, Some(&relay.record().id))) {
                    return Err(ApiError::new(StatusCode::CONFLICT, "url_in_use", format!("another relay already pushes to {u}")));
                }
                state.relays.set_urls(&relay, urls.clone()).await;
            }
            (Some(relay), true) => state.relays.stop(&relay),
            (None, false) => return Err(field("outputs.rtmp_urls", "add RTMP outputs when starting the job")),
            (None, true) => {}
        }
        job.request.lock().expect("mix request")["outputs"]["rtmp_urls"] = json!(urls);
    }
    let mut request = job.request.lock().expect("mix request");
    job.handle.update(|s| {
        if let Some((l, bg, aux, j, _)) = layout {
            s.layout = l;
            s.background = bg;
            s.include_aux = aux;
            request["layout"] = j;
        }
        if let Some((images, errors)) = images {
            s.images = images;
            report_image_errors(&state, &caller.app, &s.room.room, &id, &errors);
            *job.image_errors.lock().expect("image errors") = errors;
        }
        if let Some((sub, j)) = subscribe {
            s.subscribe = sub;
            request["subscribe"] = j;
        }
        if let Some((mode, voices, j)) = audio {
            s.audio = mode;
            s.max_voices = voices;
            request["audio"] = j;
        }
    });
    save(&task_path(&state, &id), &caller.app, &id, job.created_at, &request, "RUNNING");
    drop(request);
    Ok(view(&id, &job))
}

pub async fn stop(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state, &caller.app, &id)?;
    job.handle.stop();
    let relay_id = job.request.lock().expect("mix request")["outputs"]["relay_id"].as_str().map(str::to_owned);
    if let Some(relay) = relay_id.and_then(|r| state.relays.get(&caller.app, &r)) {
        state.relays.stop(&relay);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while job.handle.status().state != MixState::Stopped && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Json(view(&id, &job)))
}
