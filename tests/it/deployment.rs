//! The Kubernetes example stays consistent with the binary's shutdown and health contract.

use serde_yaml::Value;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/kubernetes.yaml");

fn seconds(text: &str) -> u64 {
    humantime::parse_duration(text).expect("duration").as_secs()
}

const SCALE_OUT_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/kubernetes-scale-out.yaml");

#[test]
fn the_kubernetes_examples_probe_the_right_routes_within_the_grace_period() {
    for manifest in [MANIFEST, SCALE_OUT_MANIFEST] {
        check_manifest(manifest);
    }
}

#[test]
fn the_scale_out_kubernetes_example_runs_three_replicas_on_kafka_with_settings_the_binary_accepts() {
    let deployment = deployment(SCALE_OUT_MANIFEST);
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<(String, String)> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|entry| {
            let value = entry["value"].as_str().unwrap_or("a value from a secret");
            let value = if entry["name"] == "RAMPART__MONGODB__URI" { "mongodb://mongodb:27017" } else { value };
            (entry["name"].as_str().expect("name").to_owned(), value.to_owned())
        })
        .collect();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, output) = crate::support::run_to_exit(&pairs, &["check-config"]);
    assert_eq!(status.code(), Some(0), "the manifest's settings are refused: {output}");
    let effective: serde_json::Value = serde_json::from_str(&output).expect("check-config JSON");
    assert_eq!(effective["transport"]["kind"], "kafka");
    assert_eq!(effective["storage"]["kind"], "mongodb");
    assert_eq!(effective["kafka"]["replication_factor"], 3);
    assert_eq!(effective["sfu"]["cluster"]["enabled"], true, "rooms span the replicas");
    assert_eq!(effective["sfu"]["cluster"]["advertise_url"], "http://$(POD_IP):8080", "each pod's own address");
}

fn deployment(manifest: &str) -> Value {
    let text = std::fs::read_to_string(manifest).expect("manifest");
    let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::with::singleton_map_recursive::deserialize(doc).expect("YAML"))
        .collect();
    documents.into_iter().find(|doc| doc["kind"] == "Deployment").expect("a Deployment")
}

fn check_manifest(manifest: &str) {
    let deployment = deployment(manifest);
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

const COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/docker-compose.yml");
const COMPOSE_PROMETHEUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/prometheus.yml");

#[test]
fn the_compose_example_configures_rampart_with_keys_the_binary_accepts() {
    let compose: Value = serde_yaml::from_str(&std::fs::read_to_string(COMPOSE).expect("compose file")).expect("YAML");
    let services = &compose["services"];
    let rampart = &services["rampart"];
    let environment = rampart["environment"].as_mapping().expect("rampart's environment");
    // Every RAMPART__ key is one the binary knows (unknown keys fail check-config), with the
    // values compose gives it (a `${VAR:?…}` stands for what the operator sets).
    let env: Vec<(String, String)> = environment
        .iter()
        .map(|(key, value)| {
            let key = key.as_str().expect("key").to_owned();
            let value = match value {
                Value::String(text) if text.starts_with("${") => "an operator's secret value".to_owned(),
                Value::String(text) => text.clone(),
                other => serde_yaml::to_string(other).expect("value").trim().to_owned(),
            };
            (key, value)
        })
        .collect();
    assert!(env.iter().all(|(key, _)| key.starts_with("RAMPART__")), "{env:?}");
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, output) = crate::support::run_to_exit(&pairs, &["check-config"]);
    assert_eq!(status.code(), Some(0), "compose's settings are refused: {output}");
    let effective: serde_json::Value = serde_json::from_str(&output).expect("check-config JSON");
    assert_eq!(effective["search"]["kind"], "elasticsearch");
    assert_eq!(effective["storage"]["kind"], "mongodb");
    assert_eq!(effective["transport"]["kind"], "kafka");
    assert_eq!(rampart["deploy"]["replicas"], 3, "several processes as one service");
    assert_eq!(rampart["build"]["args"]["FEATURES"], "kafka sfu", "the image has the Kafka transport and the SFU");
    assert_eq!(effective["sfu"]["cluster"]["enabled"], true, "rooms span the replicas");
    let brokers = environment.get("RAMPART__KAFKA__BROKERS").and_then(Value::as_str).expect("brokers");
    let host = brokers.split(':').next().expect("host");
    assert!(services.get(host).is_some(), "{host} is a compose service");
    assert!(brokers.ends_with(":9092"), "{brokers}");
    assert_eq!(effective["http"]["bind"], "0.0.0.0:8080");
    assert_eq!(effective["admin"]["token"], "<redacted>");

    // The engine it points at is a service of the file, on the port it listens on.
    let url = environment.get("RAMPART__ELASTICSEARCH__URL").and_then(Value::as_str).expect("engine URL");
    let host = url.trim_start_matches("http://").split(':').next().expect("host");
    assert!(services.get(host).is_some(), "{host} is a compose service");
    assert!(url.ends_with(":9200"), "{url}");
    let uri = environment.get("RAMPART__MONGODB__URI").and_then(Value::as_str).expect("MongoDB URI");
    let host = uri.trim_start_matches("mongodb://").split([':', '/']).next().expect("host");
    assert!(services.get(host).is_some(), "{host} is a compose service");
    assert!(uri.contains(":27017/"), "{uri}");
    // The published port is the one rampart binds, and the grace period covers its shutdown.
    assert_eq!(rampart["ports"][0], "8080-8082:8080", "one host port per replica");
    let timeout = environment.get("RAMPART__SHUTDOWN__TIMEOUT").and_then(Value::as_str).map(seconds).unwrap();
    let grace = rampart["stop_grace_period"].as_str().map(seconds).expect("stop_grace_period");
    assert!(grace > timeout, "docker waits {grace}s, rampart may take {timeout}s");

    // Prometheus scrapes rampart and loads the shipped rules, mounted from the repository.
    let prometheus: Value =
        serde_yaml::from_str(&std::fs::read_to_string(COMPOSE_PROMETHEUS).expect("prometheus.yml")).expect("YAML");
    let discovery = &prometheus["scrape_configs"][0]["dns_sd_configs"][0];
    assert_eq!((discovery["names"][0].as_str(), discovery["port"].as_u64()), (Some("rampart"), Some(8080)));
    assert_eq!(prometheus["scrape_configs"][0]["metrics_path"], "/metrics");
    let rules = prometheus["rule_files"][0].as_str().expect("rule file");
    let mounts = services["prometheus"]["volumes"].as_sequence().expect("volumes");
    let mounted = mounts.iter().filter_map(Value::as_str).find(|mount| mount.ends_with(&format!(":{rules}:ro")));
    let source = mounted.expect("the rule file is mounted").split(':').next().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker").join(source);
    assert!(source.is_file(), "{} exists", source.display());
}
