//! The Elasticsearch / OpenSearch search backend (`search.kind = "elasticsearch"`).
//!
//! Owns: the one HTTP client of the process for the engine, the index template and index
//! (`<index_prefix>messages`), `_bulk` indexing and the search query. The only module that knows
//! the Elasticsearch query DSL. Tested against OpenSearch 2.19 (`scripts/services.sh`); the
//! requests used (`_index_template`, `_bulk`, `_search` with `bool`/`terms`/`highlight`) are the
//! same on Elasticsearch 7.10+ and 8.
//!
//! Indexing: documents are keyed by the message id, so indexing one twice (a replay after a
//! crash, a retried bulk) replaces it. A `_bulk` answer is read item by item even when the HTTP
//! status is 200: items refused with 429 or a 5xx are retried (up to `max_retries` rounds, full
//! jitter backoff), items refused for good (a mapping error: any other 4xx) are reported so the
//! indexer dead-letters them. What `index` reports as settled is a prefix in commit order: the
//! watermark never passes an item that might still be indexed.
//!
//! Must never: be called on the ingest path (only the indexer and search queries use it), or
//! block an arbiter thread (reqwest is asynchronous).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{IndexOutcome, SearchHit, StorageError, StoredMessage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchConfig {
    /// Base URL, e.g. `http://127.0.0.1:9200`.
    pub url: String,
    /// Basic auth (both or neither).
    pub username: String,
    pub password: String,
    /// `Authorization: ApiKey …` instead of basic auth (the base64 `id:key`).
    pub api_key: String,
    /// Prefix of rampart's index and template names.
    pub index_prefix: String,
    /// Largest `_bulk` request body; a step's messages are split to stay under it.
    pub bulk_max_bytes: usize,
    /// Deadline of each HTTP request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Rounds of retries of items refused with 429/5xx within one indexing step.
    pub max_retries: u32,
    /// Backoff between those rounds: full jitter in [0, retry_base · 2^round].
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".into(),
            username: String::new(),
            password: String::new(),
            api_key: String::new(),
            index_prefix: "rampart-".into(),
            bulk_max_bytes: 5 << 20,
            request_timeout: Duration::from_secs(10),
            max_retries: 3,
            retry_base: Duration::from_millis(100),
        }
    }
}

impl ElasticsearchConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("elasticsearch.url must be an http:// or https:// URL, not {:?}", self.url));
        }
        if self.username.is_empty() != self.password.is_empty() {
            return Err("elasticsearch.username and elasticsearch.password go together".into());
        }
        if !self.api_key.is_empty() && !self.username.is_empty() {
            return Err("set elasticsearch.api_key or username/password, not both".into());
        }
        let prefix_ok =
            self.index_prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !prefix_ok || self.index_prefix.starts_with(['-', '_', '.']) {
            return Err("elasticsearch.index_prefix: lowercase letters, digits, '-', '_' and '.', not first".into());
        }
        if self.bulk_max_bytes < 1024 || self.request_timeout.is_zero() {
            return Err("elasticsearch.bulk_max_bytes must be at least 1024 and request_timeout positive".into());
        }
        Ok(())
    }
}

/// The engine. Cheap to clone; one HTTP client (and connection pool) for the process.
#[derive(Clone)]
pub struct ElasticsearchSearch {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    config: ElasticsearchConfig,
    base: String,
    index: String,
    /// Template and index created (once per process; both calls are idempotent).
    prepared: AtomicBool,
    /// One preparation at a time: a second caller racing the index creation would otherwise
    /// see the index exist before its shard can answer.
    preparing: tokio::sync::Mutex<()>,
}

/// How one bulk item ended.
#[derive(Debug, Clone, PartialEq)]
enum ItemResult {
    Indexed,
    Retry(String),
    Rejected(String),
}

impl ElasticsearchSearch {
    pub fn new(config: &ElasticsearchConfig) -> Result<Self, StorageError> {
        // reqwest is built without a bundled crypto provider: ring, as the rest of rampart.
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|error| StorageError::Open(format!("search engine client: {error}")))?;
        let base = config.url.trim_end_matches('/').to_owned();
        let index = format!("{}messages", config.index_prefix);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config: config.clone(),
                base,
                index,
                prepared: AtomicBool::new(false),
                preparing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn index_name(&self) -> &str {
        &self.inner.index
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let config = &self.inner.config;
        let request = self.inner.client.request(method, format!("{}{path}", self.inner.base));
        if !config.api_key.is_empty() {
            request.header(reqwest::header::AUTHORIZATION, format!("ApiKey {}", config.api_key))
        } else if !config.username.is_empty() {
            request.basic_auth(&config.username, Some(&config.password))
        } else {
            request
        }
    }

    /// Sends a request; the status and the JSON body (`Null` when empty or not JSON).
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), StorageError> {
        let response = request.send().await.map_err(|error| remote("request failed", &error))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|error| remote("reading the answer failed", &error))?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// Creates the index template and the index unless they exist (idempotent).
    async fn prepare(&self) -> Result<(), StorageError> {
        if self.inner.prepared.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_at_a_time = self.inner.preparing.lock().await;
        if self.inner.prepared.load(Ordering::Acquire) {
            return Ok(());
        }
        let index = &self.inner.index;
        let template = json!({
            "index_patterns": [format!("{index}*")],
            "template": {
                // One shard is plenty per node for chat bodies; replicas are the operator's call
                // (0 keeps a single-node cluster green).
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {
                    "dynamic": "strict",
                    "properties": {
                        "id": {"type": "keyword"},
                        "conversation": {"type": "keyword"},
                        "sender": {"type": "keyword"},
                        "body": {"type": "text", "analyzer": "standard"},
                        "created_at": {"type": "date", "format": "epoch_millis"},
                        "seq": {"type": "long"}
                    }
                }
            }
        });
        let put = json_body(self.request(reqwest::Method::PUT, &format!("/_index_template/{index}")), &template);
        let (status, body) = self.send(put).await?;
        if !(200..300).contains(&status) {
            return Err(StorageError::Remote(format!("creating the index template: {status} {}", error_text(&body))));
        }
        let (status, body) = self.send(self.request(reqwest::Method::PUT, &format!("/{index}"))).await?;
        let exists = body["error"]["type"] == "resource_already_exists_exception";
        if !(200..300).contains(&status) && !exists {
            return Err(StorageError::Remote(format!("creating index {index}: {status} {}", error_text(&body))));
        }
        // A new index answers searches with "all shards failed" until its primary is started
        // (another rampart instance may have just created it): wait for that primary.
        let health = format!("/_cluster/health/{index}?wait_for_status=yellow&wait_for_active_shards=1&timeout=10s");
        let (status, body) = self.send(self.request(reqwest::Method::GET, &health)).await?;
        if !(200..300).contains(&status) || body["timed_out"] == true {
            return Err(StorageError::Remote(format!(
                "index {index} is not available yet: {status} {}",
                error_text(&body)
            )));
        }
        self.inner.prepared.store(true, Ordering::Release);
        tracing::info!(index = %index, "search index ready");
        Ok(())
    }

    /// Indexes `messages` (ascending seq) with `_bulk`; see the module docs for what is settled.
    pub async fn index(&self, messages: &[StoredMessage]) -> Result<IndexOutcome, StorageError> {
        self.prepare().await?;
        let mut results: Vec<Option<ItemResult>> = vec![None; messages.len()];
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        let config = &self.inner.config;
        let mut round = 0u32;
        let mut last_error: Option<StorageError> = None;
        'rounds: while !pending.is_empty() {
            if round > 0 {
                let ceiling = config.retry_base.saturating_mul(1 << round.min(10));
                tokio::time::sleep(rand::thread_rng().gen_range(Duration::ZERO..=ceiling)).await;
            }
            for chunk in self.chunks(messages, &pending) {
                match self.bulk(messages, &chunk).await {
                    Ok(items) => {
                        for (position, result) in chunk.iter().zip(items) {
                            if let ItemResult::Retry(reason) = &result {
                                last_error =
                                    Some(StorageError::Remote(format!("search engine refused for now: {reason}")));
                            }
                            results[*position] = Some(result);
                        }
                    }
                    // Unreachable, or refused as a whole: the rest waits for the next poll (the
                    // indexer's breaker counts it), rather than hammering a struggling engine.
                    Err(error) => {
                        last_error = Some(error);
                        break 'rounds;
                    }
                }
            }
            pending = (0..messages.len())
                .filter(|&position| matches!(results[position], None | Some(ItemResult::Retry(_))))
                .collect();
            round += 1;
            if round > config.max_retries {
                break;
            }
        }
        let mut outcome = IndexOutcome::default();
        for (message, result) in messages.iter().zip(results) {
            match result {
                Some(ItemResult::Indexed) => outcome.indexed += 1,
                Some(ItemResult::Rejected(reason)) => outcome.rejected.push((message.clone(), reason)),
                Some(ItemResult::Retry(_)) | None => {
                    outcome.incomplete = last_error.take().or(Some(StorageError::Remote("indexing incomplete".into())));
                    break;
                }
            }
            outcome.through = Some(message.seq);
        }
        Ok(outcome)
    }

    /// `positions` of `messages` split into bulk requests under `bulk_max_bytes`.
    fn chunks(&self, messages: &[StoredMessage], positions: &[usize]) -> Vec<Vec<usize>> {
        let limit = self.inner.config.bulk_max_bytes;
        let mut chunks = Vec::new();
        let (mut chunk, mut bytes) = (Vec::new(), 0usize);
        for &position in positions {
            // Action line, JSON escaping and the fixed fields: a generous estimate.
            let size = messages[position].body.len() * 2 + 256;
            if !chunk.is_empty() && bytes + size > limit {
                chunks.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            chunk.push(position);
            bytes += size;
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        chunks
    }

    /// One `_bulk` request; the result of each item, in order.
    async fn bulk(&self, messages: &[StoredMessage], positions: &[usize]) -> Result<Vec<ItemResult>, StorageError> {
        let mut body = String::new();
        for &position in positions {
            let message = &messages[position];
            body.push_str(&json!({"index": {"_index": self.inner.index, "_id": message.id}}).to_string());
            body.push('\n');
            let document = json!({
                "id": message.id,
                "conversation": message.conversation,
                "sender": message.sender,
                "body": message.body,
                "created_at": message.created_at_ms,
                "seq": message.seq,
            });
            body.push_str(&document.to_string());
            body.push('\n');
        }
        let request = self
            // Only what is read back: a 1,000-item answer shrinks from ~150 KB to ~20 KB.
            .request(reqwest::Method::POST, "/_bulk?filter_path=errors,items.*.status,items.*.error")
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        let (status, answer) = self.send(request).await?;
        if status == 429 || status >= 500 || !(200..300).contains(&status) {
            return Err(StorageError::Remote(format!("_bulk answered {status}: {}", error_text(&answer))));
        }
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        if items.len() != positions.len() {
            return Err(StorageError::Remote(format!(
                "_bulk answered {} items for {} documents",
                items.len(),
                positions.len()
            )));
        }
        Ok(items.iter().map(item_result).collect())
    }

    /// Best matches first within `conversations`; every word of `query` must match.
    pub async fn search(
        &self,
        query: String,
        conversations: Vec<String>,
        limit: u32,
    ) -> Result<Vec<SearchHit>, StorageError> {
        let words = query.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty());
        let text = words.collect::<Vec<_>>().join(" ");
        if text.is_empty() || conversations.is_empty() {
            return Ok(Vec::new());
        }
        self.prepare().await?;
        // One `terms` clause holds at most `index.max_terms_count` (65,536 by default) values, or
        // the engine refuses the query: a user in more conversations could never search. So the
        // scope is several clauses of `TERMS_PER_CLAUSE`, any of which may match (≈ 1M
        // conversations before the default 1,024-clause limit).
        let scope: Vec<Value> =
            conversations.chunks(TERMS_PER_CLAUSE).map(|chunk| json!({"terms": {"conversation": chunk}})).collect();
        let request = json!({
            "size": limit,
            "query": {"bool": {
                "must": [{"match": {"body": {"query": text, "operator": "and"}}}],
                "filter": [{"bool": {"should": scope, "minimum_should_match": 1}}]
            }},
            "sort": ["_score", {"created_at": "desc"}],
            "_source": ["id", "conversation", "sender", "body", "created_at"],
            "highlight": {
                "pre_tags": ["<mark>"],
                "post_tags": ["</mark>"],
                "fields": {"body": {"number_of_fragments": 0}}
            }
        });
        let path = format!("/{}/_search", self.inner.index);
        let (status, answer) = self.send(json_body(self.request(reqwest::Method::POST, &path), &request)).await?;
        if status == 429 || status >= 500 {
            return Err(StorageError::Remote(format!("search answered {status}: {}", error_text(&answer))));
        }
        if !(200..300).contains(&status) {
            // The engine is up and answered: this request is at fault, not the engine's health.
            return Err(StorageError::Refused(format!("search answered {status}: {}", error_text(&answer))));
        }
        let hits = answer["hits"]["hits"].as_array().cloned().unwrap_or_default();
        Ok(hits
            .iter()
            .filter_map(|hit| {
                let source = &hit["_source"];
                let body = source["body"].as_str()?.to_owned();
                let highlight = hit["highlight"]["body"][0].as_str().map(str::to_owned).unwrap_or_else(|| body.clone());
                Some(SearchHit {
                    id: source["id"].as_str()?.to_owned(),
                    conversation: source["conversation"].as_str()?.to_owned(),
                    sender: source["sender"].as_str()?.to_owned(),
                    body,
                    created_at_ms: source["created_at"].as_i64().unwrap_or_default(),
                    highlight,
                })
            })
            .collect())
    }
}

/// Conversation ids per `terms` clause of a search's scope: well under `index.max_terms_count`.
const TERMS_PER_CLAUSE: usize = 1024;

fn json_body(request: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string())
}

fn remote(what: &str, error: &reqwest::Error) -> StorageError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    StorageError::Remote(format!("search engine {what} ({kind}): {error}"))
}

/// `type: reason` of an Elasticsearch error body.
fn error_text(body: &Value) -> String {
    let error = &body["error"];
    match (error["type"].as_str(), error["reason"].as_str()) {
        // "all shards failed" says nothing: the first shard's cause does.
        (Some(kind), Some(reason)) => match error["root_cause"][0]["reason"]
            .as_str()
            .or_else(|| error["failed_shards"][0]["reason"]["reason"].as_str())
        {
            Some(cause) if cause != reason => format!("{kind}: {reason} ({cause})"),
            _ => format!("{kind}: {reason}"),
        },
        _ => {
            let text = body.to_string();
            text.chars().take(300).collect()
        }
    }
}

/// One `_bulk` item: `{"index": {"_id", "status", "error"?}}`.
fn item_result(item: &Value) -> ItemResult {
    let action = item.as_object().and_then(|object| object.values().next()).cloned().unwrap_or(Value::Null);
    let status = action["status"].as_u64().unwrap_or(0);
    match status {
        200..=299 => ItemResult::Indexed,
        429 | 500..=599 | 0 => ItemResult::Retry(format!("{status} {}", error_text(&action))),
        _ => ItemResult::Rejected(format!("{status} {}", error_text(&action))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_items_are_read_one_by_one() {
        let ok = json!({"index": {"_id": "a", "status": 201, "result": "created"}});
        let busy = json!({"index": {"_id": "b", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}});
        let mapping = json!({"index": {"_id": "c", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [body]"}}});
        let down = json!({"index": {"_id": "d", "status": 503, "error": {"type": "unavailable_shards_exception", "reason": "no shard"}}});
        assert_eq!(item_result(&ok), ItemResult::Indexed);
        assert!(matches!(item_result(&busy), ItemResult::Retry(reason) if reason.contains("queue full")));
        assert!(
            matches!(item_result(&mapping), ItemResult::Rejected(reason) if reason == "400 mapper_parsing_exception: failed to parse field [body]")
        );
        assert!(matches!(item_result(&down), ItemResult::Retry(_)));
        assert!(matches!(item_result(&json!({})), ItemResult::Retry(_)), "an unreadable item is not settled");
    }

    #[test]
    fn config_is_validated() {
        assert!(ElasticsearchConfig::default().validate().is_ok());
        let bad_url = ElasticsearchConfig { url: "127.0.0.1:9200".into(), ..Default::default() };
        assert!(bad_url.validate().is_err());
        let half_auth = ElasticsearchConfig { username: "u".into(), ..Default::default() };
        assert!(half_auth.validate().is_err());
        let bad_prefix = ElasticsearchConfig { index_prefix: "Rampart".into(), ..Default::default() };
        assert!(bad_prefix.validate().is_err());
    }

    #[test]
    fn chunks_stay_under_the_byte_limit() {
        let config = ElasticsearchConfig { bulk_max_bytes: 4096, ..Default::default() };
        let search = ElasticsearchSearch::new(&config).unwrap();
        let message = |seq: i64| StoredMessage {
            seq,
            id: seq.to_string(),
            conversation: "c".into(),
            sender: "s".into(),
            client_msg_id: seq.to_string(),
            body: "x".repeat(1000),
            created_at_ms: 0,
        };
        let messages: Vec<StoredMessage> = (1..=5).map(message).collect();
        let chunks = search.chunks(&messages, &[0, 1, 2, 3, 4]);
        assert_eq!(chunks, vec![vec![0], vec![1], vec![2], vec![3], vec![4]]);
    }
}
