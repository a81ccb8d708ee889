//! Cost of active-speaker detection per audio packet: what the SFU adds to each forwarded
//! audio packet (the RFC 6464 level str0m already parsed goes into the room's detector), the
//! detector's poll every 250 ms, and — for audio Tessera decodes itself (RTMP, pull ingest,
//! mixes) — measuring the level of a 20 ms stereo block.
//!
//!   cargo bench -p tessera-engine --bench audio_levels -- [voices=16] [packets=2000000]

use std::time::{Duration, Instant};
use tessera_engine::speakers::RoomSpeakers;
use tessera_media::audio_level::dbov_i16;
use tessera_media::StreamKind;
use tessera_model::UserId;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let voices: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(16);
    let packets: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2_000_000);
    let users: Vec<UserId> = (0..voices).map(|i| UserId::parse(&format!("user{i}")).unwrap()).collect();
    let mut room = RoomSpeakers::default();
    // Packets of every voice in turn, 20 ms of audio per voice per round, levels varying.
    let t0 = Instant::now();
    let mut clock = t0;
    let started = Instant::now();
    let mut lists = 0;
    for i in 0..packets {
        let v = i % voices;
        if v == 0 {
            clock += Duration::from_millis(20);
        }
        let level = if v < 2 { 20 + (i % 7) as u8 } else { 90 + (i % 30) as u8 };
        room.note(&users[v], StreamKind::Main, level, clock);
        if i % (voices * 12) == 0 && room.poll(clock).is_some() {
            lists += 1;
        }
    }
    let per_packet = started.elapsed().as_secs_f64() / packets as f64;
    println!("detector: {voices} voices, {packets} packets: {:.0} ns per audio packet (polls included), {lists} lists", per_packet * 1e9);
    // The level of a decoded 20 ms stereo block (960 samples a channel).
    let block: Vec<i16> = (0..1920).map(|i| ((i as f32 * 0.057).sin() * 3000.0) as i16).collect();
    let n = 200_000;
    let started = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        sum += dbov_i16(std::hint::black_box(&block)) as u64;
    }
    let per_block = started.elapsed().as_secs_f64() / n as f64;
    println!("measured level: {:.0} ns per 20 ms stereo block (dBov {})", per_block * 1e9, sum / n as u64);
}
