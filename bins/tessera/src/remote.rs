//! The operator commands that drive a running server over its REST API (`tessera rooms`,
//! `tasks`, `record`, `relay`), as LiveKit's `lk` does: human tables by default, `--json` for
//! scripts. The server and API key come from flags, the environment, or the data dir the server
//! runs on (found as `serve` finds it).

use crate::{load_config, ConfigArgs, Failure};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tessera_server::Overrides;

/// How to reach the server; shared by the remote commands.
#[derive(Args, Clone)]
pub struct RemoteArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The server's base URL. Default: the HTTP address of the config (on this machine).
    #[arg(long, global = true, value_name = "URL", env = "TESSERA_SERVER")]
    server: Option<String>,
    /// An API key. Default: `admin.key` in the data dir.
    #[arg(long, global = true, value_name = "KEY", env = "TESSERA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM CA certificate to trust for an https:// server (default: the data dir's
    /// self-signed certificate when there is one, and the usual public roots).
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum RoomsCommand {
    /// Rooms with participants, publishers and running tasks.
    List,
    /// One room and its participants with their sessions and streams.
    Show { room: String },
    /// Remove a user from a room: every session ends (104 Reason 3).
    Kick { room: String, user: String },
    /// Dismiss a room: its tasks stop and every session ends.
    Dismiss { room: String },
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The live nodes: state, load, rooms and participants.
    Nodes,
    /// Drain a node: it takes no new rooms; its rooms stay until they end.
    Drain { node: String },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskKind {
    MixJob,
    Relay,
    Recording,
    Ingest,
}

impl TaskKind {
    const ALL: [TaskKind; 4] = [TaskKind::MixJob, TaskKind::Relay, TaskKind::Recording, TaskKind::Ingest];

    fn path(self) -> &'static str {
        match self {
            TaskKind::MixJob => "/v1/mix-jobs",
            TaskKind::Relay => "/v1/relays",
            TaskKind::Recording => "/v1/recordings",
            TaskKind::Ingest => "/v1/ingests",
        }
    }

    fn name(self) -> &'static str {
        match self {
            TaskKind::MixJob => "mix-job",
            TaskKind::Relay => "relay",
            TaskKind::Recording => "recording",
            TaskKind::Ingest => "ingest",
        }
    }
}

#[derive(Subcommand)]
pub enum TasksCommand {
    /// Every task (or one kind), newest first per kind.
    List {
        #[arg(long)]
        kind: Option<TaskKind>,
        /// Only this room's tasks.
        #[arg(long)]
        room: Option<String>,
        /// Also the stopped and finished ones the server still keeps.
        #[arg(long)]
        all: bool,
    },
    /// One task, in full.
    Show { kind: TaskKind, id: String },
    /// Stop a task.
    Stop { kind: TaskKind, id: String },
}

#[derive(Subcommand)]
pub enum RecordCommand {
    /// Start recording a room; prints the recording's id.
    Start {
        room: String,
        /// single (a file set per stream) or mixed (one mix of the room).
        #[arg(long, default_value = "single")]
        mode: String,
        /// hls, mp4 or hls+mp4.
        #[arg(long, default_value = "hls")]
        format: String,
        /// audio_video, audio or video.
        #[arg(long, default_value = "audio_video")]
        content: String,
        /// Record only these users (repeat the flag); default: everyone.
        #[arg(long = "user", value_name = "USER")]
        users: Vec<String>,
    },
    /// Stop a recording (its files are finalized).
    Stop { id: String },
}

#[derive(Subcommand)]
pub enum RelayCommand {
    /// Relay a user's stream to RTMP URLs; prints the relay's id.
    Start {
        room: String,
        /// Whose stream.
        #[arg(long)]
        user: String,
        /// main or aux.
        #[arg(long, default_value = "main")]
        stream: String,
        /// A destination (repeat the flag), e.g. rtmp://live.example.com/app/key.
        #[arg(long = "url", value_name = "URL", required = true)]
        urls: Vec<String>,
        /// A destination that takes HEVC/AV1 over Enhanced RTMP as they came (repeat).
        #[arg(long = "enhanced-url", value_name = "URL")]
        enhanced_urls: Vec<String>,
    },
    /// Stop a relay.
    Stop { id: String },
}

/// A connection to the server's REST API.
pub struct Remote {
    base: String,
    key: String,
    agent: ureq::Agent,
    pub json: bool,
}

impl Remote {
    pub fn new(args: &RemoteArgs) -> Result<Remote, Failure> {
        let config = load_config(&args.config, Overrides::default())?;
        let base = match &args.server {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let ip = match config.http_addr.ip() {
                    ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                    ip => ip,
                };
                let scheme = if config.https() { "https" } else { "http" };
                let host = if config.https() && ip.is_loopback() { "localhost".to_owned() } else { ip.to_string() };
                let host = if ip.is_ipv6() && host != "localhost" { format!("[{host}]") } else { host };
                format!("{scheme}://{host}:{}", config.http_addr.port())
            }
        };
        let key = match &args.api_key {
            Some(k) => k.trim().to_owned(),
            None => {
                let path = config.data_dir.join("admin.key");
                std::fs::read_to_string(&path)
                    .map(|k| k.trim().to_owned())
                    .map_err(|e| Failure::usage(format!("no API key: give --api-key or TESSERA_API_KEY, or run where the server's data dir is ({}: {e})", path.display())))?
            }
        };
        let self_signed = config.data_dir.join("tls/self-signed.crt");
        let ca = args.ca_file.clone().or_else(|| self_signed.exists().then_some(self_signed));
        let tls = tessera_server::tls::client_config(ca.as_deref()).map_err(Failure::usage)?;
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).tls_config(tls).build();
        Ok(Remote { base, key, agent, json: args.json })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let request = self.agent.request(method, &format!("{}{path}", self.base)).set("Authorization", &format!("Bearer {}", self.key));
        let result = match body {
            Some(b) => request.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => request.call(),
        };
        match result {
            Ok(resp) => {
                let text = resp.into_string().map_err(Failure::runtime)?;
                Ok(if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
            }
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let err: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                Err(Failure::runtime(match (err["code"].as_str(), err["message"].as_str()) {
                    (Some(code), Some(message)) => format!("{method} {path}: {status} {code}: {message}"),
                    _ => format!("{method} {path}: HTTP {status} {}", text.trim()),
                }))
            }
            Err(e) => Err(Failure::runtime(format!("cannot reach the server at {}: {e} (is it running? --server picks another)", self.base))),
        }
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call("GET", path, None)
    }

    /// Every item of a paged list.
    fn list(&self, path: &str) -> Result<Vec<Value>, Failure> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page = match &cursor {
                Some(c) => self.get(&format!("{path}{sep}limit=1000&cursor={}", encode(c)))?,
                None => self.get(&format!("{path}{sep}limit=1000"))?,
            };
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return Ok(items),
            }
        }
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            print!("{}", human(value));
        }
    }
}

/// Percent-encodes a path segment or query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Left-aligned columns, two spaces apart; `-` for what is missing.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// "3m ago" from a Unix time in ms.
fn age(ms: &Value) -> String {
    let Some(t) = ms.as_i64() else { return "-".into() };
    let s = (tessera_server::now_ms() - t).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h{:02}m ago", s / 3600, s % 3600 / 60),
        _ => format!("{}d ago", s / 86_400),
    }
}

pub fn cluster(remote: &Remote, command: ClusterCommand) -> Result<(), Failure> {
    match command {
        ClusterCommand::Nodes => {
            let v = remote.get("/v1/cluster/nodes")?;
            remote.print(&v, |v| {
                let me = v["node"].as_str().unwrap_or("");
                let rows: Vec<Vec<String>> = v["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| {
                        let l = &n["load"];
                        let id = text(&n["id"]);
                        let id = if id == me { format!("{id} *") } else { id };
                        let cpu = format!("{:.2}/{}", l["cpu_cores"].as_f64().unwrap_or(0.0), text(&l["cores"]));
                        let busy = format!("{:.0}%", l["busy_ratio"].as_f64().unwrap_or(0.0) * 100.0);
                        let mbps = format!("{:.1}", l["send_bps"].as_f64().unwrap_or(0.0) / 1e6);
                        vec![id, text(&n["state"]), text(&n["url"]), cpu, busy, text(&l["rooms"]), text(&l["participants"]), text(&l["viewers"]), mbps, age(&n["started_ms"])]
                    })
                    .collect();
                table(&["NODE", "STATE", "URL", "CPU", "BUSY", "ROOMS", "PARTICIPANTS", "VIEWERS", "MBIT/S", "STARTED"], &rows)
            });
        }
        ClusterCommand::Drain { node } => {
            let v = remote.call("POST", &format!("/v1/cluster/nodes/{}/drain", encode(&node)), None)?;
            remote.print(&v, |v| format!("node {} is draining: no new rooms\n", text(&v["id"])));
        }
    }
    Ok(())
}

pub fn rooms(remote: &Remote, command: RoomsCommand) -> Result<(), Failure> {
    match command {
        RoomsCommand::List => {
            let items = remote.list("/v1/rooms")?;
            remote.print(&json!(items), |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let t = &r["tasks"];
                        let tasks = format!("mix {} relay {} rec {} ingest {}", text(&t["mix_jobs"]), text(&t["relays"]), text(&t["recordings"]), text(&t["ingests"]));
                        vec![text(&r["room"]), text(&r["participants"]), text(&r["publishers"]), tasks, age(&r["created_at"])]
                    })
                    .collect();
                if rows.is_empty() {
                    return "no rooms\n".into();
                }
                table(&["ROOM", "PARTICIPANTS", "PUBLISHERS", "TASKS", "CREATED"], &rows)
            });
        }
        RoomsCommand::Show { room } => {
            let mut summary = remote.get(&format!("/v1/rooms/{}", encode(&room)))?;
            let users = remote.list(&format!("/v1/rooms/{}/users", encode(&room)))?;
            summary["users"] = json!(users);
            remote.print(&summary, |v| {
                let t = &v["tasks"];
                let mut out = format!(
                    "room {}  created {}  participants {}  publishers {}  tasks: mix {} relay {} rec {} ingest {}\n\n",
                    text(&v["room"]),
                    age(&v["created_at"]),
                    text(&v["participants"]),
                    text(&v["publishers"]),
                    text(&t["mix_jobs"]),
                    text(&t["relays"]),
                    text(&t["recordings"]),
                    text(&t["ingests"])
                );
                let rows: Vec<Vec<String>> = v["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| {
                        let role = match u["role"].as_u64() {
                            Some(20) => "anchor".to_owned(),
                            Some(21) => "audience".to_owned(),
                            _ => text(&u["role"]),
                        };
                        let list =
                            |x: &Value| x.as_array().map(|a| a.iter().map(stream_name).collect::<Vec<_>>().join(",")).filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into());
                        vec![text(&u["user"]), role, text(&u["user_type"]), list(&u["sessions"]), list(&u["streams"]), age(&u["joined_at"])]
                    })
                    .collect();
                out.push_str(&table(&["USER", "ROLE", "TYPE", "SESSIONS", "STREAMS", "JOINED"], &rows));
                out
            });
        }
        RoomsCommand::Kick { room, user } => {
            let v = remote.call("DELETE", &format!("/v1/rooms/{}/users/{}", encode(&room), encode(&user)), None)?;
            remote.print(&v, |_| format!("removed {user} from room {room}\n"));
        }
        RoomsCommand::Dismiss { room } => {
            let v = remote.call("DELETE", &format!("/v1/rooms/{}", encode(&room)), None)?;
            remote.print(&v, |_| format!("dismissed room {room}\n"));
        }
    }
    Ok(())
}

/// A stream entry: a bare name, or an object with `stream`/`kind`.
fn stream_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("stream").or_else(|| o.get("name")).map(text).unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

/// What a table shows of a task beyond id, room and state.
fn task_detail(kind: TaskKind, t: &Value) -> String {
    match kind {
        TaskKind::MixJob => format!(
            "{} {} fps, {} inputs",
            text(&t["layout"]["template"]),
            text(&t["encode"]["fps"]),
            t["stats"]["inputs"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "-".into())
        ),
        TaskKind::Relay => {
            let source = format!("{}/{}", text(&t["source"]["user"]), text(&t["source"]["stream"]));
            let status = |u: &Value| match u["status"].as_u64() {
                Some(0) => "idle".to_owned(),
                Some(1) => "connecting".to_owned(),
                Some(2) => "running".to_owned(),
                Some(3) => "recovering".to_owned(),
                Some(4) => "failure".to_owned(),
                Some(5) => "disconnecting".to_owned(),
                _ => text(&u["status"]),
            };
            let urls: Vec<String> = t["urls"].as_array().into_iter().flatten().map(|u| format!("{} ({})", text(&u["url"]), status(u))).collect();
            format!("{source} → {}", urls.join(", "))
        }
        TaskKind::Recording => format!("{} {} {}, {} files", text(&t["mode"]), text(&t["format"]), text(&t["content"]), t["files"].as_array().map(|f| f.len()).unwrap_or(0)),
        TaskKind::Ingest => format!("{}/{} ← {}", text(&t["user"]), text(&t["stream"]), text(&t["url"])),
    }
}

fn is_live(state: &Value) -> bool {
    !matches!(state.as_str(), Some("STOPPED" | "FINISHED" | "FAILED"))
}

pub fn tasks(remote: &Remote, command: TasksCommand) -> Result<(), Failure> {
    match command {
        TasksCommand::List { kind, room, all } => {
            let mut found = Vec::new();
            for k in TaskKind::ALL.into_iter().filter(|k| kind.is_none_or(|want| want == *k)) {
                for mut t in remote.list(k.path())? {
                    if room.as_deref().is_some_and(|r| t["room"].as_str() != Some(r)) || (!all && !is_live(&t["state"])) {
                        continue;
                    }
                    t["kind"] = json!(k.name());
                    found.push((k, t));
                }
            }
            let values: Vec<Value> = found.iter().map(|(_, t)| t.clone()).collect();
            remote.print(&json!(values), |_| {
                if found.is_empty() {
                    return if all { "no tasks\n".into() } else { "no running tasks (--all shows stopped ones)\n".into() };
                }
                let rows: Vec<Vec<String>> =
                    found.iter().map(|(k, t)| vec![k.name().to_owned(), text(&t["id"]), text(&t["room"]), text(&t["state"]), task_detail(*k, t)]).collect();
                table(&["KIND", "ID", "ROOM", "STATE", "DETAIL"], &rows)
            });
        }
        TasksCommand::Show { kind, id } => {
            let t = remote.get(&format!("{}/{}", kind.path(), encode(&id)))?;
            remote.print(&t, |t| {
                format!("{} {} in room {}: {}\n{}\n", kind.name(), text(&t["id"]), text(&t["room"]), text(&t["state"]), serde_json::to_string_pretty(t).unwrap_or_default())
            });
        }
        TasksCommand::Stop { kind, id } => {
            let t = remote.call("DELETE", &format!("{}/{}", kind.path(), encode(&id)), None)?;
            remote.print(&t, |t| format!("{} {} stopping: {}\n", kind.name(), id, text(&t["state"])));
        }
    }
    Ok(())
}

pub fn record(remote: &Remote, command: RecordCommand) -> Result<(), Failure> {
    match command {
        RecordCommand::Start { room, mode, format, content, users } => {
            let mut body = json!({"room": room, "mode": mode, "format": format, "content": content});
            if !users.is_empty() {
                body["subscribe"] = json!({"video_allow": users, "audio_allow": users});
            }
            let t = remote.call("POST", "/v1/recordings", Some(&body))?;
            remote.print(&t, |t| format!("{}\n", text(&t["id"])));
            if !remote.json {
                eprintln!("recording {} of room {room} started ({}); `tessera record stop {}` ends it", text(&t["id"]), text(&t["state"]), text(&t["id"]));
            }
        }
        RecordCommand::Stop { id } => {
            let t = remote.call("DELETE", &format!("/v1/recordings/{}", encode(&id)), None)?;
            remote.print(&t, |t| format!("recording {id} stopping: {}\n", text(&t["state"])));
        }
    }
    Ok(())
}

pub fn relay(remote: &Remote, command: RelayCommand) -> Result<(), Failure> {
    match command {
        RelayCommand::Start { room, user, stream, urls, enhanced_urls } => {
            let mut entries: Vec<Value> = urls.iter().map(|u| json!(u)).collect();
            entries.extend(enhanced_urls.iter().map(|u| json!({"url": u, "enhanced_rtmp": true})));
            let body = json!({"room": room, "source": {"user": user, "stream": stream}, "urls": entries});
            let t = remote.call("POST", "/v1/relays", Some(&body))?;
            remote.print(&t, |t| format!("{}\n", text(&t["id"])));
            if !remote.json {
                eprintln!("relay {} of {user}/{stream} in room {room} started ({}); `tessera relay stop {}` ends it", text(&t["id"]), text(&t["state"]), text(&t["id"]));
            }
        }
        RelayCommand::Stop { id } => {
            let t = remote.call("DELETE", &format!("/v1/relays/{}", encode(&id)), None)?;
            remote.print(&t, |t| format!("relay {id} stopping: {}\n", text(&t["state"])));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_fill_gaps() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec![text(&Value::Null), text(&json!(2))]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n-    2\n");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
