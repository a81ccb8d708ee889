//! Cluster mode (issue 16) with real components: Debian's `redis-server`, three `tessera serve`
//! nodes in three network namespaces on one bridge, Chromium publishing over WHIP through a node
//! that does not hold the room (a 307 to the one that does), aiortc viewers sent to the other
//! nodes, the REST API answering for the room from any node, and a node killed with `kill -9`:
//! the others drop it within 10 s and its room is placed again on a live node.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_tests::*;

/// `redis-server` on the bridge's address, nothing persisted; killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start(ip: &str, dir: &Path) -> Redis {
        // Each test's own bridge address: the port may be the same.
        let port = 16379 + (std::process::id() % 1000) as u16;
        let child = Command::new("redis-server")
            .args(["--bind", ip, "--port", &port.to_string(), "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt install redis-server; make test does)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {ip}:{port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { child, url: format!("redis://{ip}:{port}") }
    }

    /// `GET key` through `redis-cli` (what the cluster left in Redis), trimmed.
    fn get(&self, key: &str) -> String {
        let host: Vec<&str> = self.url.trim_start_matches("redis://").split(':').collect();
        let out = Command::new("redis-cli").args(["-h", host[0], "-p", host[1], "GET", key]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Node {
    id: String,
    data: PathBuf,
    server: Option<Server>,
    key: String,
}

impl Node {
    fn start(dir: &Path, id: &str, host: &(String, String), redis: &Redis) -> Node {
        Node::start_with(dir, id, host, redis, "")
    }

    /// `cluster` is more of the node's `[cluster]` table.
    fn start_with(dir: &Path, id: &str, (ns, ip): &(String, String), redis: &Redis, cluster: &str) -> Node {
        let data = dir.join(id);
        let config = dir.join(format!("{id}.toml"));
        // The cluster's defaults (2 s heartbeats, 6 s TTL) are what is tested.
        std::fs::write(&config, format!("[cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\n{cluster}\n", redis.url)).unwrap();
        let server = Server::start_in_netns(
            ns,
            &data,
            &["--config", config.to_str().unwrap(), "--http-addr", &format!("{ip}:8080"), "--rtc-udp-addr", &format!("{ip}:8443"), "--rtmp-addr", &format!("{ip}:1935")],
        );
        assert!(server.banner.contains(&format!("node '{id}'")), "{}", server.banner);
        let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
        Node { id: id.into(), data, server: Some(server), key }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    fn url(&self, path: &str) -> String {
        self.server().url(path)
    }

    fn nodes(&self) -> Vec<String> {
        let r = get(&self.url("/v1/cluster/nodes"), Some(&self.key));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["items"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect()
    }

    /// A labelled counter's value, 0 when it never counted.
    fn counter(&self, line_start: &str) -> f64 {
        let body = get(&self.url("/metrics"), None).body;
        body.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }
}

fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A viewer's token for `room`.
fn anchor_of(data: &Path, room: &str) -> String {
    token(data, room, "viewer")
}

fn assert_blue(r: &Value, who: &str) {
    assert!(r.get("error").is_none(), "{who}: {r}");
    assert!(r["frames"].as_u64().unwrap_or(0) >= 30, "{who} decoded too few frames: {r}");
    let rgb: Vec<u64> = r["mean_rgb"].as_array().unwrap_or_else(|| panic!("{who}: no picture: {r}")).iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(rgb[2] > 170 && rgb[0] < 70 && rgb[1] < 70, "{who} saw {rgb:?}, not the publisher's blue: {r}");
}

#[test]
fn three_nodes_share_a_room_through_redis_and_place_it_again_when_its_node_dies() {
    let _g = serial();
    let dir = TempDir::new("cluster");
    // Hosts 0-2: the nodes; host 3: the clients.
    let net = BridgeNet::new(4);
    let redis = Redis::start(&net.gateway, dir.path());
    let mut nodes: Vec<Node> = ["node-a", "node-b", "node-c"].iter().enumerate().map(|(i, id)| Node::start(dir.path(), id, &net.hosts[i], &redis)).collect();
    for n in &nodes {
        wait_until(Duration::from_secs(6), "every node sees the three", || (n.nodes().len() == 3).then_some(()));
    }
    // One app store across the cluster: a token minted from any node's data dir is valid on
    // every node, and each node's admin key works on the others.
    let anchor = token(&nodes[2].data, "r1", "cam");
    assert_eq!(get(&nodes[0].url("/v1/cluster/nodes"), Some(&nodes[2].key)).status, 200);

    // The app's webhook, set through one node, reaches every node (the shared app store).
    let hooks = WebhookReceiver::start_on(&net.gateway, dir.path(), "hookkey0123456789", &[]);
    hooks.subscribe(nodes[0].server(), &nodes[0].key, "hookkey0123456789");
    for n in &nodes {
        wait_until(Duration::from_secs(6), "every node has the webhook", || (get(&n.url("/v1/app"), Some(&n.key)).json()["webhook"]["url"] == hooks.url().as_str()).then_some(()));
    }
    let clients = net.client_host(3);
    let blue = dir.path().join("blue.y4m");
    let made =
        Command::new("ffmpeg").args(["-v", "error", "-f", "lavfi", "-i", "color=c=0x0000ff:s=640x360:r=15", "-t", "2", "-pix_fmt", "yuv420p", "-y"]).arg(&blue).status().unwrap();
    assert!(made.success());
    // Chromium publishes through node B's page and WHIP endpoint.
    let b = nodes[1].url("");
    let publisher =
        Client::start(&clients, "browser.py", &["publish", "--base", &b, "--room", "r1", "--token", &anchor, "--fake-video", blue.to_str().unwrap(), "--seconds", "14"]);
    let room = wait_until(Duration::from_secs(30), "room r1 listed through node C", || {
        let r = get(&nodes[2].url("/v1/rooms/r1"), Some(&nodes[2].key));
        let v = (r.status == 200).then(|| r.json())?;
        v["users"].as_array()?.iter().any(|u| u["user"] == "cam").then_some(v)
    });
    let owner = room["node"].as_str().unwrap().to_owned();
    let owner_index = nodes.iter().position(|n| n.id == owner).unwrap_or_else(|| panic!("room on an unknown node: {room}"));
    // A recording of r1 started through another node runs on the room's node, and any node
    // answers for it.
    let (entry, third) = {
        let others: Vec<&Node> = nodes.iter().filter(|n| n.id != owner).collect();
        (others[0], others[1])
    };
    let started = post_json(&entry.url("/v1/recordings"), Some(&entry.key), &serde_json::json!({"room": "r1", "format": "hls", "hls": {"segment_s": 2}}));
    assert!(started.status == 200 || started.status == 201, "{}", started.body);
    let rec = started.json()["id"].as_str().unwrap().to_owned();
    // Viewers on nodes B and C: each redirected (or served) to the room's node.
    let whep = |n: &Node| n.url("/whep/r1/cam/main");
    let on_b = Client::start(&clients, "aiortc_client.py", &["play", "--url", &whep(&nodes[1]), "--token", &anchor, "--seconds", "6"]);
    let on_c = Client::start(&clients, "aiortc_client.py", &["play", "--url", &whep(&nodes[2]), "--token", &anchor, "--seconds", "6"]);
    assert_blue(&on_b.finish(Duration::from_secs(40)), "viewer sent to node-b");
    assert_blue(&on_c.finish(Duration::from_secs(40)), "viewer sent to node-c");
    // Three entries (publish at B, plays at B and C), the room on one node: at least two
    // were redirected.
    let redirects: f64 = nodes.iter().map(|n| n.counter("tessera_cluster_routed_total{result=\"redirect\"}")).sum();
    assert!(redirects >= 2.0, "redirects {redirects}");
    // Any node lists the room, on its node.
    for n in &nodes {
        let list = get(&n.url("/v1/rooms"), Some(&n.key)).json();
        let items = list["items"].as_array().unwrap();
        assert!(items.iter().any(|r| r["room"] == "r1" && r["node"] == owner.as_str()), "{} lists {list}", n.id);
    }
    let seen = get(&third.url(&format!("/v1/recordings/{rec}")), Some(&third.key));
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(seen.json()["room"], "r1", "{}", seen.body);
    for n in &nodes {
        let list = get(&n.url("/v1/recordings"), Some(&n.key)).json();
        assert!(list["items"].as_array().unwrap().iter().any(|r| r["id"] == rec.as_str()), "{} lists {list}", n.id);
    }
    let stopped = request("DELETE", &third.url(&format!("/v1/recordings/{rec}")), Some(&third.key), None, &[]);
    assert!(stopped.status < 300, "{}", stopped.body);
    // The files are on the room's node: its data dir holds the playlist.
    let on_owner = wait_until(Duration::from_secs(10), "the recording's playlist on the room's node", || {
        let v = get(&nodes[owner_index].url(&format!("/v1/recordings/{rec}")), Some(&nodes[owner_index].key)).json();
        (v["state"] == "FINISHED").then_some(v)
    });
    // ...and play through any node: ffprobe reads the video playlist through the third node.
    let playlist =
        on_owner["files"].as_array().unwrap().iter().find(|f| f["track_type"] == "video" && f["file_name"].as_str().unwrap().ends_with(".m3u8")).expect("a video playlist");
    let url = format!("{}?token={}", third.url(playlist["url"].as_str().unwrap()), anchor);
    let probe = Command::new("ffprobe").args(["-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames,codec_name", "-of", "json", &url]).output().unwrap();
    let probed: Value = serde_json::from_slice(&probe.stdout).unwrap_or_else(|_| panic!("ffprobe: {}", String::from_utf8_lossy(&probe.stderr)));
    let frames: u64 = probed["streams"][0]["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(frames >= 60, "the recording played through {} has {frames} frames: {probed}", third.id);
    let p = publisher.finish(Duration::from_secs(60));
    assert_eq!(p["publish_state"], "connected", "{p}");

    // Drain a node that does not hold r1: it keeps serving requests but places no rooms, so
    // what enters there for a new room is carried to another node — a signaling WebSocket
    // (browsers do not follow redirects there) and an RTMP push (encoders cannot).
    let drained = (0..3).find(|i| *i != owner_index).unwrap();
    let r = request("POST", &nodes[owner_index].url(&format!("/v1/cluster/nodes/{}/drain", nodes[drained].id)), Some(&nodes[owner_index].key), None, &[]);
    assert_eq!(r.status, 202, "{}", r.body);
    let d = &nodes[drained];
    wait_until(Duration::from_secs(6), "the drained node says so", || {
        let v = get(&d.url("/v1/cluster/nodes"), Some(&d.key)).json();
        v["items"].as_array().unwrap().iter().any(|n| n["id"] == d.id.as_str() && n["state"] == "draining").then_some(())
    });
    // The operator's view: `tessera cluster nodes` on any node.
    let (status, out, err) = run_cli(&["cluster", "nodes", "--server", &nodes[owner_index].url(""), "--api-key", &nodes[owner_index].key]);
    assert!(status.success(), "{err}");
    assert_eq!(out.lines().count(), 4, "a header and three nodes:\n{out}");
    assert!(out.lines().any(|l| l.starts_with(&d.id) && l.contains("draining")), "{out}");
    assert!(out.lines().any(|l| l.starts_with(&format!("{owner} *")) && l.contains("active")), "{out}");
    let ws_token = token(&d.data, "r2", "wscam");
    let ws_url = d.url("/v1/rtc").replacen("http://", "ws://", 1);
    let ws = Client::start(&clients, "aiortc_client.py", &["ws-publish", "--url", &ws_url, "--token", &ws_token, "--seconds", "16"]);
    let rtmp_token = token(&d.data, "r3", "enc");
    let d_ip = &net.hosts[drained].1;
    let encoder = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "color=c=0x0000ff:s=640x360:r=30:d=20", "-f", "lavfi", "-i", "sine=frequency=440:duration=20"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-bf", "0", "-c:a", "aac", "-f", "flv"])
        .arg(format!("rtmp://{d_ip}:1935/push/r3/enc?token={rtmp_token}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let mut viewers = Vec::new();
    for (room, user) in [("r2", "wscam"), ("r3", "enc")] {
        let listed = wait_until(Duration::from_secs(20), &format!("{room} published through the drained node"), || {
            let r = get(&d.url(&format!("/v1/rooms/{room}")), Some(&d.key));
            (r.status == 200).then(|| r.json()).filter(|v| v["users"].as_array().is_some_and(|u| u.iter().any(|u| u["user"] == user)))
        });
        assert_ne!(listed["node"], d.id.as_str(), "a draining node got room {room}: {listed}");
        let play = d.url(&format!("/whep/{room}/{user}/main"));
        viewers.push((room, Client::start(&clients, "aiortc_client.py", &["play", "--url", &play, "--token", &anchor_of(&d.data, room), "--seconds", "5"])));
    }
    for (room, viewer) in viewers {
        assert_blue(&viewer.finish(Duration::from_secs(40)), &format!("viewer of {room} sent to the drained node"));
    }
    assert!(d.counter("tessera_cluster_routed_total{result=\"signaling\"}") >= 1.0);
    assert!(d.counter("tessera_cluster_routed_total{result=\"rtmp\"}") >= 1.0);
    let w = ws.finish(Duration::from_secs(40));
    assert!(w.get("error").is_none(), "signaling through the drained node: {w}");
    interrupt(encoder);

    // kill -9 the room's node: the others drop it within 10 s.
    let killed = Instant::now();
    nodes[owner_index].server.take().unwrap().crash();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != owner_index).collect();
    let seen_gone =
        wait_until(Duration::from_secs(10), "the killed node leaves the cluster", || survivors.iter().all(|i| !nodes[*i].nodes().contains(&owner)).then(|| killed.elapsed()));
    eprintln!("node {owner} killed; gone from the survivors' lists after {seen_gone:?}");
    // The room is placed again when a publisher comes back, through either survivor.
    let (entry, other) = (&nodes[survivors[1]], &nodes[survivors[0]]);
    let again = Client::start(&clients, "aiortc_client.py", &["publish", "--url", &entry.url("/whip/r1"), "--token", &anchor, "--seconds", "10"]);
    let room = wait_until(Duration::from_secs(20), "room r1 back, on a live node", || {
        let r = get(&other.url("/v1/rooms/r1"), Some(&other.key));
        (r.status == 200).then(|| r.json()).filter(|v| v["users"].as_array().is_some_and(|u| u.iter().any(|u| u["user"] == "cam")))
    });
    assert_ne!(room["node"], owner.as_str(), "{room}");
    let viewer = Client::start(&clients, "aiortc_client.py", &["play", "--url", &other.url("/whep/r1/cam/main"), "--token", &anchor, "--seconds", "5"]);
    assert_blue(&viewer.finish(Duration::from_secs(40)), "viewer after the failover");
    let p = again.finish(Duration::from_secs(40));
    assert!(p["published"].as_str().is_some_and(|l| l.starts_with("/whip/session/")), "{p}");
    // Webhooks: r1 was created twice (on its first node, then on the one it moved to), each
    // event delivered once, and the room's event clock shared through Redis continues across
    // nodes: every event of the second life sorts after the first life's.
    let events = hooks.wait_for(Duration::from_secs(15), "r1 created twice and ended", |e| {
        let r1: Vec<u64> = e.iter().filter(|e| e["EventInfo"]["RoomId"] == "r1").filter_map(|e| e["EventType"].as_u64()).collect();
        r1.iter().filter(|c| **c == 101).count() == 2 && r1.contains(&104)
    });
    let mut delivered = std::collections::HashMap::new();
    for r in hooks.requests().iter().filter(|r| r["status"].as_u64().is_some_and(|s| (200..300).contains(&s))) {
        *delivered.entry(r["event_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    assert!(delivered.values().all(|n| *n == 1), "an event delivered twice: {delivered:?}");
    let r1: Vec<&Value> = events.iter().filter(|e| e["EventInfo"]["RoomId"] == "r1").collect();
    // Sorted by EventMsTs, the room's life on its first node (created, cam entered, cam timed
    // out when its tab closed) comes before its life on the next (created again, cam entered).
    // (A 102 may close the first life: the room was empty for its 10 s before cam came back.)
    let mut rooms: Vec<u64> = r1.iter().filter(|e| e["EventGroupId"] == 1).map(|e| e["EventType"].as_u64().unwrap()).collect();
    if rooms.get(3) == Some(&102) {
        rooms.remove(3);
    }
    assert_eq!(rooms[..5], [101, 103, 104, 101, 103], "{rooms:?}");
    let clock = redis.get("tessera:clock:default/r1");
    let clock: i64 = clock.parse().unwrap_or_else(|_| panic!("no shared clock for r1: {clock:?}"));
    let last = r1.iter().map(|e| e["EventInfo"]["EventMsTs"].as_i64().unwrap()).max().unwrap();
    assert!(clock >= last, "the shared clock {clock} is behind the last event {last}");
    nodes.clear();
    drop(redis);
}

/// How a test's publisher sends.
enum Publisher {
    /// aiortc, one 640x360 blue encoding.
    Aiortc,
    /// Chromium, three simulcast layers of a 1280x720 blue camera.
    ChromiumSimulcast,
}

/// Two nodes (`cluster` more of each one's `[cluster]`), and a publisher of `room` through the
/// first for `seconds`: (nodes, publisher, its token, the room's node's index).
fn two_nodes_and_a_publisher(dir: &Path, net: &BridgeNet, redis: &Redis, cluster: &str, room: &str, seconds: &str, how: Publisher) -> (Vec<Node>, Client, String, usize) {
    let nodes: Vec<Node> = ["node-a", "node-b"].iter().enumerate().map(|(i, id)| Node::start_with(dir, id, &net.hosts[i], redis, cluster)).collect();
    for n in &nodes {
        wait_until(Duration::from_secs(6), "both nodes see each other", || (n.nodes().len() == 2).then_some(()));
    }
    let anchor = token(&nodes[0].data, room, "cam");
    let publisher = match how {
        Publisher::Aiortc => {
            Client::start(&net.client_host(2), "aiortc_client.py", &["publish", "--url", &nodes[0].url(&format!("/whip/{room}")), "--token", &anchor, "--seconds", seconds])
        }
        Publisher::ChromiumSimulcast => {
            let blue = dir.join("blue720.y4m");
            let made = Command::new("ffmpeg")
                .args(["-v", "error", "-f", "lavfi", "-i", "color=c=0x0000ff:s=1280x720:r=30", "-t", "2", "-pix_fmt", "yuv420p", "-y"])
                .arg(&blue)
                .status()
                .unwrap();
            assert!(made.success());
            let args = ["publish", "--base", &nodes[0].url(""), "--room", room, "--token", &anchor, "--simulcast", "--degradation", "maintain-resolution"];
            let args: Vec<&str> = args.into_iter().chain(["--fake-video", blue.to_str().unwrap(), "--seconds", seconds]).collect();
            Client::start(&net.client_host(2), "browser.py", &args)
        }
    };
    let listed = wait_until(Duration::from_secs(30), &format!("room {room} published"), || {
        let r = get(&nodes[1].url(&format!("/v1/rooms/{room}")), Some(&nodes[1].key));
        (r.status == 200).then(|| r.json()).filter(|v| v["users"].as_array().is_some_and(|u| u.iter().any(|u| u["user"] == "cam")))
    });
    let owner = nodes.iter().position(|n| listed["node"] == n.id.as_str()).expect("the room's node");
    (nodes, publisher, anchor, owner)
}

#[test]
fn viewers_beyond_a_full_node_are_served_by_another_through_the_relay() {
    let _g = serial();
    let dir = TempDir::new("cluster-relay");
    let net = BridgeNet::new(3);
    let redis = Redis::start(&net.gateway, dir.path());
    // Each node takes one viewer: the second viewer of a room is past its node's capacity.
    let (nodes, publisher, anchor, owner) = two_nodes_and_a_publisher(dir.path(), &net, &redis, "max_viewers_per_node = 1", "big", "40", Publisher::ChromiumSimulcast);
    let clients = net.client_host(2);
    let (owner, other) = (&nodes[owner], &nodes[1 - owner]);
    let whep = "/whep/big/cam/main";
    let first = Client::start(&clients, "aiortc_client.py", &["play", "--url", &other.url(whep), "--token", &anchor, "--seconds", "20"]);
    // The room's node reports its viewer with its next heartbeat: it is full then.
    wait_until(Duration::from_secs(10), "the room's node full", || {
        let v = get(&other.url("/v1/cluster/nodes"), Some(&other.key)).json();
        v["items"].as_array().unwrap().iter().any(|n| n["id"] == owner.id.as_str() && n["load"]["viewers"].as_u64() >= Some(1)).then_some(())
    });
    // The next viewer, sent to the room's own node, is served by the other node from a relay.
    // It asks for the lowest simulcast layer: the relay carries every layer, so the edge has it
    // (its keyframe asked of the publisher through the relay).
    let low = format!("{whep}?quality=l");
    let second = Client::start(&clients, "aiortc_client.py", &["play", "--url", &owner.url(&low), "--token", &anchor, "--seconds", "6"]);
    let r = second.finish(Duration::from_secs(40));
    assert_blue(&r, "the viewer past the full node");
    assert!(r["width"].as_u64().unwrap() <= 640, "the edge's viewer gets the low layer it asked for: {}x{}", r["width"], r["height"]);
    assert!(other.counter("tessera_cluster_routed_total{result=\"edge\"}") >= 1.0, "the other node served it as an edge");
    // Its first picture came soon: the edge's keyframe request reached the publisher.
    let times: Vec<f64> = r["frame_times"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    assert!(times.len() >= 60, "{} frames in 6 s", times.len());
    let first = first.finish(Duration::from_secs(40));
    assert_blue(&first, "the first viewer");
    assert_eq!(first["width"].as_u64(), Some(1280), "the room's node's viewer gets the top layer: {}x{}", first["width"], first["height"]);
    // The relay came over HTTP/2 (the relay client's unit test shows a node pair's rooms and
    // requests sharing its one connection).
    let logs = owner.server.as_ref().unwrap().logs();
    let relay = logs.iter().find(|l| l.contains("relaying the room to another node")).unwrap_or_else(|| panic!("no relay in the room's node's log"));
    assert!(relay.contains("version=HTTP/2.0") && relay.contains("edge="), "{relay}");
    // The room is one room, listed on its node by every node (the relay's copy is not a room).
    for n in &nodes {
        let list = get(&n.url("/v1/rooms"), Some(&n.key)).json();
        let entries: Vec<&Value> = list["items"].as_array().unwrap().iter().filter(|r| r["room"] == "big").collect();
        assert_eq!(entries.len(), 1, "{} lists {list}", n.id);
        assert_eq!(entries[0]["node"], owner.id.as_str());
    }
    let p = publisher.finish(Duration::from_secs(60));
    assert!(p.get("error").is_none(), "{p}");
    drop(nodes);
    drop(redis);
}

/// Recording `rec`, stopped through the node at `base`, finishes there, and its continuation
/// after a takeover (the `ha1_` video playlist) plays through that node.
fn assert_continued_recording_plays(base: &str, key: &str, rec: &str, anchor: &str) {
    let done = wait_until(Duration::from_secs(10), "the recording finished", || {
        let v = get(&format!("{base}/v1/recordings/{rec}"), Some(key)).json();
        (v["state"] == "FINISHED").then_some(v)
    });
    let files = done["files"].as_array().unwrap();
    let playlist = files
        .iter()
        .find(|f| f["track_type"] == "video" && f["file_name"].as_str().is_some_and(|n| n.starts_with("ha1_") && n.ends_with(".m3u8")))
        .unwrap_or_else(|| panic!("no ha1_ video playlist: {done}"));
    let url = format!("{base}{}?token={anchor}", playlist["url"].as_str().unwrap());
    assert!(video_frames(&url) >= 60, "the continued recording plays: {} frames", video_frames(&url));
}

/// Video frames ffprobe decodes in `url` (a file or a URL).
fn video_frames(url: &str) -> u64 {
    let out =
        Command::new("ffprobe").args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "json", url]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["streams"][0]["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn a_dead_nodes_recording_and_relay_go_on_on_another_node() {
    let _g = serial();
    let dir = TempDir::new("cluster-takeover");
    let net = BridgeNet::new(3);
    let redis = Redis::start(&net.gateway, dir.path());
    let (mut nodes, publisher, anchor, owner_index) = two_nodes_and_a_publisher(dir.path(), &net, &redis, "", "show", "60", Publisher::Aiortc);
    let clients = net.client_host(2);
    let survivor = 1 - owner_index;
    let (s_url, s_key) = (nodes[survivor].url(""), nodes[survivor].key.clone());
    // The app's webhook goes to a receiver that can be made to refuse (503 while the file says so).
    let refusing = dir.path().join("hook-status");
    let hooks = WebhookReceiver::start_on(&net.gateway, dir.path(), "hookkey0123456789", &["--status-file", refusing.to_str().unwrap()]);
    hooks.subscribe(nodes[survivor].server(), &s_key, "hookkey0123456789");
    for n in &nodes {
        wait_until(Duration::from_secs(6), "every node has the webhook", || (get(&n.url("/v1/app"), Some(&n.key)).json()["webhook"]["url"] == hooks.url().as_str()).then_some(()));
    }
    // A recording and a relay of the room, started through the other node: they run on the
    // room's node.
    let cdn_port = 19350 + (std::process::id() % 500) as u16;
    let cdn_url = format!("rtmp://{}:{cdn_port}/live/key", net.gateway);
    let first_cdn = rtmp_listener(&net.gateway, cdn_port, &dir.path().join("first.flv"));
    std::thread::sleep(Duration::from_millis(500));
    let rec = post_json(&format!("{s_url}/v1/recordings"), Some(&s_key), &serde_json::json!({"room": "show", "format": "hls", "hls": {"segment_s": 2}, "max_idle_time": 120}));
    assert!(rec.status < 300, "{}", rec.body);
    let rec = rec.json()["id"].as_str().unwrap().to_owned();
    let relay = post_json(&format!("{s_url}/v1/relays"), Some(&s_key), &serde_json::json!({"room": "show", "source": {"user": "cam"}, "urls": [&cdn_url], "max_idle_time": 120}));
    assert!(relay.status < 300, "{}", relay.body);
    let relay = relay.json()["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(15), "the relay running", || {
        let v = get(&format!("{s_url}/v1/relays/{relay}"), Some(&s_key)).json();
        (v["urls"][0]["status"] == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(6));

    // A viewer enters on the room's node while the receiver refuses: its 103 waits in that
    // node's outbox when the node dies.
    std::fs::write(&refusing, "503").unwrap();
    let fan = token(&nodes[owner_index].data, "show", "fan");
    let viewer = Client::start(&clients, "aiortc_client.py", &["play", "--url", &nodes[owner_index].url("/whep/show/cam/main"), "--token", &fan, "--seconds", "2"]);
    let entered_fan = |r: &Value| r["body"]["EventType"] == 103 && r["body"]["EventInfo"]["UserId"] == "fan";
    let refused = wait_until(Duration::from_secs(20), "fan's entry refused by the receiver", || hooks.requests().into_iter().find(|r| entered_fan(r) && r["status"] == 503));
    let _ = viewer.finish(Duration::from_secs(30));

    // kill -9 the room's node: the other claims its tasks and runs them.
    let killed = Instant::now();
    nodes[owner_index].server.take().unwrap().crash();
    std::fs::remove_file(&refusing).unwrap();
    interrupt(first_cdn);
    let second_flv = dir.path().join("second.flv");
    let second_cdn = rtmp_listener(&net.gateway, cdn_port, &second_flv);
    let taken = wait_until(Duration::from_secs(15), "the recording running on the survivor", || {
        let r = get(&format!("{s_url}/v1/recordings/{rec}"), Some(&s_key));
        (r.status == 200 && r.json()["state"] != "FINISHED").then(|| killed.elapsed())
    });
    eprintln!("tasks taken over {taken:?} after the kill");
    assert!(taken <= Duration::from_secs(10), "taken over after {taken:?}");
    // The relay is taken over in the same round, a moment after or before the recording.
    let relay_taken =
        wait_until(Duration::from_secs(10), "the relay on the survivor", || (get(&format!("{s_url}/v1/relays/{relay}"), Some(&s_key)).status == 200).then(|| killed.elapsed()));
    assert!(relay_taken <= Duration::from_secs(10), "relay taken over after {relay_taken:?}");
    // The dead node's undelivered event is delivered by the survivor, under its id, once.
    let delivered = wait_until(Duration::from_secs(40), "fan's entry delivered after the kill", || {
        hooks.requests().into_iter().find(|r| r["event_id"] == refused["event_id"] && r["status"].as_u64().is_some_and(|s| (200..300).contains(&s)))
    });
    assert!(delivered["attempt"].as_u64() > refused["attempt"].as_u64(), "its attempts continued: {delivered}");
    let logs = nodes[survivor].server.as_ref().unwrap().logs();
    assert!(logs.iter().any(|l| l.contains("webhook event taken over from a node that died")), "the survivor delivered it");
    // The publisher comes back (through the survivor, which now holds the room).
    drop(publisher);
    let again = Client::start(&clients, "aiortc_client.py", &["publish", "--url", &format!("{s_url}/whip/show"), "--token", &anchor, "--seconds", "12"]);
    wait_until(Duration::from_secs(25), "the relay running again", || {
        let v = get(&format!("{s_url}/v1/relays/{relay}"), Some(&s_key)).json();
        (v["urls"][0]["status"] == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(7));
    let stopped = request("DELETE", &format!("{s_url}/v1/recordings/{rec}"), Some(&s_key), None, &[]);
    assert!(stopped.status < 300, "{}", stopped.body);
    let _ = request("DELETE", &format!("{s_url}/v1/relays/{relay}"), Some(&s_key), None, &[]);
    let _ = again.finish(Duration::from_secs(30));
    interrupt(second_cdn);
    // The CDN got the stream again from the survivor.
    assert!(video_frames(second_flv.to_str().unwrap()) >= 30, "the CDN's second connection: {} frames", video_frames(second_flv.to_str().unwrap()));
    // The recording went on in ha1_ files on the survivor, and they play.
    assert_continued_recording_plays(&s_url, &s_key, &rec, &anchor);
    // The dead node comes back with its data dir: what the survivor took over (the tasks, the
    // undelivered event) is not run or delivered again there.
    let outbox_file = nodes[owner_index].data.join("outbox").join(format!("{}.json", refused["event_id"].as_str().unwrap()));
    assert!(outbox_file.exists(), "the dead node left the event in its outbox");
    let back = Node::start(dir.path(), &nodes[owner_index].id.clone(), &net.hosts[owner_index], &redis);
    assert!(!outbox_file.exists(), "the event another node delivered is gone from the outbox");
    let aside = back.data.join("tasks").join("handed_over");
    assert!(aside.join(format!("{rec}.json")).exists() && aside.join(format!("{relay}.json")).exists(), "the tasks taken over are set aside");
    std::thread::sleep(Duration::from_secs(3));
    nodes[owner_index] = back;
    let mut ok = std::collections::HashMap::new();
    for r in hooks.requests().iter().filter(|r| r["status"].as_u64().is_some_and(|s| (200..300).contains(&s))) {
        *ok.entry(r["event_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    assert!(ok.values().all(|n| *n == 1), "an event delivered twice: {ok:?}");
    nodes.clear();
    drop(redis);
}

/// Draining a node and then stopping it (SIGTERM) hands its tasks over at once: the recording
/// closes for the stop, its last record is shared before the node leaves, and the other node
/// resumes it (in `ha1_` files) without the stopping node's last save taking it back.
#[test]
fn a_drained_nodes_stop_hands_its_tasks_over() {
    let _g = serial();
    let dir = TempDir::new("cluster-drain");
    let net = BridgeNet::new(3);
    let redis = Redis::start(&net.gateway, dir.path());
    let (mut nodes, publisher, anchor, owner_index) = two_nodes_and_a_publisher(dir.path(), &net, &redis, "", "hall", "40", Publisher::Aiortc);
    let clients = net.client_host(2);
    let other = 1 - owner_index;
    let (o_url, o_key) = (nodes[other].url(""), nodes[other].key.clone());
    let rec = post_json(&format!("{o_url}/v1/recordings"), Some(&o_key), &serde_json::json!({"room": "hall", "format": "hls", "hls": {"segment_s": 2}, "max_idle_time": 120}));
    assert!(rec.status < 300, "{}", rec.body);
    let rec = rec.json()["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(5));
    let owner_id = nodes[owner_index].id.clone();
    let drained = request("POST", &format!("{o_url}/v1/cluster/nodes/{owner_id}/drain"), Some(&o_key), None, &[]);
    assert!(drained.status < 300, "{}", drained.body);
    let stopping = Instant::now();
    let status = nodes[owner_index].server.take().unwrap().stop();
    assert!(status.success(), "the drained node stopped cleanly: {status:?}");
    let stopped = stopping.elapsed();
    // Taken over within a heartbeat of the stop, not at the record's expiry (6 s).
    let taken = wait_until(Duration::from_secs(10), "the recording running on the other node", || {
        let r = get(&format!("{o_url}/v1/recordings/{rec}"), Some(&o_key));
        (r.status == 200 && r.json()["state"] == "RECORDING").then(|| stopping.elapsed())
    });
    eprintln!("stop took {stopped:?}; the recording ran on the other node {taken:?} after SIGTERM");
    assert!(taken <= stopped + Duration::from_secs(4), "handed over {taken:?} after SIGTERM (the stop took {stopped:?})");
    assert_eq!(redis.get(&format!("tessera:task:default/{rec}")), nodes[other].id, "the task is the other node's (the stopped node's last save did not take it back)");
    // The publisher comes back to the node that holds the room now; the recording goes on.
    drop(publisher);
    let again = Client::start(&clients, "aiortc_client.py", &["publish", "--url", &format!("{o_url}/whip/hall"), "--token", &anchor, "--seconds", "10"]);
    std::thread::sleep(Duration::from_secs(9));
    let stopped = request("DELETE", &format!("{o_url}/v1/recordings/{rec}"), Some(&o_key), None, &[]);
    assert!(stopped.status < 300, "{}", stopped.body);
    let _ = again.finish(Duration::from_secs(30));
    assert_continued_recording_plays(&o_url, &o_key, &rec, &anchor);
    nodes.clear();
    drop(redis);
}
