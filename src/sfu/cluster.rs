//! Rooms across instances (`[sfu.cluster]`): each open room runs on one owner instance.
//!
//! Placement is a lease in the deployment's shared store (`RoomStore::place_room`: MongoDB,
//! whose unique `_id` decides every race, so two instances placing one room at once get one
//! owner). The owner renews its leases every third of `lease_ttl`; a lease it cannot renew is
//! given up (its room *fenced*: every participant is sent elsewhere) a sixth of the TTL before
//! it expires, so no other instance can take the room over while this one still serves it
//! (clocks of the instances must agree within that sixth). A lease left to expire (its owner
//! died) goes to whichever instance places the room next.
//!
//! A participant whose socket is on another instance has its signaling relayed to the owner's
//! `/rtc/relay` (`peer/relay.rs`), a WebSocket authenticated by HMAC-SHA256 with the shared
//! `secret` over the user and an expiry: the owner serves it as that user's socket.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use super::ClusterConfig;
use crate::storage::{now_ms, RoomLease, RoomStore, StorageError};

/// How long a relay signature is good for (it is checked once, at the handshake).
const SIGNATURE_TTL_SECS: i64 = 60;

pub struct Cluster {
    /// This instance's id in leases (fresh per process: a restarted process owns nothing).
    pub instance: String,
    address: OnceLock<String>,
    secret: String,
    ttl: Duration,
    store: Arc<dyn RoomStore>,
    /// Leases this instance holds, by room.
    held: Mutex<HashMap<String, RoomLease>>,
    /// Leases of rooms that closed here, released at the keeper's next round.
    released: Mutex<Vec<RoomLease>>,
}

/// Where a room runs.
pub enum Placement {
    Here,
    Elsewhere(RoomLease),
}

impl Cluster {
    pub fn new(config: &ClusterConfig, store: Arc<dyn RoomStore>) -> Arc<Self> {
        let address = OnceLock::new();
        if let Some(url) = &config.advertise_url {
            let _ = address.set(url.trim_end_matches('/').to_owned());
        }
        Arc::new(Self {
            instance: uuid::Uuid::now_v7().simple().to_string(),
            address,
            secret: config.secret.clone(),
            ttl: config.lease_ttl,
            store,
            held: Mutex::new(HashMap::new()),
            released: Mutex::new(Vec::new()),
        })
    }

    /// Where the other instances reach this one, unless `sfu.cluster.advertise_url` said.
    pub fn set_bound_address(&self, address: std::net::SocketAddr) {
        let _ = self.address.set(format!("http://{address}"));
    }

    pub fn address(&self) -> String {
        self.address.get().cloned().unwrap_or_default()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Places `room`: here (this instance holds its lease now) or on its current owner.
    pub async fn place(&self, room: &str) -> Result<Placement, StorageError> {
        let now = now_ms();
        if self.held.lock().get(room).is_some_and(|lease| lease.expires_at_ms - now > self.ttl_ms() / 2) {
            return Ok(Placement::Here);
        }
        let candidate = RoomLease {
            room: room.to_owned(),
            owner: self.instance.clone(),
            address: self.address(),
            token: uuid::Uuid::now_v7().simple().to_string(),
            expires_at_ms: now + self.ttl_ms(),
        };
        let lease = self.store.place_room(candidate, now).await?;
        if lease.owner == self.instance {
            self.held.lock().insert(room.to_owned(), lease);
            Ok(Placement::Here)
        } else {
            Ok(Placement::Elsewhere(lease))
        }
    }

    /// The room closed here: its lease goes back at the next renewal round.
    pub fn forget(&self, room: &str) {
        if let Some(lease) = self.held.lock().remove(room) {
            self.released.lock().push(lease);
        }
    }

    /// Releases what closed and renews what is held; returns the rooms whose leases were lost
    /// (taken over, or not renewed in time), which must stop being served here.
    pub async fn renew(&self) -> Vec<String> {
        let released: Vec<RoomLease> = std::mem::take(&mut *self.released.lock());
        for lease in released {
            if let Err(error) = self.store.release_room(lease.room.clone(), lease.token.clone()).await {
                // It expires by itself.
                tracing::warn!(%error, room = %lease.room, "could not release a room's placement");
            }
        }
        let held: Vec<RoomLease> = self.held.lock().values().cloned().collect();
        let mut lost = Vec::new();
        for lease in held {
            let now = now_ms();
            let expires_at_ms = now + self.ttl_ms();
            let keep = match self.store.renew_room(lease.room.clone(), lease.token.clone(), expires_at_ms).await {
                // Renewed, but answered so late that another instance may already have taken
                // the room over (it saw the old expiry pass): give it up rather than risk two
                // owners.
                Ok(true) if now_ms() >= lease.expires_at_ms - self.ttl_ms() / 6 => {
                    tracing::warn!(room = %lease.room, "a room's placement was renewed too late to be trusted");
                    self.released.lock().push(lease.clone());
                    false
                }
                Ok(true) => {
                    if let Some(held) = self.held.lock().get_mut(&lease.room).filter(|held| held.token == lease.token) {
                        held.expires_at_ms = expires_at_ms;
                    }
                    true
                }
                Ok(false) => false,
                // The store is away: serve on while the lease surely holds.
                Err(error) => {
                    tracing::warn!(%error, room = %lease.room, "could not renew a room's placement");
                    now_ms() < lease.expires_at_ms - self.ttl_ms() / 6
                }
            };
            if !keep {
                let mut held = self.held.lock();
                if held.get(&lease.room).is_some_and(|current| current.token == lease.token) {
                    held.remove(&lease.room);
                }
                lost.push(lease.room);
            }
        }
        lost
    }

    /// The placements of the whole deployment.
    pub async fn leases(&self) -> Result<Vec<RoomLease>, StorageError> {
        self.store.room_leases(now_ms()).await
    }

    fn mac(&self, user: &str, expires: i64) -> ring::hmac::Tag {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.secret.as_bytes());
        ring::hmac::sign(&key, format!("rampart-relay\n{user}\n{expires}").as_bytes())
    }

    /// Headers value for a relayed socket of `user`: `<expiry, unix seconds>.<hex signature>`.
    pub fn sign(&self, user: &str) -> String {
        let expires = now_ms() / 1000 + SIGNATURE_TTL_SECS;
        let tag = self.mac(user, expires);
        let hex: String = tag.as_ref().iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{expires}.{hex}")
    }

    /// Whether `credential` (from [`Cluster::sign`]) vouches for `user` now.
    pub fn verify(&self, user: &str, credential: &str) -> bool {
        let Some((expires, hex)) = credential.split_once('.') else { return false };
        let Ok(expires) = expires.parse::<i64>() else { return false };
        if expires < now_ms() / 1000 || hex.len() != 64 {
            return false;
        }
        let bytes: Option<Vec<u8>> =
            (0..32).map(|i| hex.get(i * 2..i * 2 + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())).collect();
        let Some(bytes) = bytes else { return false };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.secret.as_bytes());
        ring::hmac::verify(&key, format!("rampart-relay\n{user}\n{expires}").as_bytes(), &bytes).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_relay_credential_vouches_for_its_user_only_and_only_with_the_shared_secret() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn RoomStore> = Arc::new(
            crate::storage::SqliteChat::open(dir.path(), 1, crate::storage::WalPolicy::default()).expect("store"),
        );
        let config = ClusterConfig { enabled: true, secret: "a deployment secret, long".into(), ..Default::default() };
        let one = Cluster::new(&config, store.clone());
        let other = Cluster::new(&config, store.clone());
        let credential = one.sign("alice");
        assert!(other.verify("alice", &credential), "any instance with the secret accepts it");
        assert!(!other.verify("bob", &credential), "for alice only");
        let stranger =
            Cluster::new(&ClusterConfig { secret: "another deployment's secret".into(), ..config.clone() }, store);
        assert!(!stranger.verify("alice", &credential));
        assert!(!other.verify("alice", "1.00"));
        assert!(!other.verify("alice", &credential.replacen('.', "x", 1)));
        let (_, signature) = credential.split_once('.').expect("signed");
        assert!(!other.verify("alice", &format!("{}.{signature}", now_ms() / 1000 - 1)), "expired");
    }

    /// A store whose renewals answer after `delay` (a slow or stalled MongoDB).
    struct SlowRenewals {
        store: Arc<dyn RoomStore>,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl RoomStore for SlowRenewals {
        async fn create_room(&self, name: String, now_ms: i64) -> Result<bool, StorageError> {
            self.store.create_room(name, now_ms).await
        }
        async fn delete_room(&self, name: String) -> Result<bool, StorageError> {
            self.store.delete_room(name).await
        }
        async fn room_exists(&self, name: String) -> Result<bool, StorageError> {
            self.store.room_exists(name).await
        }
        async fn rooms(&self) -> Result<Vec<String>, StorageError> {
            self.store.rooms().await
        }
        async fn place_room(&self, candidate: RoomLease, now_ms: i64) -> Result<RoomLease, StorageError> {
            self.store.place_room(candidate, now_ms).await
        }
        async fn renew_room(&self, room: String, token: String, expires_at_ms: i64) -> Result<bool, StorageError> {
            let renewed = self.store.renew_room(room, token, expires_at_ms).await;
            tokio::time::sleep(self.delay).await;
            renewed
        }
        async fn release_room(&self, room: String, token: String) -> Result<(), StorageError> {
            self.store.release_room(room, token).await
        }
        async fn room_leases(&self, now_ms: i64) -> Result<Vec<RoomLease>, StorageError> {
            self.store.room_leases(now_ms).await
        }
    }

    /// Regression: a renewal answered after the lease's fence point was trusted, although
    /// another instance may have seen the old expiry pass and taken the room over meanwhile.
    #[actix_rt::test]
    async fn a_renewal_answered_too_late_gives_the_room_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn RoomStore> = Arc::new(
            crate::storage::SqliteChat::open(dir.path(), 1, crate::storage::WalPolicy::default()).expect("store"),
        );
        let config = ClusterConfig {
            enabled: true,
            secret: "a deployment secret, long".into(),
            lease_ttl: Duration::from_millis(600),
            ..Default::default()
        };
        let slow: Arc<dyn RoomStore> =
            Arc::new(SlowRenewals { store: store.clone(), delay: Duration::from_millis(550) });
        let (one, other) = (Cluster::new(&config, slow), Cluster::new(&config, store));
        assert!(matches!(one.place("r").await, Ok(Placement::Here)));
        assert_eq!(one.renew().await, vec!["r".to_owned()], "answered past the fence point: lost");
        assert!(one.held.lock().is_empty());
        // Given back at once, so another instance need not wait for it to expire.
        one.renew().await;
        assert!(matches!(other.place("r").await, Ok(Placement::Here)));
    }

    #[actix_rt::test]
    async fn a_room_is_placed_here_once_and_elsewhere_for_the_other_instance() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn RoomStore> = Arc::new(
            crate::storage::SqliteChat::open(dir.path(), 1, crate::storage::WalPolicy::default()).expect("store"),
        );
        let config = ClusterConfig { enabled: true, secret: "a deployment secret, long".into(), ..Default::default() };
        let (one, other) = (Cluster::new(&config, store.clone()), Cluster::new(&config, store));
        one.set_bound_address("127.0.0.1:1111".parse().expect("address"));
        assert!(matches!(one.place("r").await, Ok(Placement::Here)));
        match other.place("r").await {
            Ok(Placement::Elsewhere(lease)) => assert_eq!(lease.address, "http://127.0.0.1:1111"),
            _ => panic!("r is one's"),
        }
        assert!(one.renew().await.is_empty(), "renewed");
        one.forget("r");
        assert!(one.renew().await.is_empty());
        assert!(matches!(other.place("r").await, Ok(Placement::Here)), "released, so the other takes it");
        assert!(one.leases().await.expect("leases").iter().all(|lease| lease.owner == other.instance));
    }
}
