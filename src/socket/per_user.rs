//! `PerUser`: how many of something (open sockets) each user holds, under a limit per user.
//!
//! Owns: the counts, keyed by user id; a user's entry goes when its count returns to zero, so the
//! map holds only users that have something open. A slot gives its unit back when dropped.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

pub struct PerUser {
    limit: usize,
    counts: Mutex<HashMap<String, usize>>,
}

impl PerUser {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, counts: Mutex::new(HashMap::new()) })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// One more for `user`, or `None` when they hold `limit` already.
    pub fn acquire(self: &Arc<Self>, user: &str) -> Option<PerUserSlot> {
        let mut counts = self.counts.lock();
        let count = counts.entry(user.to_owned()).or_default();
        if *count >= self.limit {
            if *count == 0 {
                counts.remove(user);
            }
            return None;
        }
        *count += 1;
        Some(PerUserSlot { owner: self.clone(), user: user.to_owned() })
    }

    /// What `user` holds now.
    pub fn held(&self, user: &str) -> usize {
        self.counts.lock().get(user).copied().unwrap_or(0)
    }
}

/// One unit of a user's count; given back when dropped.
pub struct PerUserSlot {
    owner: Arc<PerUser>,
    user: String,
}

impl Drop for PerUserSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock();
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_the_limit_and_slots_come_back() {
        let per_user = PerUser::new(2);
        let first = per_user.acquire("alice").expect("first");
        let second = per_user.acquire("alice").expect("second");
        assert!(per_user.acquire("alice").is_none());
        assert!(per_user.acquire("bob").is_some(), "per user");
        drop(first);
        let third = per_user.acquire("alice").expect("one came back");
        drop((second, third));
        assert_eq!(per_user.held("alice"), 0);
        assert!(per_user.counts.lock().is_empty(), "no entry for users holding nothing");
    }
}
