//! `[mongodb]`: the connection, its pool and the write concern.

use std::time::Duration;

use mongodb::options::{Acknowledgment, WriteConcern};
use serde::{Deserialize, Serialize};

/// `[mongodb]`: where the chat store lives when `storage.kind = "mongodb"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    /// Connection string (`mongodb://…` or `mongodb+srv://…`); may carry credentials, so it is
    /// redacted by `check-config`.
    pub uri: String,
    /// Database holding rampart's collections.
    pub database: String,
    /// Write concern of every write: `majority`, a number of nodes, or a tag set name.
    pub write_concern: String,
    /// Acknowledge writes only once journaled (`j: true`).
    pub journal: bool,
    /// Deadline of each operation other than batch commits (those use `pipeline.storage_timeout`).
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// With the embedded search index, the indexer reads only messages stored at least this
    /// long ago: writes still in flight get this long to land before the indexer passes their
    /// `seq`. At least `pipeline.storage_timeout` is safe; less makes search fresher. (An
    /// external engine's indexer finds messages by flag and does not wait.)
    #[serde(with = "humantime_serde")]
    pub index_settle: Duration,
    /// Connections per server in the driver's pool.
    pub max_pool_size: u32,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017/?directConnection=true".into(),
            database: "rampart".into(),
            write_concern: "majority".into(),
            journal: true,
            operation_timeout: Duration::from_secs(5),
            index_settle: Duration::from_secs(5),
            max_pool_size: 32,
        }
    }
}

impl MongoConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            return Err("mongodb.uri must start with mongodb:// or mongodb+srv://".into());
        }
        let database_ok = !self.database.is_empty()
            && self.database.len() < 64
            && !self.database.contains(['/', '\\', '.', ' ', '"', '$', '\0']);
        if !database_ok {
            return Err(format!("mongodb.database {:?} is not a valid database name", self.database));
        }
        if self.write_concern.is_empty() {
            return Err("mongodb.write_concern must be \"majority\", a number of nodes or a tag set".into());
        }
        if self.operation_timeout.is_zero() || self.max_pool_size == 0 {
            return Err("mongodb.operation_timeout and mongodb.max_pool_size must be above 0".into());
        }
        Ok(())
    }

    /// The URI with any password replaced, for `check-config` and logs.
    pub fn redacted_uri(&self) -> String {
        redact_uri(&self.uri)
    }

    pub(super) fn write_concern(&self) -> WriteConcern {
        let w = match self.write_concern.parse::<u32>() {
            Ok(nodes) => Acknowledgment::Nodes(nodes),
            Err(_) if self.write_concern == "majority" => Acknowledgment::Majority,
            Err(_) => Acknowledgment::Custom(self.write_concern.clone()),
        };
        WriteConcern::builder().w(w).journal(self.journal).build()
    }
}

fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{}", &rest[at + 1..])
        }
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_uris_are_redacted() {
        assert_eq!(
            redact_uri("mongodb://app:s3cret@db1:27017,db2/?replicaSet=r"),
            "mongodb://app:<redacted>@db1:27017,db2/?replicaSet=r"
        );
        assert_eq!(
            redact_uri("mongodb+srv://app:p%40ss@cluster.example.net/db"),
            "mongodb+srv://app:<redacted>@cluster.example.net/db"
        );
        assert_eq!(
            redact_uri("mongodb://127.0.0.1:27017/?directConnection=true"),
            "mongodb://127.0.0.1:27017/?directConnection=true"
        );
    }

    #[test]
    fn write_concerns_parse() {
        let config = MongoConfig::default();
        assert_eq!(config.write_concern().w, Some(Acknowledgment::Majority));
        assert_eq!(config.write_concern().journal, Some(true));
        let config = MongoConfig { write_concern: "2".into(), journal: false, ..MongoConfig::default() };
        assert_eq!(config.write_concern().w, Some(Acknowledgment::Nodes(2)));
        assert!(MongoConfig { uri: "http://x".into(), ..MongoConfig::default() }.validate().is_err());
        assert!(MongoConfig { database: "a.b".into(), ..MongoConfig::default() }.validate().is_err());
    }
}
