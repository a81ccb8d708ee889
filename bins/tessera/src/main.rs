//! `tessera`: the media server and its command-line tools (PRODUCT.md §2).

use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_model::token::{self, TokenClaims};
use tessera_model::{AppId, Privileges, Role, RoomId, UserId};
use tessera_server::store::{AppStore, DataDir, StoreError};
use tessera_server::{Config, Overrides, Server};

mod remote;

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera: a self-hosted real-time media server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from; shared by every subcommand.
#[derive(Args, Clone)]
pub(crate) struct ConfigArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, global = true, value_name = "FILE", env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (apps, keys, tasks, recordings). Default ./tessera-data.
    #[arg(long, global = true, value_name = "DIR", env = "TESSERA_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// What `serve` listens on; `config` takes the same, to print what `serve` would run with.
#[derive(Args, Clone)]
struct ListenArgs {
    /// HTTP listen address. Default 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// RTMP listen address. Default 0.0.0.0:1935.
    #[arg(long, value_name = "ADDR")]
    rtmp_addr: Option<SocketAddr>,
    /// WebRTC UDP address. Default 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR")]
    rtc_udp_addr: Option<SocketAddr>,
    /// Public IP for ICE candidates and printed URLs.
    #[arg(long, value_name = "IP")]
    public_ip: Option<IpAddr>,
    /// Development mode: room.html can join with just a name (POST /dev/token mints tokens
    /// for clients on this machine).
    #[arg(long)]
    dev: bool,
    /// HTTPS on the HTTP address: PEM certificate chain (reloaded when it changes or on SIGHUP).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// HTTPS with a certificate made for this machine (a LAN trial; prints its fingerprint).
    #[arg(long, conflicts_with = "tls_cert")]
    tls_self_signed: bool,
    /// Also listen for plain HTTP here and redirect it to HTTPS.
    #[arg(long, value_name = "ADDR")]
    http_redirect_addr: Option<SocketAddr>,
    /// Media workers sharing the WebRTC port (rooms spread over them). Default: one per core.
    #[arg(long, value_name = "N")]
    media_workers: Option<u32>,
}

impl ListenArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            http_addr: self.http_addr,
            rtmp_addr: self.rtmp_addr,
            rtc_udp_addr: self.rtc_udp_addr,
            public_ip: self.public_ip,
            data_dir: None,
            dev: self.dev,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_self_signed: self.tls_self_signed,
            http_redirect_addr: self.http_redirect_addr,
            media_workers: self.media_workers,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (zero configuration needed).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Print a user token signed with the app's newest secret.
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        room: String,
        #[arg(long)]
        user: String,
        /// anchor (20) or audience (21).
        #[arg(long, default_value = "anchor")]
        role: Role,
        /// Privilege bitmask 0-255; defaults to 255 for anchors and 171 for audience.
        #[arg(long)]
        privileges: Option<u8>,
        /// Lifetime, e.g. 90s, 30m, 6h, 7d (at most 30 days).
        #[arg(long, default_value = "6h")]
        ttl: humantime::Duration,
        #[arg(long, default_value = "default")]
        app: String,
        /// Create the data dir if there is none. A token signed there is accepted only by a
        /// server that runs on that data dir.
        #[arg(long)]
        init: bool,
    },
    /// Manage API keys in the data dir (while the server is stopped; use the REST API while it runs).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Print the configuration `serve` would run with given the same file, environment and
    /// flags: every key, secrets redacted.
    Config {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Merge a single-stream recording's audio and video HLS into MP4s per user (RECORDING.md §9).
    Merge {
        /// The recording task's directory.
        #[arg(short = 'f', value_name = "DIR")]
        dir: PathBuf,
        /// 0: one file per segment per user; 1: one file per user (gaps filled).
        #[arg(short = 'm', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        mode: u8,
        /// With -m 1: drop the gaps instead of filling them.
        #[arg(short = 's')]
        skip_gaps: bool,
        /// 0: main video + audio; 1: main video, else aux; 2: aux video + audio.
        #[arg(short = 'a', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        av: u8,
        /// Output frame rate (5–120).
        #[arg(short = 'p', default_value_t = 15)]
        fps: u32,
        /// Output size (default: the largest input).
        #[arg(short = 'r', num_args = 2, value_names = ["W", "H"])]
        size: Option<Vec<u32>>,
        /// Output directory (default: the current one).
        #[arg(short = 'o', value_name = "DIR", default_value = ".")]
        out_dir: PathBuf,
    },
    /// Rooms of a running server: list, show, kick a user, dismiss.
    Rooms {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        #[command(subcommand)]
        command: remote::RoomsCommand,
    },
    /// The nodes of a cluster (`[cluster]`): list them, drain one.
    Cluster {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        #[command(subcommand)]
        command: remote::ClusterCommand,
    },
    /// Mix jobs, relays, recordings and ingests of a running server: list, show, stop.
    Tasks {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        #[command(subcommand)]
        command: remote::TasksCommand,
    },
    /// Start or stop a recording on a running server.
    Record {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        #[command(subcommand)]
        command: remote::RecordCommand,
    },
    /// Start or stop a relay to RTMP URLs on a running server.
    Relay {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        #[command(subcommand)]
        command: remote::RelayCommand,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it (shown only once).
    Create {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, default_value = "default")]
        app: String,
        /// full-access or read-only.
        #[arg(long, default_value = "full-access")]
        preset: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List the keys of every app (ids and policies, never the keys).
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// A failure with the exit code it deserves: 2 for bad configuration or start-up causes.
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl ToString) -> Failure {
        Failure { code: 2, message: message.to_string() }
    }
    fn runtime(message: impl ToString) -> Failure {
        Failure { code: 1, message: message.to_string() }
    }
}

pub(crate) fn load_config(args: &ConfigArgs, extra: Overrides) -> Result<Config, Failure> {
    let overrides = Overrides { data_dir: args.data_dir.clone(), ..extra };
    Config::load(args.config.as_deref(), &overrides).map_err(Failure::usage)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();
}

/// The app store for a CLI command: set up the data dir if nobody has yet, else read it as it
/// is (a running server may hold the lock; reading its atomically replaced file is safe).
fn cli_store(config: &Config) -> Result<AppStore, Failure> {
    match DataDir::open_locked(&config.data_dir) {
        Ok(dir) => AppStore::load_or_init(&dir, config, tessera_server::now_ms()).map(|(s, _)| s).map_err(Failure::runtime),
        Err(StoreError::Locked(_)) => AppStore::load_shared(&DataDir::open_shared(&config.data_dir))
            .map_err(Failure::runtime)?
            .ok_or_else(|| Failure::runtime(format!("{} has no apps.json yet", config.data_dir.display()))),
        Err(e) => Err(Failure::runtime(e)),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve { config, listen } => {
            let config = load_config(&config, listen.overrides())?;
            init_logging(&config.log);
            let rt = tokio::runtime::Runtime::new().map_err(Failure::runtime)?;
            rt.block_on(async {
                let server = Server::start(config).await.map_err(Failure::usage)?;
                print!("{}", server.banner());
                use std::io::Write;
                let _ = std::io::stdout().flush();
                server.run(tessera_server::run::shutdown_signal()).await;
                Ok(())
            })
        }
        Command::Token { config, room, user, role, privileges, ttl, app, init } => {
            let config = load_config(&config, Overrides::default())?;
            let app = AppId::parse(&app).map_err(Failure::usage)?;
            let room = RoomId::parse(&room).map_err(Failure::usage)?;
            let user = UserId::parse(&user).map_err(Failure::usage)?;
            if user.is_reserved() {
                return Err(Failure::usage(format!("user id '{user}' is reserved: mix_, rec_ and relay_ belong to the server")));
            }
            let ttl_s = ttl.as_secs() as i64;
            if !(1..=30 * 24 * 3600).contains(&ttl_s) {
                return Err(Failure::usage("--ttl must be between 1s and 30d"));
            }
            // A token from a data dir the server does not run on is refused by the server
            // (token_bad_signature): never make one up silently.
            if !init && !DataDir::has_apps(&config.data_dir) {
                return Err(Failure::usage(format!(
                    "no Tessera data dir at {} (no apps.json there): run `tessera token` in the directory `tessera serve` runs in, \
                     or give it the server's --data-dir, --config or TESSERA_DATA_DIR; --init creates a new data dir",
                    config.data_dir.display()
                )));
            }
            let store = cli_store(&config)?;
            let apps = store.snapshot();
            let app = apps.get(&app).ok_or_else(|| Failure::usage(format!("app '{app}' does not exist in {}", config.data_dir.display())))?;
            let privileges = privileges.map(Privileges::from_bits).unwrap_or(role.default_privileges());
            let claims = TokenClaims {
                app: app.id.to_string(),
                room: room.to_string(),
                user: user.to_string(),
                role: Some(role.code()),
                privileges: Some(privileges.bits() as i64),
                nbf: None,
                exp: tessera_server::now_ms() / 1000 + ttl_s,
                info: None,
            };
            let secret = app.newest_secret();
            println!("{}", token::mint(&claims, &secret.kid, &secret.secret));
            Ok(())
        }
        Command::ApiKey { command: ApiKeyCommand::Create { config, app, preset, name } } => {
            let config = load_config(&config, Overrides::default())?;
            let app = AppId::parse(&app).map_err(Failure::usage)?;
            let policy = tessera_model::Policy::preset(&preset).ok_or_else(|| Failure::usage("--preset must be full-access or read-only"))?;
            let dir = DataDir::open_locked(&config.data_dir).map_err(|e| match e {
                StoreError::Locked(_) => Failure::runtime(format!("a server is running on {}; create keys with POST /v1/api-keys while it runs", config.data_dir.display())),
                other => Failure::runtime(other),
            })?;
            let (store, _) = AppStore::load_or_init(&dir, &config, tessera_server::now_ms()).map_err(Failure::runtime)?;
            let issued = store.create_api_key(&app, &name, policy, tessera_server::now_ms()).map_err(Failure::runtime)?;
            println!("{}", issued.key);
            eprintln!("created API key {} for app '{app}' ({preset}); it is shown only once", issued.record.id);
            Ok(())
        }
        Command::ApiKey { command: ApiKeyCommand::List { config } } => {
            let config = load_config(&config, Overrides::default())?;
            let store = cli_store(&config)?;
            for app in store.snapshot().values() {
                for k in &app.api_keys {
                    let line = serde_json::json!({"app": app.id, "id": k.id, "name": k.name, "policy": k.policy, "created_at": k.created_at, "last_used_at": k.last_used_at});
                    println!("{line}");
                }
            }
            Ok(())
        }
        Command::Config { config, listen } => {
            let config = load_config(&config, listen.overrides())?;
            print!("{}", config.effective().redacted().to_toml());
            Ok(())
        }
        Command::Rooms { remote, command } => remote::rooms(&remote::Remote::new(&remote)?, command),
        Command::Cluster { remote, command } => remote::cluster(&remote::Remote::new(&remote)?, command),
        Command::Tasks { remote, command } => remote::tasks(&remote::Remote::new(&remote)?, command),
        Command::Record { remote, command } => remote::record(&remote::Remote::new(&remote)?, command),
        Command::Relay { remote, command } => remote::relay(&remote::Remote::new(&remote)?, command),
        Command::Merge { dir, mode, skip_gaps, av, fps, size, out_dir } => {
            use std::io::Write as _;
            let options = tessera_tasks::merge::MergeOptions { dir, mode, skip_gaps, av, fps: fps.clamp(5, 120), size: size.map(|v| (v[0], v[1])), out_dir };
            let mut last = String::new();
            let written = tessera_tasks::merge::run(&options, &mut |label, percent| {
                let bar = "#".repeat(percent as usize / 5);
                let line = format!("\rmerging {label} [{bar:<20}] {percent:>3}%");
                if line != last {
                    let _ = write!(std::io::stderr(), "{line}");
                    last = line;
                }
            })
            .map_err(Failure::runtime)?;
            eprintln!();
            for p in written {
                println!("{}", p.display());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tessera: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
