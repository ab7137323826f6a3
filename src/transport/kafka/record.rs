//! What rampart's records carry: the message record (`<topic>`), the dead-letter record
//! (`<topic>.dlq`) and the committed event (`<topic>.committed`).
//!
//! A message record: key = conversation id (order holds per conversation), value = the
//! `NewMessage` as JSON with `created_at_ms` set (the ack's time), headers `traceparent` (W3C) and
//! `rampart-message-id`. Anything else found on the topic is refused by `decode` and dead-lettered.

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::Message as _;

use crate::storage::{NewMessage, StoredMessage};

/// A record read from a topic, detached from the consumer (no borrowed message outlives a poll).
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Which assignment of its partition it was read under (see `consumer::Event`).
    pub generation: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn from_message(message: &OwnedMessage, generation: u64) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            generation,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).and_then(|(_, value)| std::str::from_utf8(value).ok())
    }
}

/// The value of a message record.
pub fn encode(message: &NewMessage) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

/// A message record's headers.
pub fn message_headers(message: &NewMessage) -> OwnedHeaders {
    let traceparent = traceparent();
    OwnedHeaders::new_with_capacity(2)
        .insert(Header { key: "traceparent", value: Some(traceparent.as_str()) })
        .insert(Header { key: "rampart-message-id", value: Some(message.id.as_str()) })
}

/// A W3C trace context (version 00, sampled) for the record: the current trace when spans are
/// exported (feature `otel`), so the record joins the send's trace; otherwise a fresh one.
fn traceparent() -> String {
    let trace = crate::telemetry::current_trace_id()
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// Why a record cannot be a message: a permanent failure, dead-lettered at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The message a record carries, checked as the validator would have: the id is the one its
/// sender and client id give, it has a time, and no string holds U+0000.
pub fn decode(record: &Record) -> Result<NewMessage, Invalid> {
    let payload = record.payload.as_deref().ok_or_else(|| Invalid("the record has no value".into()))?;
    let message: NewMessage = serde_json::from_slice(payload)
        .map_err(|error| Invalid(format!("the record's value is not a rampart message: {error}")))?;
    if message.id != crate::chat::message_id(&message.sender, &message.client_msg_id) {
        return Err(Invalid(format!("message id {} does not match its sender and client_msg_id", message.id)));
    }
    if message.created_at_ms.is_none() {
        return Err(Invalid("the message has no created_at_ms".into()));
    }
    let fields = [&message.conversation, &message.sender, &message.client_msg_id, &message.body];
    if fields.iter().any(|field| field.contains('\0')) {
        return Err(Invalid("the message contains U+0000".into()));
    }
    Ok(message)
}

/// Why a record went to the dead-letter topic: its headers.
pub struct DeadLetterCause<'a> {
    /// `invalid` (not a message), `rejected` (the store refused it, or poison), `retries` (its
    /// storage attempts ran out).
    pub class: &'a str,
    pub message: &'a str,
    pub attempts: u32,
    pub actor: &'a str,
}

pub fn dead_letter_headers(record: &Record, cause: &DeadLetterCause<'_>) -> OwnedHeaders {
    let (partition, offset, attempts) =
        (record.partition.to_string(), record.offset.to_string(), cause.attempts.to_string());
    let time = crate::rfc3339::format(std::time::SystemTime::now());
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 8);
    for (key, value) in [
        ("rampart-original-topic", record.topic.as_str()),
        ("rampart-original-partition", partition.as_str()),
        ("rampart-original-offset", offset.as_str()),
        ("rampart-error-class", cause.class),
        ("rampart-error-message", cause.message),
        ("rampart-attempts", attempts.as_str()),
        ("rampart-actor", cause.actor),
        ("rampart-dead-lettered-at", time.as_str()),
    ] {
        headers = headers.insert(Header { key, value: Some(value) });
    }
    // The original's own headers (traceparent…) travel along.
    for (key, value) in &record.headers {
        headers = headers.insert(Header { key: key.as_str(), value: Some(value.as_slice()) });
    }
    headers
}

/// The value of a committed event: the messages one batch stored, in commit order.
pub fn encode_committed(messages: &[std::sync::Arc<StoredMessage>]) -> Vec<u8> {
    let messages: Vec<&StoredMessage> = messages.iter().map(|message| message.as_ref()).collect();
    serde_json::to_vec(&messages).unwrap_or_default()
}

pub fn decode_committed(record: &Record) -> Option<Vec<StoredMessage>> {
    serde_json::from_slice(record.payload.as_deref()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            generation: 1,
            key: None,
            payload: Some(payload.to_vec()),
            headers: vec![],
        }
    }

    fn message() -> NewMessage {
        NewMessage {
            id: crate::chat::message_id("alice", "1"),
            conversation: "c".into(),
            sender: "alice".into(),
            client_msg_id: "1".into(),
            body: "hi".into(),
            created_at_ms: Some(1),
        }
    }

    #[test]
    fn a_message_round_trips_and_anything_else_is_invalid() {
        assert_eq!(decode(&record(&encode(&message()))), Ok(message()));
        assert!(decode(&record(b"{not json")).is_err());
        let forged = NewMessage { id: "someone-else".into(), ..message() };
        assert!(decode(&record(&encode(&forged))).unwrap_err().0.contains("does not match"));
        let untimed = NewMessage { created_at_ms: None, ..message() };
        assert!(decode(&record(&encode(&untimed))).is_err());
        let nul = NewMessage { body: "a\0b".into(), ..message() };
        assert!(decode(&record(&encode(&nul))).is_err());
    }

    #[test]
    fn traceparents_are_w3c_version_00() {
        let header = traceparent();
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"));
    }
}
