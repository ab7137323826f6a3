//! A full disk is a tested fault: rampart's data directory on a real 6 MB tmpfs, mounted in a
//! private mount namespace (`unshare -rm`, unprivileged), filled up while clients send. Nothing
//! is falsely acked (every send is acked or answered `unavailable`), the storage breaker opens
//! and `/ready` fails (the embedded store is local to this instance), a crash record and the log
//! file on the full disk take nothing down, freeing space brings acks back, and every acked
//! message survives kill -9. Needs `unshare` and `nsenter` (util-linux); CI requires them
//! (`RAMPART_REQUIRE_NAMESPACES=1`).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::chat_client::{chat_env, ChatServer, WsClient, ADMIN_TOKEN};
use crate::support::{eventually, metric_value, scrape, RampartProcess};

/// A process holding a private mount namespace with a 6 MB tmpfs at `mount`; killed on drop.
struct SmallDisk {
    holder: Child,
    mount: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let script = format!("mount -t tmpfs -o size=6m tmpfs '{}' && exec sleep 3600", mount.display());
        let holder = Command::new("unshare").args(["-rm", "sh", "-c", &script]).stdin(Stdio::null()).spawn().ok()?;
        let disk = Self { holder, mount, _dir: dir };
        let started = std::time::Instant::now();
        while !disk.run(&format!("mountpoint -q '{}'", disk.mount.display())) {
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval, deadline above
        }
        Some(disk)
    }

    fn pid(&self) -> String {
        self.holder.id().to_string()
    }

    /// Runs `script` inside the namespace; whether it succeeded.
    fn run(&self, script: &str) -> bool {
        Command::new("nsenter")
            .args(["-t", &self.pid(), "-m", "sh", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn fill(&self) {
        // dd stops with ENOSPC: that is the point.
        self.run(&format!("dd if=/dev/zero of='{}/filler' bs=64k 2>/dev/null; sync", self.mount.display()));
    }

    fn free(&self) {
        assert!(self.run(&format!("rm -f '{}/filler'", self.mount.display())), "filler removed");
    }

    fn start(&self, env: &[(&str, &str)]) -> RampartProcess {
        let pid = self.pid();
        RampartProcess::start_through(&["nsenter", "-t", &pid, "-m"], &self.mount.join("data"), env)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Sends `count` messages on `ws`; returns the acked ids and the error codes of the others.
async fn send_all(ws: &mut WsClient, conversation: &str, prefix: &str, count: usize) -> (Vec<String>, Vec<String>) {
    let ids: Vec<String> = (0..count).map(|n| format!("{prefix}-{n}")).collect();
    let answers = ws.send_burst(conversation, &ids, &"d".repeat(900)).await;
    (answers.acked.into_iter().map(|(_, id)| id).collect(), answers.refused.into_iter().map(|r| r.code).collect())
}

async fn ready(chat: &ChatServer) -> (u16, Value) {
    chat.http.get(&chat.url("/ready"), None).await
}

#[actix_rt::test]
async fn a_full_disk_refuses_sends_fails_readiness_loses_nothing_and_recovers() {
    let Some(disk) = SmallDisk::mount() else {
        return crate::support::tool_missing("NAMESPACES", "a tmpfs in a private mount namespace (unshare, nsenter)");
    };
    let log_file = disk.mount.join("log/rampart.log");
    let log_file = log_file.to_str().unwrap().to_owned();
    let env = chat_env(&[
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__LOG__FILE", &log_file),
        ("RAMPART__WS__RATE_LIMIT_PER_SEC", "1000000"),
        ("RAMPART__WS__BURST", "1000000"),
        ("RAMPART__PIPELINE__BREAKER__WAIT_IN_OPEN", "3s"),
        ("RAMPART__PIPELINE__MAX_ATTEMPTS", "2"),
    ]);
    let chat = ChatServer::wrap(disk.start(&env));
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let (mut all_acked, refused) = send_all(&mut alice, &conversation, "before", 50).await;
    assert_eq!((all_acked.len(), refused.len()), (50, 0), "a healthy disk acks everything");

    // The disk fills up under load: every send is answered, none acked that was not stored.
    disk.fill();
    let (acked, refused) = send_all(&mut alice, &conversation, "full", 2000).await;
    eprintln!("on the full disk: {} acked, {} refused", acked.len(), refused.len());
    assert!(!refused.is_empty(), "a full disk refuses sends");
    assert!(refused.iter().all(|code| code == "unavailable"), "refusals say: send again: {refused:?}");
    all_acked.extend(acked);

    // The storage breaker is open and readiness fails: the load balancer routes around us.
    eventually("the storage breaker opens", Duration::from_secs(30), || async {
        let (_, body) = ready(&chat).await;
        body["checks"]["circuit:storage"][0]["observedValue"] == "open"
    })
    .await;
    let (status, body) = ready(&chat).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("fail")), "{body}");
    assert_eq!(body["checks"]["circuit:storage"][0]["status"], "fail", "{body}");
    assert_eq!(metric_value(&scrape(&chat.process).await, "rampart_circuit_state{name=\"storage\"}"), Some(2.0));

    // A panic now: its crash record cannot be written to disk, and nothing else breaks.
    let (status, _) = chat
        .http
        .post(&chat.url("/admin/chaos/panic"), Some(ADMIN_TOKEN), json!({"actor": "/root/system_monitor"}))
        .await;
    assert_eq!(status, 202);
    eventually("the crash is recorded in memory", Duration::from_secs(15), || async {
        let (_, crashes) = chat.http.get(&chat.url("/admin/crashes"), Some(ADMIN_TOKEN)).await;
        crashes["crashes"].as_array().is_some_and(|crashes| !crashes.is_empty())
    })
    .await;
    let (status, health) = chat.http.get(&chat.url("/health"), None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("pass")));
    assert!(chat.process.output().contains("could not write crash record"), "the failed write is logged");

    // Space comes back: within wait_in_open the breaker lets trial calls through, and acks
    // return; readiness passes again.
    disk.free();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        let (acked, _) = send_all(&mut alice, &conversation, &format!("after-{attempt}"), 5).await;
        let recovered = acked.len() == 5;
        all_acked.extend(acked);
        if recovered {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sends were not acked again within 60 s of freeing space");
        tokio::time::sleep(Duration::from_millis(200)).await; // poll interval, deadline above
    }
    // Half-open lets trial calls decide: traffic (as a load balancer sends to a `warn` instance)
    // closes the breaker.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        let (status, body) = ready(&chat).await;
        if status == 200 && body["checks"]["circuit:storage"][0]["status"] == "pass" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "readiness did not pass again: {body}");
        let (acked, _) = send_all(&mut alice, &conversation, &format!("closing-{attempt}"), 5).await;
        all_acked.extend(acked);
    }

    // kill -9, restart on the same disk: every acked message is there, once.
    let mut process = chat.process;
    process.kill_hard();
    let chat = ChatServer::wrap(disk.start(&env));
    let stored: Vec<String> =
        chat.all_messages("bob", &conversation).await.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no duplicates");
    let missing: Vec<&String> = all_acked.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "{} acked messages lost: {missing:?}", missing.len());
}
