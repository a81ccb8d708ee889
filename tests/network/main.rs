//! Media quality on emulated networks (issue 17's test bed): a Chromium publisher sends three
//! simulcast layers (h 1280x720 ≈ 1,500 kbit/s, m 640x360 ≈ 500, l 320x180 ≈ 150) and a
//! Chromium viewer watches through a link emulated by `linkem` (rate caps with a drop-tail
//! queue, delay, jitter, random and burst loss, rate steps over time). The viewer's getStats()
//! is sampled every half second; each scenario is judged on what the viewer saw: picture size
//! over time, freezes, RTT, loss, concealed audio.
//!
//! The anchor is the same two browsers in a direct call under the same shaping (`Mode::Direct`,
//! Chromium's own congestion control end to end). Two short scenarios run as tests (a capped
//! viewer, a lossy link); the full set, side by side with the anchor, runs with `benches/net_quality.sh`
//! (an ignored test here).
//!
//! These tests run one at a time (two browsers and the server share two cores).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera_tests::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Sfu,
    Direct,
}

/// A link and what happens to it: `link` is applied before the viewer joins, each step at its
/// second after sampling starts.
struct Scenario {
    name: &'static str,
    /// The publisher's browser sits behind the link (its uplink is "up"), not the viewer's.
    publisher_shaped: bool,
    link: &'static [&'static str],
    steps: &'static [(f64, &'static str)],
    seconds: f64,
    /// Publishers in the room (more than one: a meeting, the first one speaking; the viewer
    /// joins with room.html).
    publishers: usize,
    /// The fake camera's picture size (the top simulcast layer's) and frame rate.
    camera: (&'static str, u32),
    /// The publishers' video codec: H264 (Chrome: one temporal layer) or VP8 (three per
    /// simulcast layer); `NET_CODEC` overrides it in the benchmark.
    codec: &'static str,
    /// The publishers send one encoding, not publish.html's three simulcast layers.
    single_layer: bool,
}

/// One getStats() sample of the viewer, `t` seconds after sampling started.
#[derive(Debug, Clone, Default)]
struct Sample {
    t: f64,
    height: u64,
    fps: f64,
    frames: u64,
    freeze_s: f64,
    video_bytes: f64,
    lost: f64,
    received: f64,
    rtt_ms: Option<f64>,
    jitter_buffer_ms: f64,
    audio_samples: f64,
    concealed: f64,
    /// The received audio's codec (`audio/red` when RED is on).
    audio_codec: String,
    /// How many times play.html started its session over (a lost connection).
    restarts: u64,
    /// A meeting: per publisher ("cam0", …) its picture.
    tracks: std::collections::BTreeMap<String, TrackSample>,
}

/// One received video track in a sample of a meeting.
#[derive(Debug, Clone, Default)]
struct TrackSample {
    height: u64,
    frames: u64,
    freeze_s: f64,
    bytes: f64,
}

struct Run {
    mode: Mode,
    samples: Vec<Sample>,
    link: Value,
    /// The viewer's downlink queueing delay (ms) every 10 ms, by seconds since sampling
    /// started (`linkem`'s `queue`).
    queued: Vec<(f64, f64)>,
    /// What the publisher sent: per layer its rid, picture size and kbit/s while sampled.
    publisher: Value,
    /// How many times publish.html published again as a new session (a lost connection).
    publisher_restarts: u64,
}

impl Run {
    fn at_or_after(&self, t: f64) -> &Sample {
        self.samples.iter().find(|s| s.t >= t).unwrap_or_else(|| self.samples.last().expect("samples"))
    }

    fn last(&self) -> &Sample {
        self.samples.last().expect("samples")
    }

    /// The first time the picture is at least `height` tall, from `from` on.
    fn first_reaching(&self, height: u64, from: f64) -> Option<f64> {
        self.samples.iter().find(|s| s.t >= from && s.height >= height).map(|s| s.t)
    }

    /// The first time the picture is shorter than `height`, from `from` on.
    fn first_below(&self, height: u64, from: f64) -> Option<f64> {
        self.samples.iter().find(|s| s.t >= from && s.height > 0 && s.height < height).map(|s| s.t)
    }

    /// The share of samples in `[from, to)` whose picture is exactly `height` tall.
    fn share_at(&self, height: u64, from: f64, to: f64) -> f64 {
        let w: Vec<_> = self.samples.iter().filter(|s| s.t >= from && s.t < to).collect();
        w.iter().filter(|s| s.height == height).count() as f64 / w.len().max(1) as f64
    }

    fn freeze_between(&self, from: f64, to: f64) -> f64 {
        self.at_or_after(to).freeze_s - self.at_or_after(from).freeze_s
    }

    /// The longest single freeze (Chromium adds a freeze's duration when it ends).
    fn longest_freeze(&self) -> f64 {
        self.samples.windows(2).map(|w| w[1].freeze_s - w[0].freeze_s).fold(0.0, f64::max)
    }

    fn loss_pct(&self, from: f64) -> f64 {
        let (a, b) = (self.at_or_after(from), self.last());
        let lost = (b.lost - a.lost).max(0.0);
        100.0 * lost / (lost + b.received - a.received).max(1.0)
    }

    fn concealed_pct(&self, from: f64) -> f64 {
        let (a, b) = (self.at_or_after(from), self.last());
        100.0 * (b.concealed - a.concealed) / (b.audio_samples - a.audio_samples).max(1.0)
    }

    /// The share of audio samples concealed over `[from, to]`, in %.
    fn concealed_between(&self, from: f64, to: f64) -> f64 {
        let (a, b) = (self.at_or_after(from), self.at_or_after(to));
        100.0 * (b.concealed - a.concealed) / (b.audio_samples - a.audio_samples).max(1.0)
    }

    /// Frames decoded a second over `[from, to]`.
    fn fps(&self, from: f64, to: f64) -> f64 {
        let (a, b) = (self.at_or_after(from), self.at_or_after(to));
        (b.frames as f64 - a.frames as f64) / (b.t - a.t).max(0.1)
    }

    fn kbps(&self, from: f64, to: f64) -> f64 {
        let (a, b) = (self.at_or_after(from), self.at_or_after(to));
        (b.video_bytes - a.video_bytes) * 8.0 / 1000.0 / (b.t - a.t).max(0.1)
    }

    /// RTT percentile (0–100) over samples from `from` on.
    fn rtt(&self, from: f64, pct: f64) -> f64 {
        percentile(self.samples.iter().filter(|s| s.t >= from).filter_map(|s| s.rtt_ms).collect(), pct)
    }

    /// Percentile (0–100) of the downlink's queueing delay in ms from `from` on: what the
    /// link adds to the unloaded round trip, sampled every 10 ms.
    fn queue_ms(&self, from: f64, pct: f64) -> f64 {
        percentile(self.queued.iter().filter(|(t, _)| *t >= from).map(|(_, q)| *q).collect(), pct)
    }

    /// Picture height each second, for the report.
    fn timeline(&self) -> String {
        heights_per_second(self.samples.iter().map(|s| (s.t, s.height)))
    }

    /// A meeting: the samples of one publisher's track.
    fn track(&self, name: &str) -> impl Iterator<Item = (f64, &TrackSample)> + '_ {
        let name = name.to_owned();
        self.samples.iter().filter_map(move |s| s.tracks.get(&name).map(|t| (s.t, t)))
    }

    /// A meeting: the publishers whose tracks the viewer received.
    fn track_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.samples.iter().flat_map(|s| s.tracks.keys().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// A meeting: one track's picture height each second.
    fn track_timeline(&self, name: &str) -> String {
        heights_per_second(self.track(name).map(|(t, s)| (t, s.height)))
    }

    /// A meeting: the median picture height of a track over `[from, to)` (0: none).
    fn track_height(&self, name: &str, from: f64, to: f64) -> u64 {
        let mut h: Vec<u64> = self.track(name).filter(|(t, _)| *t >= from && *t < to).map(|(_, s)| s.height).collect();
        h.sort();
        h.get(h.len() / 2).copied().unwrap_or(0)
    }

    /// A meeting: the fewest frames a track decoded in any `window` seconds from `from` on
    /// (a starved track decodes none).
    fn track_min_frames(&self, name: &str, from: f64, window: f64) -> u64 {
        let s: Vec<(f64, u64)> = self.track(name).filter(|(t, _)| *t >= from).map(|(t, x)| (t, x.frames)).collect();
        let mut least = u64::MAX;
        for (i, (t, f)) in s.iter().enumerate() {
            if let Some((_, g)) = s[i..].iter().find(|(u, _)| *u >= t + window) {
                least = least.min(g.saturating_sub(*f));
            }
        }
        if least == u64::MAX {
            0
        } else {
            least
        }
    }

    fn track_kbps(&self, name: &str, from: f64, to: f64) -> f64 {
        let s: Vec<(f64, &TrackSample)> = self.track(name).filter(|(t, _)| *t >= from && *t < to).collect();
        match (s.first(), s.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1.bytes - a.1.bytes) * 8.0 / 1000.0 / (b.0 - a.0),
            _ => 0.0,
        }
    }

    /// A meeting: per track (the first publisher speaks) its heights over time, median height
    /// and kbit/s from `from` on, freezes; then loss, audio and RTT over everything received.
    fn meeting_summary(&self, from: f64) -> String {
        let mut out = format!("{:?}:", self.mode);
        for name in self.track_names() {
            let last = self.track(&name).last().map(|(_, t)| t.clone()).unwrap_or_default();
            out += &format!(
                " {name}{}: heights/s [{}], median {} lines, {:.0} kbit/s, {} frames (fewest in 5 s: {}), freeze {:.2} s;",
                if name.ends_with('0') { " (speaker)" } else { "" },
                self.track_timeline(&name),
                self.track_height(&name, from, f64::MAX),
                self.track_kbps(&name, from, f64::MAX),
                last.frames,
                self.track_min_frames(&name, from, 5.0),
                last.freeze_s,
            );
        }
        out + &format!(
            " all: video {:.0} kbit/s; loss {:.1} %; concealed audio {:.1} %; RTT p50 {:.0} p95 {:.0} ms; link queue p50 {:.0} p95 {:.0} ms",
            self.kbps(from, f64::MAX),
            self.loss_pct(from),
            self.concealed_pct(from),
            self.rtt(from, 50.0),
            self.rtt(from, 95.0),
            self.queue_ms(from, 50.0),
            self.queue_ms(from, 95.0)
        )
    }

    fn summary(&self, from: f64) -> String {
        format!(
            "{:?}: heights/s [{}]; {} frames; video {:.0} kbit/s; freeze {:.2} s (longest {:.2}); loss {:.1} %; concealed audio {:.1} % ({}); RTT p50 {:.0} p95 {:.0} ms; link queue p50 {:.0} p95 {:.0} max {:.0} ms; jitter buffer {:.0} ms; fps {:.0}",
            self.mode,
            self.timeline(),
            self.last().frames,
            self.kbps(from, f64::MAX),
            self.last().freeze_s,
            self.longest_freeze(),
            self.loss_pct(from),
            self.concealed_pct(from),
            self.last().audio_codec,
            self.rtt(from, 50.0),
            self.rtt(from, 95.0),
            self.queue_ms(from, 50.0),
            self.queue_ms(from, 95.0),
            self.queue_ms(from, 100.0),
            self.last().jitter_buffer_ms,
            self.last().fps,
        )
    }
}

/// The `pct` percentile (0–100) of `values` (NaN for none).
fn percentile(mut values: Vec<f64>, pct: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    values[((values.len() - 1) as f64 * pct / 100.0).round() as usize]
}

/// The first picture height sampled in each second ("-": none decoded yet), for the reports.
fn heights_per_second(samples: impl Iterator<Item = (f64, u64)>) -> String {
    let mut out = Vec::new();
    let mut next = 0.0;
    for (t, height) in samples {
        if t >= next {
            out.push(if height == 0 { "-".to_string() } else { height.to_string() });
            next = t.floor() + 1.0;
        }
    }
    out.join(" ")
}

/// The camera of the one-publisher scenarios: picture size and frame rate.
const HD: (&str, u32) = ("1280x720", 30);

/// A noisy camera (2 s, looped by Chromium): at 1280x720 the top layer needs its full
/// 1,500 kbit/s, so a capped link cannot carry it.
fn camera(dir: &Path, (size, fps): (&str, u32)) -> PathBuf {
    let camera = dir.join("noisy.mjpeg");
    let noise = std::env::var("NET_NOISE").unwrap_or_else(|_| "25".into());
    let ok = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=s={size}:r={fps}"),
            "-vf",
            &format!("noise=alls={noise}:allf=t+u"),
            "-t",
            "2",
            "-q:v",
            "5",
            "-f",
            "mjpeg",
        ])
        .arg(&camera)
        .status()
        .expect("ffmpeg")
        .success();
    assert!(ok, "ffmpeg made the fake camera file");
    camera
}

/// A steady tone (2 s, looped by Chromium): the meeting's speaker, an active speaker the whole
/// run (Chromium's own fake microphone beeps 20 ms at a time, not speech to a level meter).
fn tone(dir: &Path) -> PathBuf {
    let tone = dir.join("tone.wav");
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "2", "-ac", "1"])
        .arg(&tone)
        .status()
        .expect("ffmpeg")
        .success();
    assert!(ok, "ffmpeg made the fake microphone file");
    tone
}

fn token(data: &Path, room: &str, user: &str, role: &str) -> String {
    let (status, out, err) = run_cli(&["token", "--data-dir", data.to_str().unwrap(), "--room", room, "--user", user, "--role", role]);
    assert!(status.success(), "{err}");
    out.trim().to_owned()
}

/// Runs one scenario in `mode` on a fresh emulated link and server.
fn run(scenario: &Scenario, mode: Mode) -> Run {
    let dir = TempDir::new(&format!("net-{}", scenario.name));
    let data = dir.path().join("data");
    let net = TestNet::emulated();
    let http = format!("{}:0", net.host_ip);
    let server = Server::start(&data, &["--http-addr", &http, "--rtc-udp-addr", &http]);
    let camera = camera(dir.path(), scenario.camera);
    for cmd in scenario.link {
        net.link(cmd);
    }
    // One publisher is "cam"; a meeting's are cam0, cam1, … and the viewer an audience member.
    let users: Vec<String> = if scenario.publishers == 1 { vec!["cam".into()] } else { (0..scenario.publishers).map(|i| format!("cam{i}")).collect() };
    let tokens: Vec<String> = users.iter().map(|u| token(&data, "net", u, "anchor")).collect();
    let viewer = token(&data, "net", "viewer", "audience");
    let mode_arg = if mode == Mode::Sfu { "sfu" } else { "direct" };
    let seconds = scenario.seconds.to_string();
    let script = repo_root().join("tests/clients/netbed.py");
    let mut child = Command::new(python())
        .arg(&script)
        .args([mode_arg, "--base", &server.base, "--viewer-ns", &net.ns, "--fake-video", camera.to_str().unwrap(), "--seconds", &seconds])
        .args(tokens.iter().flat_map(|t| ["--token", t.as_str()]))
        .args(["--publishers", &scenario.publishers.to_string(), "--fps", &scenario.camera.1.to_string()])
        .args(if scenario.publishers > 1 { vec!["--viewer-token".to_owned(), viewer.clone(), "--fake-audio".to_owned(), tone(dir.path()).display().to_string()] } else { vec![] })
        .args(["--shaped", if scenario.publisher_shaped { "publisher" } else { "viewer" }])
        .args(["--codec", &std::env::var("NET_CODEC").unwrap_or_else(|_| scenario.codec.into())])
        .args(scenario.single_layer.then_some("--single-layer"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netbed.py");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Steps run on the harness's clock from the moment sampling starts. The deadline leaves
    // room for the viewer's page load through a lossy link (netbed.py allows it 90 s).
    let deadline = Instant::now() + Duration::from_secs_f64(scenario.seconds + 150.0);
    let mut started: Option<Instant> = None;
    let mut steps = scenario.steps.iter().peekable();
    let mut last = None;
    while Instant::now() < deadline {
        if let (Some(at), Some((t, cmd))) = (started, steps.peek()) {
            if at.elapsed().as_secs_f64() >= *t {
                net.link(cmd);
                steps.next();
                continue;
            }
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) if line.contains("\"sampling\"") => {
                // The link's queue record starts with the samples.
                net.link("mark");
                started = Some(Instant::now());
            }
            Ok(line) if line.starts_with('{') => last = Some(line),
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let status = child.wait();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
    let out: Value = serde_json::from_str(last.as_deref().unwrap_or("{}")).unwrap_or_default();
    assert!(out.get("samples").is_some(), "netbed.py {mode_arg} ({status:?}): {out}\n{err}");
    if let Ok(dir) = std::env::var("NET_DUMP") {
        // The raw samples, for a closer look (benches/net_quality.sh keeps them).
        let _ = std::fs::write(Path::new(&dir).join(format!("{}-{mode_arg}.json", scenario.name)), out.to_string());
    }
    let start = out["start"].as_f64().expect("start");
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let samples: Vec<Sample> = out["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|v| Sample {
            t: num(v, "t") - start,
            height: v["height"].as_u64().unwrap_or(0),
            fps: num(v, "fps"),
            frames: v["framesDecoded"].as_u64().unwrap_or(0),
            freeze_s: num(v, "freezeSeconds"),
            video_bytes: num(v, "videoBytes"),
            lost: num(v, "videoLost"),
            received: num(v, "videoReceived"),
            rtt_ms: v["rttMs"].as_f64(),
            jitter_buffer_ms: num(v, "jitterBufferMs"),
            audio_samples: num(v, "audioSamples"),
            concealed: num(v, "concealedSamples"),
            audio_codec: v["audioCodec"].as_str().unwrap_or_default().to_owned(),
            restarts: v["restarts"].as_u64().unwrap_or(0),
            tracks: v["tracks"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, t)| {
                            // "cam0/main" through the SFU, "cam0" in a direct call.
                            let name = k.split('/').next().unwrap_or(k).to_owned();
                            (
                                name,
                                TrackSample {
                                    height: t["height"].as_u64().unwrap_or(0),
                                    frames: t["framesDecoded"].as_u64().unwrap_or(0),
                                    freeze_s: num(t, "freezeSeconds"),
                                    bytes: num(t, "videoBytes"),
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let link = net.link("stats");
    let queue = net.link("queue");
    let tick = queue["tick_ms"].as_f64().expect("tick_ms") / 1000.0;
    let queued = queue["down"].as_array().expect("down").iter().enumerate().map(|(i, q)| ((i + 1) as f64 * tick, q.as_f64().unwrap_or(0.0))).collect();
    assert_eq!(link["down"]["gso_frames"], 0, "the link is emulated per datagram: {link}");
    drop(server);
    if std::env::var_os("NET_PRINT").is_some() {
        for x in &samples {
            eprintln!(
                "sample abs={:.2} t={:.1} h={} fps={:.0} frames={} freeze={:.2} lost={} recv={} rtt={:?} jb={:.0}",
                (x.t + start) % 86400.0,
                x.t,
                x.height,
                x.fps,
                x.frames,
                x.freeze_s,
                x.lost,
                x.received,
                x.rtt_ms,
                x.jitter_buffer_ms
            );
        }
    }
    Run { mode, samples, link, queued, publisher: out["publisher"].clone(), publisher_restarts: out["publisher_restarts"].as_u64().unwrap_or(0) }
}

/// The link of the bandwidth scenarios: 20 ms each way (40 ms unloaded RTT).
const BASE_DELAY: &str = "both delay=20";

/// What the scenarios share unless they say otherwise: one publisher, the viewer behind the
/// link, 25 s.
const ONE: Scenario = Scenario { name: "", publisher_shaped: false, link: &[], steps: &[], seconds: 25.0, publishers: 1, camera: HD, codec: "H264", single_layer: false };

/// A viewer whose downlink carries 600 kbit/s (a 300 ms drop-tail queue, as a home router's):
/// the case. The middle layer (500 kbit/s of payload) and audio need about 600 kbit/s
/// on the wire with their headers, so it fills the link.
/// (H.264: publish.html asks for three temporal layers, so every other picture of each
/// simulcast layer is a non-reference one the SFU can drop.)
const CAPPED_600: Scenario = Scenario { name: "capped-600", link: &[BASE_DELAY, "down rate=600 queue=300"], ..ONE };

/// The same with a VP8 publisher (Chrome: three temporal layers per simulcast layer): the
/// middle layer without its top temporal layer (15 of its 30 fps, ~60 % of its rate) fits.
const CAPPED_600_VP8: Scenario = Scenario { name: "capped-600-vp8", codec: "VP8", ..CAPPED_600 };

/// The same at 700 kbit/s: the middle layer fits with room to spare, the top one does not.
const CAPPED_700: Scenario = Scenario { name: "capped-700", link: &[BASE_DELAY, "down rate=700 queue=300"], ..ONE };

/// 3 Mbit/s, 400 kbit/s from 10 s, 3 Mbit/s again from 20 s.
const RATE_STEP: Scenario =
    Scenario { name: "rate-step", link: &[BASE_DELAY, "down rate=3000 queue=300"], steps: &[(10.0, "down rate=400"), (20.0, "down rate=3000")], seconds: 35.0, ..ONE };

/// One encoding (no simulcast, as OBS publishes over WHIP) behind the rate step's link, the
/// thin part from 8 s to 18 s: at 400 kbit/s even the only layer does not fit.
const SINGLE_LAYER_STEP: Scenario =
    Scenario { name: "single-layer-step", steps: &[(8.0, "down rate=400"), (18.0, "down rate=3000")], seconds: 50.0, single_layer: true, ..RATE_STEP };

/// No loss, 50 ms RTT: the baseline of the loss scenarios (what freezes without loss is the
/// machine's, not the network's).
const CLEAN: Scenario = Scenario { name: "clean", link: &["both delay=25"], ..ONE };

/// 5 % random loss each way at 50 ms RTT.
const LOSS_5: Scenario = Scenario { name: "loss-5", link: &["both delay=25 loss=5"], ..ONE };

/// 10 % loss in bursts (mean 5 packets) toward the viewer at 50 ms RTT.
const BURST_10: Scenario = Scenario { name: "burst-10", link: &["both delay=25", "down burst=10:5"], ..ONE };

/// The publisher's uplink steps from 3 Mbit/s to 500 kbit/s at 10 s and back at 20 s: its
/// browser stops the top layer (and shrinks what it still sends); the viewer must be moved to
/// what still comes rather than wait for the top layer.
const UPLINK_STEP: Scenario = Scenario {
    publisher_shaped: true,
    name: "uplink-step",
    link: &[BASE_DELAY, "up rate=3000 queue=300"],
    steps: &[(10.0, "up rate=500"), (20.0, "up rate=3000")],
    seconds: 35.0,
    ..ONE
};

/// One viewer of four publishers (the first speaking) on a 1.2 Mbit/s downlink: the speaker's
/// middle layer (≈ 500 kbit/s) and the others' lowest (≈ 150 each) with audio fill it. The
/// cameras are 960x540 at 15 fps (layers 540, 270 and 135 lines high; Chromium sends three
/// layers from 960x540 up, two at 640x360): four 720p30 simulcast encoders overload two cores
/// (measured: 17-20 fps, a keyframe a second), which is not the network's doing.
const MEETING_1200: Scenario = Scenario { name: "meeting-1200", link: &[BASE_DELAY, "down rate=1200 queue=300"], seconds: 30.0, publishers: 4, camera: ("960x540", 15), ..ONE };

/// The same outage on the publisher's link.
const PUBLISHER_OUTAGE: Scenario = Scenario { name: "publisher-outage", publisher_shaped: true, ..OUTAGE };

/// The viewer's link goes dark both ways for 20 s (a train tunnel, a dropped Wi-Fi): longer
/// than the server waits for a silent peer (15 s), so the session is gone when the link
/// returns.
const OUTAGE: Scenario = Scenario { name: "outage", link: &[BASE_DELAY], steps: &[(3.0, "both loss=100"), (23.0, "both loss=0")], seconds: 40.0, ..ONE };

fn report(scenario: &Scenario, runs: &[Run]) {
    for r in runs {
        if scenario.publishers > 1 {
            println!("{} {}", scenario.name, r.meeting_summary(10.0));
        } else {
            println!("{} {}", scenario.name, r.summary(5.0));
        }
        if let [(down_at, _), (up_at, _)] = scenario.steps {
            // Rate steps: how soon the picture changed after each, and the freezes between.
            let since = |t: Option<f64>, at: f64| t.map_or("never".to_string(), |t| format!("{:.1} s", t - at));
            println!(
                "{} {:?} steps: smaller picture {} after the first; top layer again {} after the second; freeze between them {:.2} s",
                scenario.name,
                r.mode,
                since(r.first_below(720, *down_at), *down_at),
                since(r.first_reaching(720, *up_at), *up_at),
                r.freeze_between(down_at - 1.0, *up_at),
            );
        }
        println!("{} {:?} link: {}; publisher: {}", scenario.name, r.mode, r.link, r.publisher);
    }
}

/// One scenario through the SFU, reported (a CI test's run).
fn sfu_run(scenario: &Scenario) -> Run {
    let _g = serial();
    let r = run(scenario, Mode::Sfu);
    report(scenario, std::slice::from_ref(&r));
    r
}

/// The capped scenarios' goal: the middle layer (360 lines) within 10 s, kept (90 % of the
/// samples from 2 s after), never the top one (which does not fit); when it came.
fn middle_layer_within_10_s_and_kept(r: &Run, s: &str) -> f64 {
    let reached = r.first_reaching(360, 0.0).unwrap_or_else(|| panic!("never the middle layer: {s}"));
    assert!(reached <= 10.0, "the middle layer within 10 s, not {reached:.1} s: {s}");
    assert!(r.share_at(360, reached + 2.0, f64::MAX) >= 0.9, "and kept: {s}");
    assert!(r.share_at(720, 0.0, f64::MAX) < 0.05, "never the top layer, which does not fit: {s}");
    reached
}

/// A viewer of a single-layer publisher (OBS over WHIP) whose link thins under that layer: its
/// video pauses rather than filling the link with a stream it cannot carry, its audio plays on,
/// and the video comes back once the link does (issue 17).
#[test]
fn a_single_layer_stream_pauses_on_a_link_too_thin_for_it_and_comes_back_with_the_link() {
    let r = sfu_run(&SINGLE_LAYER_STEP);
    let s = r.summary(0.0);
    // Back: the first two seconds from the link's return with 20 fps decoded.
    let back = (18..48).map(|t| t as f64).find(|&t| r.fps(t, t + 2.0) >= 20.0);
    eprintln!(
        "single-layer-step: fps 3-8 s {:.1}, 11-18 s {:.1}; concealed audio 3-8 s {:.1} %, 11-18 s {:.1} %, 18-50 s {:.1} %; video back at {back:?} s; {}",
        r.fps(3.0, 8.0),
        r.fps(11.0, 18.0),
        r.concealed_between(3.0, 8.0),
        r.concealed_between(11.0, 18.0),
        r.concealed_between(18.0, 50.0),
        r.link
    );
    assert!(r.fps(3.0, 8.0) >= 20.0, "video before the step: {s}");
    // Before pausing, the SFU sent the whole encoding into 400 kbit/s: 2,300 packets dropped at
    // the link in 10 s and 46 % of the audio concealed from 11 to 18 s (measured: 0 % now).
    assert!(r.fps(11.0, 18.0) < 3.0, "video paused on the thin link: {s}");
    assert!(r.concealed_between(11.0, 18.0) < 5.0, "audio plays on while video is paused: {s}");
    // Back once a probe finds room near the encoding's rate (`allocator::RESUME_NEAR`; its
    // padding reads this link at 0.7-0.85 of what the encoding needs), probes 2 s apart while
    // paused (`allocator::RESUME_RETRY`): 3-6 s after the link in four runs. With 5 s between
    // them, 2-8 s in three runs here and 17 s once in CI; before `RESUME_NEAR`, 4-27 s in
    // fourteen runs (10 s the median): str0m's estimate stopped under the goal while only
    // padding flowed.
    assert!(back.is_some_and(|b| b <= 18.0 + 15.0), "video back at 20 fps within 15 s of the link: {s}");
}

#[test]
fn a_viewer_capped_at_700_kbits_gets_the_middle_layer_and_keeps_it() {
    let r = sfu_run(&CAPPED_700);
    let s = r.summary(5.0);
    let reached = middle_layer_within_10_s_and_kept(&r, &s);
    // Probing for the top layer must not fill the link's queue: the RTT stays near the
    // unloaded 40 ms, and nothing is lost. What the link adds to the round trip is its queue,
    // read every 10 ms (`Run::queue_ms`; Chromium's RTT, in the report, is a smoothed value of
    // a STUN check every 2.5 s, and read 30 ms over the link's queue in a loaded run). A
    // probe's clusters queue for a moment; a standing queue would be ~300 ms.
    assert!(r.queue_ms(reached, 50.0) <= 50.0, "median RTT within 50 ms of the unloaded RTT (the link's queue): {s}");
    assert!(r.queue_ms(reached, 95.0) <= 160.0, "no standing queue: {s}");
    assert!(r.loss_pct(reached) < 1.0, "{s}");
    assert!(r.freeze_between(reached, f64::MAX) < 0.5, "{s}");
}

/// The 600 kbit/s goal with the publisher's three temporal layers per simulcast layer (VP8's
/// default in Chrome; publish.html asks H.264 for them too).
fn middle_layer_at_half_its_frame_rate(scenario: &Scenario) {
    let r = sfu_run(scenario);
    let s = r.summary(5.0);
    let reached = middle_layer_within_10_s_and_kept(&r, &s);
    // Whole, the middle layer and audio overfill the link; without its top temporal layer it
    // fits: 15 fps or more (measured 15, and whole again at times), not the lowest layer.
    let fps = r.fps(10.0, f64::MAX);
    assert!(fps >= 12.0, "{fps:.1} fps decoded from 10 s: {s}");
    // No standing queue once settled: the median RTT within 50 ms of the unloaded 40 ms, read
    // as the link's queue (as above; a standing queue would be ~300 ms), and nothing lost or
    // frozen. Chromium's RTT p50 read 45-86 ms where the link's queue p50 was 10-24 ms (eight
    // runs), and 75 ms in a CI run that failed on it.
    assert!(r.queue_ms(10.0, 50.0) <= 50.0, "median RTT within 50 ms of the unloaded RTT (the link's queue): {s}");
    assert!(r.loss_pct(reached) < 1.0, "{s}");
    assert!(r.freeze_between(reached, f64::MAX) < 0.5, "{s}");
}

#[test]
fn a_vp8_viewer_capped_at_600_kbits_gets_the_middle_layer_at_half_its_frame_rate() {
    middle_layer_at_half_its_frame_rate(&CAPPED_600_VP8);
}

/// H.264 from OpenH264 with `L1T3`: every other picture is a non-reference one, which the SFU
/// drops for this viewer (before publish.html asked for the mode: the lowest layer after a
/// few seconds, with a freeze at the move).
#[test]
fn an_h264_viewer_capped_at_600_kbits_gets_the_middle_layer_at_half_its_frame_rate() {
    middle_layer_at_half_its_frame_rate(&CAPPED_600);
}

#[test]
fn five_percent_loss_each_way_is_repaired_audio_by_red_and_video_in_time() {
    let r = sfu_run(&LOSS_5);
    let s = r.summary(5.0);
    assert!(r.first_reaching(360, 0.0).is_some_and(|t| t <= 10.0), "a picture of at least 360 lines within 10 s: {s}");
    // The link's own count: the viewer's getStats loss is net of repairs (a resent copy counts
    // as received; it read 1.9 % in one CI run of this 5 % link).
    let (lost, frames) = (r.link["down"]["lost"].as_f64().unwrap_or(0.0), r.link["down"]["frames"].as_f64().unwrap_or(0.0));
    assert!(lost >= 0.03 * frames, "the link does lose what is sent to the viewer ({lost} of {frames} datagrams): {s}");
    // Without RED the viewer conceals about as much audio as is lost (5 %, measured); with it
    // each packet carries the one before, so only two losses in a row are concealed.
    assert!(r.concealed_pct(5.0) < 2.0, "audio concealment under 2 % with RED: {s}");
    // Retransmissions arrive within the playout delay the viewer is asked for, a lost resend
    // is covered by its copy: freezes are rare and short (measured after the first 5 s:
    // 0-0.21 s in 6 runs; 0-0.9 s with one copy and RTT + 60 ms; 0.5-2.0 s over the run
    // without the playout delay).
    assert!(r.longest_freeze() < 1.0, "no freeze of a second: {s}");
    assert!(r.last().freeze_s < 1.5, "{s}");
    assert!(r.freeze_between(5.0, f64::MAX) < 0.5, "under 0.5 s of freeze in the last 20 s: {s}");
}

/// Played before the outage, `restarts` new sessions, and the viewer plays again at the end.
fn assert_plays_again_after_the_outage(r: &Run, restarts: u64) {
    let s = r.summary(0.0);
    let frames_at = |t: f64| r.at_or_after(t).frames;
    // It played before the outage (at 3 s). Not how fast it started: under `make test`'s load
    // on two cores one run decoded 360 lines from 1 s on and still had fewer than 30 frames by
    // 3 s (Chromium's first second at a low frame rate).
    assert!(frames_at(3.0) > 10, "playing before the outage ({} frames at 3 s): {s}", frames_at(3.0));
    assert!(restarts >= 1, "started over: {s}");
    let end = r.last().t;
    let last_5s = frames_at(end).saturating_sub(frames_at(end - 5.0));
    assert!(last_5s > 30, "playing again at the end ({last_5s} frames in the last 5 s): {s}");
}

#[test]
fn a_player_whose_link_went_dark_starts_over_and_plays_again() {
    // Chromium's ICE does not come back from a session the server ended; play.html starts a
    // new one (measured: the restart 17 s into the outage, frames again 1.5 s after the link
    // returned; without it, never).
    let r = sfu_run(&OUTAGE);
    assert_plays_again_after_the_outage(&r, r.last().restarts);
}

#[test]
fn a_publisher_whose_link_went_dark_publishes_again_to_the_same_viewer() {
    // The server ended the silent publisher after 15 s; publish.html's ICE restart finds the
    // session gone and publishes the camera again; the viewer's session stays and plays it
    // (measured: ~3 s after the link returned).
    let r = sfu_run(&PUBLISHER_OUTAGE);
    assert_plays_again_after_the_outage(&r, r.publisher_restarts);
}

#[test]
fn a_viewer_of_four_on_1200_kbits_sees_the_speaker_best_and_nobody_starve() {
    let r = sfu_run(&MEETING_1200);
    let s = r.meeting_summary(10.0);
    let names = r.track_names();
    assert_eq!(names, ["cam0", "cam1", "cam2", "cam3"], "{s}");
    // The speaker's top layer (≈ 1.4 Mbit/s) does not fit; its middle one (≈ 350) does, beside
    // the others' lowest (≈ 150 each) and the audio; the others stay under the speaker's layer.
    // Measured: the middle layer 16-100 % of the time from 10 s on until 2026-12-06 (others
    // beside it overfilled the link, and the cut held every track down for 5 s), 65-100 % over
    // 7 runs since (a probe for its top layer, or its top layer's keyframe, still overfills the
    // link now and then).
    let from_10: Vec<&Sample> = r.samples.iter().filter(|x| x.t >= 10.0 && x.tracks.len() == 4).collect();
    let height = |x: &Sample, name: &str| x.tracks.get(name).map_or(0, |t| t.height);
    let share = |name: &str| from_10.iter().filter(|x| height(x, name) >= 270).count() as f64 / from_10.len().max(1) as f64;
    assert!(share("cam0") >= 0.1, "the speaker's middle layer: {s}");
    let above = from_10.iter().filter(|x| names[1..].iter().any(|o| height(x, o) > height(x, "cam0"))).count();
    assert!(above as f64 <= 0.1 * from_10.len() as f64, "another above the speaker in {above} of {} samples: {s}", from_10.len());
    for other in &names[1..] {
        // Paused video would decode nothing: every track keeps moving.
        // (the publishers run at 12-25 fps on two cores: 24-130 frames per 5 s measured).
        assert!(r.track_min_frames(other, 5.0, 5.0) >= 10, "{other} starves: {s}");
    }
    assert!(r.track_min_frames("cam0", 5.0, 5.0) >= 10, "{s}");
    assert!(r.loss_pct(10.0) < 2.0, "the four fit the link: {s}");
    // Probes and keyframes fill the 300 ms queue for moments (RTT p95 measured 83-338 ms), never
    // for good (p50 48-132 ms over 12 runs; a standing queue would be ~340 ms).
    assert!(r.rtt(10.0, 50.0) <= 200.0, "no standing queue: {s}");
}

/// Every scenario, the SFU beside the direct-call anchor (benches/net_quality.sh).
#[test]
#[ignore]
fn bench_scenarios_side_by_side_with_a_direct_call() {
    let _g = serial();
    let only = std::env::var("NET_SCENARIO").unwrap_or_default();
    for scenario in [&CAPPED_600, &CAPPED_600_VP8, &CAPPED_700, &RATE_STEP, &UPLINK_STEP, &CLEAN, &LOSS_5, &BURST_10, &MEETING_1200, &OUTAGE, &PUBLISHER_OUTAGE] {
        if !only.is_empty() && !only.split(',').any(|s| s == scenario.name) {
            continue;
        }
        // NET_MODES=sfu (or direct) runs one side only: repeated runs of a change.
        let modes = std::env::var("NET_MODES").unwrap_or_default();
        let runs: Vec<Run> =
            [Mode::Sfu, Mode::Direct].into_iter().filter(|m| modes.is_empty() || modes.eq_ignore_ascii_case(&format!("{m:?}"))).map(|m| run(scenario, m)).collect();
        report(scenario, &runs);
    }
}
