//! `TurnServer` (`/root/sfu/turn`): the embedded TURN relay (RFC 8656) for participants whose
//! networks block direct media: UDP, TCP and TLS listeners, short-lived credentials any instance
//! can check (`credentials`), and no relaying beyond the deployment's own media addresses
//! (`guard`).
//!
//! Owns: the listening sockets, bound once at start-up (`Turn::bind`) so a restart serves the
//! same ports and a taken port fails start-up with a clear error; each incarnation runs
//! webrtc-rs's `turn` server on a thread of its own (a current-thread tokio runtime) over
//! clones of those sockets. Restart: permanent. A crash or restart ends that thread and with it
//! every allocation and TCP/TLS connection. Once the next incarnation serves, the SFU is told
//! (`Turn::on_restart`): every participant whose media came through a relay is asked to
//! reconnect at once (new allocations), instead of waiting ~30 s for ICE to declare its
//! connections failed. Nothing durable is lost: TURN holds no state worth keeping.

mod credentials;
mod guard;
mod stream;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use anyhow::Context as _;

pub use credentials::{Credentials, IceServer};
use guard::{AllowedPeers, Guarded, Quota, Relays};

use super::SfuConfig;

/// What every incarnation of the server shares: sockets, credentials, where clients reach it.
pub struct Turn {
    credentials: Arc<Credentials>,
    urls: Vec<String>,
    realm: String,
    udp: Option<UdpSocket>,
    tcp: Option<std::net::TcpListener>,
    tls: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    relays: RelaySettings,
    allowed: AllowedPeers,
    max_connections: usize,
    max_allocations: usize,
    /// Incarnations of the server started so far.
    incarnations: AtomicU64,
    /// Called when a restarted incarnation serves (the relay lost every allocation).
    restarted: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Clone)]
struct RelaySettings {
    bind: std::net::IpAddr,
    advertised: std::net::IpAddr,
    ports: Option<std::ops::RangeInclusive<u16>>,
}

impl Turn {
    /// Binds the configured listeners and loads the TLS certificate; `None` when TURN is off.
    pub fn bind(config: &SfuConfig) -> anyhow::Result<Option<Arc<Self>>> {
        let turn = &config.turn;
        if !turn.enabled {
            return Ok(None);
        }
        let host = config.turn_host().context("sfu.turn.host is not set")?;
        let loopback = |address: SocketAddr| {
            if config.ice_loopback_only {
                SocketAddr::from(([127, 0, 0, 1], address.port()))
            } else {
                address
            }
        };
        let udp = turn
            .udp
            .map(|address| {
                let socket = UdpSocket::bind(loopback(address))
                    .with_context(|| format!("binding TURN over UDP on {address} (sfu.turn.udp)"))?;
                socket.set_nonblocking(true)?;
                anyhow::Ok(socket)
            })
            .transpose()?;
        let listen = |address: SocketAddr, what: &str| {
            let listener = std::net::TcpListener::bind(loopback(address))
                .with_context(|| format!("binding TURN over {what} on {address} (sfu.turn.{})", what.to_lowercase()))?;
            listener.set_nonblocking(true)?;
            anyhow::Ok(listener)
        };
        let tcp = turn.tcp.map(|address| listen(address, "TCP")).transpose()?;
        let tls = match (turn.tls, &turn.tls_cert, &turn.tls_key) {
            (Some(address), Some(cert), Some(key)) => Some((listen(address, "TLS")?, tls_acceptor(cert, key)?)),
            _ => None,
        };
        let mut urls = Vec::new();
        if let Some(socket) = &udp {
            urls.push(format!("turn:{host}:{}?transport=udp", socket.local_addr()?.port()));
        }
        if let Some(listener) = &tcp {
            urls.push(format!("turn:{host}:{}?transport=tcp", listener.local_addr()?.port()));
        }
        if let Some((listener, _)) = &tls {
            urls.push(format!("turns:{host}:{}?transport=tcp", listener.local_addr()?.port()));
        }
        let bind = if config.ice_loopback_only { std::net::IpAddr::from([127, 0, 0, 1]) } else { turn.relay_ip };
        let advertised = turn.relay_public_ip.unwrap_or(if bind.is_unspecified() {
            config.public_ips.first().copied().unwrap_or(bind)
        } else {
            bind
        });
        let media_ports = (config.port_min != 0).then_some(config.port_min..=config.port_max);
        tracing::info!(urls = ?urls, "TURN relay listening");
        Ok(Some(Arc::new(Self {
            credentials: Arc::new(Credentials::new(turn.secret.clone(), turn.credential_ttl)),
            urls,
            realm: turn.realm.clone(),
            udp,
            tcp,
            tls,
            relays: RelaySettings {
                bind,
                advertised,
                ports: (turn.relay_port_min != 0).then_some(turn.relay_port_min..=turn.relay_port_max),
            },
            allowed: AllowedPeers::new(config.turn_allowed_peers(), media_ports),
            max_connections: turn.max_connections,
            max_allocations: turn.max_allocations_per_credential,
            incarnations: AtomicU64::new(0),
            restarted: OnceLock::new(),
        })))
    }

    /// What to do when the server comes back after a crash or restart (set once, by the SFU).
    pub fn on_restart(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.restarted.set(Box::new(hook));
    }

    /// The `ice_servers` of a participant's `joined` frame: this relay, with credentials for it.
    pub fn ice_servers(&self, participant: &str) -> Vec<IceServer> {
        let (username, credential, expires) = self.credentials.issue(participant, SystemTime::now());
        let expires_at = humantime::format_rfc3339_seconds(expires).to_string();
        vec![IceServer { urls: self.urls.clone(), username, credential, expires_at }]
    }

    /// One server incarnation, on the current tokio runtime, until `stop` fires.
    async fn serve(
        self: Arc<Self>,
        stop: tokio::sync::oneshot::Receiver<()>,
        serving: tokio::sync::oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        let relays = || {
            Box::new(Relays {
                bind: self.relays.bind,
                advertised: self.relays.advertised,
                ports: self.relays.ports.clone(),
                allowed: self.allowed.clone(),
            }) as Box<dyn turn::relay::RelayAddressGenerator + Send + Sync>
        };
        let quota = Quota::new(self.max_allocations);
        let guarded = |conn: Arc<dyn webrtc_util::Conn + Send + Sync>| turn::server::config::ConnConfig {
            conn: Guarded::new(conn, self.allowed.clone(), quota.clone()),
            relay_addr_generator: relays(),
        };
        let mut conn_configs = Vec::new();
        if let Some(socket) = &self.udp {
            conn_configs.push(guarded(Arc::new(tokio::net::UdpSocket::from_std(socket.try_clone()?)?)));
        }
        if let Some(listener) = &self.tcp {
            let listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
            conn_configs.push(guarded(stream::StreamConn::start(listener, None, self.max_connections)?));
        }
        if let Some((listener, acceptor)) = &self.tls {
            let listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
            let conn = stream::StreamConn::start(listener, Some(acceptor.clone()), self.max_connections)?;
            conn_configs.push(guarded(conn));
        }
        let (closed_tx, mut closed) = tokio::sync::mpsc::channel(64);
        let server = turn::server::Server::new(turn::server::config::ServerConfig {
            conn_configs,
            realm: self.realm.clone(),
            auth_handler: self.credentials.clone(),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: Some(closed_tx),
        })
        .await
        .context("starting the TURN server")?;
        let _ = serving.send(());
        let metrics = crate::telemetry::metrics();
        let mut stop = std::pin::pin!(stop);
        let mut census = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(info) = closed.recv() => {
                    metrics.turn_relayed_bytes.inc_by(info.relayed_bytes as u64);
                    quota.closed(info.five_tuple.dst_addr, info.five_tuple.src_addr);
                }
                _ = census.tick() => {
                    if let Ok(open) = server.get_allocations_info(None).await {
                        metrics.turn_allocations.set(open.len() as i64);
                    }
                }
            }
        }
        let _ = server.close().await;
        metrics.turn_allocations.set(0);
        Ok(())
    }
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the TURN certificate {} (sfu.turn.tls_cert)", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TURN key {} (sfu.turn.tls_key)", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TURN certificate and key do not make a TLS identity")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The supervised relay: one incarnation of the server on its own thread.
pub struct TurnServer {
    turn: Arc<Turn>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TurnServer {
    pub fn new(turn: Arc<Turn>) -> Self {
        Self { turn, stop: None }
    }
}

impl Actor for TurnServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (ended_tx, ended) = tokio::sync::oneshot::channel::<String>();
        let (serving_tx, serving) = tokio::sync::oneshot::channel::<()>();
        let turn = self.turn.clone();
        let spawned = std::thread::Builder::new().name("rampart-turn".into()).spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(turn.serve(stopped, serving_tx)));
            let _ = ended_tx.send(match outcome {
                Ok(()) => String::new(),
                Err(error) => format!("{error:#}"),
            });
        });
        // A thread that cannot start is a failure to start, which counts toward restart intensity.
        if let Err(error) = spawned {
            panic!("the TURN server thread could not start: {error}");
        }
        self.stop = Some(stop);
        if self.turn.incarnations.fetch_add(1, Ordering::Relaxed) > 0 {
            let turn = self.turn.clone();
            ctx.spawn(
                async move {
                    if serving.await.is_ok() {
                        tracing::warn!("the TURN relay restarted; relayed participants reconnect");
                        if let Some(hook) = turn.restarted.get() {
                            hook();
                        }
                    }
                }
                .into_actor(self),
            );
        }
        ctx.spawn(async move { ended.await.unwrap_or_default() }.into_actor(self).map(|reason, server, ctx| {
            if server.stop.is_some() {
                tracing::error!(reason, "the TURN server stopped by itself; restarting it");
                ctx.stop();
            }
        }));
    }
}

crate::supervised!(TurnServer);

/// Stopped, or replaced by a fresh incarnation: the server's thread ends with it.
impl Drop for TurnServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
