//! The application: builds the supervision tree, serves HTTP, and shuts both down in order.
//!
//! Owns: start-up order (tree, then components, then the listener) and the shutdown sequence
//! (stop accepting and drain HTTP, then stop actors in reverse start order). Must never exit
//! without running the shutdown sequence, whatever ended the run.

mod chat;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use crate::alerts::AlertSender;
use crate::auth::JwksRefresher;
use crate::chat::DeadLetterSink;
use crate::config::Config;
use crate::crash::{CrashRecorder, CrashStore};
use crate::http::{self, AppState};
use crate::logging::LogWriter;
use crate::queue::WakeQueue;
use crate::resilience::CircuitBreakers;
use crate::supervision::{ChildSpec, QuarantineRecord, QuarantineStore, SupervisionContext, SupervisionTree};

// The observability actors are supervised like every other; their modules stay below
// supervision (it reports through them), so the composition root makes them supervisable.
crate::supervised!(AlertSender);
crate::supervised!(CrashRecorder);
use crate::system_monitor::SystemMonitor;

/// Process exit code when the supervision tree gave up (root escalation): EX_SOFTWARE.
pub const EXIT_FATAL: u8 = 70;
/// Where the generated admin token lives, under `storage.data_dir`.
pub const ADMIN_TOKEN_FILE: &str = "admin_token";
/// Process exit code for configuration and usage errors.
pub const EXIT_CONFIG: u8 = 2;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown was requested (SIGTERM/SIGINT) and completed.
    Clean,
    /// The supervision tree gave up; the reason is logged.
    Fatal(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Clean => 0,
            Outcome::Fatal(_) => EXIT_FATAL,
        }
    }
}

/// Runs rampart until `shutdown` resolves or the tree gives up. Must be called inside an actix
/// system (`actix_rt::System::new().block_on(..)`).
pub async fn run(mut config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<Outcome> {
    crate::tls::install_crypto_provider();
    // Like the JWT secret: with no admin token configured, the embedded default generates one
    // once, so the admin API and the console work on a first run without ever being open.
    let generated_admin_token = if config.admin.token.is_empty() {
        let path = config.storage.data_dir.join(ADMIN_TOKEN_FILE);
        let token = crate::secret_file::read_or_create(&path)
            .with_context(|| format!("reading or creating the admin token {}", path.display()))?;
        let token = String::from_utf8(token)
            .with_context(|| format!("the admin token in {} is not UTF-8 text", path.display()))?;
        // A token an operator wrote with `echo` ends in a newline nobody can type.
        config.admin.token = token.trim().to_owned();
        Some(path)
    } else {
        None
    };
    let config = Arc::new(config);
    let quarantine = QuarantineStore::new(QuarantineStore::DEFAULT_CAPACITY);
    // Quarantined messages are kept in memory for /admin/quarantine and written to dead letters.
    let dead_letter_queue = dead_letter_queue();
    let sink = Arc::new(DeadLetterSink { memory: quarantine.clone(), queue: dead_letter_queue });
    let context = SupervisionContext::new(sink);
    let tree = SupervisionTree::start(&config.supervisor, context.clone()).context("starting the supervision tree")?;

    crate::crash::actions::configure(config.crash.recent_actions);
    // First child, so it stops last and records everything else's shutdown. Its own thread:
    // a blocked stdout (full pipe) or slow disk then stalls only the writer.
    let log_arbiter = actix_rt::Arbiter::new();
    if let Some(pipe) = crate::logging::pipe() {
        let log_config = config.log.clone();
        tree.root()
            .spawn(
                ChildSpec::new("log_writer", move || LogWriter::new(pipe, log_config.clone()))
                    .on_arbiter(log_arbiter.handle()),
            )
            .context("starting the log writer")?;
    }

    // Its own thread too: symbolizing backtraces and writing files block.
    let crash_arbiter = actix_rt::Arbiter::new();
    let crashes = CrashStore::new(config.crash.keep);
    let crash_store = crashes.clone();
    let data_dir = config.storage.data_dir.clone();
    tree.root()
        .spawn(
            ChildSpec::new("crash_recorder", move || CrashRecorder::new(crash_store.clone(), &data_dir))
                .on_arbiter(crash_arbiter.handle()),
        )
        .context("starting the crash recorder")?;

    // Its own thread: delivering to Slack and webhooks is network I/O with retries.
    let alerts_arbiter = actix_rt::Arbiter::new();
    let alerts_config = config.alerts.clone();
    tree.root()
        .spawn(
            ChildSpec::new("alert_sender", move || AlertSender::new(alerts_config.clone()))
                .on_arbiter(alerts_arbiter.handle()),
        )
        .context("starting the alert sender")?;

    let monitor_config = config.system_monitor.clone();
    let monitor_registry = context.registry.clone();
    let system_monitor = tree
        .root()
        .spawn(ChildSpec::new("system_monitor", move || {
            SystemMonitor::new(monitor_config.clone(), monitor_registry.clone())
        }))
        .context("starting the system monitor")?;

    let circuit_breakers = CircuitBreakers::new();
    let wired = match chat::start(tree.root(), &config, &circuit_breakers, dead_letter_queue).await {
        Ok(wired) => wired,
        Err(error) => {
            tree.shutdown().await;
            return Err(error);
        }
    };
    let chat = wired.chat;
    if let Some(jwks) = wired.tokens.jwks() {
        let interval = config.auth.jwks_refresh_interval;
        let spec = ChildSpec::new("jwks_refresher", move || JwksRefresher::new(jwks.clone(), interval));
        if let Err(error) = tree.root().spawn(spec).context("starting the JWKS refresher") {
            tree.shutdown().await;
            return Err(error);
        }
    }

    #[cfg(feature = "sfu")]
    let sfu = if config.sfu.enabled {
        match crate::sfu::start(tree.root(), &config.sfu, &config.ws, chat.directory.clone(), wired.rooms.clone()) {
            Ok(sfu) => Some(sfu),
            Err(error) => {
                tree.shutdown().await;
                return Err(error);
            }
        }
    } else {
        None
    };

    let shutting_down = Arc::new(AtomicBool::new(false));
    let state = AppState {
        #[cfg(feature = "sfu")]
        sfu: sfu.clone(),
        started_at: std::time::SystemTime::now(),
        chat: chat.clone(),
        tokens: wired.tokens,
        #[cfg(feature = "kafka")]
        kafka: wired.kafka,
        circuit_breakers,
        shutting_down: shutting_down.clone(),
        config: config.clone(),
        registry: context.registry.clone(),
        journal: context.journal.clone(),
        quarantine,
        system_monitor,
        crashes,
    };
    // In-flight requests may use half the shutdown budget, so actors always keep the other half
    // to stop gracefully.
    let http_drain = (config.shutdown.timeout / 2).max(std::time::Duration::from_secs(1));
    let (server, address) = match http::bind(&config, state, http_drain) {
        Ok(bound) => bound,
        Err(error) => {
            tree.shutdown().await;
            return Err(error).with_context(|| format!("binding http.bind = {}", config.http.bind));
        }
    };
    #[cfg(feature = "sfu")]
    if let Some(sfu) = &sfu {
        if let Err(error) = sfu.set_bound_address(address) {
            tree.shutdown().await;
            return Err(anyhow::anyhow!(error));
        }
    }
    tracing::info!(address = %address, "listening on http://{address}");
    if let Some(path) = generated_admin_token {
        tracing::info!(
            token_file = %path.display(),
            "console: http://{address}/console (admin token in {}; generated because admin.token is empty: set RAMPART__ADMIN__TOKEN in production)",
            path.display()
        );
    }
    let server_handle = server.handle();
    let mut server_task = crate::tasks::spawn_owned("http.server", server);

    let outcome = tokio::select! {
        () = shutdown => {
            tracing::info!("shutdown requested");
            Outcome::Clean
        }
        reason = tree.fatal() => Outcome::Fatal(reason),
        result = &mut server_task => {
            let reason = match result {
                Ok(Ok(())) => "http server stopped unexpectedly".to_owned(),
                Ok(Err(error)) => format!("http server failed: {error}"),
                Err(error) => format!("{error}"),
            };
            tracing::error!(reason, "http server ended");
            Outcome::Fatal(reason)
        }
    };

    let budget = config.shutdown.timeout;
    shutting_down.store(true, Ordering::Release);
    let orderly = async {
        // Fail readiness but keep serving for a moment, so load balancers stop routing here; a
        // fatal error skips the courtesy.
        if outcome == Outcome::Clean && !config.shutdown.readiness_delay.is_zero() {
            tracing::info!(
                delay_ms = config.shutdown.readiness_delay.as_millis() as u64,
                "readiness failing; draining"
            );
            tokio::time::sleep(config.shutdown.readiness_delay).await;
        }
        // WebSocket sessions and SFU peers first: each closes its socket with 1001 (clients
        // reconnect elsewhere; a peer first says it `left`), which also ends those connections so
        // the HTTP drain can finish.
        #[cfg(feature = "sfu")]
        let peers = async {
            if let Some(sfu) = &sfu {
                sfu.peers.shutdown().await;
            }
        };
        #[cfg(not(feature = "sfu"))]
        let peers = async {};
        tokio::join!(chat.sessions.shutdown(), peers);
        // Stop accepting, let in-flight requests finish, then stop the actors they talk to.
        server_handle.stop(true).await;
        tree.shutdown().await;
    };
    if tokio::time::timeout(budget, orderly).await.is_err() {
        tracing::error!(budget_ms = budget.as_millis() as u64, "shutdown budget exceeded; exiting anyway");
    }
    if !server_task.is_finished() {
        server_task.abort();
    }
    tracing::info!(exit_code = outcome.exit_code(), "stopped");
    log_arbiter.stop();
    crash_arbiter.stop();
    alerts_arbiter.stop();
    Ok(outcome)
}

/// The process-wide queue from the quarantine sink to the dead-letter writer. `'static` like the
/// log pipe: producers must never block on, or outlive, a consumer's lifetime.
fn dead_letter_queue() -> &'static WakeQueue<QuarantineRecord> {
    static QUEUE: std::sync::OnceLock<WakeQueue<QuarantineRecord>> = std::sync::OnceLock::new();
    QUEUE.get_or_init(|| WakeQueue::new(crate::chat::DEAD_LETTER_QUEUE_CAPACITY))
}

/// Resolves on the first SIGTERM or SIGINT. Installs the handlers immediately, so a signal
/// that arrives during start-up is not lost.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
