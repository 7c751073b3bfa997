//! Rules about the code itself, checked over the workspace's sources: they need no services,
//! but they belong with the suite so that breaking one fails CI like any other regression.

use std::path::{Path, PathBuf};

/// Source trees whose SQL must go through `shared/src/store/`.
const CHECKED: &[&str] = &[
    "api/src",
    "workers/src",
    "nats/src",
    "cli/src",
    "shared/src",
];
/// The one place allowed to write tables.
const STORE: &str = "shared/src/store/";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether a line holds a statement that writes a table: `INSERT INTO`, `DELETE FROM` or
/// `UPDATE <table> SET`.
fn writes_a_table(line: &str) -> bool {
    if line.contains("INSERT INTO") || line.contains("DELETE FROM") {
        return true;
    }
    line.match_indices("UPDATE ").any(|(at, _)| {
        let rest = &line[at + "UPDATE ".len()..];
        let table: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        !table.is_empty() && rest[table.len()..].starts_with(" SET")
    })
}

#[test]
fn the_writes_detector_sees_each_kind_of_write() {
    assert!(writes_a_table(
        r#"sqlx::query("UPDATE outbox SET published_at = now()")"#
    ));
    assert!(writes_a_table("DELETE FROM outbox WHERE"));
    assert!(writes_a_table("INSERT INTO events (id)"));
    assert!(!writes_a_table(
        "SELECT id FROM outbox FOR UPDATE SKIP LOCKED"
    ));
    assert!(!writes_a_table(
        "ON CONFLICT DO UPDATE SET status = 'pending'"
    ));
}

#[test]
fn only_the_store_writes_tables() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in CHECKED {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} sources", files.len());
    let mut offenders = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        if relative.starts_with(STORE) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if writes_a_table(line) {
                offenders.push(format!("{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "SQL that writes a table outside {STORE} (add a function to the table's store module \
         and call it):\n{}",
        offenders.join("\n")
    );
}
