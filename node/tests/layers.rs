//! The node's modules in layers, with arrows one way (ARCHITECTURE.md, `node/`):
//!
//! - **core**: the node, the write and read paths, auth, compiled flag sets, the watch hub, the
//!   peer protocol (`node.rs`, `auth.rs`, `peer/`, …): names no protocol server and no console;
//! - **protocols**: the HTTP API (`api/`) and the flagd sync service (`flagd_sync/`): each uses
//!   the core only, never the other, never the console;
//! - **console** (`ui/`): may use the HTTP layer below it;
//! - **assembly** (`server.rs`, `lib.rs`): wires them all.
//!
//! Read from the source: every `crate::<module>` path each file names.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names through `crate::`.
fn uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

/// The layer of a source file (by its path under `src/`) or of a top-level module.
fn layer(module: &str) -> &'static str {
    match module {
        "api" | "flagd_sync" => "protocol",
        "ui" => "console",
        "server" | "lib" => "assembly",
        _ => "core",
    }
}

/// What a file in `from` (its top-level module `own`) may name.
fn allowed(own: &str, from: &str, target: &str) -> bool {
    let to = layer(target);
    match from {
        "assembly" => true,
        "console" => to != "assembly",
        "protocol" => to == "core" || target == own,
        _ => to == "core",
    }
}

#[test]
fn modules_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let own = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let from = layer(&own);
        let text = std::fs::read_to_string(file).unwrap();
        for target in uses(&text) {
            checked += 1;
            if !allowed(&own, from, &target) {
                wrong.push(format!(
                    "{} ({from}) names crate::{target} ({})",
                    rel.display(),
                    layer(&target)
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} crate paths seen");
    assert!(
        wrong.is_empty(),
        "arrows against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_a_wrong_arrow() {
    assert_eq!(
        uses("use crate::api::extract::Caller; crate::node::Node"),
        ["api", "node"]
    );
    assert!(!allowed("node", "core", "api"));
    assert!(!allowed("api", "protocol", "flagd_sync"));
    assert!(!allowed("api", "protocol", "ui"));
    assert!(allowed("api", "protocol", "api"));
    assert!(allowed("ui", "console", "api"));
    assert!(allowed("server", "assembly", "ui"));
}
