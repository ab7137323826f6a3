//! The Kubernetes example stays consistent with the binary's shutdown and health contract.

use serde_yaml::Value;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/kubernetes.yaml");

fn seconds(text: &str) -> u64 {
    humantime::parse_duration(text).expect("duration").as_secs()
}

#[test]
fn the_kubernetes_example_probes_the_right_routes_within_the_grace_period() {
    let text = std::fs::read_to_string(MANIFEST).expect("manifest");
    let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::with::singleton_map_recursive::deserialize(doc).expect("YAML"))
        .collect();
    let deployment = documents.iter().find(|doc| doc["kind"] == "Deployment").expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert!(container["startupProbe"]["httpGet"]["path"].is_string(), "a startup probe");

    let env = |name: &str| {
        container["env"].as_sequence().expect("env").iter().find(|e| e["name"] == name).map(|e| e["value"].clone())
    };
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("grace period");
    let timeout =
        env("RAMPART__SHUTDOWN__TIMEOUT").and_then(|v| v.as_str().map(seconds)).expect("shutdown timeout set");
    let defaults = rampart::config::Config::default();
    assert_eq!(timeout, defaults.shutdown.timeout.as_secs(), "the manifest documents the default");
    assert!(timeout < grace, "rampart finishes its shutdown ({timeout}s) before Kubernetes kills it ({grace}s)");
    let readiness_timeout = container["readinessProbe"]["timeoutSeconds"].as_u64().expect("probe timeout");
    assert!(readiness_timeout > defaults.health.check_timeout.as_secs(), "the probe outlasts /ready's own checks");
}
