//! `[sfu]`: where media sockets bind, what the SFU advertises, and its limits.
//!
//! Compiled into every build, so `check-config` validates an SFU deployment's settings on a
//! build without the `sfu` feature too.

use std::net::IpAddr;
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
        Ok(())
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
    fn a_half_port_range_is_refused() {
        let config = SfuConfig { port_min: 40000, ..SfuConfig::default() };
        assert!(config.validate().unwrap_err().contains("sfu.port_min"));
        let config = SfuConfig { port_min: 40000, port_max: 40100, ..SfuConfig::default() };
        assert!(config.validate().is_ok());
    }
}
