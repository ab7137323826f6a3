//! Alert grouping by fingerprint: pure logic, driven by the sender with explicit instants.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{Alert, Level};

/// Distinct fingerprints tracked at once; beyond this new ones are dropped (and counted).
const MAX_GROUPS: usize = 10_000;

/// What is sent to a sink: one alert plus how many occurrences it stands for.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub level: Level,
    pub source: &'static str,
    pub fingerprint: String,
    /// The latest occurrence's summary.
    pub summary: String,
    #[serde(serialize_with = "serialize_labels")]
    pub labels: Vec<(&'static str, String)>,
    /// Occurrences this notification reports (since the previous one for the fingerprint).
    pub count: u64,
    /// Occurrences since the group opened.
    pub total: u64,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub first_at: SystemTime,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub last_at: SystemTime,
}

fn serialize_labels<S: serde::Serializer>(labels: &[(&'static str, String)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(labels.iter().map(|(key, value)| (key, value)))
}

struct Group {
    latest: Alert,
    first_at: SystemTime,
    total: u64,
    /// Occurrences not yet notified.
    pending: u64,
    closes_at: Instant,
}

impl Group {
    fn notification(&mut self) -> Notification {
        let count = std::mem::take(&mut self.pending);
        Notification {
            level: self.latest.level,
            source: self.latest.source,
            fingerprint: self.latest.fingerprint.clone(),
            summary: self.latest.summary.clone(),
            labels: self.latest.labels.clone(),
            count,
            total: self.total,
            first_at: self.first_at,
            last_at: self.latest.at,
        }
    }
}

pub struct Grouper {
    window: Duration,
    repeat: Duration,
    groups: HashMap<String, Group>,
}

impl Grouper {
    pub fn new(window: Duration, repeat: Duration) -> Self {
        Self { window, repeat, groups: HashMap::new() }
    }

    /// Counts one occurrence; returns a notification when it opens a new group. `Err` when too
    /// many distinct fingerprints are open to track another.
    pub fn observe(&mut self, alert: Alert, now: Instant) -> Result<Option<Notification>, Alert> {
        if let Some(group) = self.groups.get_mut(&alert.fingerprint) {
            group.total += 1;
            group.pending += 1;
            group.latest = alert;
            return Ok(None);
        }
        if self.groups.len() >= MAX_GROUPS {
            return Err(alert);
        }
        let mut group = Group { first_at: alert.at, latest: alert, total: 1, pending: 1, closes_at: now + self.window };
        let notification = group.notification();
        self.groups.insert(notification.fingerprint.clone(), group);
        Ok(Some(notification))
    }

    /// Closes the windows that ended by `now`: a summary for each with new occurrences (and a
    /// `repeat_interval` window after it); groups that stayed quiet are forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<Notification> {
        let mut due = Vec::new();
        let repeat = self.repeat;
        self.groups.retain(|_, group| {
            if group.closes_at > now {
                return true;
            }
            if group.pending == 0 {
                return false;
            }
            due.push(group.notification());
            group.closes_at = now + repeat;
            true
        });
        due
    }

    /// Everything not yet notified, at once (shutdown).
    pub fn flush(&mut self) -> Vec<Notification> {
        self.groups.values_mut().filter(|group| group.pending > 0).map(Group::notification).collect()
    }

    /// When the earliest open window closes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|group| group.closes_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(fingerprint: &str, n: u32) -> Alert {
        Alert {
            level: Level::Error,
            source: "panic",
            fingerprint: fingerprint.into(),
            summary: format!("occurrence {n}"),
            labels: vec![("actor", "/root/x".into())],
            at: SystemTime::now(),
        }
    }

    #[test]
    fn a_storm_is_one_immediate_notification_and_one_summary_with_the_count() {
        let window = Duration::from_secs(60);
        let mut grouper = Grouper::new(window, Duration::from_secs(900));
        let start = Instant::now();
        let first = grouper.observe(alert("f", 0), start).unwrap().expect("first is notified at once");
        assert_eq!((first.count, first.total), (1, 1));
        for n in 1..1000 {
            assert!(grouper.observe(alert("f", n), start).unwrap().is_none());
        }
        assert!(grouper.due(start + window / 2).is_empty(), "nothing before the window closes");
        let summary = grouper.due(start + window);
        assert_eq!(summary.len(), 1);
        assert_eq!((summary[0].count, summary[0].total), (999, 1000));
        assert_eq!(summary[0].summary, "occurrence 999", "the latest occurrence speaks");
        // The storm goes on: at most one notification per repeat interval.
        for n in 0..10 {
            grouper.observe(alert("f", n), start + window).unwrap();
        }
        assert!(grouper.due(start + window * 2).is_empty());
        let again = grouper.due(start + window + Duration::from_secs(900));
        assert_eq!((again[0].count, again[0].total), (10, 1010));
        // Quiet for a whole window: the group ends; the next occurrence notifies at once.
        assert!(grouper.due(start + window * 40).is_empty());
        assert!(grouper.next_deadline().is_none());
        assert!(grouper.observe(alert("f", 0), start + window * 40).unwrap().is_some());
    }

    #[test]
    fn different_fingerprints_are_separate_groups() {
        let mut grouper = Grouper::new(Duration::from_secs(1), Duration::from_secs(1));
        let now = Instant::now();
        assert!(grouper.observe(alert("a", 0), now).unwrap().is_some());
        assert!(grouper.observe(alert("b", 0), now).unwrap().is_some());
        assert!(grouper.observe(alert("a", 1), now).unwrap().is_none());
        let flushed = grouper.flush();
        assert_eq!(flushed.len(), 1, "only groups with unreported occurrences");
        assert_eq!(flushed[0].fingerprint, "a");
    }
}
