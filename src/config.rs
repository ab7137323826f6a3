//! Application configuration: one struct per subsystem, composed here, validated before anything
//! binds a port.
//!
//! Sources, later ones winning: `config/default.toml` (embedded in the binary, so it runs from
//! any directory), an optional `--config FILE`, then environment variables
//! `RAMPART__SECTION__KEY` (double underscores; e.g. `RAMPART__HTTP__BIND=127.0.0.1:0`).
//! Unknown keys and bad values are errors naming the key; `main` exits with code 2 on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::alerts::AlertsConfig;
use crate::auth::AuthConfig;
use crate::chat::{ApiConfig, DeliveryConfig, PipelineConfig, SearchConfig, WsConfig};
use crate::crash::CrashConfig;
use crate::logging::LogConfig;
use crate::storage::StorageConfig;
use crate::supervision::SupervisionConfig;
use crate::system_monitor::SystemMonitorConfig;

/// The defaults, as shipped in `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides; nesting is separated by a double underscore.
pub const ENV_PREFIX: &str = "RAMPART__";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub chaos: ChaosConfig,
    pub supervisor: SupervisionConfig,
    pub system_monitor: SystemMonitorConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub ws: WsConfig,
    pub api: ApiConfig,
    pub pipeline: PipelineConfig,
    pub delivery: DeliveryConfig,
    pub search: SearchConfig,
    /// The chat store when `storage.kind = "mongodb"`.
    pub mongodb: crate::storage::mongodb::MongoConfig,
    /// The search engine when `search.kind = "elasticsearch"`.
    pub elasticsearch: crate::storage::elasticsearch::ElasticsearchConfig,
    /// `transport.kind`: embedded (in process, the default) or kafka.
    pub transport: crate::transport::TransportConfig,
    /// The brokers and topics when `transport.kind = "kafka"`.
    pub kafka: crate::transport::KafkaConfig,
    /// WebRTC rooms (`GET /rtc`; needs a build with `--features sfu`).
    pub sfu: crate::sfu::SfuConfig,
    pub log: LogConfig,
    pub crash: CrashConfig,
    pub alerts: AlertsConfig,
    pub shutdown: ShutdownConfig,
    pub health: HealthConfig,
}

/// Shortest `http.disconnect_timeout` that actix-http's 500 ms date cache handles (see the field).
pub const MIN_DISCONNECT_TIMEOUT: Duration = Duration::from_millis(600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on, `IP:PORT`. Port 0 picks a free port (the log line
    /// `listening on http://ADDR` tells which).
    pub bind: SocketAddr,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// After the last byte of a response on a connection rampart closes, how long it keeps
    /// reading (and discarding) what the client still sends before closing the TCP connection.
    /// A WebSocket after its close handshake is such a connection, and RFC 6455 wants it closed
    /// at once, so shorter is better; but actix-http computes this deadline from a clock it
    /// caches for 500 ms, and a deadline already past when it is set is never polled again (the
    /// connection then stays open until the client does something). Hence at least 600 ms.
    #[serde(with = "humantime_serde")]
    pub disconnect_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { bind: SocketAddr::from(([127, 0, 0, 1], 8080)), workers: 0, disconnect_timeout: MIN_DISCONNECT_TIMEOUT }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for every `/admin/*` route and the console. Empty: generated once into
    /// `<data_dir>/admin_token` (mode 0600) and reused; the admin API is never open. In
    /// production set it, through `RAMPART__ADMIN__TOKEN` rather than in a file.
    pub token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosConfig {
    /// Enables `/admin/chaos/*` (deliberate panics for verifying supervision). Off in production.
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Budget for an orderly shutdown after SIGTERM: HTTP drain, then actors in reverse start
    /// order. Keep it under the orchestrator's grace period (Kubernetes: 30s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// After SIGTERM, `/ready` fails at once but rampart keeps serving this long before it stops
    /// accepting, so load balancers take it out of rotation first.
    #[serde(with = "humantime_serde")]
    pub readiness_delay: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(25), readiness_delay: Duration::from_secs(1) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Each readiness check must answer within this; a slower check counts as failed.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { check_timeout: Duration::from_secs(2) }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment.merge(env).extract().map_err(|error| ConfigError::Invalid(describe(error)))?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Rules serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        self.supervisor.validate()?;
        self.system_monitor.validate()?;
        if self.shutdown.timeout.is_zero() {
            return Err("shutdown.timeout must be longer than 0s".into());
        }
        if self.shutdown.readiness_delay >= self.shutdown.timeout {
            return Err("shutdown.readiness_delay must be shorter than shutdown.timeout".into());
        }
        if self.http.disconnect_timeout < MIN_DISCONNECT_TIMEOUT {
            return Err(format!(
                "http.disconnect_timeout must be at least {}ms (shorter deadlines can leave connections open indefinitely)",
                MIN_DISCONNECT_TIMEOUT.as_millis()
            ));
        }
        if self.health.check_timeout.is_zero() {
            return Err("health.check_timeout must be longer than 0s".into());
        }
        if self.storage.kind == crate::storage::StorageKind::Mongodb {
            self.mongodb.validate()?;
        }
        if self.search.kind == crate::storage::SearchKind::Elasticsearch {
            self.elasticsearch.validate()?;
        }
        // Whether this build has Kafka support is checked at start, not here: check-config
        // validates a deployment's settings on any build.
        if self.transport.kind == crate::transport::TransportKind::Kafka {
            if self.storage.kind != crate::storage::StorageKind::Mongodb {
                return Err(
                    "transport.kind = \"kafka\" needs storage.kind = \"mongodb\": every process writes the same store"
                        .into(),
                );
            }
            self.kafka.validate()?;
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err("storage.data_dir must not be empty".into());
        }
        if self.storage.readers == 0 {
            return Err("storage.readers must be at least 1".into());
        }
        if self.storage.wal_checkpoint_bytes == 0
            || self.storage.wal_size_limit_bytes < self.storage.wal_checkpoint_bytes
        {
            return Err("storage.wal_checkpoint_bytes must be above 0 and at most storage.wal_size_limit_bytes".into());
        }
        self.auth.validate()?;
        self.ws.validate()?;
        self.api.validate()?;
        self.pipeline.validate()?;
        self.delivery.validate()?;
        self.search.validate()?;
        self.sfu.validate()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|error| format!("log.filter is not a valid filter: {error}"))?;
        Ok(())
    }
}

/// One line per problem, each naming the key (`http.bind`) and where the value came from.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            let source = error
                .metadata
                .as_ref()
                .map(|metadata| match &error.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                    Some(source) => format!(" (from {} {source})", metadata.name),
                    None => format!(" (from {})", metadata.name),
                })
                .unwrap_or_default();
            let kind = error.kind.to_string();
            if key.is_empty() {
                format!("{kind}{source}")
            } else {
                format!("key `{key}`: {kind}{source}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> Env {
        // figment's Env reads the real environment; a custom prefix keeps tests independent of it
        // and of each other.
        let prefix = format!("RAMPART_TEST_{}__", pairs.len() + pairs.iter().map(|p| p.0.len()).sum::<usize>());
        for (key, value) in pairs {
            std::env::set_var(format!("{prefix}{key}"), value);
        }
        Env::prefixed(&prefix).split("__")
    }

    #[test]
    fn embedded_defaults_match_the_rust_defaults() {
        let parsed: Config = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        assert_eq!(parsed, Config::default(), "config/default.toml and the Default impls drifted apart");
    }

    #[test]
    fn env_overrides_nested_keys() {
        let env =
            env_of(&[("HTTP__BIND", "127.0.0.1:0"), ("CHAOS__ENABLED", "true"), ("SUPERVISOR__BACKOFF__MAX", "2s")]);
        let config = Config::load_from(None, env).unwrap();
        assert_eq!(config.http.bind.port(), 0);
        assert!(config.chaos.enabled);
        assert_eq!(config.supervisor.backoff.max, Duration::from_secs(2));
    }

    #[test]
    fn unknown_key_is_named() {
        let env = env_of(&[("HTTP__BINDD", "127.0.0.1:0")]);
        let error = Config::load_from(None, env).unwrap_err().to_string();
        assert!(error.contains("bindd"), "{error}");
    }

    #[test]
    fn a_disconnect_timeout_actix_cannot_honour_is_refused() {
        let error = Config::load_from(None, env_of(&[("HTTP__DISCONNECT_TIMEOUT", "200ms")])).unwrap_err();
        assert!(error.to_string().contains("http.disconnect_timeout must be at least 600ms"), "{error}");
    }

    #[test]
    fn bad_value_is_named() {
        let env = env_of(&[("SUPERVISOR__WITHIN", "soon")]);
        let error = Config::load_from(None, env).unwrap_err().to_string();
        assert!(error.contains("supervisor.within"), "{error}");
    }
}
