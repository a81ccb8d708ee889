//! `--meeting N`: a small all-to-all meeting through room signaling (`/v1/rtc`). Each of the N
//! participants joins over a WebSocket, publishes synthetic audio and video on its `pub`
//! connection, then subscribes to the N−1 others, answering the server's offers on its `sub`
//! connection. Signaling is done before media starts being counted, in a blocking thread per
//! participant that afterwards only pings; the media runs on the tool's single async thread.

use super::*;
use std::net::TcpStream;
use tessera_rtc::str0m::change::SdpOffer;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn ws_url(args: &Args) -> String {
    format!("{}/v1/rtc", args.server.replacen("http", "ws", 1))
}

fn send(ws: &mut Ws, v: serde_json::Value) {
    ws.send(Message::Text(v.to_string().into())).expect("signaling send");
}

/// The next JSON message of the given type (others are skipped); panics on an `error`.
fn next_of(ws: &mut Ws, kind: &str) -> serde_json::Value {
    loop {
        let Message::Text(t) = ws.read().expect("signaling read") else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
        if v["type"] == "error" {
            panic!("signaling error: {v}");
        }
        if v["type"] == kind {
            return v;
        }
    }
}

fn join(args: &Args, token: &str) -> Ws {
    let (mut ws, _) = tungstenite::connect(ws_url(args)).expect("signaling connect");
    send(&mut ws, serde_json::json!({"type": "join", "id": "j", "token": token, "auto_subscribe": false}));
    next_of(&mut ws, "joined");
    ws
}

/// A peer for the `sub` connection: it answers the server's offers.
async fn answerer(args: &Args) -> (Rtc, UdpSocket) {
    let socket = UdpSocket::bind(SocketAddr::new(args.bind_ip, 0)).await.expect("bind");
    let mut config = Rtc::builder().set_rtp_mode(true).clear_codecs().enable_opus(true, false);
    config.codec_config().add_h264(108.into(), Some(109.into()), true, 0x42e01f);
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(socket.local_addr().unwrap(), "udp").unwrap());
    (rtc, socket)
}

/// Subscribes to `others` and answers offers until every section is negotiated.
fn subscribe_all(ws: &mut Ws, rtc: &mut Rtc, others: &[String]) {
    for (i, user) in others.iter().enumerate() {
        send(ws, serde_json::json!({"type": "subscribe", "id": format!("s{i}"), "user": user, "stream": "main"}));
    }
    let want = 2 * others.len();
    loop {
        let offer = next_of(ws, "offer");
        let sdp = SdpOffer::from_sdp_string(offer["sdp"].as_str().unwrap()).expect("an SDP offer");
        let answer = rtc.sdp_api().accept_offer(sdp).expect("offer accepted");
        send(ws, serde_json::json!({"type": "answer", "pc": "sub", "sdp": answer.to_sdp_string()}));
        if offer["tracks"].as_array().map_or(0, |t| t.len()) >= want {
            return;
        }
    }
}

/// Custom messages seen by all participants: (sent, received, latencies in ms).
static CUSTOM: Mutex<(u64, u64, Vec<f64>)> = Mutex::new((0, 0, Vec::new()));

fn epoch_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// What `--custom-per-s` measured: messages sent and received, and the latency sender →
/// receiver (one machine, one clock).
pub fn custom_summary() -> serde_json::Value {
    let mut c = CUSTOM.lock().unwrap();
    c.2.sort_by(f64::total_cmp);
    let at = |q: f64| c.2.get(((c.2.len() as f64 * q) as usize).min(c.2.len().saturating_sub(1))).copied();
    serde_json::json!({"sent": c.0, "received": c.1, "latency_ms": {"p50": at(0.5), "p99": at(0.99)}})
}

/// Keeps a signaling socket alive (the server drops one silent for 15 s) and, with
/// `--custom-per-s`, sends custom messages stamped with the send time and reads the others'.
fn keep_alive(mut ws: Ws, until: Instant, custom_per_s: u32) {
    use base64::Engine;
    std::thread::spawn(move || {
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(if custom_per_s > 0 { 2 } else { 500 })));
        }
        let mut next_ping = Instant::now();
        let every = Duration::from_secs_f64(1.0 / custom_per_s.max(1) as f64);
        let mut next_custom = Instant::now();
        while Instant::now() < until {
            if Instant::now() >= next_ping {
                if ws.send(Message::Text(r#"{"type":"ping"}"#.into())).is_err() {
                    return;
                }
                next_ping += Duration::from_secs(5);
            }
            if custom_per_s > 0 && Instant::now() >= next_custom {
                next_custom += every;
                let mut payload = format!("{:.3}", epoch_ms()).into_bytes();
                payload.resize(100, b' ');
                let data = base64::engine::general_purpose::STANDARD.encode(&payload);
                if ws.send(Message::Text(serde_json::json!({"type": "custom", "cmd_id": 1, "data": data}).to_string().into())).is_err() {
                    return;
                }
                CUSTOM.lock().unwrap().0 += 1;
            }
            let Ok(Message::Text(t)) = ws.read() else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else { continue };
            if v["type"] == "custom" {
                let sent = v["data"]
                    .as_str()
                    .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.trim().parse::<f64>().ok());
                let mut c = CUSTOM.lock().unwrap();
                c.1 += 1;
                if let Some(sent) = sent {
                    c.2.push(epoch_ms() - sent);
                }
            }
        }
    });
}

/// Sets up the meeting; returns the tasks (publishers and subscribers) and the stats they fill.
pub async fn start(
    args: &Args,
    until: Instant,
    frame_period: Duration,
    packets_per_frame: usize,
    start: Arc<std::sync::OnceLock<Instant>>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Mutex<Vec<SubscriberStats>>>) {
    let n = args.meeting;
    let users: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let mut sockets = Vec::new();
    let mut tasks = Vec::new();
    for user in &users {
        let token = mint_off_thread(args, &args.room, user, 20).await;
        let a = args.clone();
        let mut ws = tokio::task::spawn_blocking(move || join(&a, &token)).await.unwrap();
        let (rtc, socket, mids, offer, pending) = offer_peer(args, Direction::SendOnly).await;
        let (ws_back, answer) = tokio::task::spawn_blocking(move || {
            send(&mut ws, serde_json::json!({"type": "publish", "id": "p", "stream": "main", "sdp": offer}));
            let answer = next_of(&mut ws, "answer")["sdp"].as_str().unwrap().to_owned();
            (ws, answer)
        })
        .await
        .unwrap();
        let mut rtc = rtc;
        rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).expect("an SDP answer")).expect("answer accepted");
        tasks.push(spawn_publisher(rtc, socket, mids, until, frame_period, packets_per_frame, args.packet_bytes, args.fps, None, None, None));
        sockets.push(ws_back);
    }
    // Everyone publishes; now everyone subscribes to everyone else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats: Arc<Mutex<Vec<SubscriberStats>>> = Arc::new(Mutex::new(vec![SubscriberStats::default(); n]));
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (mut rtc, socket) = answerer(args).await;
        let others: Vec<String> = users.iter().filter(|u| **u != users[i]).cloned().collect();
        let (ws, rtc_back) = tokio::task::spawn_blocking(move || {
            subscribe_all(&mut ws, &mut rtc, &others);
            (ws, rtc)
        })
        .await
        .unwrap();
        keep_alive(ws, until, args.custom_per_s);
        tasks.push(spawn_subscriber(rtc_back, socket, until, stats.clone(), i, None, start.clone()));
    }
    (tasks, stats)
}
