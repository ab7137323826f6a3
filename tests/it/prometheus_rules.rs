//! `config/prometheus/alerts.yml`: parses, every rule is complete, every metric it uses is really
//! exported by the binary, every runbook link resolves; and with promtool, the rules' own unit
//! tests (`alerts.test.yml`) pass. CI sets `RAMPART_REQUIRE_PROMTOOL=1`, so there a missing
//! promtool is a failure rather than a skip.

use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

use crate::support::{scrape, RampartProcess};

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus/alerts.yml");
const RULE_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus/alerts.test.yml");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

fn rules() -> Vec<Value> {
    let text = std::fs::read_to_string(RULES).expect("alerts.yml");
    let parsed: Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    parsed["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").clone())
        .collect()
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[actix_rt::test]
async fn every_rule_is_complete_and_uses_only_exported_metrics() {
    let server = RampartProcess::start(&[]);
    let exported = scrape(&server).await;
    let readme = std::fs::read_to_string(README).expect("README");
    let anchors: Vec<String> =
        readme.lines().filter_map(|line| line.strip_prefix('#')).map(|h| anchor(h.trim_start_matches('#'))).collect();

    let rules = rules();
    assert!(rules.len() >= 8, "panic, restart storm, quarantine, stall, readiness ... at least");
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{name}: expr"));
        let severity = rule["labels"]["severity"].as_str().unwrap_or_else(|| panic!("{name}: severity"));
        assert!(matches!(severity, "critical" | "warning"), "{name}: severity {severity}");
        assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}: summary");
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_else(|| panic!("{name}: runbook"));
        let target = runbook.strip_prefix("README.md#").unwrap_or_else(|| panic!("{name}: runbook in README"));
        assert!(anchors.iter().any(|a| a == target), "{name}: README has no heading for #{target}");

        let mut rest = expr;
        while let Some(start) = rest.find("rampart_") {
            let tail = &rest[start..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let metric = &tail[..end];
            let exposed = exported.lines().any(|line| {
                line.strip_prefix(metric).is_some_and(|after| after.starts_with('{') || after.starts_with(' '))
            });
            assert!(exposed, "{name} uses {metric}, which /metrics does not expose");
            rest = &tail[end..];
        }
    }
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let available = Command::new("promtool").arg("--version").output().is_ok_and(|out| out.status.success());
    if !available {
        // The structural checks above still run.
        return crate::support::tool_missing("PROMTOOL", "promtool (rule checks and unit tests)");
    }
    let dir = Path::new(RULES).parent().expect("rules dir");
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let output = Command::new("promtool").args(args).current_dir(dir).output().expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
