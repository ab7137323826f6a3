//! Signaling protocol v1 on `GET /rtc`: JSON text frames, each an object with a `type`.
//!
//! Owns: parsing client frames into [`ClientSignal`] with a precise error code for everything
//! it refuses, and the server frames' JSON. Knows nothing of webrtc-rs: SDP and candidates are
//! carried as text here and checked by the peer connection that receives them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Which of a participant's two peer connections a frame is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The client's sending connection: the client offers, the SFU answers.
    Publisher,
    /// The client's receiving connection: the SFU offers, the client answers.
    Subscriber,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Publisher => "publisher",
            Target::Subscriber => "subscriber",
        }
    }
}

/// An ICE candidate as browsers' `RTCIceCandidate.toJSON()` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Candidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u16>,
    #[serde(rename = "usernameFragment", default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSignal {
    Join { room: String },
    Leave,
    Offer { target: Target, sdp: String },
    Answer { target: Target, sdp: String },
    Candidate { target: Target, candidate: Candidate },
    Mute { track: String, muted: bool },
    Ping,
}

/// Why a frame was refused: a code clients can act on, and words for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalError {
    pub code: &'static str,
    pub message: String,
}

/// Characters of a client's own input (a frame type) an error message repeats at most.
const MAX_ECHO_CHARS: usize = 32;
/// Characters of an error message at most: messages quote client input (field names in a
/// parser's words), which must not come back whole.
const MAX_MESSAGE_CHARS: usize = 200;

impl SignalError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.chars().count() > MAX_MESSAGE_CHARS {
            message = message.chars().take(MAX_MESSAGE_CHARS).chain(std::iter::once('…')).collect();
        }
        Self { code, message }
    }

    pub fn to_json(&self) -> String {
        json!({"type": "error", "code": self.code, "message": self.message}).to_string()
    }
}

/// Longest room name; names are any printable text (a conversation id, an admin room).
pub const MAX_ROOM_NAME: usize = 128;
/// Longest SDP accepted inside a frame (the frame limit bounds it too).
const MAX_SDP: usize = 128 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinFrame {
    #[serde(rename = "type")]
    _type: String,
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SdpFrame {
    #[serde(rename = "type")]
    _type: String,
    target: Target,
    sdp: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateFrame {
    #[serde(rename = "type")]
    _type: String,
    target: Target,
    candidate: Candidate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteFrame {
    #[serde(rename = "type")]
    _type: String,
    track: String,
    muted: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BareFrame {
    #[serde(rename = "type")]
    _type: String,
}

pub fn parse(text: &str) -> Result<ClientSignal, SignalError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| SignalError::new("invalid_json", format!("frame is not JSON: {error}")))?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| SignalError::new("invalid_frame", "frame must be an object with a string \"type\""))?
        .to_owned();
    fn fields<T: serde::de::DeserializeOwned>(kind: &str, value: Value) -> Result<T, SignalError> {
        serde_json::from_value(value).map_err(|error| SignalError::new("invalid_frame", format!("{kind}: {error}")))
    }
    let signal = match kind.as_str() {
        "join" => {
            let frame: JoinFrame = fields(&kind, value)?;
            let room = frame.room.trim();
            if room.is_empty() || room.len() > MAX_ROOM_NAME || room.chars().any(char::is_control) {
                return Err(SignalError::new(
                    "invalid_room",
                    format!("room must be 1 to {MAX_ROOM_NAME} printable characters"),
                ));
            }
            ClientSignal::Join { room: room.to_owned() }
        }
        "leave" => {
            let _: BareFrame = fields(&kind, value)?;
            ClientSignal::Leave
        }
        "ping" => {
            let _: BareFrame = fields(&kind, value)?;
            ClientSignal::Ping
        }
        "offer" | "answer" => {
            let frame: SdpFrame = fields(&kind, value)?;
            if frame.sdp.len() > MAX_SDP || !frame.sdp.starts_with("v=0") {
                return Err(SignalError::new(
                    "invalid_sdp",
                    format!("{kind}: sdp must be a session description (v=0 ...)"),
                ));
            }
            match kind.as_str() {
                "offer" => ClientSignal::Offer { target: frame.target, sdp: frame.sdp },
                _ => ClientSignal::Answer { target: frame.target, sdp: frame.sdp },
            }
        }
        "candidate" => {
            let frame: CandidateFrame = fields(&kind, value)?;
            if frame.candidate.candidate.len() > 1024 {
                return Err(SignalError::new("invalid_candidate", "candidate longer than 1024 characters"));
            }
            ClientSignal::Candidate { target: frame.target, candidate: frame.candidate }
        }
        "mute" => {
            let frame: MuteFrame = fields(&kind, value)?;
            ClientSignal::Mute { track: frame.track, muted: frame.muted }
        }
        other => {
            let shown: String = other.chars().take(MAX_ECHO_CHARS).collect();
            return Err(SignalError::new(
                "unknown_type",
                format!("unknown frame type {shown:?}; expected join, leave, offer, answer, candidate, mute or ping"),
            ));
        }
    };
    Ok(signal)
}

/// A track as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackView {
    /// The publisher's own track id (its `MediaStreamTrack.id`).
    pub track: String,
    pub kind: &'static str,
    pub muted: bool,
}

/// A participant as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantView {
    pub participant: String,
    pub user: String,
    pub tracks: Vec<TrackView>,
}

/// `ice_servers`: what the participant passes to `RTCPeerConnection` (the embedded TURN relay
/// with credentials of its own; empty when the relay is off).
pub fn joined<S: Serialize>(
    room: &str,
    participant: &str,
    participants: &[ParticipantView],
    ice_servers: &[S],
) -> String {
    json!({
        "type": "joined",
        "room": room,
        "participant": participant,
        "participants": participants,
        "ice_servers": ice_servers,
    })
    .to_string()
}

pub fn participant_joined(participant: &str, user: &str) -> String {
    json!({"type": "participant_joined", "participant": participant, "user": user}).to_string()
}

pub fn participant_left(participant: &str) -> String {
    json!({"type": "participant_left", "participant": participant}).to_string()
}

pub fn track_published(participant: &str, track: &TrackView) -> String {
    json!({"type": "track_published", "participant": participant, "track": track.track, "kind": track.kind, "muted": track.muted})
        .to_string()
}

pub fn track_unpublished(participant: &str, track: &str) -> String {
    json!({"type": "track_unpublished", "participant": participant, "track": track}).to_string()
}

pub fn track_muted(participant: &str, track: &str, muted: bool) -> String {
    json!({"type": "track_muted", "participant": participant, "track": track, "muted": muted}).to_string()
}

pub fn sdp(kind: &str, target: Target, sdp: &str) -> String {
    json!({"type": kind, "target": target, "sdp": sdp}).to_string()
}

pub fn candidate(target: Target, candidate: &Candidate) -> String {
    json!({"type": "candidate", "target": target, "candidate": candidate}).to_string()
}

pub fn left(room: &str) -> String {
    json!({"type": "left", "room": room}).to_string()
}

pub fn reconnect(reason: &str) -> String {
    json!({"type": "reconnect", "reason": reason}).to_string()
}

/// The room moved to another instance: drop both connections and wait for the next `joined`
/// (then publish again), on this same socket.
pub fn rejoin(reason: &str) -> String {
    json!({"type": "reconnect", "reason": reason, "rejoin": true}).to_string()
}

pub fn pong() -> String {
    json!({"type": "pong"}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_frames_parse() {
        assert_eq!(parse(r#"{"type":"join","room":" r1 "}"#).unwrap(), ClientSignal::Join { room: "r1".into() });
        assert_eq!(parse(r#"{"type":"leave"}"#).unwrap(), ClientSignal::Leave);
        assert_eq!(
            parse(r#"{"type":"offer","target":"publisher","sdp":"v=0\r\n"}"#).unwrap(),
            ClientSignal::Offer { target: Target::Publisher, sdp: "v=0\r\n".into() }
        );
        let candidate = r#"{"type":"candidate","target":"subscriber","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abc"}}"#;
        assert!(matches!(parse(candidate).unwrap(), ClientSignal::Candidate { target: Target::Subscriber, .. }));
        assert_eq!(
            parse(r#"{"type":"mute","track":"t","muted":true}"#).unwrap(),
            ClientSignal::Mute { track: "t".into(), muted: true }
        );
    }

    #[test]
    fn bad_frames_get_precise_codes() {
        let code = |text: &str| parse(text).unwrap_err().code;
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[1]"), "invalid_frame");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_type");
        // Regression: client input came back whole in error messages.
        let long = "x".repeat(10_000);
        for frame in [format!(r#"{{"type":"{long}"}}"#), format!(r#"{{"type":"leave","{long}":1}}"#)] {
            let error = parse(&frame).unwrap_err();
            assert!(error.message.chars().count() <= MAX_MESSAGE_CHARS + 1, "{}", error.message.len());
        }
        assert_eq!(code(r#"{"type":"join"}"#), "invalid_frame");
        assert_eq!(code(r#"{"type":"join","room":""}"#), "invalid_room");
        assert_eq!(code(r#"{"type":"join","room":"a\u0000b"}"#), "invalid_room");
        assert_eq!(code(r#"{"type":"offer","target":"both","sdp":"v=0"}"#), "invalid_frame");
        assert_eq!(code(r#"{"type":"offer","target":"publisher","sdp":"hello"}"#), "invalid_sdp");
        assert_eq!(code(r#"{"type":"leave","extra":1}"#), "invalid_frame");
    }
}
