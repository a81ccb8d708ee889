//! Start-up and shut-down of `tessera serve`: bind every listener first (so a taken port fails
//! fast, before anything is written), take the data dir lock, load or create the app store,
//! then serve until SIGINT/SIGTERM and save what is only in memory.

use crate::api::{self, AppState};
use crate::config::Config;
use crate::store::{AppStore, DataDir, FirstStart, StoreError};
use std::net::SocketAddr;
use std::time::Duration;
use tessera_model::token::{self, TokenClaims};
use tessera_model::{AppId, Role};
use tokio::net::TcpListener;

/// Why the server could not start. The binary prints it on one line and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    DataDir(#[from] StoreError),
    #[error("{0}")]
    Rtc(#[from] tessera_engine::RtcServerError),
    #[error("{0}")]
    Tls(String),
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
}

pub struct Server {
    state: AppState,
    http: TcpListener,
    /// HTTPS: the acceptor and what the banner says of the certificate.
    tls: Option<(tokio_rustls::TlsAcceptor, String)>,
    /// The plain-HTTP listener that redirects to HTTPS.
    redirect: Option<TcpListener>,
    rtmp: TcpListener,
    rtmp_addr: SocketAddr,
    http_addr: SocketAddr,
    data_dir: DataDir,
    first_start: Option<FirstStart>,
}

/// How long in-flight requests get to finish after a stop signal.
const DRAIN: Duration = Duration::from_secs(5);

impl Server {
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let http = TcpListener::bind(config.http_addr).await.map_err(|source| StartError::Bind { what: "HTTP", addr: config.http_addr, source })?;
        let http_addr = http.local_addr().map_err(|source| StartError::Bind { what: "HTTP", addr: config.http_addr, source })?;
        let rtmp = TcpListener::bind(config.rtmp_addr).await.map_err(|source| StartError::Bind { what: "RTMP", addr: config.rtmp_addr, source })?;
        let rtmp_addr = rtmp.local_addr().map_err(|source| StartError::Bind { what: "RTMP", addr: config.rtmp_addr, source })?;
        // ICE-TCP on the UDP address and port number unless configured elsewhere (port 0 there
        // means "the UDP socket's port").
        let rtc_tcp = config.rtc_tcp.then(|| config.rtc_tcp_addr.unwrap_or(std::net::SocketAddr::new(config.rtc_udp_addr.ip(), 0)));
        let rtc = tessera_engine::RtcHandle::start(
            config.rtc_udp_addr,
            rtc_tcp,
            config.public_ip,
            std::time::Duration::from_secs(config.limits.room_empty_timeout_s.into()),
            std::time::Duration::from_secs(config.limits.webrtc_liveness_timeout_s.max(1).into()),
            config.media_workers() as usize,
            config.udp_gso,
        )?;
        rtc.set_spread_viewers_above(config.spread_viewers_above);
        tessera_engine::set_ingest_opus_complexity(config.ingest_opus_complexity);
        tessera_engine::set_ingest_opus_kbps(config.ingest_opus_kbps);
        let redirect = match config.http_redirect_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what: "the HTTP→HTTPS redirect", addr, source })?),
            None => None,
        };
        let tls = crate::tls::client_config(config.outbound_ca_file.as_deref()).map_err(StartError::Tls)?;
        let data_dir = DataDir::open_locked(&config.data_dir)?;
        let https = https_acceptor(&config, &data_dir, &rtc.candidates, http_addr).map_err(StartError::Tls)?;
        let (store, first_start) = AppStore::load_or_init(&data_dir, &config, crate::now_ms())?;
        // Validated with the config; the default policy if the lists are empty.
        if let Ok(policy) = tessera_tasks::outbound::OutboundPolicy::from_lists(&config.security.outbound_deny, &config.security.outbound_allow) {
            tessera_tasks::outbound::install(policy);
        }
        let state = AppState::new(config, store, rtc, true, tls.clone());
        let server = Server { state, http, tls: https, redirect, rtmp, rtmp_addr, http_addr, data_dir, first_start };
        if let Some(c) = &server.state.config.cluster {
            let rtmp = format!("{}:{}", server.rtmp_host(), rtmp_addr.port());
            let cluster = crate::cluster::Cluster::join(c, server.base_url(), http_addr.port(), rtmp, &server.state.store, tls).await.map_err(StartError::Cluster)?;
            cluster.set_aside_handed_over(&server.state.tasks.tasks_dir()).await;
            cluster.set_aside_taken_events(&server.data_dir.root().join("outbox")).await;
            let _ = server.state.cluster.set(cluster);
        }
        Ok(server)
    }

    /// The host RTMP clients reach this server at.
    fn rtmp_host(&self) -> String {
        match (self.state.config.public_ip, self.rtmp_addr.ip()) {
            (Some(ip), _) => ip.to_string(),
            (None, ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
            (None, ip) => ip.to_string(),
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The base URL a user on this machine (or at `public_ip`) reaches the HTTP API at.
    pub fn base_url(&self) -> String {
        let host = match (self.state.config.public_ip, self.http_addr.ip()) {
            (Some(ip), _) => ip,
            (None, ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            (None, ip) => ip,
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match host {
            std::net::IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{}", self.http_addr.port()),
            v4 => format!("{scheme}://{v4}:{}", self.http_addr.port()),
        }
    }

    /// What a user needs to get going, printed at start.
    pub fn banner(&self) -> String {
        let base = self.base_url();
        let key_path = self.data_dir.admin_key_path();
        let apps = self.state.store.snapshot();
        let app = &apps[&AppId::default_app()];
        let secret = app.newest_secret();
        let now_s = crate::now_ms() / 1000;
        let claims = TokenClaims {
            app: app.id.to_string(),
            room: "demo".into(),
            // The README's walkthrough and play.html's default user.
            user: "me".into(),
            role: Some(Role::Anchor.code()),
            privileges: Some(255),
            nbf: None,
            exp: now_s + 6 * 3600,
            info: None,
        };
        let demo_token = token::mint(&claims, &secret.kid, &secret.secret);
        let mut out = format!("Tessera {} is running.\n", api::VERSION);
        if self.first_start.is_some() {
            out.push_str(&format!("  First start: created app 'default', its secret and an admin API key in {}\n", self.data_dir.root().display()));
        }
        out.push_str(&format!("  HTTP API       {base}\n"));
        if let Some((_, about)) = &self.tls {
            out.push_str(&format!("  TLS            {about}\n"));
        }
        if let Some(redirect) = self.redirect.as_ref().and_then(|r| r.local_addr().ok()) {
            out.push_str(&format!("  HTTP redirect  {redirect} → {base}\n"));
        }
        out.push_str(&format!("  Health         {base}/healthz\n"));
        out.push_str(&format!("  Metrics        {base}/metrics\n"));
        out.push_str(&format!("  WHIP publish   {base}/whip/{{room}}   (OBS: Service WHIP, Bearer token below)\n"));
        out.push_str(&format!("  WHEP play      {base}/whep/{{room}}/{{user}}/main\n"));
        let rtmp_host = self.rtmp_host();
        out.push_str(&format!(
            "  RTMP (OBS)     server rtmp://{rtmp_host}:{}/push/{{room}}  stream key {{user}}?token=<token>  (passed through with x264 bframes=0, keyframe 1-2 s; B-frames are transcoded)\n",
            self.rtmp_addr.port()
        ));
        out.push_str(&format!("  Browser pages  {base}/  (room, publish, play, recordings player, admin dashboard)\n"));
        out.push_str(&format!(
            "  WebRTC UDP     {}  (candidates: {})\n",
            self.state.rtc.local_addr,
            self.state.rtc.candidates.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
        ));
        if let Some(tcp) = self.state.rtc.tcp_addr {
            out.push_str(&format!("  WebRTC TCP     {tcp}  (ICE over TCP, for clients whose UDP is blocked)\n"));
        }
        if let Some(cluster) = self.state.cluster.get() {
            out.push_str(&format!(
                "  Cluster        node '{}' at {} (redis {})\n",
                cluster.me,
                cluster.url,
                self.state.config.redacted().cluster.map(|c| c.redis_url).unwrap_or_default()
            ));
        }
        out.push_str(&format!("  Admin API key  {}  (send as 'Authorization: Bearer <key>')\n", key_path.display()));
        out.push_str(&format!("  Try it         curl -H \"Authorization: Bearer $(cat {})\" {base}/v1/app\n", key_path.display()));
        out.push_str("  Anchor token   room 'demo', user 'me', valid 6 h (mint more with `tessera token`):\n");
        out.push_str(&format!("    {demo_token}\n"));
        out
    }

    /// Serves until `shutdown` resolves, then drains requests and saves state.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(cluster) = self.state.cluster.get() {
            // Before the outbox's leftovers are taken up: they are shared too.
            cluster.share_outbox(&self.state.hooks);
        }
        self.state.hooks.start(Some(self.data_dir.root().join("outbox")));
        if let Some(mut events) = self.state.rtc.take_room_events() {
            // Room events go to the webhooks and to the room-signaling sessions; a room's end
            // frees its place in the cluster's directory.
            let (hooks, signaling) = (self.state.hooks.clone(), self.state.room_events.clone());
            let cluster = self.state.cluster.get().cloned();
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    // A room this node only relays is the room's node's to report.
                    if let Some(c) = cluster.as_ref().filter(|c| c.edges.relays(e.room())) {
                        if let tessera_engine::RoomEvent::RoomDismissed { room } = &e {
                            c.edges.forget(room);
                        }
                        let _ = signaling.send(e);
                        continue;
                    }
                    if let (Some(cluster), tessera_engine::RoomEvent::RoomCreated { room, .. }) = (&cluster, &e) {
                        cluster.continue_room_clock(&hooks, room.app.as_str(), room.room.as_str()).await;
                    }
                    if let (Some(cluster), tessera_engine::RoomEvent::RoomDismissed { room }) = (&cluster, &e) {
                        let (cluster, room) = (cluster.clone(), room.clone());
                        tokio::spawn(async move { cluster.room_ended(room.app.as_str(), room.room.as_str()).await });
                    }
                    let _ = signaling.send(e.clone());
                    hooks.room_event(e);
                }
            });
        }
        if self.state.config.tls_cert.is_none() {
            // SIGHUP reloads TLS files (`systemctl reload`); without them it must not end the
            // process, which is what the signal does by default.
            if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: nothing to reload (no tls_cert/tls_key)");
                    }
                });
            }
        }
        let router = api::router(self.state.clone());
        let heartbeat = self.state.cluster.get().map(|c| c.spawn_heartbeat(self.state.clone()));
        if let Some(cluster) = self.state.cluster.get() {
            cluster.share_room_clocks(&self.state.hooks);
        }
        let rtmp = tokio::spawn(crate::rtmp::serve(self.rtmp, self.state.clone()));
        self.state.tasks.ingests.resume(&self.state.rtc);
        self.state.tasks.recordings.resume(&self.state.config.data_dir, &self.state.rtc);
        self.state.tasks.relays.resume(&self.state.rtc);
        tessera_tasks::mix_jobs::resume(&self.state.tasks).await;
        // Auto recording watches rooms once a second.
        let auto_state = self.state.clone();
        let auto = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Ok(rooms) = auto_state.rtc.rooms_with_anchors().await else { continue };
                let apps = auto_state.store.snapshot();
                auto_state.tasks.recordings.auto_pass(&apps, &rooms, &auto_state.config.data_dir, &auto_state.rtc);
                for (app, job) in auto_state.tasks.recordings.ended_owned_jobs() {
                    auto_state.tasks.mix_jobs.stop_owned(&app, &job);
                }
            }
        });
        tracing::info!(addr = %self.rtmp_addr, "RTMP listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut drained = stop_rx.clone();
        let limits = &self.state.config.limits;
        let timeouts = crate::listen::Timeouts {
            idle: Duration::from_secs(limits.http_idle_timeout_s.max(1) as u64),
            request_read: Duration::from_secs(limits.http_request_timeout_s.max(1) as u64),
        };
        let http = crate::listen::HttpListener::new(crate::listen::GuardedListener::new(self.http, limits.http_max_connections as usize), timeouts);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        if let Some(redirect) = self.redirect {
            let listener = crate::listen::HttpListener::new(crate::listen::GuardedListener::new(redirect, limits.http_max_connections as usize), timeouts);
            tokio::spawn(crate::listen::serve(listener, redirect_router(self.http_addr.port()), None, stop_rx.clone()));
        }
        let server = crate::listen::serve(http, router, self.tls.map(|(acceptor, _)| acceptor), stop_rx.clone());
        tracing::info!(addr = %self.http_addr, "HTTP listening");
        // Graceful shutdown waits for every open connection; bound it so a stuck client cannot
        // hold the process.
        tokio::select! {
            () = server => {}
            _ = async move {
                let _ = drained.wait_for(|stopped| *stopped).await;
                tokio::time::sleep(DRAIN).await;
            } => tracing::warn!("connections still open after {DRAIN:?}; closing them"),
        }
        rtmp.abort();
        auto.abort();
        self.state.tasks.ingests.shutdown();
        self.state.tasks.mix_jobs.shutdown();
        self.state.tasks.relays.shutdown();
        self.state.tasks.recordings.shutdown().await;
        // Tasks report their ends as they stop; give those events a moment to reach the outbox.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.state.hooks.settle(Duration::from_secs(2)).await;
        // A cluster node leaves once its tasks are closed and their records shared: another
        // node takes them over at its next heartbeat (a drained node's stop hands them over).
        if let (Some(heartbeat), Some(cluster)) = (heartbeat, self.state.cluster.get()) {
            heartbeat.abort();
            cluster.leave().await;
        }
        if let Err(e) = self.state.store.flush() {
            tracing::error!("saving API key usage at shutdown failed: {e}");
        }
        tracing::info!("stopped");
    }
}

/// The TLS acceptor of `http_addr` if the config asks for HTTPS, and a line for the banner.
fn https_acceptor(config: &Config, data_dir: &DataDir, candidates: &[SocketAddr], http_addr: SocketAddr) -> Result<Option<(tokio_rustls::TlsAcceptor, String)>, String> {
    let (cert, about) = if let (Some(cert_path), Some(key_path)) = (&config.tls_cert, &config.tls_key) {
        let cert = crate::https::ServerCert::new(crate::https::load_pair(cert_path, key_path)?);
        crate::https::spawn_reloader(cert.clone(), cert_path.clone(), key_path.clone());
        let about = format!("{} (SHA-256 {}; reloaded on change or SIGHUP)", cert_path.display(), cert.fingerprint());
        (cert, about)
    } else if config.tls_self_signed {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let ips = config.public_ip.into_iter().chain(candidates.iter().map(|c| c.ip())).chain(Some(http_addr.ip()).filter(|ip| !ip.is_unspecified()));
        for ip in ips {
            if !names.contains(&ip.to_string()) {
                names.push(ip.to_string());
            }
        }
        let made = crate::https::self_signed(&data_dir.root().join("tls"), &names)?;
        let about = format!("self-signed for {} — browsers warn once; SHA-256 {} (public key sha256/{})", made.names.join(", "), made.fingerprint, made.spki_sha256);
        (crate::https::ServerCert::new(made.cert), about)
    } else {
        return Ok(None);
    };
    let config = crate::https::server_config(cert)?;
    Ok(Some((tokio_rustls::TlsAcceptor::from(config), about)))
}

/// Answers every plain-HTTP request with a permanent redirect to the same path over HTTPS.
fn redirect_router(https_port: u16) -> axum::Router {
    axum::Router::new().fallback(move |request: axum::extract::Request| async move {
        let host = request.headers().get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let target = https_location(host, https_port, request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        (axum::http::StatusCode::PERMANENT_REDIRECT, [(axum::http::header::LOCATION, target)])
    })
}

/// `https://<host without its port>[:port]<path>`.
fn https_location(host: &str, port: u16, path: &str) -> String {
    let bare = match host.rfind(']') {
        Some(end) => &host[..=end],
        None => host.split(':').next().unwrap_or(host),
    };
    if port == 443 {
        format!("https://{bare}{path}")
    } else {
        format!("https://{bare}:{port}{path}")
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redirects_keep_the_host_and_path_and_swap_the_port() {
        assert_eq!(super::https_location("example.org:8080", 8443, "/room.html?x=1"), "https://example.org:8443/room.html?x=1");
        assert_eq!(super::https_location("example.org", 443, "/"), "https://example.org/");
        assert_eq!(super::https_location("[::1]:80", 8443, "/a"), "https://[::1]:8443/a");
    }
}
