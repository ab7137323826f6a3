//! TURN over TCP and TLS (RFC 8656 §3.1, RFC 6062 framing): every connection of one listener
//! behind one packet-style `Conn`, which is what the TURN server reads from and answers on.
//!
//! A connection carries STUN messages (length in their header) and ChannelData (4-byte header,
//! padded to 4 bytes on a stream); each frame comes out of `recv_from` with the connection's
//! remote address, and `send_to` that address writes to that connection. Bounded everywhere:
//! `max_connections` at once, 10 s to finish a TLS handshake and to send a first frame, 64 KiB
//! frames (their length field's limit), 256 KiB queued to a slow reader (about what a UDP
//! socket buffers) and then dropped, as UDP would drop them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use webrtc_util::Conn;

use crate::tasks::{spawn_owned_on, OwnedTask};

const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no frame for this long is closed (allocations refresh every few minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Bytes queued for one connection before frames are dropped. Bounded in bytes, not frames: a
/// video keyframe arrives as a burst of a hundred packets or more, which a 64-frame queue cut
/// short every time, so a participant reaching the relay over TCP never decoded a picture again
/// after a renegotiation (browser test, TURN over TCP).
const QUEUED_BYTES: usize = 256 * 1024;

/// What is queued for one connection's writer, and how many bytes that is.
#[derive(Clone)]
struct Outbox {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
}

pub struct StreamConn {
    local: SocketAddr,
    inbound: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    writers: Arc<Mutex<HashMap<SocketAddr, Outbox>>>,
    /// The accept loop, which owns every connection's task: dropping the listener ends them.
    _accepting: OwnedTask<()>,
}

impl StreamConn {
    /// Accepts on `listener` (on the current tokio runtime) until the runtime ends; TLS first
    /// when `tls` is given.
    pub fn start(
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        max_connections: usize,
    ) -> std::io::Result<Arc<Self>> {
        let local = listener.local_addr()?;
        let (inbound_tx, inbound) = mpsc::channel(1024);
        let writers = Arc::new(Mutex::new(HashMap::new()));
        let runtime = tokio::runtime::Handle::current();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted_writers = writers.clone();
        let accepting = spawn_owned_on(&runtime.clone(), "turn.accept", async move {
            let writers = accepted_writers;
            let mut connections: Vec<OwnedTask<()>> = Vec::new();
            loop {
                let (stream, remote) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, %local, "TURN accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await; // out of descriptors: back off
                        continue;
                    }
                };
                if open.fetch_add(1, Ordering::AcqRel) >= max_connections {
                    open.fetch_sub(1, Ordering::AcqRel);
                    crate::telemetry::metrics().turn_connections_refused.inc();
                    continue; // dropped: closed at once
                }
                let _ = stream.set_nodelay(true);
                connections.retain(|connection| !connection.is_finished());
                let (inbound_tx, writers, open, tls) = (inbound_tx.clone(), writers.clone(), open.clone(), tls.clone());
                connections.push(spawn_owned_on(&runtime, "turn.connection", async move {
                    match tls {
                        Some(acceptor) => {
                            match tokio::time::timeout(FIRST_FRAME_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => serve(stream, remote, inbound_tx, &writers).await,
                                Ok(Err(error)) => tracing::debug!(%error, %remote, "TURN TLS handshake failed"),
                                Err(_) => tracing::debug!(%remote, "TURN TLS handshake timed out"),
                            }
                        }
                        None => serve(stream, remote, inbound_tx, &writers).await,
                    }
                    open.fetch_sub(1, Ordering::AcqRel);
                }));
            }
        });
        Ok(Arc::new(Self { local, inbound: tokio::sync::Mutex::new(inbound), writers, _accepting: accepting }))
    }
}

/// Reads frames from one connection until it closes, goes idle or sends garbage; writes what is
/// queued for it meanwhile.
async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    remote: SocketAddr,
    inbound: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    writers: &Mutex<HashMap<SocketAddr, Outbox>>,
) {
    let (mut reader, writer) = tokio::io::split(stream);
    let (frames, mut queued) = mpsc::unbounded_channel::<Vec<u8>>();
    let queue = Outbox { frames, bytes: Arc::new(AtomicUsize::new(0)) };
    writers.lock().insert(remote, queue.clone());
    let bytes = queue.bytes.clone();
    let writing = spawn_owned_on(&tokio::runtime::Handle::current(), "turn.write", async move {
        // Whatever queued up meanwhile goes out in one write.
        let mut writer = tokio::io::BufWriter::with_capacity(64 * 1024, writer);
        'writing: while let Some(frame) = queued.recv().await {
            let mut next = Some(frame);
            while let Some(frame) = next {
                let written = writer.write_all(&frame).await;
                bytes.fetch_sub(frame.len(), Ordering::AcqRel);
                if written.is_err() {
                    break 'writing;
                }
                next = queued.try_recv().ok();
            }
            if writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut timeout = FIRST_FRAME_TIMEOUT;
    loop {
        let frame = match tokio::time::timeout(timeout, read_frame(&mut reader)).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(error)) => {
                tracing::debug!(%error, %remote, "TURN stream closed");
                break;
            }
        };
        timeout = IDLE_TIMEOUT;
        if inbound.send((frame, remote)).await.is_err() {
            break;
        }
    }
    {
        let mut writers = writers.lock();
        if writers.get(&remote).is_some_and(|current| current.frames.same_channel(&queue.frames)) {
            writers.remove(&remote);
        }
    }
    drop(queue);
    drop(writing);
}

/// One STUN message or ChannelData frame (without its stream padding); `None` at a clean end.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let (rest, keep) = match header[0] >> 6 {
        // STUN: 20-byte header (4 read), then the attributes.
        0b00 => (16 + length, 16 + length),
        // ChannelData: the data, padded to a multiple of 4 on streams.
        0b01 => (length.div_ceil(4) * 4, length),
        _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "neither STUN nor ChannelData")),
    };
    let mut frame = vec![0u8; 4 + rest];
    frame[..4].copy_from_slice(&header);
    reader.read_exact(&mut frame[4..]).await?;
    frame.truncate(4 + keep);
    Ok(Some(frame))
}

#[async_trait]
impl Conn for StreamConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("a TURN stream listener does not connect".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let Some((frame, from)) = self.inbound.lock().await.recv().await else {
            return Err(webrtc_util::Error::Other("the TURN stream listener closed".into()));
        };
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok((n, from))
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("send on a TURN stream listener needs an address".into()))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let queue = self.writers.lock().get(&target).cloned();
        let Some(queue) = queue else {
            return Err(webrtc_util::Error::Other(format!("no TURN connection from {target}")));
        };
        // ChannelData is padded to 4 bytes on streams; STUN messages already are.
        let mut frame = buf.to_vec();
        frame.resize(buf.len().div_ceil(4) * 4, 0);
        // A reader this far behind loses frames, as it would over UDP.
        if queue.bytes.load(Ordering::Acquire) + frame.len() > QUEUED_BYTES {
            return Ok(buf.len());
        }
        queue.bytes.fetch_add(frame.len(), Ordering::AcqRel);
        let length = frame.len();
        if queue.frames.send(frame).is_err() {
            queue.bytes.fetch_sub(length, Ordering::AcqRel);
            return Err(webrtc_util::Error::Other(format!("the TURN connection from {target} closed")));
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inbound.lock().await.close();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the queue to a connection held 64 frames, so a keyframe's burst of packets
    /// relayed before the writer ran lost everything past the 64th. A burst that fits a UDP
    /// socket's worth of bytes arrives whole.
    #[tokio::test]
    async fn a_burst_of_packets_to_a_tcp_client_arrives_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let conn = StreamConn::start(listener, None, 4).expect("start");
        let mut client = tokio::net::TcpStream::connect(address).await.expect("connect");
        let me = client.local_addr().expect("client address");
        // A first frame (ChannelData) registers the connection.
        client.write_all(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]).await.expect("hello");
        let mut buf = [0u8; 64];
        let (_, from) = conn.recv_from(&mut buf).await.expect("first frame");
        assert_eq!(from, me);
        // 150 packets of 1,200 bytes, sent without yielding to the writer in between.
        let packet: Vec<u8> = [&[0x40, 0x00, 0x04, 0xb0][..], &[7u8; 1200]].concat();
        for _ in 0..150 {
            conn.send_to(&packet, me).await.expect("queued");
        }
        let mut received = 0;
        tokio::time::timeout(Duration::from_secs(10), async {
            while received < 150 {
                let frame = read_frame(&mut client).await.expect("read").expect("a frame");
                assert_eq!(frame.len(), packet.len());
                received += 1;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{received} of 150 packets arrived"));
    }

    #[tokio::test]
    async fn frames_are_cut_by_their_own_lengths_and_channel_data_loses_its_padding() {
        let mut bytes = Vec::new();
        // A STUN message with 8 bytes of attributes.
        let stun: Vec<u8> = [&[0x00, 0x01, 0x00, 0x08][..], &[0x21, 0x12, 0xa4, 0x42], &[7; 12], &[1; 8]].concat();
        bytes.extend_from_slice(&stun);
        // ChannelData of 5 bytes, padded to 8.
        bytes.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        bytes.extend_from_slice(&[0xff, 0, 0, 0]);
        let mut reader = &bytes[..];
        assert_eq!(read_frame(&mut reader).await.unwrap(), Some(stun));
        assert_eq!(read_frame(&mut reader).await.unwrap(), Some(vec![0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5]));
        assert!(read_frame(&mut reader).await.is_err(), "garbage ends the connection");
        assert_eq!(read_frame(&mut &[][..]).await.unwrap(), None);
    }
}
