//! The import rules of ARCHITECTURE.md, checked on the source: a forbidden import fails here
//! naming the file, the line and the rule, before it can grow into a circle.

use std::path::{Path, PathBuf};

/// Files under `folder` (a path under `src/`) must not name any of `forbidden` outside comments.
struct Rule {
    folder: &'static str,
    forbidden: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        folder: "telemetry",
        forbidden: &["crate::", "super::super"],
        why: "telemetry is the ground floor: everything reports through it, it imports nothing of rampart",
    },
    Rule {
        folder: "chat",
        forbidden: &[
            "crate::transport",
            "crate::config",
            "crate::app",
            "crate::http",
            "crate::sfu",
            "crate::storage::mongodb",
            "crate::storage::elasticsearch",
            "crate::storage::sqlite",
            "MongoChat",
            "ElasticsearchSearch",
        ],
        why: "chat is handed its store, search and next stage by the composition root (app/): it names no \
              transport, no backend and not the whole configuration",
    },
    Rule {
        folder: "app",
        forbidden: &[
            "crate::storage::mongodb",
            "crate::storage::elasticsearch",
            "crate::storage::sqlite",
            "SqliteChat",
            "MongoChat",
        ],
        why: "the composition root asks storage::open for the backends the configuration names; only \
              storage/ knows which struct serves which kind",
    },
    Rule {
        folder: "sfu",
        forbidden: &["crate::config", "crate::app", "crate::http", "crate::transport"],
        why: "the SFU gets its own config section and the chat handles it needs from app/",
    },
    Rule {
        folder: "storage",
        forbidden: &["crate::chat", "crate::sfu", "crate::transport", "crate::http", "crate::app", "crate::config"],
        why: "storage is below every feature: it knows rows and documents, not who uses them",
    },
    Rule {
        folder: "supervision",
        forbidden: &[
            "crate::chat",
            "crate::sfu",
            "crate::storage",
            "crate::transport",
            "crate::http",
            "crate::app",
            "crate::config",
        ],
        why: "supervision is the runtime every actor stands on; it knows actors, not features",
    },
    Rule {
        folder: "transport",
        forbidden: &["crate::http", "crate::app", "crate::config", "crate::sfu"],
        why: "a transport carries chat's messages; the composition root wires it in",
    },
    Rule {
        folder: "socket",
        forbidden: &["crate::chat", "crate::sfu", "crate::http", "crate::app"],
        why: "the socket outbox is shared by chat and the SFU and depends on neither",
    },
];

/// Folders and files outside `src/http/` that must not name actix-web (only `http/` does); the
/// rules above leave this one to the list.
const WEB_FREE: &[&str] = &[
    "alerts",
    "auth",
    "chat",
    "crash",
    "logging",
    "resilience",
    "sfu",
    "socket",
    "storage",
    "supervision",
    "system_monitor",
    "telemetry",
    "transport",
    "app",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/<name>/**.rs`, or `src/<name>.rs` for a single-file module.
fn module_files(name: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join(name), &mut files);
    let single = src.join(format!("{name}.rs"));
    if single.is_file() {
        files.push(single);
    }
    assert!(!files.is_empty(), "no source for module {name}: update the rules with the tree");
    files
}

/// `(line number, line)` of each line of code, comments left out.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(n, line)| (n + 1, line)).filter(|(_, line)| !line.trim_start().starts_with("//"))
}

#[test]
fn no_module_imports_what_the_architecture_forbids() {
    let mut broken = Vec::new();
    let mut check = |folder: &str, forbidden: &[&str], why: &str| {
        for file in module_files(folder) {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (number, line) in code_lines(&text) {
                for name in forbidden.iter().filter(|name| line.contains(*name)) {
                    broken.push(format!("{}:{number}: names `{name}` ({why})", file.display()));
                }
            }
        }
    };
    for rule in RULES {
        check(rule.folder, rule.forbidden, rule.why);
    }
    for folder in WEB_FREE {
        check(folder, &["actix_web", "actix-web"], "only http/ knows actix-web types");
    }
    assert!(broken.is_empty(), "imports against ARCHITECTURE.md:\n{}", broken.join("\n"));
}

#[test]
fn the_rules_catch_a_forbidden_import() {
    // The check itself: a line of code is caught, the same words in a comment are not.
    let text = "// uses crate::transport in prose\nuse crate::transport::kafka::Kafka;\n";
    let caught: Vec<usize> =
        code_lines(text).filter(|(_, line)| line.contains("crate::transport")).map(|(n, _)| n).collect();
    assert_eq!(caught, vec![2]);
}
