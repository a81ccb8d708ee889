//! Tessera's control plane and process shell: the typed configuration, the data dir and app
//! store, the REST API and HTTP server, RTMP and WHIP/WHEP entry, webhook delivery, metrics,
//! and start-up/shut-down. Media work lives in `tessera-engine`, long-running tasks in
//! `tessera-tasks`; this crate wires them to the network and the API.

pub mod api;
pub mod cluster;
pub mod cluster_relay;
pub mod config;
pub mod entry;
pub mod error;
pub mod https;
pub mod listen;
pub mod metrics;
pub mod rtmp;
pub mod rtmp_transcode;
pub mod run;
pub mod storage;
pub mod store;
pub mod tls;
pub mod webhook;

pub use config::{Config, ConfigError, Overrides};
pub use run::{Server, StartError};

pub use tessera_tasks::now_ms;
