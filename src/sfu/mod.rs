//! The SFU: WebRTC rooms whose participants each publish audio and video that the SFU forwards
//! to everyone else in the room.
//!
//! Owns: configuration (`[sfu]`, in every build), and with the `sfu` feature the signaling
//! protocol (`protocol`), the `/root/sfu` subtree (`Room` and `Peer` actors), the room registry
//! and room access rules (here), and the media runtime that forwards packets (`media`). Only
//! `media/` and `peer/` know webrtc-rs.
//!
//! Shape: `/root/sfu/rooms/room-<n>` (one `Room` per open room) and `/root/sfu/peers/peer-<n>`
//! (one `Peer` per `/rtc` socket). A peer belongs to at most one room at a time; the room keeps
//! membership and tells each peer which tracks it should receive; the peer owns its two peer
//! connections and the forwarding of the tracks it publishes.

#[cfg(feature = "sfu")]
mod cluster;
mod config;
#[cfg(feature = "sfu")]
mod media;
#[cfg(feature = "sfu")]
mod peer;
#[cfg(feature = "sfu")]
pub mod protocol;
#[cfg(feature = "sfu")]
mod room;
#[cfg(feature = "sfu")]
mod turn;

pub use config::{ClusterConfig, SfuConfig, TurnConfig};

#[cfg(feature = "sfu")]
pub use media::{is_keyframe_request, KeyframeRequests};
#[cfg(feature = "sfu")]
pub use running::*;

#[cfg(feature = "sfu")]
mod running {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::Context as _;
    use parking_lot::Mutex;
    use serde::Serialize;

    pub use super::peer::Peer;
    use super::room::{Room, Snapshot};
    use super::SfuConfig;
    use crate::chat::{Directory, WsConfig};
    use crate::socket::{Outbox, PerUser};
    use crate::storage::{RoomStore, StorageError};
    use crate::supervision::{
        ActorHandle, CallError, ChildSpec, RestartType, SpawnError, SupervisorHandle, SupervisorSpec,
    };

    /// The client's side of one `/rtc` socket: frames out, and when a frame last came in. Outlives
    /// peer incarnations, so a restarted peer talks on the same socket.
    pub struct Signal {
        pub outbox: Outbox,
        pub last_seen: Mutex<Instant>,
    }

    impl Signal {
        pub fn new(outbox: Outbox) -> Arc<Self> {
            Arc::new(Self { outbox, last_seen: Mutex::new(Instant::now()) })
        }

        pub fn send(&self, frame: String) {
            self.outbox.text(frame);
        }
    }

    /// An open room as the registry knows it: its actor and the peers in it. The live-peer set
    /// belongs to the peers (each adds itself before joining, removes itself when it leaves or
    /// stops): it is what a restarted room rebuilds its membership from.
    pub(super) struct RoomEntry {
        pub name: String,
        pub room: ActorHandle<Room>,
        pub peers: Mutex<HashMap<String, ActorHandle<Peer>>>,
        pub counts: Mutex<(usize, usize)>,
    }

    /// Why a participant may not be in a room.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum RoomRefused {
        #[error("you may join only the rooms of your conversations and rooms an operator created")]
        Forbidden,
        #[error("the room is full ({0} participants)")]
        Full(usize),
        #[error("too many rooms are open ({0}); try again later")]
        TooManyRooms(usize),
        #[error("you are in {0} rooms already (sfu.max_rooms_per_user); leave one first")]
        UserRoomLimit(usize),
        #[error("rooms are not available: {0}")]
        Unavailable(String),
    }

    impl RoomRefused {
        pub fn code(&self) -> &'static str {
            match self {
                RoomRefused::Forbidden => "forbidden",
                RoomRefused::Full(_) => "room_full",
                RoomRefused::TooManyRooms(_) | RoomRefused::UserRoomLimit(_) => "room_limit",
                RoomRefused::Unavailable(_) => "unavailable",
            }
        }
    }

    /// Everything rooms and peers share: configuration, the media plane, the registry of open
    /// rooms, room access. Outlives every actor of the subtree.
    pub struct SfuCore {
        pub config: SfuConfig,
        pub(super) media: Arc<super::media::Media>,
        rooms_supervisor: SupervisorHandle,
        pub(super) rooms: Mutex<HashMap<String, Arc<RoomEntry>>>,
        /// Where operators' rooms are kept (`POST /admin/rooms`): the chat store's backend, so they
        /// outlive a restart and every process of a deployment on MongoDB sees the same.
        store: Arc<dyn RoomStore>,
        directory: Arc<Directory>,
        next_room: AtomicU64,
        next_participant: AtomicU64,
        /// Rooms each user is in at once, over all their sockets (`sfu.max_rooms_per_user`).
        pub(super) rooms_per_user: Arc<UserRooms>,
        /// Heartbeat of `/rtc` sockets (the chat's WebSocket settings).
        pub heartbeat_interval: std::time::Duration,
        pub client_timeout: std::time::Duration,
        /// The embedded TURN relay, when `sfu.turn.enabled`: its credentials go in `joined`.
        pub(super) turn: Option<Arc<super::turn::Turn>>,
        /// Room placement across instances, when `sfu.cluster.enabled`.
        pub(super) cluster: Option<Arc<super::cluster::Cluster>>,
    }

    /// The running SFU: the subtree's handles, for the HTTP layer.
    pub struct Sfu {
        pub core: Arc<SfuCore>,
        pub peers: SupervisorHandle,
        /// Open `/rtc` sockets per user (`sfu.max_sockets_per_user`).
        pub sockets_per_user: Arc<PerUser>,
        /// Renews this instance's room placements (with `sfu.cluster`), fencing those it lost.
        _leases: Option<crate::tasks::OwnedTask<()>>,
    }

    /// Restart intensity of the rooms and peers supervisors (panics of all of them together).
    const MAX_RESTARTS: u32 = 1000;
    const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

    /// Starts `/root/sfu` with its `rooms` and `peers` supervisors and the media runtime.
    pub fn start(
        root: &SupervisorHandle,
        config: &SfuConfig,
        ws: &WsConfig,
        directory: Arc<Directory>,
        store: Arc<dyn RoomStore>,
    ) -> anyhow::Result<Arc<Sfu>> {
        let media = super::media::Media::start(config).context("starting the SFU media runtime")?;
        let turn = super::turn::Turn::bind(config)?;
        let sfu = root.spawn_supervisor(SupervisorSpec::new("sfu")).context("starting /root/sfu")?;
        if let Some(turn) = &turn {
            let turn = turn.clone();
            sfu.spawn(
                ChildSpec::new("turn", move || super::turn::TurnServer::new(turn.clone()))
                    .restart(RestartType::Permanent),
            )
            .context("starting /root/sfu/turn")?;
        }
        let dynamic = |name: &str| {
            SupervisorSpec::new(name).dynamic().intensity(MAX_RESTARTS, RESTART_WINDOW).restart(RestartType::Permanent)
        };
        let rooms_supervisor = sfu.spawn_supervisor(dynamic("rooms")).context("starting /root/sfu/rooms")?;
        // Peers after rooms, so at shutdown peers stop first and leave their rooms.
        let peers = sfu.spawn_supervisor(dynamic("peers")).context("starting /root/sfu/peers")?;
        let core = Arc::new(SfuCore {
            config: config.clone(),
            media,
            rooms_supervisor,
            rooms: Mutex::new(HashMap::new()),
            store: store.clone(),
            directory,
            next_room: AtomicU64::new(0),
            next_participant: AtomicU64::new(0),
            rooms_per_user: UserRooms::new(config.max_rooms_per_user),
            heartbeat_interval: ws.heartbeat_interval,
            client_timeout: ws.client_timeout,
            turn,
            cluster: config.cluster.enabled.then(|| super::cluster::Cluster::new(&config.cluster, store.clone())),
        });
        if let Some(turn) = &core.turn {
            let core = Arc::downgrade(&core);
            turn.on_restart(move || {
                if let Some(core) = core.upgrade() {
                    core.relay_restarted();
                }
            });
        }
        let sockets_per_user = PerUser::new(config.max_sockets_per_user);
        let leases = core.cluster.clone().map(|cluster| {
            let core = core.clone();
            crate::tasks::spawn_owned("sfu.leases", async move {
                loop {
                    tokio::time::sleep(cluster.ttl() / 3).await;
                    for room in cluster.renew().await {
                        core.fence(&room);
                    }
                }
            })
        });
        Ok(Arc::new(Sfu { core, peers, sockets_per_user, _leases: leases }))
    }

    impl Sfu {
        /// Starts the peer serving a new `/rtc` socket of `user`; `relayed`: a socket another
        /// instance opened for a participant of a room placed here (`/rtc/relay`).
        pub fn connect(
            &self,
            user: String,
            signal: Arc<Signal>,
            relayed: bool,
        ) -> Result<ActorHandle<Peer>, SpawnError> {
            let n = self.core.next_participant.fetch_add(1, Ordering::Relaxed) + 1;
            let participant = format!("p{n}");
            let shared = super::peer::PeerShared::new(participant.clone(), user, signal, self.core.clone(), relayed);
            let factory_shared = shared.clone();
            let handle = self.peers.spawn(
                ChildSpec::new(format!("peer-{n}"), move || Peer::new(factory_shared.clone()))
                    .restart(RestartType::Transient),
            )?;
            shared.set_handle(handle.clone());
            Ok(handle)
        }

        /// Where other instances reach this one: the address the HTTP server bound, unless
        /// `sfu.cluster.advertise_url` says otherwise.
        /// A wildcard bind (`0.0.0.0:8080` in a container) advertises the address of the
        /// interface that routes outwards (a container's or pod's own address).
        pub fn set_bound_address(&self, address: std::net::SocketAddr) -> Result<(), String> {
            let Some(cluster) = &self.core.cluster else { return Ok(()) };
            if !cluster.address().is_empty() {
                return Ok(());
            }
            let mut advertised = address;
            if address.ip().is_unspecified() {
                let ip = outward_address(address.is_ipv6()).ok_or_else(|| {
                    format!(
                        "sfu.cluster.advertise_url must be set: http.bind ({address}) is a wildcard and this host has \
                         no routable address to advertise instead"
                    )
                })?;
                advertised.set_ip(ip);
            }
            tracing::info!(address = %advertised, instance = %cluster.instance, "rooms placed here are reached at this address");
            cluster.set_bound_address(advertised);
            Ok(())
        }

        /// Whether `credential` (the `x-rampart-relay` header) vouches for a relayed socket of
        /// `user`; `false` when rooms are not placed across instances.
        pub fn verify_relay(&self, user: &str, credential: &str) -> bool {
            self.core.cluster.as_ref().is_some_and(|cluster| cluster.verify(user, credential))
        }

        /// Every room's placement in the deployment (`None` without `sfu.cluster`).
        pub async fn placements(&self) -> Option<Result<Vec<serde_json::Value>, StorageError>> {
            let cluster = self.core.cluster.as_ref()?;
            Some(cluster.leases().await.map(|leases| {
                leases
                    .into_iter()
                    .map(|lease| {
                        serde_json::json!({
                            "room": lease.room,
                            "owner": lease.owner,
                            "address": lease.address,
                            "here": lease.owner == cluster.instance,
                            "expires_at": crate::storage::ms_to_rfc3339(lease.expires_at_ms),
                        })
                    })
                    .collect()
            }))
        }

        /// This instance's id in placements.
        pub fn instance(&self) -> Option<String> {
            self.core.cluster.as_ref().map(|cluster| cluster.instance.clone())
        }

        /// Lets anyone authenticated join `name` (an operator's room): `true` when created,
        /// `false` when it already was one.
        pub async fn create_admin_room(&self, name: &str) -> Result<bool, StorageError> {
            let created = self.core.store.create_room(name.to_owned(), crate::storage::now_ms()).await?;
            if created {
                crate::action!("sfu", "operator room created", room = name);
            }
            Ok(created)
        }

        /// Takes `name` back from everyone who is not a member of the conversation of that name:
        /// nobody else may join it any more (participants in it stay until they leave). `true`
        /// when it was an operator's room.
        pub async fn delete_admin_room(&self, name: &str) -> Result<bool, StorageError> {
            let deleted = self.core.store.delete_room(name.to_owned()).await?;
            if deleted {
                crate::action!("sfu", "operator room deleted", room = name);
            }
            Ok(deleted)
        }

        /// The operators' rooms, open or not.
        pub async fn admin_rooms(&self) -> Result<Vec<String>, StorageError> {
            self.core.store.rooms().await
        }

        /// Tasks alive on the media runtime.
        pub fn media_tasks(&self) -> usize {
            self.core.media.tasks()
        }

        /// The open rooms with their participants and tracks; `admin_rooms` are the operators'.
        pub async fn rooms(&self, admin_rooms: &[String]) -> Vec<RoomView> {
            let entries: Vec<Arc<RoomEntry>> = self.core.rooms.lock().values().cloned().collect();
            let mut views = Vec::with_capacity(entries.len());
            for entry in entries {
                let snapshot = entry.room.send_timeout(Snapshot, std::time::Duration::from_secs(2)).await;
                let admin_created = admin_rooms.contains(&entry.name);
                views.push(match snapshot {
                    Ok(mut participants) => {
                        for participant in &mut participants {
                            let Some(peer) = participant.peer.take() else { continue };
                            let asked =
                                peer.send_timeout(super::peer::Connection, std::time::Duration::from_secs(2)).await;
                            if let Ok((path, relayed)) = asked {
                                participant.media_path = path;
                                participant.signaling_relayed = relayed;
                            }
                        }
                        RoomView {
                            name: entry.name.clone(),
                            path: entry.room.path().to_owned(),
                            admin_created,
                            participants,
                            error: None,
                        }
                    }
                    Err(error) => RoomView {
                        name: entry.name.clone(),
                        path: entry.room.path().to_owned(),
                        admin_created,
                        participants: Vec::new(),
                        error: Some(error.to_string()),
                    },
                });
            }
            views.sort_by(|a, b| a.name.cmp(&b.name));
            views
        }
    }

    /// A room in `GET /admin/rooms`.
    #[derive(Debug, Clone, Serialize)]
    pub struct RoomView {
        pub name: String,
        /// The room actor's path (`/admin/actors`, chaos).
        pub path: String,
        pub admin_created: bool,
        pub participants: Vec<ParticipantAdminView>,
        /// Set when the room did not answer (restarting).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }

    #[derive(Debug, Clone, Serialize)]
    pub struct ParticipantAdminView {
        pub participant: String,
        pub user: String,
        /// The peer actor's path.
        pub path: String,
        pub tracks: Vec<TrackAdminView>,
        /// How the participant's media reaches this instance: the selected ICE pair of its
        /// publisher connection (else its subscriber one), `relay` when through a TURN server.
        pub media_path: Option<super::peer::MediaPath>,
        /// Its socket is on another instance of the deployment, relayed here (`sfu.cluster`).
        pub signaling_relayed: bool,
        #[serde(skip)]
        pub(super) peer: Option<ActorHandle<Peer>>,
    }

    #[derive(Debug, Clone, Serialize)]
    pub struct TrackAdminView {
        pub track: String,
        pub kind: &'static str,
        pub muted: bool,
        pub subscribers: usize,
        pub forwarded_packets: u64,
    }

    impl SfuCore {
        /// Whether `user` may be in `room`: an operator's room, or a conversation they belong to.
        pub(super) async fn may_join(&self, room: &str, user: &str) -> Result<(), RoomRefused> {
            match self.store.room_exists(room.to_owned()).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(error) => return Err(RoomRefused::Unavailable(error.to_string())),
            }
            match self.directory.is_member(room, user).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(RoomRefused::Forbidden),
                Err(error) => Err(RoomRefused::Unavailable(error.to_string())),
            }
        }

        /// The open room `name`, started if it is not open.
        pub(super) fn room(self: &Arc<Self>, name: &str) -> Result<Arc<RoomEntry>, RoomRefused> {
            let mut rooms = self.rooms.lock();
            if let Some(entry) = rooms.get(name) {
                return Ok(entry.clone());
            }
            if rooms.len() >= self.config.max_rooms {
                return Err(RoomRefused::TooManyRooms(self.config.max_rooms));
            }
            let n = self.next_room.fetch_add(1, Ordering::Relaxed) + 1;
            let shared = super::room::RoomShared::new(name.to_owned(), self.clone());
            let factory_shared = shared.clone();
            let room = self
                .rooms_supervisor
                .spawn(
                    ChildSpec::new(format!("room-{n}"), move || Room::new(factory_shared.clone()))
                        .restart(RestartType::Transient),
                )
                .map_err(|error| RoomRefused::Unavailable(error.to_string()))?;
            let entry = Arc::new(RoomEntry {
                name: name.to_owned(),
                room,
                peers: Mutex::new(HashMap::new()),
                counts: Mutex::new((0, 0)),
            });
            shared.set_entry(&entry);
            rooms.insert(name.to_owned(), entry.clone());
            crate::action!("sfu", "room opened", room = name);
            drop(rooms);
            self.refresh_metrics();
            Ok(entry)
        }

        /// Forgets `entry` if it is still the open room of its name (a closing room).
        pub(super) fn remove_room(&self, entry: &Arc<RoomEntry>) {
            let mut rooms = self.rooms.lock();
            let registered = rooms.get(&entry.name).is_some_and(|current| Arc::ptr_eq(current, entry));
            if registered {
                rooms.remove(&entry.name);
            }
            drop(rooms);
            crate::action!("sfu", "room closed", room = entry.name);
            // A fenced room is no longer registered, and its name may be placed here again since:
            // only the registered room gives its placement back.
            if let (true, Some(cluster)) = (registered, &self.cluster) {
                cluster.forget(&entry.name);
            }
            self.refresh_metrics();
        }

        /// This instance lost `room`'s placement: it stops serving it, and every participant in
        /// it goes to the new owner (a relayed socket is closed for its instance to place the
        /// room again; a local one rejoins).
        pub(super) fn fence(&self, room: &str) {
            let Some(entry) = self.rooms.lock().remove(room) else { return };
            tracing::warn!(room, "this instance lost the room's placement; its participants move");
            crate::action!("sfu", "room fenced", room = room);
            let peers: Vec<ActorHandle<Peer>> = entry.peers.lock().values().cloned().collect();
            for peer in peers {
                let _ = peer.do_send(super::peer::Moved { room: room.to_owned() });
            }
            self.refresh_metrics();
        }

        /// The embedded relay lost its allocations: every participant here checks whether its
        /// media came through a relay, and if so reconnects now.
        pub(super) fn relay_restarted(&self) {
            let peers: Vec<ActorHandle<Peer>> = self
                .rooms
                .lock()
                .values()
                .flat_map(|entry| entry.peers.lock().values().cloned().collect::<Vec<_>>())
                .collect();
            for peer in peers {
                let _ = peer.do_send(super::peer::RelayRestarted);
            }
        }

        /// Sets the room, participant and track gauges from every room's latest counts.
        pub(super) fn refresh_metrics(&self) {
            let rooms = self.rooms.lock();
            let (participants, tracks) = rooms.values().fold((0, 0), |(p, t), entry| {
                let counts = *entry.counts.lock();
                (p + counts.0, t + counts.1)
            });
            let metrics = crate::telemetry::metrics();
            metrics.sfu_rooms.set(rooms.len() as i64);
            metrics.sfu_participants.set(participants as i64);
            metrics.sfu_tracks.set(tracks as i64);
        }
    }

    /// The distinct rooms each user is in, over all their sockets, under a limit per user: a user
    /// in a room from several devices holds it once.
    pub struct UserRooms {
        limit: usize,
        /// user → room → sockets of the user in it. Only users in some room have an entry.
        held: Mutex<HashMap<String, HashMap<String, usize>>>,
    }

    impl UserRooms {
        pub fn new(limit: usize) -> Arc<Self> {
            Arc::new(Self { limit, held: Mutex::new(HashMap::new()) })
        }

        pub fn limit(&self) -> usize {
            self.limit
        }

        /// `user` in `room` once more, or `None` when that would be a room beyond the limit.
        pub fn acquire(self: &Arc<Self>, user: &str, room: &str) -> Option<RoomSlot> {
            let mut held = self.held.lock();
            let rooms = held.entry(user.to_owned()).or_default();
            if !rooms.contains_key(room) && rooms.len() >= self.limit {
                if rooms.is_empty() {
                    held.remove(user);
                }
                return None;
            }
            *rooms.entry(room.to_owned()).or_default() += 1;
            Some(RoomSlot { owner: self.clone(), user: user.to_owned(), room: room.to_owned() })
        }
    }

    /// One socket of a user in a room; given back when dropped.
    pub struct RoomSlot {
        owner: Arc<UserRooms>,
        user: String,
        room: String,
    }

    impl Drop for RoomSlot {
        fn drop(&mut self) {
            let mut held = self.owner.held.lock();
            let Some(rooms) = held.get_mut(&self.user) else { return };
            if let Some(count) = rooms.get_mut(&self.room) {
                *count -= 1;
                if *count == 0 {
                    rooms.remove(&self.room);
                }
            }
            if rooms.is_empty() {
                held.remove(&self.user);
            }
        }
    }

    /// The address of the interface the host would route a packet outwards from. A UDP
    /// `connect` only chooses the route: nothing is sent (192.0.2.1 and 2001:db8::1 are
    /// documentation addresses that no real peer has).
    fn outward_address(ipv6: bool) -> Option<std::net::IpAddr> {
        let (bind, probe) = if ipv6 { ("[::]:0", "[2001:db8::1]:9") } else { ("0.0.0.0:0", "192.0.2.1:9") };
        let socket = std::net::UdpSocket::bind(bind).ok()?;
        socket.connect(probe).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
    }

    /// A request to a room whose actor stopped between lookup and request: look it up again.
    pub(super) fn room_closed(error: &CallError) -> bool {
        matches!(error, CallError::Stopped { .. })
    }
}
