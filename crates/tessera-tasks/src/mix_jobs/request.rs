//! A mix-job request (LAYOUTS.md §1) checked completely, field by field (`details.field` on
//! error), into the parts of a `MixSpec`, with the normalized request echoed back.

use crate::{TaskError, TaskResult};
use serde_json::{json, Value};
use std::time::Duration;
use tessera_engine::mcu::{AudioMode, EncodeSettings, FillMode, InputKey, LayoutConfig, MixImages, Region, Rgb, Subscribe, Template, Tile, Watermark};
use tessera_model::UserId;

pub(super) fn field(name: &str, reason: impl Into<String>) -> TaskError {
    TaskError::invalid_parameter(name, reason)
}

pub(super) fn obj<'a>(v: &'a Value, name: &str) -> TaskResult<Option<&'a serde_json::Map<String, Value>>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(field(name, "must be an object")),
    }
}

pub(super) fn known(map: &serde_json::Map<String, Value>, section: &str, keys: &[&str]) -> TaskResult<()> {
    match map.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(field(&format!("{section}.{k}"), "unknown field")),
        None => Ok(()),
    }
}

fn get_u64(map: &serde_json::Map<String, Value>, section: &str, key: &str) -> TaskResult<Option<u64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| field(&format!("{section}.{key}"), "must be a non-negative integer")),
    }
}

fn get_str<'a>(map: &'a serde_json::Map<String, Value>, section: &str, key: &str) -> TaskResult<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field(&format!("{section}.{key}"), "must be a string")),
    }
}

pub(super) fn get_users(map: &serde_json::Map<String, Value>, section: &str, key: &str) -> TaskResult<Option<Vec<String>>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|u| u.as_str().and_then(|s| UserId::parse(s).ok()).map(|u| u.as_str().to_owned()).ok_or_else(|| field(&format!("{section}.{key}"), "must be a list of user ids")))
            .collect::<TaskResult<Vec<String>>>()
            .map(Some),
        Some(_) => Err(field(&format!("{section}.{key}"), "must be a list of user ids")),
    }
}

fn colour(map: &serde_json::Map<String, Value>, section: &str, key: &str, default: Rgb) -> TaskResult<Rgb> {
    match get_str(map, section, key)? {
        None => Ok(default),
        Some(s) => Rgb::parse(s).ok_or_else(|| field(&format!("{section}.{key}"), "must be a colour like #1a2b3c")),
    }
}

fn stream_of(s: Option<&str>, name: &str, default: &str) -> TaskResult<String> {
    match s.unwrap_or(default) {
        "main" => Ok("main".into()),
        "aux" => Ok("aux".into()),
        _ => Err(field(name, "must be 'main' or 'aux'")),
    }
}

/// The image URLs of a layout, checked but not fetched yet.
#[derive(Debug, Clone, Default)]
pub(super) struct ImageRefs {
    background: Option<String>,
    placeholder: Option<String>,
    watermarks: Vec<(String, u32, u32, u32, u32)>,
}

const MAX_IMAGE_URL: usize = 8 * 1024 * 1024;

fn image_url(s: &str, name: &str) -> TaskResult<String> {
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
pub(super) async fn load_images(refs: &ImageRefs) -> (MixImages, Vec<Value>) {
    use std::sync::Arc as A;
    let fetch = |url: String| {
        tokio::task::spawn_blocking(move || {
            let image = crate::outbound::check_url_blocking(&url)
                .map_err(|e| e.to_string())
                .and_then(|()| tessera_transcode::image::fetch_image(&url, Duration::from_secs(5)).map_err(|e| e.to_string()));
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
pub(super) fn parse_layout(v: Option<&serde_json::Map<String, Value>>, width: u32, height: u32) -> TaskResult<(LayoutConfig, Rgb, bool, Value, ImageRefs)> {
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
                let num = |k: &str| -> TaskResult<u32> { Ok(get_u64(wm, &name, k)?.ok_or_else(|| field(&format!("{name}.{k}"), "is required"))?.min(u32::MAX as u64) as u32 & !1) };
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
                let num = |k: &str| -> TaskResult<u32> { Ok(get_u64(rm, &name, k)?.ok_or_else(|| field(&format!("{name}.{k}"), "is required"))?.min(u32::MAX as u64) as u32 & !1) };
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

pub(super) fn parse_subscribe(v: Option<&serde_json::Map<String, Value>>) -> TaskResult<(Subscribe, Value)> {
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

pub(super) fn parse_audio(v: Option<&serde_json::Map<String, Value>>) -> TaskResult<(AudioMode, usize, Value)> {
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
pub(super) fn parse_encode(v: Option<&serde_json::Map<String, Value>>) -> TaskResult<(EncodeSettings, Value)> {
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

pub(super) fn max_idle(v: &Value) -> TaskResult<u64> {
    match v.get("max_idle_time") {
        None | Some(Value::Null) => Ok(30),
        Some(x) => x.as_u64().filter(|n| (1..=86_400).contains(n)).ok_or_else(|| field("max_idle_time", "must be 1 to 86400 seconds")),
    }
}

/// `outputs`: the RTMP URLs of the job's own relay (checked here, started with the job).
pub(super) fn check_outputs(v: &Value) -> TaskResult<Vec<String>> {
    let Some(m) = obj(v, "outputs")? else { return Ok(Vec::new()) };
    known(m, "outputs", &["rtmp_urls", "recording"])?;
    if m.get("recording").is_some_and(|r| !r.is_null()) {
        return Err(field("outputs.recording", "recording outputs are not supported yet"));
    }
    let urls: Vec<String> = match m.get("rtmp_urls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            a.iter().map(|u| u.as_str().map(str::to_owned).ok_or_else(|| field("outputs.rtmp_urls", "must be a list of rtmp:// URLs"))).collect::<TaskResult<_>>()?
        }
        Some(_) => return Err(field("outputs.rtmp_urls", "must be a list of rtmp:// URLs")),
    };
    if !urls.is_empty() {
        crate::relay::check_urls(&urls).map_err(|e| field("outputs.rtmp_urls", e.message))?;
    }
    Ok(urls)
}
