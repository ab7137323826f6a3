//! Users, and conversations with their embedded member lists and latest activity.

use std::collections::{BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};

use super::documents::{ConversationDoc, UserDoc};
use super::{insert_new, MongoChat};
use crate::storage::{
    ConversationCursor, ConversationStore, ConversationSummary, StorageError, StoredMessage, User, UserStore,
};

#[async_trait]
impl UserStore for MongoChat {
    async fn create_user(&self, id: String, display_name: String, now_ms: i64) -> Result<bool, StorageError> {
        let user = UserDoc { id, display_name, created_at: DateTime::from_millis(now_ms) };
        self.timed(insert_new(&self.inner.users, user)).await
    }

    async fn user_exists(&self, id: String) -> Result<bool, StorageError> {
        Ok(self.user(id).await?.is_some())
    }

    async fn user(&self, id: String) -> Result<Option<User>, StorageError> {
        self.timed(async {
            let user = self.inner.users.find_one(doc! {"_id": id}).await?;
            Ok(user.map(|user| User {
                id: user.id,
                display_name: user.display_name,
                created_at_ms: user.created_at.timestamp_millis(),
            }))
        })
        .await
    }
}

#[async_trait]
impl ConversationStore for MongoChat {
    async fn conversation(&self, id: String) -> Result<Option<ConversationSummary>, StorageError> {
        self.timed(async {
            let Some(conversation) = self.inner.conversations.find_one(doc! {"_id": id}).await? else {
                return Ok(None);
            };
            Ok(self.summarize(vec![conversation]).await?.pop())
        })
        .await
    }

    async fn conversations_page(
        &self,
        user: String,
        cursor: Option<ConversationCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StorageError> {
        // Expected plan: IXSCAN members_activity_id (members = user, then the index order), no
        // in-memory sort.
        let mut filter = doc! {"members": &user};
        if let Some(cursor) = cursor {
            let activity = DateTime::from_millis(cursor.activity_ms);
            filter.insert(
                "$or",
                vec![doc! {"activity": {"$lt": activity}}, doc! {"activity": activity, "_id": {"$lt": cursor.id}}],
            );
        }
        self.timed(async {
            let conversations: Vec<ConversationDoc> =
                self.page(&self.inner.conversations, filter, doc! {"activity": -1, "_id": -1}, limit).await?;
            self.summarize(conversations).await
        })
        .await
    }

    async fn create_conversation(
        &self,
        id: String,
        title: String,
        created_by: String,
        members: Vec<String>,
        now_ms: i64,
    ) -> Result<Result<(), Vec<String>>, StorageError> {
        let members: Vec<String> = members.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let others: Vec<String> = members.iter().filter(|member| **member != created_by).cloned().collect();
        self.timed(async {
            let mut known = HashSet::new();
            if !others.is_empty() {
                let users = self.inner.users.clone_with_type::<Document>();
                let mut found = users
                    .find(doc! {"_id": {"$in": &others}})
                    .projection(doc! {"_id": 1})
                    .max_time(self.inner.timeout)
                    .await?;
                while let Some(user) = found.try_next().await? {
                    if let Ok(id) = user.get_str("_id") {
                        known.insert(id.to_owned());
                    }
                }
            }
            let unknown: Vec<String> = others.into_iter().filter(|member| !known.contains(member)).collect();
            if !unknown.is_empty() {
                return Ok(Err(unknown));
            }
            let created_at = DateTime::from_millis(now_ms);
            let conversation =
                ConversationDoc { id, title, created_by, created_at, members, activity: created_at, latest: None };
            // One document: the conversation and its members appear together or not at all.
            self.inner.conversations.insert_one(conversation).await?;
            Ok(Ok(()))
        })
        .await
    }

    async fn members(&self, conversation: String) -> Result<Option<Vec<String>>, StorageError> {
        self.timed(async {
            let found = self.inner.conversations.find_one(doc! {"_id": conversation}).await?;
            Ok(found.map(|conversation| conversation.members).filter(|members| !members.is_empty()))
        })
        .await
    }

    async fn conversations_of(&self, user: String) -> Result<Vec<String>, StorageError> {
        // Expected plan: IXSCAN members_activity_id (members = user), covered by the index.
        self.timed(async {
            let conversations = self.inner.conversations.clone_with_type::<Document>();
            let mut found = conversations
                .find(doc! {"members": user})
                .projection(doc! {"_id": 1})
                .max_time(self.inner.timeout)
                .await?;
            let mut ids = Vec::new();
            while let Some(conversation) = found.try_next().await? {
                if let Ok(id) = conversation.get_str("_id") {
                    ids.push(id.to_owned());
                }
            }
            Ok(ids)
        })
        .await
    }
}

impl MongoChat {
    /// Adds the latest messages (one query for all) to conversation documents.
    async fn summarize(&self, conversations: Vec<ConversationDoc>) -> Result<Vec<ConversationSummary>, StorageError> {
        let latest_ids: Vec<&String> = conversations.iter().filter_map(|c| c.latest.as_ref()).collect();
        let mut latest: HashMap<String, StoredMessage> = HashMap::new();
        if !latest_ids.is_empty() {
            let mut found = self.inner.messages.find(doc! {"_id": {"$in": latest_ids}}).await?;
            while let Some(message) = found.try_next().await? {
                latest.insert(message.id.clone(), message.into_stored());
            }
        }
        Ok(conversations
            .into_iter()
            .map(|conversation| ConversationSummary {
                latest: conversation.latest.as_ref().and_then(|id| latest.get(id).cloned()),
                id: conversation.id,
                title: conversation.title,
                created_by: conversation.created_by,
                created_at_ms: conversation.created_at.timestamp_millis(),
                members: conversation.members,
                activity_ms: conversation.activity.timestamp_millis(),
            })
            .collect())
    }

    /// Member lists of `conversations`.
    pub(super) async fn members_of(
        &self,
        conversations: Vec<&String>,
    ) -> Result<HashMap<String, Vec<String>>, StorageError> {
        let mut found = self.inner.conversations.find(doc! {"_id": {"$in": conversations}}).await?;
        let mut members = HashMap::new();
        while let Some(conversation) = found.try_next().await? {
            members.insert(conversation.id, conversation.members);
        }
        Ok(members)
    }
}
