//! No open relay: the TURN server relays only to this deployment's media addresses.
//!
//! Two layers. `Guarded` wraps each listener: a CreatePermission or ChannelBind request naming a
//! peer outside the allowed set is answered 403 (Forbidden) there and never reaches the server.
//! `Relays` makes every allocation's relay socket, and that socket drops packets to or from any
//! other address, so nothing gets through even a request this filter did not parse.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use parking_lot::Mutex;

use async_trait::async_trait;
use stun::attributes::{ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::{ErrorCodeAttribute, CODE_ALLOC_QUOTA_REACHED, CODE_BAD_REQUEST, CODE_FORBIDDEN};
use stun::message::{
    Getter as _, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
};
use turn::proto::peeraddr::PeerAddress;
use webrtc_util::Conn;

/// The peers the relay may reach: these addresses, on these ports (all when `None`).
#[derive(Debug, Clone)]
pub struct AllowedPeers {
    ips: Vec<IpAddr>,
    ports: Option<RangeInclusive<u16>>,
}

impl AllowedPeers {
    pub fn new(ips: Vec<IpAddr>, ports: Option<RangeInclusive<u16>>) -> Self {
        Self { ips, ports }
    }

    pub fn allows(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.ips.iter().any(|allowed| allowed.to_canonical() == ip)
            && self.ports.as_ref().is_none_or(|ports| ports.contains(&peer.port()))
    }

    /// The 403 answer to `packet` when it is a permission or channel request for a peer this
    /// deployment does not own; `None` for everything else (left to the server).
    fn refusal(&self, packet: &[u8]) -> Option<Vec<u8>> {
        if !stun::message::is_message(packet) {
            return None;
        }
        let mut request = Message::new();
        request.unmarshal_binary(packet).ok()?;
        let method = request.typ.method;
        if request.typ.class != CLASS_REQUEST || (method != METHOD_CREATE_PERMISSION && method != METHOD_CHANNEL_BIND) {
            return None;
        }
        let foreign =
            request.attributes.0.iter().filter(|attribute| attribute.typ == ATTR_XOR_PEER_ADDRESS).any(|attribute| {
                // Each XOR-PEER-ADDRESS decoded on its own (a request may carry several).
                let mut single = Message::new();
                single.transaction_id = request.transaction_id;
                single.add(ATTR_XOR_PEER_ADDRESS, &attribute.value);
                let mut peer = PeerAddress::default();
                // An address that does not decode is refused too.
                peer.get_from(&single).is_err() || !self.allows(SocketAddr::new(peer.ip, peer.port))
            });
        if !foreign {
            return None;
        }
        let mut answer = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(request.transaction_id),
            Box::new(MessageType::new(method, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code: CODE_FORBIDDEN,
                reason: b"peer is not a media address of this deployment".to_vec(),
            }),
        ];
        answer.build(&setters).ok()?;
        Some(answer.raw)
    }
}

/// Allocations per credential (per participant: its username), at most `max` at once; more are
/// answered 486 (Allocation Quota Reached). Counted exactly: an Allocate request's username is
/// remembered until the server's success answer (then the allocation counts, by its client
/// address on its listener) and the allocation's close (reported by the server) uncounts it.
pub struct Quota {
    max: usize,
    state: Mutex<QuotaState>,
}

#[derive(Default)]
struct QuotaState {
    /// Allocate requests awaiting their answer: transaction id → username.
    pending: HashMap<[u8; 12], String>,
    /// Allocations by (listener, client address) → username.
    allocations: HashMap<(SocketAddr, SocketAddr), String>,
    per_username: HashMap<String, usize>,
}

/// Requests awaiting an answer that are remembered at most (answers never sent are forgotten).
const MAX_PENDING: usize = 4096;

impl Quota {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, state: Mutex::new(QuotaState::default()) })
    }

    /// An Allocate request: `true` when its username may have one more allocation.
    fn admit(&self, request: &Message) -> bool {
        let Ok(username) = request.get(ATTR_USERNAME) else { return true };
        let username = String::from_utf8_lossy(&username).into_owned();
        let mut state = self.state.lock();
        if state.per_username.get(&username).copied().unwrap_or(0) >= self.max {
            return false;
        }
        if state.pending.len() >= MAX_PENDING {
            state.pending.clear();
        }
        state.pending.insert(request.transaction_id.0, username);
        true
    }

    /// The server answered an Allocate with success to `client` on `listener`.
    fn allocated(&self, transaction: [u8; 12], listener: SocketAddr, client: SocketAddr) {
        let mut state = self.state.lock();
        let Some(username) = state.pending.remove(&transaction) else { return };
        if state.allocations.contains_key(&(listener, client)) {
            return; // a retransmitted request answered again
        }
        *state.per_username.entry(username.clone()).or_default() += 1;
        state.allocations.insert((listener, client), username);
    }

    /// The server closed the allocation of `client` on `listener`.
    pub fn closed(&self, listener: SocketAddr, client: SocketAddr) {
        let mut state = self.state.lock();
        let Some(username) = state.allocations.remove(&(listener, client)) else { return };
        if let Some(count) = state.per_username.get_mut(&username) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_username.remove(&username);
            }
        }
    }
}

/// A STUN message's class and method, without decoding it (`None` for anything else).
fn stun_type(packet: &[u8]) -> Option<MessageType> {
    let [first, second, ..] = packet else { return None };
    if first >> 6 != 0 || !stun::message::is_message(packet) {
        return None;
    }
    let mut typ = MessageType::default();
    typ.read_value(u16::from_be_bytes([*first, *second]));
    Some(typ)
}

/// Whether the server is answering a request 400 (Bad Request): what it answers for an unknown,
/// expired or wrongly signed credential and for malformed requests. The type is read first, so
/// relayed data (ChannelData, Data indications) is never decoded.
fn is_bad_request_answer(packet: &[u8]) -> bool {
    if stun_type(packet).is_none_or(|typ| typ.class != CLASS_ERROR_RESPONSE) {
        return false;
    }
    let mut answer = Message::new();
    let mut code = ErrorCodeAttribute::default();
    answer.unmarshal_binary(packet).is_ok() && code.get_from(&answer).is_ok() && code.code == CODE_BAD_REQUEST
}

/// A listener (UDP socket, or the TCP/TLS connections behind one `Conn`) that answers requests
/// for foreign peers itself.
pub struct Guarded {
    inner: Arc<dyn Conn + Send + Sync>,
    allowed: AllowedPeers,
    quota: Arc<Quota>,
}

impl Guarded {
    pub fn new(inner: Arc<dyn Conn + Send + Sync>, allowed: AllowedPeers, quota: Arc<Quota>) -> Arc<Self> {
        Arc::new(Self { inner, allowed, quota })
    }

    /// The 486 answer to an Allocate beyond its credential's quota; `None` otherwise.
    fn over_quota(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let typ = stun_type(packet)?;
        if typ != MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST) {
            return None;
        }
        let mut request = Message::new();
        request.unmarshal_binary(packet).ok()?;
        if self.quota.admit(&request) {
            return None;
        }
        let mut answer = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(request.transaction_id),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code: CODE_ALLOC_QUOTA_REACHED,
                reason: b"this credential has sfu.turn.max_allocations_per_credential allocations".to_vec(),
            }),
        ];
        answer.build(&setters).ok()?;
        Some(answer.raw)
    }
}

#[async_trait]
impl Conn for Guarded {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            let packet = buf.get(..n).unwrap_or_default();
            if let Some(refusal) = self.allowed.refusal(packet) {
                crate::telemetry::metrics().turn_peers_refused.inc();
                tracing::debug!(%from, "TURN permission for a foreign peer refused (403)");
                let _ = self.inner.send_to(&refusal, from).await;
                continue;
            }
            if let Some(refusal) = self.over_quota(packet) {
                crate::telemetry::metrics().turn_quota_refused.inc();
                tracing::debug!(%from, "TURN allocation beyond the credential's quota refused (486)");
                let _ = self.inner.send_to(&refusal, from).await;
                continue;
            }
            return Ok((n, from));
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if is_bad_request_answer(buf) {
            crate::telemetry::metrics().turn_auth_refused.inc();
        }
        if stun_type(buf) == Some(MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE)) {
            if let (Some(transaction), Ok(listener)) = (buf.get(8..20), self.inner.local_addr()) {
                let mut id = [0u8; 12];
                id.copy_from_slice(transaction);
                self.quota.allocated(id, listener, target);
            }
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Makes allocations' relay sockets: bound on `bind` (a port of `ports`, or any), advertised as
/// `advertised`, talking only to allowed peers.
pub struct Relays {
    pub bind: IpAddr,
    pub advertised: IpAddr,
    pub ports: Option<RangeInclusive<u16>>,
    pub allowed: AllowedPeers,
}

#[async_trait]
impl turn::relay::RelayAddressGenerator for Relays {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.bind.is_ipv4() && !self.bind.is_unspecified() {
            return Err(turn::Error::Other("the relay has no address of the requested family".into()));
        }
        let socket = match (&self.ports, requested_port) {
            (_, 0) | (None, _) => self.bind_in_range().await?,
            (Some(ports), port) if ports.contains(&port) => {
                tokio::net::UdpSocket::bind(SocketAddr::new(self.bind, port)).await.map_err(io_error)?
            }
            (Some(_), _) => self.bind_in_range().await?,
        };
        let mut address = socket.local_addr().map_err(io_error)?;
        address.set_ip(self.advertised);
        let relay = Arc::new(RelaySocket { socket, allowed: self.allowed.clone() });
        Ok((relay, address))
    }
}

impl Relays {
    async fn bind_in_range(&self) -> Result<tokio::net::UdpSocket, turn::Error> {
        let Some(ports) = &self.ports else {
            return tokio::net::UdpSocket::bind(SocketAddr::new(self.bind, 0)).await.map_err(io_error);
        };
        // Start at a random port of the range and walk it once.
        let span = u32::from(ports.end() - ports.start()) + 1;
        let first = rand::random::<u32>() % span;
        for step in 0..span {
            let port = *ports.start() as u32 + (first + step) % span;
            let port = u16::try_from(port).unwrap_or(*ports.end());
            if let Ok(socket) = tokio::net::UdpSocket::bind(SocketAddr::new(self.bind, port)).await {
                return Ok(socket);
            }
        }
        Err(turn::Error::Other("every relay port is in use (sfu.turn.relay_port_min..relay_port_max)".into()))
    }
}

fn io_error(error: std::io::Error) -> turn::Error {
    turn::Error::Other(error.to_string())
}

/// One allocation's relay socket: packets to or from a foreign peer are dropped.
struct RelaySocket {
    socket: tokio::net::UdpSocket,
    allowed: AllowedPeers,
}

#[async_trait]
impl Conn for RelaySocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if self.allowed.allows(from) {
                return Ok((n, from));
            }
            crate::telemetry::metrics().turn_peers_refused.inc();
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.allowed.allows(target) {
            crate::telemetry::metrics().turn_peers_refused.inc();
            return Err(webrtc_util::Error::Other(format!("{target} is not a media address of this deployment")));
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::BINDING_REQUEST;

    fn permission_request(peer: SocketAddr) -> Vec<u8> {
        let mut request = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
            Box::new(PeerAddress { ip: peer.ip(), port: peer.port() }),
        ];
        request.build(&setters).expect("request builds");
        request.raw
    }

    #[test]
    fn a_permission_for_a_foreign_peer_is_answered_403_and_an_allowed_one_passes() {
        let allowed = AllowedPeers::new(vec![IpAddr::from([127, 0, 0, 1])], Some(40000..=40100));
        assert!(allowed.refusal(&permission_request("127.0.0.1:40050".parse().unwrap())).is_none());
        for foreign in ["127.0.0.2:40050", "127.0.0.1:22", "10.0.0.1:40050"] {
            let refusal = allowed.refusal(&permission_request(foreign.parse().unwrap())).expect("refused");
            let mut answer = Message::new();
            answer.unmarshal_binary(&refusal).expect("a STUN answer");
            assert_eq!(answer.typ, MessageType::new(METHOD_CREATE_PERMISSION, CLASS_ERROR_RESPONSE));
            let mut code = ErrorCodeAttribute::default();
            code.get_from(&answer).expect("an error code");
            assert!(code.code == CODE_FORBIDDEN, "{foreign}: {}", code.code.0);
        }
        // Not a permission request, or not STUN at all: left to the server.
        let mut binding = Message::new();
        binding.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)]).expect("builds");
        assert!(allowed.refusal(&binding.raw).is_none());
        assert!(allowed.refusal(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]).is_none());
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_same_peer() {
        let allowed = AllowedPeers::new(vec![IpAddr::from([127, 0, 0, 1])], None);
        assert!(allowed.allows("[::ffff:127.0.0.1]:5000".parse().unwrap()));
        assert!(!allowed.allows("[::1]:5000".parse().unwrap()));
    }
}
