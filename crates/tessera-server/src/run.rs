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
}

pub struct Server {
    state: AppState,
    http: TcpListener,
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
        )?;
        let tls = crate::tls::client_config(config.outbound_ca_file.as_deref()).map_err(StartError::Tls)?;
        let data_dir = DataDir::open_locked(&config.data_dir)?;
        let (store, first_start) = AppStore::load_or_init(&data_dir, &config, crate::now_ms())?;
        // Validated with the config; the default policy if the lists are empty.
        if let Ok(policy) = tessera_tasks::outbound::OutboundPolicy::from_lists(&config.security.outbound_deny, &config.security.outbound_allow) {
            tessera_tasks::outbound::install(policy);
        }
        let state = AppState::new(config, store, rtc, true, tls);
        Ok(Server { state, http, rtmp, rtmp_addr, http_addr, data_dir, first_start })
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
        match host {
            std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{}", self.http_addr.port()),
            v4 => format!("http://{v4}:{}", self.http_addr.port()),
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
            user: "demo".into(),
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
        out.push_str(&format!("  Health         {base}/healthz\n"));
        out.push_str(&format!("  Metrics        {base}/metrics\n"));
        out.push_str(&format!("  WHIP publish   {base}/whip/{{room}}   (OBS: Service WHIP, Bearer token below)\n"));
        out.push_str(&format!("  WHEP play      {base}/whep/{{room}}/{{user}}/main\n"));
        let rtmp_host = match (self.state.config.public_ip, self.rtmp_addr.ip()) {
            (Some(ip), _) => ip.to_string(),
            (None, ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
            (None, ip) => ip.to_string(),
        };
        out.push_str(&format!(
            "  RTMP (OBS)     server rtmp://{rtmp_host}:{}/push/{{room}}  stream key {{user}}?token=<token>  (passed through with x264 bframes=0, keyframe 1-2 s; B-frames are transcoded)\n",
            self.rtmp_addr.port()
        ));
        out.push_str(&format!("  Browser pages  {base}/room.html  {base}/publish.html  {base}/play.html\n"));
        out.push_str(&format!(
            "  WebRTC UDP     {}  (candidates: {})\n",
            self.state.rtc.local_addr,
            self.state.rtc.candidates.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
        ));
        if let Some(tcp) = self.state.rtc.tcp_addr {
            out.push_str(&format!("  WebRTC TCP     {tcp}  (ICE over TCP, for clients whose UDP is blocked)\n"));
        }
        out.push_str(&format!("  Admin API key  {}  (send as 'Authorization: Bearer <key>')\n", key_path.display()));
        out.push_str(&format!("  Try it         curl -H \"Authorization: Bearer $(cat {})\" {base}/v1/app\n", key_path.display()));
        out.push_str("  Anchor token   room 'demo', user 'demo', valid 6 h (mint more with `tessera token`):\n");
        out.push_str(&format!("    {demo_token}\n"));
        out
    }

    /// Serves until `shutdown` resolves, then drains requests and saves state.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        self.state.hooks.start(Some(self.data_dir.root().join("outbox")));
        if let Some(mut events) = self.state.rtc.take_room_events() {
            // Room events go to the webhooks and to the room-signaling sessions.
            let (hooks, signaling) = (self.state.hooks.clone(), self.state.room_events.clone());
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    let _ = signaling.send(e.clone());
                    hooks.room_event(e);
                }
            });
        }
        let router = api::router(self.state.clone());
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
        // The peer address reaches handlers that need it (dev tokens for local clients only).
        let server = axum::serve(http, router.into_make_service_with_connect_info::<crate::listen::PeerAddr>()).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        tracing::info!(addr = %self.http_addr, "HTTP listening");
        // Graceful shutdown waits for every open connection; bound it so a stuck client cannot
        // hold the process.
        let result = tokio::select! {
            r = server => r,
            _ = async move {
                let _ = drained.wait_for(|stopped| *stopped).await;
                tokio::time::sleep(DRAIN).await;
            } => {
                tracing::warn!("connections still open after {DRAIN:?}; closing them");
                Ok(())
            }
        };
        rtmp.abort();
        auto.abort();
        self.state.tasks.ingests.shutdown();
        self.state.tasks.mix_jobs.shutdown();
        self.state.tasks.relays.shutdown();
        self.state.tasks.recordings.shutdown().await;
        // Tasks report their ends as they stop; give those events a moment to reach the outbox.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.state.hooks.settle(Duration::from_secs(2)).await;
        if let Err(e) = self.state.store.flush() {
            tracing::error!("saving API key usage at shutdown failed: {e}");
        }
        tracing::info!("stopped");
        result
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
