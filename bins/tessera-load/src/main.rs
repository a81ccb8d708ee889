//! `tessera-load`: M WHIP publishers and N WHEP subscribers against a running Tessera, from one
//! process, to measure the server rather than the clients.
//!
//! Publishers are str0m peers in RTP mode writing synthetic RTP (H.264-shaped video frames with
//! an IDR every GOP and on every keyframe request, and 20 ms audio packets); nothing is encoded.
//! Subscribers are str0m peers too, but only STUN, DTLS and RTCP go through str0m: RTP headers
//! are in the clear under SRTP, so each subscriber counts packets, bytes, sequence gaps and
//! interarrival jitter straight from the header, without decrypting. That keeps the tool far
//! cheaper than the server it loads; it reports its own CPU next to the server's to show it.

mod meeting;

use clap::Parser;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_rtc::str0m::change::{SdpAnswer, SdpPendingOffer};
use tessera_rtc::str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use tessera_rtc::str0m::net::{Protocol, Receive};
use tessera_rtc::str0m::rtp::{Extension, ExtensionValues, RtpWrite};
use tessera_rtc::str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

#[derive(Parser, Clone)]
#[command(about = "Load Tessera with WHIP publishers and WHEP subscribers")]
struct Args {
    /// Base URL of the server's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API key (tokens are minted per client through POST /v1/tokens); not needed with
    /// `--no-token`.
    #[arg(long, default_value = "", required_unless_present = "no_token")]
    api_key: String,
    /// Send no token (another server, e.g. SRS, side by side: its WHIP/WHEP need none).
    #[arg(long)]
    no_token: bool,
    /// Where publishers POST their offers: `{server}`, `{room}` and `{user}` are filled in,
    /// e.g. SRS's `{server}/rtc/v1/whip/?app={room}&stream={user}`.
    #[arg(long, default_value = "{server}/whip/{room}")]
    whip_url: String,
    /// Where subscribers POST theirs: also `{source}` (the publisher they watch), e.g. SRS's
    /// `{server}/rtc/v1/whep/?app={room}&stream={source}`.
    #[arg(long, default_value = "{server}/whep/{room}/{source}/main")]
    whep_url: String,
    /// With `--rtmp`: the RTMP app publishers connect to (`{room}` filled in), e.g. SRS's `{room}`.
    #[arg(long, default_value = "push/{room}")]
    rtmp_app: String,
    /// With `--rtmp`: the stream key they publish (`{user}`, `{token}`), e.g. SRS's `{user}`.
    #[arg(long, default_value = "{user}?token={token}")]
    rtmp_stream: String,
    #[arg(long, default_value = "load")]
    room: String,
    /// Spread the publishers over this many rooms (`<room>0`, `<room>1`, …; publisher p in
    /// room p mod N), each with its subscribers: rooms are what a server spreads over its
    /// media workers.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers, spread over the publishers.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Seconds of measurement after everyone connected.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long, default_value_t = 1500)]
    video_kbps: u64,
    #[arg(long, default_value_t = 30)]
    fps: u64,
    /// RTP payload bytes per video packet.
    #[arg(long, default_value_t = 1100)]
    packet_bytes: usize,
    /// Frames of varying size (±25 %, keyframes 3×) each split into packets of about equal size
    /// (within a byte, the larger last), as browsers' packetizers make them, instead of equal
    /// `--packet-bytes` packets: what batching by size (UDP GSO) meets from real publishers.
    #[arg(long)]
    browser_packets: bool,
    /// Publishers send simulcast: `h` (the video as configured) and `l` (a tenth of the rate, one
    /// packet a frame), each with its rid, as a browser's two-layer simulcast.
    #[arg(long)]
    simulcast: bool,
    /// Local address the clients bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: std::net::IpAddr,
    /// PID of the server, to report its CPU use from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Publish over RTMP to this address (host:port) instead of WHIP: H.264-shaped video and a
    /// real AAC tone, so the server's FLV parsing, packetization and AAC→Opus are measured.
    #[arg(long)]
    rtmp: Option<String>,
    /// Subscribers that negotiate at the same time (a connect storm); 1: one after another.
    /// `connect_s` in the report is from the first subscriber's offer to the last one's first
    /// media packet.
    #[arg(long, default_value_t = 1)]
    connect_parallel: usize,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
    /// A meeting of N participants over room signaling instead: each publishes and subscribes to
    /// all the others (`--publishers`/`--subscribers` are ignored).
    #[arg(long, default_value_t = 0)]
    meeting: usize,
    /// Meeting: custom messages (PRODUCT.md §8, 100 bytes, over the socket) each participant
    /// sends per second to the room.
    #[arg(long, default_value_t = 0)]
    custom_per_s: u32,
}

/// A WHIP/WHEP URL from its template.
fn fill(template: &str, args: &Args, room: &str, user: &str, source: &str) -> String {
    template.replace("{server}", &args.server).replace("{room}", room).replace("{user}", user).replace("{source}", source)
}

/// The room of publisher `p` (and of its subscribers).
fn room_of(args: &Args, p: usize) -> String {
    if args.rooms <= 1 {
        args.room.clone()
    } else {
        format!("{}{}", args.room, p % args.rooms)
    }
}

/// `mint` on a blocking thread (it waits on HTTP).
async fn mint_off_thread(args: &Args, room: &str, user: &str, role: u8) -> String {
    let (args, room, user) = (args.clone(), room.to_owned(), user.to_owned());
    tokio::task::spawn_blocking(move || mint(&args, &room, &user, role)).await.unwrap()
}

fn mint(args: &Args, room: &str, user: &str, role: u8) -> String {
    if args.no_token {
        return String::new();
    }
    let body = serde_json::json!({"room": room, "user": user, "role": role, "ttl_s": 3600});
    loop {
        let result = ureq::post(&format!("{}/v1/tokens", args.server)).set("Authorization", &format!("Bearer {}", args.api_key)).send_json(body.clone());
        match result {
            Ok(resp) => return resp.into_json::<serde_json::Value>().unwrap()["token"].as_str().unwrap().to_owned(),
            // The API allows 100 requests/s per key: wait as told.
            Err(ureq::Error::Status(429, resp)) => {
                let wait: u64 = resp.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(1);
                std::thread::sleep(Duration::from_secs(wait));
            }
            Err(e) => panic!("minting a token failed: {e}"),
        }
    }
}

/// `location` (absolute, or a path) against `base`.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin_end = base.find("://").map(|i| i + 3).and_then(|start| base[start..].find('/').map(|j| start + j)).unwrap_or(base.len());
    format!("{}{location}", &base[..origin_end])
}

/// The SDP answer, or `None` when the server refused for want of capacity (503). A 307/308 (a
/// cluster node sending the client to the room's node) is followed with the same offer, as
/// RFC 9725 asks of WHIP/WHEP clients.
fn post_sdp(url: &str, token: &str, sdp: &str) -> Option<String> {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut url = url.to_owned();
    for _ in 0..4 {
        let mut request = agent.post(&url).set("Content-Type", "application/sdp");
        if !token.is_empty() {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.send_string(sdp) {
            Ok(resp) if matches!(resp.status(), 307 | 308) => {
                let location = resp.header("Location").unwrap_or_else(|| panic!("POST {url}: a redirect without Location"));
                url = resolve(&url, location);
            }
            Ok(resp) => return Some(resp.into_string().unwrap()),
            Err(ureq::Error::Status(503, _)) => return None,
            Err(e) => panic!("POST {url} failed: {e}"),
        }
    }
    panic!("POST {url}: too many redirects")
}

/// A peer offering audio and video in `dir`: with its socket, mids, offer and pending change.
async fn offer_peer(args: &Args, dir: Direction) -> (Rtc, UdpSocket, Vec<Mid>, String, SdpPendingOffer) {
    let socket = UdpSocket::bind(SocketAddr::new(args.bind_ip, 0)).await.expect("bind");
    let local = socket.local_addr().unwrap();
    let mut config = Rtc::builder().set_rtp_mode(true).clear_codecs().enable_opus(true, false);
    if dir == Direction::RecvOnly {
        // Subscribers read RTP headers without str0m, so they send no transport-wide feedback:
        // they do not offer it either (a server would otherwise estimate, and pace at, a rate
        // nobody measures).
        config = config.clear_extension_map();
        for (id, ext) in [(1, Extension::AudioLevel), (2, Extension::AbsoluteSendTime), (4, Extension::RtpMid), (10, Extension::RtpStreamId), (11, Extension::RepairedRtpStreamId)]
        {
            config = config.set_extension(id, ext);
        }
    }
    config.codec_config().add_h264(108.into(), Some(109.into()), true, 0x42e01f);
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut change = rtc.sdp_api();
    let simulcast = (dir == Direction::SendOnly && args.simulcast).then(|| {
        let mut s = Simulcast::new();
        s.add_send_layer(SimulcastLayer::new("h"));
        s.add_send_layer(SimulcastLayer::new("l"));
        s
    });
    let mids = vec![change.add_media(MediaKind::Audio, dir, None, None, None), change.add_media(MediaKind::Video, dir, None, None, simulcast)];
    let (offer, pending) = change.apply().expect("an offer");
    (rtc, socket, mids, offer.to_sdp_string(), pending)
}

/// Creates a peer with the given media, negotiates it through `url` (WHIP/WHEP), and returns it
/// with its socket.
async fn connect(args: &Args, url: &str, token: &str, dir: Direction) -> Option<(Rtc, UdpSocket, Vec<Mid>)> {
    let (mut rtc, socket, mids, sdp, pending) = offer_peer(args, dir).await;
    let (url, token) = (url.to_owned(), token.to_owned());
    let answer = tokio::task::spawn_blocking(move || post_sdp(&url, &token, &sdp)).await.unwrap()?;
    let answer = SdpAnswer::from_sdp_string(&answer).expect("an SDP answer");
    rtc.sdp_api().accept_answer(pending, answer).expect("answer accepted");
    Some((rtc, socket, mids))
}

/// Runs `rtc` until `until`: feeds it datagrams and time, sends what it says. `on_rtp` sees raw
/// RTP datagrams instead of str0m (subscribers), with when each was read and when it arrived
/// (the kernel's stamp); `tick` runs every `period` (publishers).
async fn drive(
    mut rtc: Rtc,
    socket: UdpSocket,
    until: Instant,
    mut on_rtp: impl FnMut(&[u8], Instant, Instant),
    period: Option<Duration>,
    mut tick: impl FnMut(&mut Rtc, Instant, bool),
) {
    let local = socket.local_addr().unwrap();
    if period.is_none() {
        // A subscriber's RTP carries the kernel's arrival stamp: on_rtp sees when each packet
        // came as well as when this one-thread tool got to read it.
        let _ = tessera_udp::stamp_arrivals(&socket);
    }
    let mut buf = vec![0u8; 2048];
    let mut next_tick = Instant::now();
    let mut keyframe_wanted = true;
    loop {
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::KeyframeRequest(_))) => keyframe_wanted = true,
                Ok(Output::Event(_)) => {}
                Err(e) => {
                    eprintln!("peer failed: {e}");
                    return;
                }
            }
        };
        let now = Instant::now();
        if now >= until {
            return;
        }
        // A timeout that is already due (str0m's pacer asks for one right after media is
        // written) is handled at once rather than after the next timer tick.
        if timeout <= now {
            let _ = rtc.handle_input(Input::Timeout(now));
            continue;
        }
        let wake = match period {
            Some(_) => timeout.min(next_tick),
            None => timeout,
        }
        .min(until);
        tokio::select! {
            r = socket.async_io(tokio::io::Interest::READABLE, || tessera_udp::recv_stamped(&socket, &mut buf)) => {
                let Ok((n, source, stamp)) = r else { continue };
                let now = Instant::now();
                let lag = stamp.and_then(|s| std::time::SystemTime::now().duration_since(s).ok());
                let arrived = lag.and_then(|lag| now.checked_sub(lag)).unwrap_or(now);
                let data = &buf[..n];
                // RTP (not RTCP, whose second byte is a packet type 192-223) bypasses str0m.
                let is_rtp = n >= 12 && (128..=191).contains(&data[0]) && !(192..=223).contains(&data[1]);
                if is_rtp && period.is_none() {
                    on_rtp(data, now, arrived);
                    continue;
                }
                if let Ok(contents) = data.try_into() {
                    let _ = rtc.handle_input(Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: local, contents }));
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                let _ = rtc.handle_input(Input::Timeout(now));
                if let Some(p) = period {
                    if now >= next_tick && rtc.is_connected() {
                        tick(&mut rtc, now, std::mem::take(&mut keyframe_wanted));
                        next_tick += p;
                        if next_tick < now { next_tick = now + p; }
                    }
                }
            }
        }
    }
}

/// Publishes over RTMP like an encoder: FLV video tags shaped like H.264 (an IDR every 2 s) at
/// `fps`, and AAC frames of a tone at real time. Records each video frame's send time under its
/// 90 kHz timestamp, which the SFU keeps, for the latency measurement.
async fn rtmp_publish(addr: &str, app: &str, stream_key: &str, fps: u64, frame_bytes: usize, sent: Option<Arc<Mutex<HashMap<u32, Instant>>>>) -> Result<(), String> {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType};
    use rml_rtmp::time::RtmpTimestamp;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut hs = Handshake::new(PeerType::Client);
    stream.write_all(&hs.generate_outbound_p0_and_p1().map_err(|e| format!("{e:?}"))?).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let leftover = loop {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        match hs.process_bytes(&buf[..n]).map_err(|e| format!("{e:?}"))? {
            HandshakeProcessResult::InProgress { response_bytes } => stream.write_all(&response_bytes).await.map_err(|e| e.to_string())?,
            HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                stream.write_all(&response_bytes).await.map_err(|e| e.to_string())?;
                break remaining_bytes;
            }
        }
    };
    // Servers that derive the vhost and app from it (SRS) need the tcUrl.
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(format!("rtmp://{addr}/{app}"));
    let (mut session, results) = ClientSession::new(config).map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    let collect = |results: Vec<ClientSessionResult>, out: &mut Vec<u8>| -> Vec<ClientSessionEvent> {
        let mut events = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
                ClientSessionResult::RaisedEvent(e) => events.push(e),
                _ => {}
            }
        }
        events
    };
    collect(results, &mut out);
    if !leftover.is_empty() {
        let r = session.handle_input(&leftover).map_err(|e| format!("{e:?}"))?;
        collect(r, &mut out);
    }
    let r = session.request_connection(app.to_owned()).map_err(|e| format!("{e:?}"))?;
    collect(vec![r], &mut out);
    let mut connected = false;
    let mut publishing = false;
    while !publishing {
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("refused (connection closed)".into());
        }
        let results = session.handle_input(&buf[..n]).map_err(|e| format!("{e:?}"))?;
        for e in collect(results, &mut out) {
            match e {
                ClientSessionEvent::ConnectionRequestAccepted if !connected => {
                    connected = true;
                    let r = session.request_publishing(stream_key.to_owned(), PublishRequestType::Live).map_err(|e| format!("{e:?}"))?;
                    collect(vec![r], &mut out);
                }
                ClientSessionEvent::PublishRequestAccepted => publishing = true,
                ClientSessionEvent::ConnectionRequestRejected { description } => return Err(description),
                _ => {}
            }
        }
    }
    // Sequence headers: x264's SPS/PPS of a 1280x720 baseline stream (servers that parse them,
    // as SRS does, need a valid one; the frames themselves are filler) and the tone's AAC config.
    let (asc, aac) = tessera_transcode::aac_tone(48_000, 2, 470).map_err(|e| e.to_string())?;
    const SPS: [u8; 25] = [0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80];
    const PPS: [u8; 5] = [0x68, 0xcb, 0x83, 0xcb, 0x20];
    let mut video_header = vec![0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0, SPS.len() as u8];
    video_header.extend_from_slice(&SPS);
    video_header.extend_from_slice(&[1, 0, PPS.len() as u8]);
    video_header.extend_from_slice(&PPS);
    let mut audio_header = vec![0xaf, 0];
    audio_header.extend_from_slice(&asc);
    let send = |session: &mut ClientSession, out: &mut Vec<u8>, video: bool, data: Vec<u8>, ms: u32| -> Result<(), String> {
        let r = if video {
            session.publish_video_data(bytes::Bytes::from(data), RtmpTimestamp::new(ms), false)
        } else {
            session.publish_audio_data(bytes::Bytes::from(data), RtmpTimestamp::new(ms), false)
        }
        .map_err(|e| format!("{e:?}"))?;
        if let ClientSessionResult::OutboundResponse(p) = r {
            out.extend_from_slice(&p.bytes);
        }
        Ok(())
    };
    send(&mut session, &mut out, true, video_header, 0)?;
    send(&mut session, &mut out, false, audio_header, 0)?;
    let start = Instant::now();
    let (mut frame, mut audio_i) = (0u64, 0usize);
    let body = frame_bytes.max(16);
    loop {
        let video_due = start + Duration::from_micros(frame * 1_000_000 / fps);
        let audio_due = start + Duration::from_micros(audio_i as u64 * 1024 * 1_000_000 / 48_000);
        let next = video_due.min(audio_due);
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if video_due <= audio_due {
            let ms = (frame * 1000 / fps) as u32;
            let idr = frame % (2 * fps) == 0;
            let mut tag = vec![if idr { 0x17 } else { 0x27 }, 1, 0, 0, 0];
            tag.extend_from_slice(&(body as u32).to_be_bytes());
            tag.push(if idr { 0x65 } else { 0x41 });
            tag.extend(std::iter::repeat_n(0x5a, body - 1));
            if let Some(m) = &sent {
                let mut m = m.lock().unwrap();
                m.insert(ms.wrapping_mul(90), now);
                m.remove(&ms.wrapping_sub(10_000).wrapping_mul(90));
            }
            send(&mut session, &mut out, true, tag, ms)?;
            frame += 1;
        } else {
            let ms = (audio_i as u64 * 1024 * 1000 / 48_000) as u32;
            let mut tag = vec![0xaf, 1];
            tag.extend_from_slice(&aac[audio_i % aac.len()]);
            send(&mut session, &mut out, false, tag, ms)?;
            audio_i += 1;
        }
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
        // Drain acknowledgements and pings without blocking.
        while let Ok(n) = stream.try_read(&mut buf) {
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            let results = session.handle_input(&buf[..n]).map_err(|e| format!("{e:?}"))?;
            collect(results, &mut out);
        }
    }
}

/// Per-SSRC receive statistics from RTP headers (RFC 3550 §A.3 and §A.8).
#[derive(Default, Clone)]
struct StreamStats {
    packets: u64,
    bytes: u64,
    base_seq: Option<u32>,
    max_ext_seq: u32,
    last_transit: Option<f64>,
    jitter: f64,
    clock: f64,
}

impl StreamStats {
    fn add(&mut self, seq: u16, ts: u32, len: usize, arrival_s: f64, clock: f64) {
        self.packets += 1;
        self.bytes += len as u64;
        self.clock = clock;
        let base = *self.base_seq.get_or_insert(seq as u32);
        if self.packets == 1 {
            self.max_ext_seq = base;
        } else {
            let cycles = self.max_ext_seq & !0xffff;
            let mut ext = cycles | seq as u32;
            if ext + 0x8000 < self.max_ext_seq {
                ext += 0x10000;
            } else if ext > self.max_ext_seq + 0x8000 && ext >= 0x10000 {
                ext -= 0x10000;
            }
            self.max_ext_seq = self.max_ext_seq.max(ext);
        }
        let transit = arrival_s * clock - ts as f64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // Large steps are timestamp jumps (new frames share one timestamp per frame), not jitter.
            if d < clock {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.last_transit = Some(transit);
    }

    fn expected(&self) -> u64 {
        self.base_seq.map(|b| (self.max_ext_seq - b) as u64 + 1).unwrap_or(0)
    }
}

#[derive(Default, Clone)]
struct SubscriberStats {
    streams: HashMap<u32, StreamStats>,
    /// When its first RTP packet came (the connect storm's end).
    first_rtp: Option<Instant>,
    /// The server refused it (503): it is left out of the figures.
    refused: bool,
}

fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Seconds from the first subscriber's offer to the last one's first RTP packet (None: some
/// never got one).
static CONNECT_S: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();

fn main() {
    let args = Args::parse();
    // One thread for all clients: the point is to measure the server, and a single-threaded
    // client is easy to account for.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    // Clients connect one after another and stream from then on; measuring starts 3 s after the
    // last one is up and runs `duration` seconds. The tasks themselves are stopped at the end.
    let start: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let until = Instant::now() + Duration::from_secs(3600);
    let mut tasks = Vec::new();
    // Video RTP timestamp → when the publisher wrote it. The SFU keeps the first source's
    // timestamps, so a subscriber can tell each packet's trip time through the server.
    let sent: Arc<Mutex<HashMap<u32, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let latencies: Arc<Mutex<Trips>> = Arc::new(Mutex::new(Trips::default()));
    let frame_period = Duration::from_micros(1_000_000 / args.fps);
    let frame_bytes = (args.video_kbps * 1000 / 8 / args.fps) as usize;
    let packets_per_frame = frame_bytes.div_ceil(args.packet_bytes).max(1);

    if args.meeting > 0 {
        let (meeting_tasks, meeting_stats) = meeting::start(&args, until, frame_period, packets_per_frame, start.clone()).await;
        tasks = meeting_tasks;
        return measure(&args, tasks, meeting_stats, start, &latencies).await;
    }
    for p in 0..args.publishers {
        let user = format!("pub{p}");
        let room = room_of(&args, p);
        let token = mint_off_thread(&args, &room, &user, 20).await;
        if let Some(addr) = args.rtmp.clone() {
            let (fps, frame_bytes) = (args.fps, frame_bytes);
            let sent = if p == 0 { Some(sent.clone()) } else { None };
            let app = args.rtmp_app.replace("{room}", &room);
            let key = args.rtmp_stream.replace("{user}", &user).replace("{token}", &token);
            tasks.push(tokio::spawn(async move {
                if let Err(e) = rtmp_publish(&addr, &app, &key, fps, frame_bytes, sent).await {
                    eprintln!("RTMP publisher {user}: {e}");
                }
            }));
            continue;
        }
        let (rtc, socket, mids) = connect(&args, &fill(&args.whip_url, &args, &room, &user, ""), &token, Direction::SendOnly).await.expect("the publisher was refused (503)");
        let sent = (p == 0).then(|| sent.clone());
        let browser_frames = args.browser_packets.then_some(frame_bytes);
        let low_layer = args.simulcast.then_some((frame_bytes / 10).clamp(1, args.packet_bytes));
        tasks.push(spawn_publisher(rtc, socket, mids, until, frame_period, packets_per_frame, args.packet_bytes, args.fps, sent, browser_frames, low_layer));
    }

    let stats: Arc<Mutex<Vec<SubscriberStats>>> = Arc::new(Mutex::new(vec![SubscriberStats::default(); args.subscribers]));
    // Tokens are minted before the storm, as an app's backend hands each viewer its token with
    // the page: minted inside it, the API's 100 requests/s per key paced the storm (700 viewers
    // took ≥ 6 s of minting alone).
    let mut tokens = Vec::with_capacity(args.subscribers);
    for s in 0..args.subscribers {
        tokens.push(mint_off_thread(&args, &room_of(&args, s % args.publishers.max(1)), &format!("sub{s}"), 21).await);
    }
    let storm_start = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.connect_parallel.max(1)));
    let mut connecting = Vec::new();
    for (s, token) in tokens.into_iter().enumerate() {
        let (args, stats, sent, latencies, start, permits) = (args.clone(), stats.clone(), sent.clone(), latencies.clone(), start.clone(), permits.clone());
        let permit = permits.acquire_owned().await.unwrap();
        connecting.push(tokio::spawn(async move {
            let user = format!("sub{s}");
            let room = room_of(&args, s % args.publishers.max(1));
            let source = format!("pub{}", s % args.publishers.max(1));
            let connected = connect(&args, &fill(&args.whep_url, &args, &room, &user, &source), &token, Direction::RecvOnly).await;
            drop(permit);
            let Some((rtc, socket, _)) = connected else {
                // Refused (503 capacity_exceeded): counted, not measured.
                stats.lock().unwrap()[s].refused = true;
                return None;
            };
            let latency = (s % args.publishers.max(1) == 0).then(|| (sent.clone(), latencies.clone()));
            Some(spawn_subscriber(rtc, socket, until, stats, s, latency, start))
        }));
    }
    for c in connecting {
        tasks.extend(c.await.unwrap());
    }
    // Everyone negotiated; wait (up to 30 s) for each one's first media packet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && stats.lock().unwrap().iter().any(|s| !s.refused && s.first_rtp.is_none()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = stats.lock().unwrap().iter().filter(|s| !s.refused).map(|s| s.first_rtp).collect::<Option<Vec<_>>>().and_then(|v| v.into_iter().max());
    CONNECT_S.set(last.map(|t| t.duration_since(storm_start).as_secs_f64())).ok();

    measure(&args, tasks, stats, start, &latencies).await;
}

/// Measures the steady window (from 3 s after everyone is up, for `duration` seconds) and reports.
async fn measure(
    args: &Args,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<Mutex<Vec<SubscriberStats>>>,
    start: Arc<std::sync::OnceLock<Instant>>,
    latencies: &Mutex<Trips>,
) {
    let start_at = Instant::now() + Duration::from_secs(3);
    start.set(start_at).expect("set once");
    tokio::time::sleep_until(start_at.into()).await;
    let (server0, self0, t0) = (cpu_seconds(args.server_pid), cpu_seconds(None), Instant::now());
    tokio::time::sleep_until((start_at + Duration::from_secs(args.duration)).into()).await;
    let (server1, self1, elapsed) = (cpu_seconds(args.server_pid), cpu_seconds(None), t0.elapsed().as_secs_f64());
    for t in tasks {
        t.abort();
    }
    let mut trips = std::mem::take(&mut *latencies.lock().unwrap());
    trips.read.sort_by(|a, b| a.total_cmp(b));
    trips.arrived.sort_by(|a, b| a.total_cmp(b));
    report(args, &stats.lock().unwrap(), elapsed, server0.zip(server1).map(|(a, b)| b - a), self0.zip(self1).map(|(a, b)| b - a), &trips);
}

/// A browser-like frame: `mean` bytes ±25 % (a keyframe 3×, deterministic per frame number),
/// cut into the fewest packets of at most `max` bytes, their sizes within one byte.
fn browser_packet_sizes(mean: usize, frame: u64, keyframe: bool, max: usize) -> Vec<usize> {
    let r = (frame.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) >> 33) % 1000;
    let size = (mean as u64 * (750 + r / 2) / 1000) as usize * if keyframe { 3 } else { 1 };
    let n = size.div_ceil(max).max(1);
    (0..n).map(|i| size / n + usize::from(i >= n - size % n)).collect()
}

/// A synthetic H.264 packet payload of `size` bytes: a non-IDR slice, or the start of an IDR
/// one (what the SFU reads as a keyframe).
fn video_payload(size: usize, idr_start: bool) -> Vec<u8> {
    let mut payload = vec![0x41u8; size];
    if idr_start {
        payload[0] = 0x65;
        if size > 1 {
            payload[1] = 0x88;
        }
    }
    payload
}

/// A WHIP (or `pub`) publisher of synthetic H.264-shaped video and audio; `sent` records each
/// video frame's send time under its RTP timestamp (for the latency measurement).
#[allow(clippy::too_many_arguments)]
fn spawn_publisher(
    rtc: Rtc,
    socket: UdpSocket,
    mids: Vec<Mid>,
    until: Instant,
    frame_period: Duration,
    packets_per_frame: usize,
    packet_bytes: usize,
    fps: u64,
    sent: Option<Arc<Mutex<HashMap<u32, Instant>>>>,
    browser_frames: Option<usize>,
    low_layer: Option<usize>,
) -> tokio::task::JoinHandle<()> {
    let (audio_mid, video_mid) = (mids[0], mids[1]);
    tokio::spawn(async move {
        let mut seq_v: u64 = 1;
        let mut seq_a: u64 = 1;
        let mut frame: u64 = 0;
        let started = Instant::now();
        let mut audio_due = Duration::ZERO;
        let video = video_payload(packet_bytes, false);
        let idr = video_payload(packet_bytes, true);
        let audio = vec![0xfcu8; 120];
        let video: Arc<[u8]> = video.into();
        let idr: Arc<[u8]> = idr.into();
        let audio: Arc<[u8]> = audio.into();
        // In RTP mode the writer sets header extensions: the MID lets the server bind our SSRCs.
        let (mut ext_v, mut ext_a) = (ExtensionValues::default(), ExtensionValues::default());
        ext_v.mid = Some(video_mid);
        ext_a.mid = Some(audio_mid);
        // Simulcast: the configured video is the top layer "h"; "l" is one packet a frame.
        let (top_rid, low_rid) = (low_layer.map(|_| Rid::from("h")), Rid::from("l"));
        ext_v.rid = top_rid;
        let mut ext_low = ext_v.clone();
        ext_low.rid = Some(low_rid);
        let mut seq_low: u64 = 1;
        let tick = move |rtc: &mut Rtc, now: Instant, keyframe: bool| {
            let pt_v: Pt = 108.into();
            let pt_a: Pt = 111.into();
            let ts_v = (frame * 90_000 / fps) as u32;
            let gop = frame.is_multiple_of(2 * fps);
            if let Some(sent) = &sent {
                let mut m = sent.lock().unwrap();
                m.insert(ts_v, now);
                // Keep 10 s of frames.
                m.remove(&ts_v.wrapping_sub((10 * 90_000) as u32));
            }
            let mut api = rtc.direct_api();
            if let Some((bytes, tx)) = low_layer.and_then(|bytes| api.stream_tx_by_mid(video_mid, Some(low_rid)).map(|tx| (bytes, tx))) {
                let payload = video_payload(bytes, gop || keyframe);
                tx.write_rtp(RtpWrite::new(pt_v, seq_low.into(), ts_v, now, payload).marker(true).nackable(true).ext_vals(ext_low.clone()));
                seq_low += 1;
            }
            if let (Some(tx), Some(mean)) = (api.stream_tx_by_mid(video_mid, top_rid), browser_frames) {
                let sizes = browser_packet_sizes(mean, frame, gop || keyframe, packet_bytes);
                let n = sizes.len();
                for (i, size) in sizes.into_iter().enumerate() {
                    let payload = video_payload(size, (gop || keyframe) && i == 0);
                    tx.write_rtp(RtpWrite::new(pt_v, seq_v.into(), ts_v, now, payload).marker(i + 1 == n).nackable(true).ext_vals(ext_v.clone()));
                    seq_v += 1;
                }
            } else if let Some(tx) = api.stream_tx_by_mid(video_mid, top_rid) {
                for i in 0..packets_per_frame {
                    let payload = if (gop || keyframe) && i == 0 { idr.clone() } else { video.clone() };
                    tx.write_rtp(RtpWrite::new(pt_v, seq_v.into(), ts_v, now, payload).marker(i + 1 == packets_per_frame).nackable(true).ext_vals(ext_v.clone()));
                    seq_v += 1;
                }
            }
            // Audio: every 20 ms of elapsed time.
            let elapsed = now.duration_since(started);
            while audio_due <= elapsed {
                let ts_a = (audio_due.as_millis() as u64 * 48) as u32;
                if let Some(tx) = api.stream_tx_by_mid(audio_mid, None) {
                    tx.write_rtp(RtpWrite::new(pt_a, seq_a.into(), ts_a, now, audio.clone()).ext_vals(ext_a.clone()));
                }
                seq_a += 1;
                audio_due += Duration::from_millis(20);
            }
            frame += 1;
        };
        drive(rtc, socket, until, |_, _, _| {}, Some(frame_period), tick).await;
    })
}

/// Latency bookkeeping shared by the first publisher and its subscribers: frame send times by
/// RTP timestamp, and the trip times measured.
type Latency = (Arc<Mutex<HashMap<u32, Instant>>>, Arc<Mutex<Trips>>);

/// A subscriber's video timestamps against the publisher's. The SFU keeps a source's
/// timestamps, but a viewer that joins an ingest mid-GOP gets the cached GOP stamped as it is
/// sent, and its timestamps stay shifted by a constant from there on. The shift is learnt as
/// the one that maps three frames in a row onto the newest frame sent when each arrived (a
/// live frame arrives well within a frame interval; replayed ones do not agree).
#[derive(Default)]
struct TsShift {
    shift: u32,
    /// A shift seen, the frame it was last seen on, and on how many frames in a row.
    candidate: Option<(u32, u32, u8)>,
}

impl TsShift {
    /// When the frame with timestamp `ts` was sent, once `ts` maps onto a sent frame.
    fn sent_at(&mut self, ts: u32, sent: &HashMap<u32, Instant>) -> Option<Instant> {
        if let Some(t) = sent.get(&ts.wrapping_sub(self.shift)) {
            return Some(*t);
        }
        let newest = sent.iter().max_by_key(|(_, t)| **t).map(|(k, _)| *k)?;
        let seen = ts.wrapping_sub(newest);
        match &mut self.candidate {
            Some((shift, last, n)) if *shift == seen => {
                if *last != ts {
                    *last = ts;
                    *n += 1;
                }
                if *n >= 3 {
                    self.shift = seen;
                    self.candidate = None;
                    return sent.get(&newest).copied();
                }
            }
            _ => self.candidate = Some((seen, ts, 1)),
        }
        None
    }
}

/// Video packets' trips publisher → subscriber, µs: until the tool read each one, and until it
/// arrived at the subscriber's socket (the kernel's stamp). The difference is this
/// one-thread tool's own lag behind hundreds of sockets, not the server's.
#[derive(Default)]
struct Trips {
    read: Vec<f32>,
    arrived: Vec<f32>,
}

/// A subscriber that counts RTP straight from the headers into `stats[index]` once `start` is
/// set and passed.
fn spawn_subscriber(
    rtc: Rtc,
    socket: UdpSocket,
    until: Instant,
    stats: Arc<Mutex<Vec<SubscriberStats>>>,
    index: usize,
    latency: Option<Latency>,
    start: Arc<std::sync::OnceLock<Instant>>,
) -> tokio::task::JoinHandle<()> {
    let epoch = Instant::now();
    tokio::spawn(async move {
        let mut first = true;
        let mut shift = TsShift::default();
        let on_rtp = move |data: &[u8], now: Instant, arrived: Instant| {
            if std::mem::take(&mut first) {
                stats.lock().unwrap()[index].first_rtp.get_or_insert(now);
            }
            let pt = data[1] & 0x7f;
            let seq = u16::from_be_bytes([data[2], data[3]]);
            let ts = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
            let clock = if pt == 111 { 48_000.0 } else { 90_000.0 };
            // Matched from the first packet on (the shift is learnt before measuring starts).
            let sent_at = latency.as_ref().filter(|_| pt != 111).and_then(|(sent, _)| shift.sent_at(ts, &sent.lock().unwrap()));
            if start.get().is_none_or(|t| now < *t) {
                return;
            }
            if let (Some((_, latencies)), Some(t)) = (latency.as_ref(), sent_at) {
                let mut trips = latencies.lock().unwrap();
                trips.read.push(now.duration_since(t).as_secs_f32() * 1e6);
                trips.arrived.push(arrived.saturating_duration_since(t).as_secs_f32() * 1e6);
            }
            let mut all = stats.lock().unwrap();
            all[index].streams.entry(ssrc).or_default().add(seq, ts, data.len(), now.duration_since(epoch).as_secs_f64(), clock);
        };
        drive(rtc, socket, until, on_rtp, None, |_, _, _| {}).await;
    })
}

fn percentile(sorted: &[f32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i] as f64 / 1000.0)
}

fn report(args: &Args, subs: &[SubscriberStats], secs: f64, server_cpu: Option<f64>, self_cpu: Option<f64>, trips: &Trips) {
    let mut total_packets = 0u64;
    let mut rows = Vec::new();
    for s in subs.iter().filter(|s| !s.refused) {
        let packets: u64 = s.streams.values().map(|x| x.packets).sum();
        let bytes: u64 = s.streams.values().map(|x| x.bytes).sum();
        let expected: u64 = s.streams.values().map(|x| x.expected()).sum();
        let lost = expected.saturating_sub(packets);
        let loss = if expected > 0 { 100.0 * lost as f64 / expected as f64 } else { 100.0 };
        let jitter_ms = s.streams.values().filter(|x| x.clock == 90_000.0).map(|x| x.jitter / x.clock * 1000.0).fold(0.0, f64::max);
        total_packets += packets;
        rows.push((bytes as f64 * 8.0 / secs / 1000.0, loss, jitter_ms));
    }
    let pps = total_packets as f64 / secs;
    let server_cores = server_cpu.map(|c| c / secs);
    let per_core = server_cores.filter(|c| *c > 0.0).map(|c| pps / c);
    let min = |f: fn(&(f64, f64, f64)) -> f64| rows.iter().map(f).fold(f64::INFINITY, f64::min);
    let max = |f: fn(&(f64, f64, f64)) -> f64| rows.iter().map(f).fold(0.0, f64::max);
    let avg = |f: fn(&(f64, f64, f64)) -> f64| rows.iter().map(f).sum::<f64>() / rows.len().max(1) as f64;
    let json = serde_json::json!({
        "publishers": args.publishers, "subscribers": args.subscribers, "seconds": secs,
        "forwarded_pps": pps,
        "server_cpu_cores": server_cores, "server_pps_per_core": per_core,
        "load_tool_cpu_cores": self_cpu.map(|c| c / secs),
        "kbps": {"min": min(|r| r.0), "avg": avg(|r| r.0), "max": max(|r| r.0)},
        "loss_pct": {"min": min(|r| r.1), "avg": avg(|r| r.1), "max": max(|r| r.1)},
        "jitter_ms": {"min": min(|r| r.2), "avg": avg(|r| r.2), "max": max(|r| r.2)},
        "latency_ms": {"p50": percentile(&trips.read, 0.5), "p99": percentile(&trips.read, 0.99), "samples": trips.read.len()},
        "arrival_latency_ms": {"p50": percentile(&trips.arrived, 0.5), "p99": percentile(&trips.arrived, 0.99)},
        "custom": meeting::custom_summary(),
        "connect_s": CONNECT_S.get().copied().flatten(),
        "refused": subs.iter().filter(|s| s.refused).count(),
        "connect_parallel": args.connect_parallel,
    });
    if args.json {
        println!("{json}");
        return;
    }
    println!("subscriber  kbit/s   loss %  jitter ms");
    for (i, r) in rows.iter().enumerate() {
        println!("{:>10}  {:>7.0}  {:>6.2}  {:>9.2}", i, r.0, r.1, r.2);
    }
    println!("{json:#}");
}

#[cfg(test)]
mod tests {
    use super::{browser_packet_sizes, TsShift};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    /// A viewer that joined mid-GOP: the replayed frames carry stamps of their own, the live
    /// ones after them the source's plus a constant. From the third live frame on each is
    /// matched to when it was sent; the replayed ones never are.
    #[test]
    fn a_shifted_viewer_is_matched_to_the_frames_sent_once_three_live_frames_agree() {
        let t0 = Instant::now();
        let mut sent = HashMap::new();
        let mut shift = TsShift::default();
        // Frames 0..=40 sent 33 ms apart (RTP 3,000 apart); the viewer joins at frame 40.
        for n in 0..=40u32 {
            sent.insert(n * 3000, t0 + Duration::from_millis(33 * n as u64));
        }
        // The replay: frames 20..40 stamped 1,000 ticks apart from 7,000,000, all at once.
        for k in 0..20u32 {
            assert_eq!(shift.sent_at(7_000_000 + k * 1000, &sent), None, "replayed frame {k}");
        }
        // Live frames 41.. go on from the replay's last stamp: the source's plus a constant.
        let offset = 7_000_000u32 + 20 * 1000 - 41 * 3000;
        let mut matched = Vec::new();
        for n in 41..50u32 {
            sent.insert(n * 3000, t0 + Duration::from_millis(33 * n as u64));
            matched.push(shift.sent_at(n * 3000 + offset, &sent).is_some());
        }
        assert_eq!(matched, [false, false, true, true, true, true, true, true, true]);
        assert_eq!(shift.sent_at(45 * 3000 + offset, &sent), Some(t0 + Duration::from_millis(33 * 45)));
        // A viewer with the source's own stamps is matched from the first packet.
        assert_eq!(TsShift::default().sent_at(3000, &sent), Some(t0 + Duration::from_millis(33)));
    }

    /// A frame is cut into the fewest packets that fit, within a byte of each other, the larger
    /// last; sizes vary by frame and keyframes are larger.
    #[test]
    fn browser_packets_split_a_frame_about_equally() {
        let mut totals = std::collections::BTreeSet::new();
        for frame in 0..60 {
            let sizes = browser_packet_sizes(6250, frame, false, 1100);
            let total: usize = sizes.iter().sum();
            assert!((4687..=7813).contains(&total), "frame {frame}: {total} bytes");
            assert_eq!(sizes.len(), total.div_ceil(1100));
            assert!(sizes.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1), "{sizes:?}");
            totals.insert(total);
        }
        assert!(totals.len() > 30, "sizes vary by frame");
        let key: usize = browser_packet_sizes(6250, 0, true, 1100).iter().sum();
        assert!(key > 14_000, "{key}");
    }
}
