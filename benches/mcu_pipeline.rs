//! MCU pipeline benchmark: N moving 360p H.264 inputs → decode → nine-grid compose → encode,
//! on the output clock's work only (no network, no pacing), as fast as it runs. Prints the CPU
//! the process spent per second of output, i.e. the cores a real-time job of this shape needs.
//!
//!   cargo bench -p tessera-engine --bench mcu_pipeline -- [inputs=9] [WxH=1280x720] [fps=30] [seconds=10] [preset=superfast] [input WxH=640x360]
//!
//! Inputs are always encoded with x264 "veryfast" (what a browser-like encoder sends); `preset`
//! is the mix encoder's: an x264 preset, or "openh264". `MCU_DUMP_INPUTS=DIR` also writes the
//! inputs there (`in0.h264` …) for the FFmpeg side of `benches/mcu_vs_ffmpeg.sh`.

use std::time::Instant;
use tessera_engine::mcu::layout::nine_grid;
use tessera_transcode::compose::{Canvas, Rect};
use tessera_transcode::decode::{VideoCodec, VideoDecoder};
use tessera_transcode::video::{EncoderSettings, H264Encoder, OpenH264Encoder, VideoEncoder};

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let inputs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(9);
    let (w, h) = args.get(1).and_then(|a| a.split_once('x')).map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).unwrap_or((1280u32, 720u32));
    let fps: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(30);
    let seconds: u32 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let preset: &'static str = match args.get(4).map(|s| s.as_str()) {
        Some("ultrafast") => "ultrafast",
        Some("veryfast") => "veryfast",
        Some("openh264") => "openh264",
        _ => "superfast",
    };
    let (iw, ih) = args.get(5).and_then(|a| a.split_once('x')).map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).unwrap_or((640u32, 360u32));
    let frames = (fps * seconds) as usize;

    // Inputs: 2 s loops of a moving, textured 640x360 picture each, encoded once up front.
    let gop = 60usize;
    let mut streams: Vec<Vec<Vec<u8>>> = Vec::new();
    for i in 0..inputs {
        let kbps = 600 * (iw * ih) / (640 * 360);
        let mut enc = H264Encoder::new(EncoderSettings { width: iw, height: ih, fps: 30, kbps, gop_frames: gop as u32, preset: "veryfast" }).unwrap();
        let mut src = Canvas::new(iw, ih);
        let mut aus = Vec::new();
        for t in 0..gop {
            let f = src.frame_mut();
            let stride = f.stride(0);
            let luma = f.data_mut(0);
            for y in 0..ih as usize {
                for x in 0..iw as usize {
                    let v = (x + 2 * y + 6 * t + 40 * i) ^ ((x / 16 + y / 16 + t) * 7);
                    luma[y * stride + x] = (v & 0xff) as u8;
                }
            }
            let mut out = Vec::new();
            enc.encode(src.frame_mut(), (t * 33) as i64, &mut out).unwrap();
            aus.extend(out.into_iter().map(|e| e.data));
        }
        streams.push(aus);
    }
    // The same bitstreams for a side-by-side peer (`benches/mcu_vs_ffmpeg.sh`): Annex B, one
    // file per input.
    if let Ok(dir) = std::env::var("MCU_DUMP_INPUTS") {
        for (i, aus) in streams.iter().enumerate() {
            std::fs::write(format!("{dir}/in{i}.h264"), aus.concat()).unwrap();
        }
    }
    let mut decoders: Vec<VideoDecoder> = (0..inputs).map(|_| VideoDecoder::new(VideoCodec::H264).unwrap()).collect();
    let mut canvas = Canvas::new(w, h);
    let settings = EncoderSettings { width: w, height: h, fps, kbps: 2500, gop_frames: fps * 3, preset };
    let mut encoder = if preset == "openh264" { VideoEncoder::OpenH264(OpenH264Encoder::new(settings).unwrap()) } else { VideoEncoder::X264(H264Encoder::new(settings).unwrap()) };
    let tiles = nine_grid(w, h, inputs);
    let (mut decode_s, mut compose_s, mut encode_s) = (0.0, 0.0, 0.0);
    let mut out = Vec::new();
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    for n in 0..frames {
        // 30 fps inputs into a `fps` output: each input advances one frame per output frame
        // when fps = 30 (the nine-grid case the issue names).
        let t = Instant::now();
        for (i, d) in decoders.iter_mut().enumerate() {
            d.decode(&streams[i][n % gop]).unwrap();
        }
        decode_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        canvas.fill(Rect { x: 0, y: 0, width: w, height: h }, (0, 0, 0));
        for (i, tile) in tiles.iter().enumerate() {
            if let Some(p) = decoders[i].picture() {
                canvas.draw(i, p, Rect { x: tile.x, y: tile.y, width: tile.width, height: tile.height }, true, (0, 0, 0)).unwrap();
            }
        }
        compose_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        out.clear();
        encoder.encode(canvas.frame_mut(), (n as i64) * 1000 / fps as i64, &mut out).unwrap();
        encode_s += t.elapsed().as_secs_f64();
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let per = |s: f64| s * 1000.0 / frames as f64;
    println!(
        "| {inputs} × {iw}x{ih} → {w}x{h}@{fps}, {} | {:.2} | {:.1} / {:.1} / {:.1} | {:.0} fps | {:.2} |",
        if preset == "openh264" { "OpenH264".to_string() } else { format!("x264 {preset}") },
        cpu / seconds as f64,
        per(decode_s),
        per(compose_s),
        per(encode_s),
        frames as f64 / wall,
        wall / seconds as f64
    );
}
