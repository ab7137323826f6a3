//! `Directory`: which users exist and who belongs to which conversation, cached in memory.
//!
//! Owns: positive caches only. Users are never deleted and conversation membership never
//! changes once created, so a cached "yes" (and a member list) stays true; a "no" is always
//! asked again (the user may be created a moment later). Shared by the validator, delivery and
//! HTTP handlers; survives their restarts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::storage::{ChatStore, StorageError};

pub struct Directory {
    store: ChatStore,
    users: RwLock<HashSet<String>>,
    members: RwLock<HashMap<String, Arc<[String]>>>,
}

impl Directory {
    pub fn new(store: ChatStore) -> Arc<Self> {
        Arc::new(Self { store, users: RwLock::default(), members: RwLock::default() })
    }

    pub fn cached_user(&self, user: &str) -> bool {
        self.users.read().contains(user)
    }

    pub fn cached_members(&self, conversation: &str) -> Option<Arc<[String]>> {
        self.members.read().get(conversation).cloned()
    }

    pub async fn user_exists(&self, user: &str) -> Result<bool, StorageError> {
        if self.cached_user(user) {
            return Ok(true);
        }
        let exists = self.store.user_exists(user.to_owned()).await?;
        if exists {
            self.users.write().insert(user.to_owned());
        }
        Ok(exists)
    }

    /// The members of `conversation`, or `None` when it does not exist.
    pub async fn members(&self, conversation: &str) -> Result<Option<Arc<[String]>>, StorageError> {
        if let Some(members) = self.cached_members(conversation) {
            return Ok(Some(members));
        }
        let Some(members) = self.store.members(conversation.to_owned()).await? else {
            return Ok(None);
        };
        let members: Arc<[String]> = members.into();
        self.members.write().insert(conversation.to_owned(), members.clone());
        Ok(Some(members))
    }

    /// Whether `user` may read and write `conversation` (`false` too when it does not exist).
    pub async fn is_member(&self, conversation: &str, user: &str) -> Result<bool, StorageError> {
        Ok(self.members(conversation).await?.is_some_and(|members| members.iter().any(|member| member == user)))
    }

    pub fn note_user(&self, user: &str) {
        self.users.write().insert(user.to_owned());
    }

    pub fn note_conversation(&self, conversation: &str, members: Vec<String>) {
        self.members.write().insert(conversation.to_owned(), members.into());
    }
}
