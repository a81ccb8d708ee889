//! The one typed configuration: defaults, the TOML file and command-line flags all land here,
//! and `tessera config` prints this same struct (secrets redacted).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub rtmp_addr: SocketAddr,
    pub rtc_udp_addr: SocketAddr,
    /// ICE over TCP (passive candidates) for clients whose UDP is blocked.
    pub rtc_tcp: bool,
    /// Where ICE-TCP listens; unset: `rtc_udp_addr`'s address and port number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtc_tcp_addr: Option<SocketAddr>,
    /// Address advertised in ICE candidates and printed URLs; interface addresses when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
    /// Media workers (each drives its rooms' WebRTC peers on one core; they share the UDP
    /// port). Unset: one per CPU core the process may run on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_workers: Option<u32>,
    /// From which busy ratio (0–1) of its room's media worker a new WHEP viewer is served by a
    /// less busy worker, the room's stream piped there (a large room uses every core). 0
    /// spreads every viewer; above 1, none.
    pub spread_viewers_above: f64,
    /// Opus encoder complexity (0–10) of the audio transcoded from RTMP and pull ingests (AAC →
    /// Opus for WebRTC viewers): the largest cost of an RTMP publish. 10 (libopus's default)
    /// is for music; lower costs less CPU per publisher (SRS encodes at 1).
    pub ingest_opus_complexity: u8,
    /// Opus bitrate (kbit/s, 16–256) of the same transcodes: 64 carries stereo music well;
    /// fewer bits cost less to encode (SRS encodes at 48).
    pub ingest_opus_kbps: u16,
    /// UDP GSO on the WebRTC port: a viewer's packets that leave together (a frame) go to the
    /// kernel as one message, cut into datagrams at the end of its send path or by the NIC.
    /// Off for a network path that mishandles it (the server also turns it off by itself when
    /// the kernel or the device refuses it).
    pub udp_gso: bool,
    pub data_dir: PathBuf,
    /// Log filter, e.g. `info` or `tessera=debug,info` (`RUST_LOG` overrides it).
    pub log: String,
    /// HTTPS on `http_addr`: a PEM certificate chain and its private key, reloaded when either
    /// file changes or on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// HTTPS with a certificate the server makes for itself (a LAN trial: browsers warn once).
    pub tls_self_signed: bool,
    /// A plain-HTTP listener that redirects every request to HTTPS on `http_addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_redirect_addr: Option<SocketAddr>,
    /// CA certificates (PEM) trusted for outgoing TLS, besides Mozilla's: private CDNs behind
    /// rtmps:// relays, webhook backends behind https://.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_ca_file: Option<PathBuf>,
    pub cors_origins: Vec<String>,
    pub ice_servers: Vec<IceServer>,
    pub limits: Limits,
    pub security: Security,
    pub storage: BTreeMap<String, StorageConfig>,
    pub apps: BTreeMap<String, AppConfig>,
    /// Development conveniences: `POST /dev/token` mints tokens for clients on this machine
    /// (room.html's "join with a name"). Never on a server others reach through a local proxy.
    pub dev: bool,
    /// Cluster mode: nodes sharing one Redis place rooms and route requests to each other
    /// (docs/operating.md, "Cluster"). Unset: a single node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:port[/db]`.
    pub redis_url: String,
    /// This node's name in the cluster; unset: the host name and HTTP port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The URL other nodes redirect clients to for this node's rooms (and forward API calls
    /// to); unset: the URL the banner prints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Prefix of every Redis key, so clusters can share one Redis.
    pub key_prefix: String,
    pub heartbeat_ms: u64,
    /// A node whose heartbeat is this old is gone (its record expires).
    pub node_ttl_ms: u64,
    /// A node at this many viewers takes no new rooms (0: no limit).
    pub max_viewers_per_node: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { redis_url: String::new(), node_id: None, public_url: None, key_prefix: "tessera".into(), heartbeat_ms: 2000, node_ttl_ms: 6000, max_viewers_per_node: 0 }
    }
}

/// `[security]`: where outbound connections made for users may go (see `crate::outbound`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    /// Ranges refused besides link-local (always refused unless allowed), e.g. "10.0.0.0/8".
    pub outbound_deny: Vec<String>,
    /// Exceptions to the deny list.
    pub outbound_allow: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: "0.0.0.0:8080".parse().expect("valid"),
            rtmp_addr: "0.0.0.0:1935".parse().expect("valid"),
            rtc_udp_addr: "0.0.0.0:8443".parse().expect("valid"),
            rtc_tcp: true,
            rtc_tcp_addr: None,
            public_ip: None,
            media_workers: None,
            spread_viewers_above: tessera_engine::DEFAULT_SPREAD_PERMILLE as f64 / 1000.0,
            ingest_opus_complexity: 10,
            ingest_opus_kbps: 64,
            udp_gso: true,
            data_dir: PathBuf::from("./tessera-data"),
            log: "info".into(),
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            http_redirect_addr: None,
            outbound_ca_file: None,
            cors_origins: vec!["*".into()],
            ice_servers: Vec::new(),
            limits: Limits::default(),
            security: Security::default(),
            storage: BTreeMap::new(),
            apps: BTreeMap::new(),
            dev: false,
            cluster: None,
        }
    }
}

/// A STUN/TURN server advertised to clients: a bare URL, or a table with credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IceServer {
    Url(String),
    Full {
        urls: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<String>,
    },
}

/// The configurable limits of PRODUCT.md §12.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub participants_per_room: u32,
    pub publishing_anchors_per_room: u32,
    pub concurrent_recordings_per_app: u32,
    /// Defaults to the number of CPU cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent_mix_jobs: Option<u32>,
    pub concurrent_ingests_per_app: u32,
    pub room_empty_timeout_s: u32,
    pub task_retention_days: u32,
    pub concurrent_relays_per_app: u32,
    /// A connected WebRTC peer (WHIP, WHEP) not heard from for this long is gone: its session
    /// ends as a DELETE would (tab closed, machine off).
    pub webrtc_liveness_timeout_s: u32,
    /// Open connections per listener; at the cap a listener stops accepting until one closes.
    pub http_max_connections: u32,
    pub rtmp_max_connections: u32,
    /// An HTTP connection with no bytes either way for this long is closed.
    pub http_idle_timeout_s: u32,
    /// A request (headers and body) must have arrived within this long of its first byte.
    pub http_request_timeout_s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            participants_per_room: 1000,
            publishing_anchors_per_room: 50,
            concurrent_recordings_per_app: 100,
            concurrent_mix_jobs: None,
            concurrent_ingests_per_app: 20,
            room_empty_timeout_s: 10,
            task_retention_days: 7,
            concurrent_relays_per_app: 100,
            webrtc_liveness_timeout_s: 15,
            http_max_connections: 4096,
            rtmp_max_connections: 1024,
            http_idle_timeout_s: 60,
            http_request_timeout_s: 15,
        }
    }
}

/// A recording storage backend (RECORDING.md §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StorageConfig {
    Local,
    S3 {
        bucket: String,
        region: String,
        endpoint: String,
        access_key_id: String,
        secret_access_key: String,
        #[serde(default)]
        path_style: bool,
        #[serde(default)]
        key_prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public_base_url: Option<String>,
    },
}

/// An app listed in the file; created at start if missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Secrets to install: strings (kids `cfg1`, `cfg2`, ...) or `{kid, secret}` tables. When
    /// none are given, one is generated and kept in `apps.json`.
    #[serde(default)]
    pub secrets: Vec<ConfigSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<tessera_model::WebhookSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_recording: Option<tessera_model::AutoRecording>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_storage: Option<String>,
    /// `[apps.<id>.rtmp]`: `b_frames = "transcode" | "refuse"`, `max_transcodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmp: Option<tessera_model::RtmpSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigSecret {
    Plain(String),
    WithKid { kid: String, secret: String },
}

impl ConfigSecret {
    /// (kid, secret), naming a plain string by its 1-based position.
    pub fn resolve(&self, position: usize) -> (String, String) {
        match self {
            ConfigSecret::Plain(s) => (format!("cfg{position}"), s.clone()),
            ConfigSecret::WithKid { kid, secret } => (kid.clone(), secret.clone()),
        }
    }
}

/// Why a configuration cannot be used. The message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Values given on the command line; each one that is set wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub http_addr: Option<SocketAddr>,
    pub rtmp_addr: Option<SocketAddr>,
    pub rtc_udp_addr: Option<SocketAddr>,
    pub public_ip: Option<IpAddr>,
    pub data_dir: Option<PathBuf>,
    pub dev: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: bool,
    pub http_redirect_addr: Option<SocketAddr>,
    pub media_workers: Option<u32>,
}

const REDACTED: &str = "<redacted>";

/// `redis://user:secret@host` → `redis://user:<redacted>@host`.
pub(crate) fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((auth, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    let user = auth.split_once(':').map(|(u, _)| u).unwrap_or("");
    format!("{scheme}://{user}:{REDACTED}@{host}")
}

impl Config {
    /// Defaults, then `file` if given, then the overrides; validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match file {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.into(),
                    // toml's message spans lines (it quotes the source); one line reads better in a log.
                    message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
                })?
            }
        };
        if let Some(a) = overrides.http_addr {
            config.http_addr = a;
        }
        if let Some(a) = overrides.rtmp_addr {
            config.rtmp_addr = a;
        }
        if let Some(a) = overrides.rtc_udp_addr {
            config.rtc_udp_addr = a;
        }
        if let Some(ip) = overrides.public_ip {
            config.public_ip = Some(ip);
        }
        if let Some(d) = &overrides.data_dir {
            config.data_dir = d.clone();
        }
        if overrides.dev {
            config.dev = true;
        }
        if let Some(p) = &overrides.tls_cert {
            config.tls_cert = Some(p.clone());
        }
        if let Some(p) = &overrides.tls_key {
            config.tls_key = Some(p.clone());
        }
        if overrides.tls_self_signed {
            config.tls_self_signed = true;
        }
        if let Some(a) = overrides.http_redirect_addr {
            config.http_redirect_addr = Some(a);
        }
        if let Some(n) = overrides.media_workers {
            config.media_workers = Some(n);
        }
        // Resolved once, here: paths derived from a relative data dir break as soon as a tool
        // (FFmpeg's HLS demuxer) resolves them against another folder (issue 10, defect 6).
        config.data_dir = std::path::absolute(&config.data_dir).map_err(|e| ConfigError::Invalid(format!("data_dir: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert/tls_key: give both the certificate chain and its private key".into());
        }
        if self.tls_self_signed && self.tls_cert.is_some() {
            return invalid("tls_self_signed: drop it when tls_cert/tls_key are given".into());
        }
        if self.http_redirect_addr.is_some() && !self.https() {
            return invalid("http_redirect_addr: redirects go to HTTPS; set tls_cert/tls_key or tls_self_signed".into());
        }
        if let Err(e) = tessera_model::outbound::OutboundPolicy::from_lists(&self.security.outbound_deny, &self.security.outbound_allow) {
            return invalid(format!("security: {e}"));
        }
        if self.media_workers.is_some_and(|n| n == 0 || n as usize > tessera_engine::MAX_WORKERS) {
            return invalid(format!("media_workers: between 1 and {} (or unset: one per core)", tessera_engine::MAX_WORKERS));
        }
        if !(self.spread_viewers_above >= 0.0 && self.spread_viewers_above.is_finite()) {
            return invalid("spread_viewers_above: a busy ratio, 0 (spread every viewer) to 1 (or above: never)".into());
        }
        if self.ingest_opus_complexity > 10 {
            return invalid("ingest_opus_complexity: 0 (cheapest) to 10 (libopus's default)".into());
        }
        if !(16..=256).contains(&self.ingest_opus_kbps) {
            return invalid("ingest_opus_kbps: 16 to 256 (kbit/s of Opus for ingests' audio)".into());
        }
        if self.cors_origins.is_empty() {
            return invalid("cors_origins: list at least one origin, or \"*\"".into());
        }
        if let Some(c) = &self.cluster {
            if !(c.redis_url.starts_with("redis://") || c.redis_url.starts_with("rediss://")) {
                return invalid("cluster.redis_url: redis://host:port (or rediss://)".into());
            }
            if c.heartbeat_ms < 100 || c.node_ttl_ms < 2 * c.heartbeat_ms {
                return invalid("cluster: heartbeat_ms at least 100, node_ttl_ms at least twice heartbeat_ms".into());
            }
            if c.key_prefix.is_empty() || c.key_prefix.contains(char::is_whitespace) {
                return invalid("cluster.key_prefix: a non-empty word".into());
            }
            if let Some(id) = &c.node_id {
                if id.is_empty() || id.len() > 64 || !id.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
                    return invalid("cluster.node_id: [A-Za-z0-9._-]{1,64}".into());
                }
            }
            if let Some(u) = &c.public_url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return invalid("cluster.public_url: http(s)://host:port".into());
                }
            }
        }
        for name in self.storage.keys() {
            if name == "local" {
                return invalid("storage.local: 'local' is built in and cannot be redefined".into());
            }
        }
        for (id, app) in &self.apps {
            if tessera_model::AppId::parse(id).is_err() {
                return invalid(format!("apps.{id}: app ids are [A-Za-z0-9_]{{1,32}}"));
            }
            if app.secrets.len() > tessera_model::app::MAX_SECRETS {
                return invalid(format!("apps.{id}.secrets: at most {} secrets", tessera_model::app::MAX_SECRETS));
            }
            for (i, s) in app.secrets.iter().enumerate() {
                let (kid, secret) = s.resolve(i + 1);
                if tessera_model::Kid::parse(&kid).is_err() {
                    return invalid(format!("apps.{id}.secrets: kid '{kid}' is not [A-Za-z0-9_-]{{1,16}}"));
                }
                if secret.len() < 16 {
                    return invalid(format!("apps.{id}.secrets: secret '{kid}' is shorter than 16 characters"));
                }
            }
            if let Some(w) = &app.webhook {
                w.validate().map_err(|e| ConfigError::Invalid(format!("apps.{id}.{e}")))?;
            }
            if let Some(r) = &app.auto_recording {
                r.validate().map_err(|e| ConfigError::Invalid(format!("apps.{id}.{e}")))?;
            }
            if let Some(r) = &app.rtmp {
                r.validate().map_err(|e| ConfigError::Invalid(format!("apps.{id}.{e}")))?;
            }
            if let Some(s) = &app.default_storage {
                if s != "local" && !self.storage.contains_key(s) {
                    return invalid(format!("apps.{id}.default_storage: no storage named '{s}'"));
                }
            }
        }
        Ok(())
    }

    /// The same configuration with every secret replaced, for printing.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for server in &mut c.ice_servers {
            if let IceServer::Full { credential: Some(cred), .. } = server {
                *cred = REDACTED.into();
            }
        }
        for storage in c.storage.values_mut() {
            if let StorageConfig::S3 { secret_access_key, .. } = storage {
                *secret_access_key = REDACTED.into();
            }
        }
        if let Some(cluster) = &mut c.cluster {
            cluster.redis_url = redact_url_password(&cluster.redis_url);
        }
        for app in c.apps.values_mut() {
            for (i, s) in app.secrets.iter_mut().enumerate() {
                let (kid, _) = s.resolve(i + 1);
                *s = ConfigSecret::WithKid { kid, secret: REDACTED.into() };
            }
            if let Some(w) = &mut app.webhook {
                if w.key.is_some() {
                    w.key = Some(REDACTED.into());
                }
            }
        }
        c
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serializes to TOML")
    }

    /// The configuration with every default a server works out at start written in (the mix
    /// job cap from the cores), for `tessera config`.
    /// Whether `http_addr` speaks HTTPS.
    pub fn https(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed
    }

    pub fn effective(&self) -> Config {
        let mut c = self.clone();
        c.limits.concurrent_mix_jobs = Some(self.max_mix_jobs());
        c.media_workers = Some(self.media_workers());
        c
    }

    /// How many media workers run.
    pub fn media_workers(&self) -> u32 {
        self.media_workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1))
    }

    /// How many mix jobs may run at once.
    pub fn max_mix_jobs(&self) -> u32 {
        self.limits.concurrent_mix_jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("tessera.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("tessera-config-test-{}", tessera_model::random::task_id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn defaults() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.rtmp_addr.port(), 1935);
        assert_eq!(c.rtc_udp_addr.port(), 8443);
        // Resolved against the working directory once, at load.
        assert!(c.data_dir.is_absolute() && c.data_dir.ends_with("tessera-data"), "{}", c.data_dir.display());
        assert_eq!(c.cors_origins, vec!["*"]);
    }

    #[test]
    fn flags_override_file() {
        let (_d, path) = write("http_addr = \"127.0.0.1:9000\"\nrtmp_addr = \"127.0.0.1:1936\"\nlog = \"debug\"\n[limits]\nparticipants_per_room = 5\n");
        let o = Overrides { http_addr: Some("127.0.0.1:9001".parse().unwrap()), ..Default::default() };
        let c = Config::load(Some(&path), &o).unwrap();
        assert_eq!(c.http_addr.port(), 9001);
        assert_eq!(c.rtmp_addr.port(), 1936);
        assert_eq!(c.log, "debug");
        assert_eq!(c.limits.participants_per_room, 5);
        assert_eq!(c.limits.publishing_anchors_per_room, 50);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let (_d, path) = write("http_adr = \"x\"\n");
        let e = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("http_adr") && !e.contains('\n'), "{e}");
        let (_d, path) = write("http_addr = \"nope\"\n");
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
        let (_d, path) = write("[apps.\"bad-id\"]\n");
        let e = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("apps.bad-id"), "{e}");
        let (_d, path) = write("[apps.a]\nsecrets = [\"short\"]\n");
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
        let (_d, path) = write("ingest_opus_kbps = 8\n");
        let e = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("ingest_opus_kbps"), "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/t.toml")), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/t.toml"), "{e}");
    }

    #[test]
    fn tls_settings_must_make_sense_together() {
        let (_d, path) = write("tls_cert = \"/etc/t.crt\"\n");
        let e = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("give both"), "{e}");
        let (_d, path) = write("tls_cert = \"/etc/t.crt\"\ntls_key = \"/etc/t.key\"\ntls_self_signed = true\n");
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
        let o = Overrides { http_redirect_addr: Some("127.0.0.1:80".parse().unwrap()), ..Default::default() };
        let e = Config::load(None, &o).unwrap_err().to_string();
        assert!(e.contains("http_redirect_addr"), "{e}");
        let o = Overrides { tls_self_signed: true, http_redirect_addr: Some("127.0.0.1:80".parse().unwrap()), ..Default::default() };
        assert!(Config::load(None, &o).unwrap().https());
    }

    #[test]
    fn redaction_hides_every_secret() {
        let (_d, path) = write(concat!(
            "ice_servers = [\"stun:stun.example.org\", {urls=[\"turn:t\"], username=\"u\", credential=\"turn-pass\"}]\n",
            "[cluster]\nredis_url=\"redis://:redis-pass@r:6379/0\"\n",
            "[storage.s3a]\ntype=\"s3\"\nbucket=\"b\"\nregion=\"r\"\nendpoint=\"http://e\"\naccess_key_id=\"AK\"\nsecret_access_key=\"s3-secret\"\n",
            "[apps.default]\nsecrets=[\"app-secret-0123456789\", {kid=\"k9\", secret=\"other-secret-0123456789\"}]\n",
            "webhook={url=\"https://h/x\", key=\"hookkey\"}\n",
        ));
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        let printed = c.redacted().to_toml();
        for secret in ["redis-pass", "turn-pass", "s3-secret", "app-secret-0123456789", "other-secret-0123456789", "hookkey"] {
            assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
        }
        assert!(printed.contains("cfg1") && printed.contains("k9") && printed.contains("AK") && printed.contains("@r:6379/0"));
        // What is printed parses back.
        let back: Config = toml::from_str(&printed).unwrap();
        assert_eq!(back.http_addr, c.http_addr);
    }
}
