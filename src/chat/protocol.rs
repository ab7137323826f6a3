//! WebSocket protocol v1: the JSON text frames clients and the server exchange on `/ws`.
//!
//! Owns: frame shapes, their validation, and the error codes clients can match on. Parsing
//! never panics; every rejection names the field.

use serde::{Deserialize, Serialize};

use crate::storage::StoredMessage;

/// Longest `client_msg_id`.
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 64;
/// Largest message body, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest conversation id accepted in a frame (ids rampart issues are 36 characters).
pub const MAX_CONVERSATION_ID_CHARS: usize = 128;

/// Every code an `error` frame can carry, and what it tells the client.
pub const ERROR_CODES: &[(&str, &str)] = &[
    ("invalid_json", "the frame is not a JSON object"),
    ("invalid", "a field is missing, mistyped or out of range; the message names it"),
    ("unknown_type", "`type` is not `send`, `delivered` or `ping`"),
    (
        "too_large",
        "a body over 16384 bytes (socket stays open), or a frame over `ws.max_frame_bytes` (then close 1009)",
    ),
    ("unsupported_frame", "a binary frame"),
    ("forbidden", "not a member of the conversation (or it does not exist)"),
    ("unknown_sender", "the token's user does not exist (after `pipeline.unknown_sender_wait`)"),
    ("rate_limited", "more than `ws.rate_limit_per_sec` sends; slow down"),
    ("unavailable", "not stored (storage unavailable, or the server overloaded): send again, after a pause"),
    ("rejected", "the message failed alone repeatedly, or the store refused it for good, and was dead-lettered"),
    ("internal", "the session crashed on that frame and was restarted; send again"),
];

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Send { conversation: String, client_msg_id: String, body: String },
    Delivered { id: String },
    Ping,
}

/// Why a frame was refused. `code` is the stable part clients match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    /// Echoed back when the frame had one, so the client knows which send failed.
    pub client_msg_id: Option<String>,
}

impl FrameError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        // Messages may quote client input (in a parser's words): never whole.
        if message.chars().count() > MAX_ERROR_MESSAGE_CHARS {
            message = message.chars().take(MAX_ERROR_MESSAGE_CHARS).chain(std::iter::once('…')).collect();
        }
        Self { code, message, client_msg_id: None }
    }
}

/// Characters of an error frame's message at most.
const MAX_ERROR_MESSAGE_CHARS: usize = 200;

#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    conversation: Option<serde_json::Value>,
    client_msg_id: Option<serde_json::Value>,
    body: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
}

/// Parses and validates one text frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let raw: RawFrame = serde_json::from_str(text)
        .map_err(|error| FrameError::new("invalid_json", format!("frame is not a JSON object: {error}")))?;
    let kind = match &raw.kind {
        Some(serde_json::Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(FrameError::new("invalid", "field `type` must be a string")),
        None => return Err(FrameError::new("invalid", "field `type` is missing")),
    };
    match kind {
        "send" => {
            let client_msg_id = string_field(&raw.client_msg_id, "client_msg_id")?;
            let with_id = |mut error: FrameError| {
                error.client_msg_id = Some(client_msg_id.clone());
                error
            };
            validate_client_msg_id(&client_msg_id).map_err(|message| FrameError::new("invalid", message))?;
            let conversation = string_field(&raw.conversation, "conversation").map_err(with_id)?;
            if conversation.is_empty() || conversation.chars().count() > MAX_CONVERSATION_ID_CHARS {
                return Err(with_id(FrameError::new(
                    "invalid",
                    format!("field `conversation` must be 1 to {MAX_CONVERSATION_ID_CHARS} characters"),
                )));
            }
            no_nul("conversation", &conversation).map_err(|message| with_id(FrameError::new("invalid", message)))?;
            let body = string_field(&raw.body, "body").map_err(with_id)?;
            validate_body(&body).map_err(|(code, message)| with_id(FrameError::new(code, message)))?;
            Ok(ClientFrame::Send { conversation, client_msg_id, body })
        }
        "delivered" => {
            let id = string_field(&raw.id, "id")?;
            // Message ids are UUIDs; anything else confirms nothing and must say so.
            match uuid::Uuid::try_parse(&id) {
                Ok(parsed) => Ok(ClientFrame::Delivered { id: parsed.hyphenated().to_string() }),
                Err(_) => Err(FrameError::new("invalid", "field `id` must be a message id (a UUID)")),
            }
        }
        "ping" => Ok(ClientFrame::Ping),
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(FrameError::new(
                "unknown_type",
                format!("unknown frame type `{shown}`; expected send, delivered or ping"),
            ))
        }
    }
}

/// 1 to 64 characters, no NUL.
pub fn validate_client_msg_id(id: &str) -> Result<(), String> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_CLIENT_MSG_ID_CHARS {
        return Err(format!("field `client_msg_id` must be 1 to {MAX_CLIENT_MSG_ID_CHARS} characters"));
    }
    no_nul("client_msg_id", id)
}

/// 1 to 16384 bytes, no NUL; the error carries its code (`invalid` or `too_large`).
pub fn validate_body(body: &str) -> Result<(), (&'static str, String)> {
    if body.is_empty() {
        return Err(("invalid", "field `body` must not be empty".into()));
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(("too_large", format!("field `body` is {} bytes; the limit is {MAX_BODY_BYTES}", body.len())));
    }
    no_nul("body", body).map_err(|message| ("invalid", message))
}

/// Text that is stored must not contain U+0000: no chat text needs it, and some stores cannot
/// keep it (PostgreSQL's jsonb under FerretDB refuses the whole insert, which would fail every
/// batch the message joins).
pub fn no_nul(field: &str, text: &str) -> Result<(), String> {
    if text.contains('\0') {
        return Err(format!("field `{field}` must not contain U+0000 (NUL)"));
    }
    Ok(())
}

fn string_field(value: &Option<serde_json::Value>, name: &str) -> Result<String, FrameError> {
    match value {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(FrameError::new("invalid", format!("field `{name}` must be a string"))),
        None => Err(FrameError::new("invalid", format!("field `{name}` is missing"))),
    }
}

/// What the server sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Ack {
        client_msg_id: &'a str,
        id: &'a str,
        created_at: &'a str,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<&'a str>,
        code: &'a str,
        message: &'a str,
    },
    Message {
        id: &'a str,
        conversation: &'a str,
        sender: &'a str,
        body: &'a str,
        created_at: &'a str,
    },
    Pong,
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail; an empty object would be a bug, not a crash.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// The `message` frame of a stored message.
pub fn message_frame(message: &StoredMessage) -> String {
    let created_at = crate::storage::ms_to_rfc3339(message.created_at_ms);
    ServerFrame::Message {
        id: &message.id,
        conversation: &message.conversation,
        sender: &message.sender,
        body: &message.body,
        created_at: &created_at,
    }
    .to_json()
}

/// The README section on protocol v1, generated from the frame types above: client frames are
/// examples that [`parse`] accepts (a unit test checks it), server frames are [`ServerFrame`]s
/// serialized, error codes are [`ERROR_CODES`]. A test keeps README equal to it.
pub fn reference_markdown() -> String {
    let id = "0192f1c4-8d0e-7c4a-9b1e-3f2a5d6c7e8f";
    let at = "2026-11-30T12:00:00.000Z";
    let client = [
        (
            r#"{"type":"send","conversation":"<id>","client_msg_id":"c-1","body":"hi"}"#,
            "Sends a message. `client_msg_id`: 1 to 64 characters, yours; `body`: 1 to 16384 bytes. No U+0000 in either.",
        ),
        (
            r#"{"type":"delivered","id":"0192f1c4-8d0e-7c4a-9b1e-3f2a5d6c7e8f"}"#,
            "Confirms a pushed `message` (its `id`, a UUID).",
        ),
        (r#"{"type":"ping"}"#, "Answered by `pong`."),
    ];
    let server = [
        (
            ServerFrame::Ack { client_msg_id: "c-1", id, created_at: at }.to_json(),
            "The message is durably stored (only then: on disk, or journaled by a majority on MongoDB). A resend gets the same `id`.",
        ),
        (
            ServerFrame::Error { client_msg_id: Some("c-1"), code: "forbidden", message: "not a member" }.to_json(),
            "A refused frame; `client_msg_id` when the frame had one. Codes below.",
        ),
        (
            ServerFrame::Message { id, conversation: "<id>", sender: "alice", body: "hi", created_at: at }.to_json(),
            "A message for you, live or from your backlog. Confirm it with `delivered`.",
        ),
        (ServerFrame::Pong.to_json(), "The answer to `ping`."),
    ];
    let mut text = String::from("| client → server | |\n| --- | --- |\n");
    for (frame, meaning) in client {
        text.push_str(&format!("| `{frame}` | {meaning} |\n"));
    }
    text.push_str("\n| server → client | |\n| --- | --- |\n");
    for (frame, meaning) in &server {
        text.push_str(&format!("| `{frame}` | {meaning} |\n"));
    }
    text.push_str("\n| error code | meaning |\n| --- | --- |\n");
    for (code, meaning) in ERROR_CODES {
        text.push_str(&format!("| `{code}` | {meaning} |\n"));
    }
    text
}

pub fn error_frame(error: &FrameError) -> String {
    ServerFrame::Error { client_msg_id: error.client_msg_id.as_deref(), code: error.code, message: &error.message }
        .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_frames() {
        assert_eq!(
            parse(r#"{"type":"send","conversation":"c","client_msg_id":"1","body":"hi"}"#).unwrap(),
            ClientFrame::Send { conversation: "c".into(), client_msg_id: "1".into(), body: "hi".into() }
        );
        assert_eq!(parse(r#"{"type":"ping"}"#).unwrap(), ClientFrame::Ping);
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let frame = format!(r#"{{"type":"delivered","id":"{id}"}}"#);
        assert_eq!(parse(&frame).unwrap(), ClientFrame::Delivered { id: id.into() });
        // Regression: a malformed id got no answer at all.
        for bad in [r#""not-an-id""#, r#""""#, "7", "null"] {
            let error = parse(&format!(r#"{{"type":"delivered","id":{bad}}}"#)).unwrap_err();
            assert_eq!(error.code, "invalid", "{bad}");
        }
    }

    const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    const BEGIN: &str = "<!-- ws-protocol: generated by chat::protocol::reference_markdown -->\n";
    const END: &str = "<!-- /ws-protocol -->";

    /// README's protocol section is the generated one. `RAMPART_UPDATE_README=1 cargo test
    /// readme_protocol` rewrites it after a protocol change.
    #[test]
    fn readme_protocol_section_is_generated_from_the_frame_types() {
        let readme = std::fs::read_to_string(README).unwrap();
        let start = readme.find(BEGIN).expect("README has the ws-protocol markers") + BEGIN.len();
        let end = start + readme[start..].find(END).expect("closing marker");
        let generated = reference_markdown();
        if std::env::var("RAMPART_UPDATE_README").is_ok_and(|v| v == "1") {
            std::fs::write(README, format!("{}{generated}{}", &readme[..start], &readme[end..])).unwrap();
            return;
        }
        assert_eq!(&readme[start..end], generated, "run RAMPART_UPDATE_README=1 cargo test readme_protocol");
    }

    #[test]
    fn documented_client_frames_parse_and_every_code_is_documented() {
        let generated = reference_markdown();
        let client_section = &generated[..generated.find("server → client").unwrap()];
        let frames: Vec<&str> = client_section.split('`').skip(1).step_by(2).filter(|f| f.starts_with('{')).collect();
        assert_eq!(frames.len(), 3);
        for frame in frames {
            parse(frame).unwrap_or_else(|error| panic!("{frame}: {error:?}"));
        }
        let documented: Vec<&str> = ERROR_CODES.iter().map(|(code, _)| *code).collect();
        let send_errors = [
            crate::chat::SendError::Invalid(String::new()),
            crate::chat::SendError::Forbidden,
            crate::chat::SendError::UnknownSender(String::new()),
            crate::chat::SendError::RateLimited,
            crate::chat::SendError::Unavailable(String::new()),
            crate::chat::SendError::Rejected(String::new()),
        ];
        for error in &send_errors {
            assert!(documented.contains(&error.code()), "{}", error.code());
        }
        for bad in ["x", r#"{"type":1}"#, r#"{"type":"dance"}"#, r#"{"type":"delivered","id":"x"}"#] {
            let code = parse(bad).unwrap_err().code;
            assert!(documented.contains(&code), "{code}");
        }
    }

    #[test]
    fn rejections_carry_specific_codes() {
        let code = |text: &str| parse(text).unwrap_err().code;
        assert_eq!(code("not json"), "invalid_json");
        assert_eq!(code("[1]"), "invalid_json");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_type");
        assert_eq!(code(r#"{"body":"x"}"#), "invalid");
        assert_eq!(code(r#"{"type":"send","conversation":"c","body":"x"}"#), "invalid");
        assert_eq!(code(r#"{"type":"send","conversation":"c","client_msg_id":"1","body":""}"#), "invalid");
        let long_id = "x".repeat(65);
        assert_eq!(
            code(&format!(r#"{{"type":"send","conversation":"c","client_msg_id":"{long_id}","body":"x"}}"#)),
            "invalid"
        );
        let big = "x".repeat(MAX_BODY_BYTES + 1);
        let error =
            parse(&format!(r#"{{"type":"send","conversation":"c","client_msg_id":"7","body":"{big}"}}"#)).unwrap_err();
        assert_eq!((error.code, error.client_msg_id.as_deref()), ("too_large", Some("7")));
        assert_eq!(code(r#"{"type":"send","conversation":5,"client_msg_id":"1","body":"x"}"#), "invalid");
        // Regression: a NUL in a body failed every FerretDB batch it joined.
        for frame in [
            r#"{"type":"send","conversation":"c","client_msg_id":"1","body":"a\u0000b"}"#,
            r#"{"type":"send","conversation":"c","client_msg_id":"1\u0000","body":"x"}"#,
            r#"{"type":"send","conversation":"c\u0000","client_msg_id":"1","body":"x"}"#,
        ] {
            let error = parse(frame).unwrap_err();
            assert_eq!(error.code, "invalid", "{frame}");
            assert!(error.message.contains("NUL"), "{}", error.message);
        }
    }
}
