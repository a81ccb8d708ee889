//! What an RTMP publish with B-frames costs (issue 18): the `IngestTranscoder` fed a libx264
//! `-preset medium` stream (3 B-frames, B-pyramid, a keyframe every 2 s) of a moving picture,
//! frame by frame as it would arrive in real time. Per size and encoder: CPU time per frame, all
//! threads counted (x264 has its own; so cores at 30 fps), and the latency Tessera adds — from the arrival of the frame that carries
//! picture P to the re-encoded P leaving the transcoder. The arrival clock is the decode-time
//! stamps (frames arrive when they are due), plus the time each push took; a B-frame-free
//! publish is passed through and adds none of this.
//!
//!   cargo bench -p tessera-engine --bench ingest_transcode -- [seconds=10]

use std::collections::HashMap;
use std::time::Instant;
use tessera_engine::ingest_transcode::{CodedFrame, IngestTranscoder, SourceVideo, TranscodeInput, TranscodeStart, X264Source};
use tessera_model::TranscodeEncoder;

const FPS: i64 = 30;

/// `seconds` of a moving test picture encoded as ffmpeg's libx264 defaults would (medium).
fn source(width: u32, height: u32, seconds: i64) -> (Vec<u8>, Vec<CodedFrame>) {
    let x264 = X264Source { width, height, fps: FPS as u32, gop: FPS as u32 * 2, kbps: Some(width * height * 3 / 1000), params: "" };
    let (w, h) = (width as usize, height as usize);
    x264.encode(seconds * FPS, |i, f| {
        let sy = f.stride(0);
        let y = f.data_mut(0);
        // Diagonal stripes that move, and a bar: motion everywhere, like a camera pan.
        for row in 0..h {
            for col in 0..w {
                y[row * sy + col] = (((row + col + i as usize * 6) / 8) % 2 * 120 + 40 + if (col + i as usize * 10) % w < 40 { 70 } else { 0 }) as u8;
            }
        }
        for plane in 1..3 {
            let s = f.stride(plane);
            let d = f.data_mut(plane);
            for row in 0..h / 2 {
                for col in 0..w / 2 {
                    d[row * s + col] = (100 + (row * plane + i as usize) % 56) as u8;
                }
            }
        }
    })
}

/// CPU seconds this process has used, all threads.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): the 12th and 13th after the ')'.
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let seconds: i64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    println!("| source | encoder | CPU per frame (ms) | cores at 30 fps | added latency p50 / p95 (ms) | frames out / in |");
    println!("|---|---|---|---|---|---|");
    for (w, h) in [(1280u32, 720u32), (1920, 1080)] {
        let (config, frames) = source(w, h, seconds);
        for encoder in [TranscodeEncoder::Openh264, TranscodeEncoder::X264] {
            let mut t = IngestTranscoder::new(&TranscodeStart { codec: SourceVideo::H264, config: config.clone(), fps: None, kbps: None }, encoder).unwrap();
            // When the frame carrying each picture (by presentation time) arrived.
            let mut arrived: HashMap<u32, f64> = HashMap::new();
            let (mut latencies, mut outputs, mut clock) = (Vec::new(), 0usize, 0f64);
            let mut out = Vec::new();
            let start_dts = frames[0].dts_ms as f64;
            let cpu_before = process_cpu();
            for f in &frames {
                // A frame arrives when it is due, or when the transcoder is free again.
                clock = clock.max(f.dts_ms as f64 - start_dts);
                let pts = (f.dts_ms as i64 + f.cts_ms as i64) as u32;
                arrived.insert(pts, clock);
                out.clear();
                let began = Instant::now();
                t.push(TranscodeInput::Frame(f.clone()), &mut out).unwrap();
                let took = began.elapsed().as_secs_f64() * 1000.0;
                clock += took;
                // Viewers' access units (the shared pictures for mix jobs aside).
                for p in out.iter().filter(|p| p.marker && p.route == tessera_engine::PacketRoute::Viewers) {
                    outputs += 1;
                    if let Some(at) = arrived.get(&(p.ts / 90)) {
                        latencies.push(clock - at);
                    }
                }
            }
            let per_frame = (process_cpu() - cpu_before) * 1000.0 / frames.len() as f64;
            let (p50, p95) = (percentile(&mut latencies.clone(), 0.5), percentile(&mut latencies, 0.95));
            println!("| {h}p30, x264 medium (3 B-frames) | {encoder:?} | {per_frame:.2} | {:.2} | {p50:.1} / {p95:.1} | {outputs} / {} |", per_frame * 30.0 / 1000.0, frames.len());
        }
    }
}
