//! `[sfu]`: where media sockets bind, what the SFU advertises, and its limits.
//!
//! Compiled into every build, so `check-config` validates an SFU deployment's settings on a
//! build without the `sfu` feature too.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuConfig {
    /// Serve `GET /rtc` (needs a build with `--features sfu`; without it `/rtc` answers 501).
    pub enabled: bool,
    /// Addresses the media (UDP) sockets bind; each peer connection binds one socket per address.
    /// `0.0.0.0` gathers a candidate on every interface.
    pub bind_addresses: Vec<IpAddr>,
    /// Media ports come from `port_min..=port_max`; 0 and 0: any free port.
    pub port_min: u16,
    pub port_max: u16,
    /// Public addresses to advertise instead of the bound ones (NAT 1:1, e.g. a cloud VM's
    /// public IP); empty: advertise what is bound.
    pub public_ips: Vec<IpAddr>,
    /// Bind and advertise 127.0.0.1 only, without mDNS: no media or ICE packet leaves the machine
    /// (tests, benchmarks, a laptop demo). Overrides `bind_addresses` and `public_ips`.
    pub ice_loopback_only: bool,
    pub max_rooms: usize,
    pub max_participants: usize,
    /// Open `/rtc` sockets per user; one more is refused with 429 at the handshake.
    pub max_sockets_per_user: usize,
    /// Rooms one user may be in at once (over all their sockets); one more join gets
    /// `room_limit`.
    pub max_rooms_per_user: usize,
    /// Signaling frames per second per connection; beyond it (after `burst`) frames get
    /// `rate_limited` errors.
    pub signaling_rate_per_sec: u32,
    pub signaling_burst: u32,
    /// Largest signaling frame (an SDP offer with many tracks is a few tens of KiB).
    pub max_frame_bytes: usize,
    /// A room nobody is in closes after this.
    #[serde(with = "humantime_serde")]
    pub empty_timeout: Duration,
    /// Threads of the media runtime (packet forwarding, peer connection drivers' tasks).
    pub media_threads: usize,
    /// Also offer passive ICE-TCP host candidates (RFC 6544): each peer connection listens on
    /// TCP at its media address and port, for clients whose networks drop UDP but let TCP out.
    pub ice_tcp: bool,
    /// `[sfu.turn]`: the embedded TURN relay for participants behind NATs and firewalls.
    pub turn: TurnConfig,
    /// `[sfu.cluster]`: rooms placed on one instance of a deployment, whichever instance a
    /// participant's socket reached.
    pub cluster: ClusterConfig,
}

/// `[sfu.cluster]`: with several instances behind one address, each open room runs on one
/// owner instance (a lease in the shared store); a participant whose `/rtc` socket reached
/// another instance has its signaling relayed to the owner over a WebSocket that instance opens
/// to the owner's `/rtc/relay`, signed with `secret`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// This instance's base URL as the other instances reach it (e.g. `http://10.0.0.5:8080`);
    /// none: `http://` and the address the HTTP server bound (for a wildcard bind, the address
    /// of the interface that routes outwards: a container's or pod's own).
    pub advertise_url: Option<String>,
    /// Shared by every instance: relayed signaling is authenticated by HMAC-SHA256 with it.
    pub secret: String,
    /// How long a room's placement holds without renewal: after an owner dies, its rooms move
    /// this much later at most. Renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { enabled: false, advertise_url: None, secret: String::new(), lease_ttl: Duration::from_secs(6) }
    }
}

/// `[sfu.turn]`: rampart's own TURN server (RFC 8656) under `/root/sfu/turn`. Participants get
/// short-lived credentials in their `joined` frame (coturn's `use-auth-secret` scheme, so every
/// instance sharing `secret` accepts every instance's credentials), and the relay only relays to
/// the deployment's media addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub enabled: bool,
    /// TURN over UDP (`turn:host:port?transport=udp`); none: not offered.
    pub udp: Option<SocketAddr>,
    /// TURN over TCP (`turn:host:port?transport=tcp`), for networks that drop UDP.
    pub tcp: Option<SocketAddr>,
    /// TURN over TLS (`turns:host:port?transport=tcp`), e.g. on 443 for firewalls that pass only
    /// HTTPS-looking traffic; needs `tls_cert` and `tls_key` (PEM).
    pub tls: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The host clients reach the relay at, in the `urls` of `ice_servers` (a name matching the
    /// TLS certificate for `turns:`). Default: the first of `sfu.public_ips`, else the listening
    /// address when it is not a wildcard.
    pub host: Option<String>,
    /// Shared by every instance of the deployment: credentials are HMAC-SHA1(secret, username).
    pub secret: String,
    /// How long issued credentials are good for (a call longer than this needs a rejoin to keep
    /// its relay: allocations are refreshed with the same credentials).
    #[serde(with = "humantime_serde")]
    pub credential_ttl: Duration,
    pub realm: String,
    /// The address relayed allocations bind; also advertised as the relay address unless
    /// `relay_public_ip` is set.
    pub relay_ip: IpAddr,
    pub relay_public_ip: Option<IpAddr>,
    /// Relay ports come from `relay_port_min..=relay_port_max`; 0 and 0: any free port.
    pub relay_port_min: u16,
    pub relay_port_max: u16,
    /// The peers the relay may send to: this deployment's media addresses. Empty: this
    /// instance's own (`sfu.public_ips`, else its non-wildcard `bind_addresses`; 127.0.0.1 with
    /// `ice_loopback_only`). Within `sfu.port_min..=port_max` when that range is set.
    pub allowed_peers: Vec<IpAddr>,
    /// Open TCP and TLS connections at once; more are closed at accept.
    pub max_connections: usize,
    /// Allocations one credential (one participant) may hold at once; more are answered 486.
    /// A participant needs one per connection (2) per transport its client tries (up to 3).
    pub max_allocations_per_credential: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            udp: Some(SocketAddr::from(([0, 0, 0, 0], 3478))),
            tcp: Some(SocketAddr::from(([0, 0, 0, 0], 3478))),
            tls: None,
            tls_cert: None,
            tls_key: None,
            host: None,
            secret: String::new(),
            credential_ttl: Duration::from_secs(6 * 3600),
            realm: "rampart".into(),
            relay_ip: IpAddr::from([0, 0, 0, 0]),
            relay_public_ip: None,
            relay_port_min: 0,
            relay_port_max: 0,
            allowed_peers: Vec::new(),
            max_connections: 4096,
            max_allocations_per_credential: 12,
        }
    }
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind_addresses: vec![IpAddr::from([0, 0, 0, 0])],
            port_min: 0,
            port_max: 0,
            public_ips: Vec::new(),
            ice_loopback_only: false,
            max_rooms: 1000,
            max_participants: 50,
            max_sockets_per_user: 8,
            max_rooms_per_user: 4,
            signaling_rate_per_sec: 50,
            signaling_burst: 200,
            max_frame_bytes: 256 * 1024,
            empty_timeout: Duration::from_secs(30),
            media_threads: 2,
            ice_tcp: true,
            turn: TurnConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl SfuConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.bind_addresses.is_empty() && !self.ice_loopback_only {
            return Err("sfu.bind_addresses must name at least one address".into());
        }
        if (self.port_min == 0) != (self.port_max == 0) || self.port_min > self.port_max {
            return Err(
                "sfu.port_min and sfu.port_max must both be 0 (any port) or a range with port_min <= port_max".into()
            );
        }
        if self.max_rooms == 0 || self.max_participants < 2 {
            return Err("sfu.max_rooms must be at least 1 and sfu.max_participants at least 2".into());
        }
        if self.max_sockets_per_user == 0 || self.max_rooms_per_user == 0 {
            return Err("sfu.max_sockets_per_user and sfu.max_rooms_per_user must be at least 1".into());
        }
        if self.signaling_rate_per_sec == 0 || self.signaling_burst == 0 {
            return Err("sfu.signaling_rate_per_sec and sfu.signaling_burst must be at least 1".into());
        }
        if self.max_frame_bytes < 4096 {
            return Err("sfu.max_frame_bytes must be at least 4096 (an SDP offer does not fit in less)".into());
        }
        if self.media_threads == 0 || self.media_threads > 64 {
            return Err("sfu.media_threads must be between 1 and 64".into());
        }
        if self.empty_timeout.is_zero() {
            return Err("sfu.empty_timeout must be longer than 0s".into());
        }
        self.validate_turn()?;
        let cluster = &self.cluster;
        if cluster.enabled {
            if cluster.secret.len() < 16 {
                return Err(
                    "sfu.cluster.secret must be set, at least 16 characters, and the same on every instance".into()
                );
            }
            if cluster.lease_ttl < Duration::from_secs(2) {
                return Err("sfu.cluster.lease_ttl must be at least 2s".into());
            }
            if cluster
                .advertise_url
                .as_deref()
                .is_some_and(|url| !url.starts_with("http://") && !url.starts_with("https://"))
            {
                return Err("sfu.cluster.advertise_url must be an http:// or https:// URL".into());
            }
        }
        Ok(())
    }

    fn validate_turn(&self) -> Result<(), String> {
        let turn = &self.turn;
        if !turn.enabled {
            return Ok(());
        }
        if turn.secret.len() < 16 {
            return Err("sfu.turn.secret must be set, at least 16 characters, and the same on every instance".into());
        }
        if turn.udp.is_none() && turn.tcp.is_none() && turn.tls.is_none() {
            return Err("sfu.turn needs at least one of udp, tcp and tls to listen on".into());
        }
        if turn.tls.is_some() != (turn.tls_cert.is_some() && turn.tls_key.is_some()) {
            return Err("sfu.turn.tls needs sfu.turn.tls_cert and sfu.turn.tls_key (PEM), and they need tls".into());
        }
        if (turn.relay_port_min == 0) != (turn.relay_port_max == 0) || turn.relay_port_min > turn.relay_port_max {
            return Err("sfu.turn.relay_port_min and relay_port_max must both be 0 (any port) or a range".into());
        }
        if turn.credential_ttl < Duration::from_secs(60) {
            return Err("sfu.turn.credential_ttl must be at least 1m".into());
        }
        if turn.max_connections == 0 || turn.max_allocations_per_credential == 0 {
            return Err("sfu.turn.max_connections and max_allocations_per_credential must be at least 1".into());
        }
        if self.turn_host().is_none() {
            return Err(
                "sfu.turn.host must be set: the listening addresses are wildcards and sfu.public_ips is empty".into()
            );
        }
        if self.turn_allowed_peers().is_empty() {
            return Err(
                "sfu.turn.allowed_peers must name the deployment's media addresses: sfu.public_ips is empty and \
                 sfu.bind_addresses are wildcards"
                    .into(),
            );
        }
        Ok(())
    }

    /// The host in the `urls` clients get.
    pub fn turn_host(&self) -> Option<String> {
        if let Some(host) = &self.turn.host {
            return Some(host.clone());
        }
        if self.ice_loopback_only {
            return Some("127.0.0.1".into());
        }
        if let Some(ip) = self.public_ips.first() {
            return Some(ip.to_string());
        }
        [self.turn.udp, self.turn.tcp, self.turn.tls]
            .into_iter()
            .flatten()
            .map(|address| address.ip())
            .find(|ip| !ip.is_unspecified())
            .map(|ip| match ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            })
    }

    /// The addresses the relay may send to (see `TurnConfig::allowed_peers`).
    pub fn turn_allowed_peers(&self) -> Vec<IpAddr> {
        if !self.turn.allowed_peers.is_empty() {
            return self.turn.allowed_peers.clone();
        }
        if self.ice_loopback_only {
            return vec![IpAddr::from([127, 0, 0, 1])];
        }
        if !self.public_ips.is_empty() {
            return self.public_ips.clone();
        }
        self.bind_addresses.iter().copied().filter(|ip| !ip.is_unspecified()).collect()
    }

    /// The addresses media sockets bind, after `ice_loopback_only`.
    pub fn effective_bind_addresses(&self) -> Vec<IpAddr> {
        if self.ice_loopback_only {
            vec![IpAddr::from([127, 0, 0, 1])]
        } else {
            self.bind_addresses.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SfuConfig;

    #[test]
    fn loopback_only_overrides_the_bind_addresses() {
        let config = SfuConfig { ice_loopback_only: true, ..SfuConfig::default() };
        assert_eq!(config.effective_bind_addresses(), vec![std::net::IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(SfuConfig::default().effective_bind_addresses(), vec![std::net::IpAddr::from([0, 0, 0, 0])]);
    }

    #[test]
    fn turn_needs_a_secret_a_host_and_the_deployments_media_addresses() {
        let mut config = SfuConfig::default();
        config.turn.enabled = true;
        assert!(config.validate().unwrap_err().contains("sfu.turn.secret"));
        config.turn.secret = "a shared secret of enough length".into();
        assert!(config.validate().unwrap_err().contains("sfu.turn.host"));
        config.turn.host = Some("turn.example.com".into());
        assert!(config.validate().unwrap_err().contains("sfu.turn.allowed_peers"));
        config.public_ips = vec![std::net::IpAddr::from([203, 0, 113, 7])];
        assert!(config.validate().is_ok());
        assert_eq!(config.turn_allowed_peers(), config.public_ips);
        config.turn.tls = Some(std::net::SocketAddr::from(([0, 0, 0, 0], 443)));
        assert!(config.validate().unwrap_err().contains("tls_cert"));
        let loopback = SfuConfig { ice_loopback_only: true, ..SfuConfig::default() };
        assert_eq!(loopback.turn_host().as_deref(), Some("127.0.0.1"));
        assert_eq!(loopback.turn_allowed_peers(), vec![std::net::IpAddr::from([127, 0, 0, 1])]);
    }

    #[test]
    fn a_half_port_range_is_refused() {
        let config = SfuConfig { port_min: 40000, ..SfuConfig::default() };
        assert!(config.validate().unwrap_err().contains("sfu.port_min"));
        let config = SfuConfig { port_min: 40000, port_max: 40100, ..SfuConfig::default() };
        assert!(config.validate().is_ok());
    }
}
