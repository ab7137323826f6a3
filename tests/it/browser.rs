//! The web client and the console in real headless Chromium (Debian's, driven by playwright-core
//! from npm): `tests/browser/run.mjs` starts this binary and the browser inside a network
//! namespace that has only loopback (`unshare -rn`), so nothing can leave the machine. CI sets
//! `RAMPART_REQUIRE_BROWSER=1`: there a missing Chromium or playwright-core fails instead of
//! skipping.

use std::path::Path;
use std::process::Command;

const BROWSER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
/// Longest the whole browser run may take (it takes about 10 s).
const TIMEOUT_SECS: &str = "300";

fn missing_tools() -> Vec<String> {
    let chromium = std::env::var("RAMPART_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut missing = Vec::new();
    if !Path::new(&chromium).exists() {
        missing.push(format!("Chromium ({chromium}; apt-get install chromium)"));
    }
    if !Path::new(BROWSER_DIR).join("node_modules/playwright-core").is_dir() {
        missing.push("playwright-core (npm ci in tests/browser)".into());
    }
    for tool in ["node", "unshare", "ip", "timeout"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map_or(true, |o| !o.status.success())
        {
            missing.push(tool.into());
        }
    }
    missing
}

#[test]
fn two_users_chat_survive_a_restart_and_the_console_shows_a_panic() {
    let _heavy = crate::support::MEASURING.blocking_read();
    let missing = missing_tools();
    if !missing.is_empty() {
        return crate::support::tool_missing("BROWSER", &missing.join(", "));
    }
    let mut command = Command::new("timeout");
    command
        .args(["--signal=KILL", TIMEOUT_SECS, "unshare", "-rn", "sh", "-c", "ip link set lo up && exec node run.mjs"])
        .current_dir(BROWSER_DIR)
        .env("RAMPART_BIN", env!("CARGO_BIN_EXE_rampart"))
        .env("RAMPART_EXPECT_SFU", if cfg!(feature = "sfu") { "1" } else { "0" });
    for (key, _) in std::env::vars() {
        if key.starts_with("RAMPART__") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("run the browser tests");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let progress: Vec<&str> = report.lines().filter(|line| line.starts_with("[browser]")).collect();
    assert!(output.status.success(), "browser tests failed:\n{report}");
    assert!(progress.iter().any(|line| line.contains("all scenarios passed")), "{report}");
    println!("{}", progress.join("\n"));
}
