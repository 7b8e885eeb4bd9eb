//! ARCHITECTURE.md stays the code map and the lints stay in place: every tracked `.rs` file under
//! `crates/` and `tests/` has an entry in the map, and the crates whose invariants clippy checks
//! keep their `disallowed-methods` / `disallowed-types` lines. Both read the source tree only.
//!
//! The map is the fenced block under `## Code map`: an indented tree where a name ending in `/` is
//! a directory (its entries are indented below it), `src/` is left out of crate paths, and one
//! line may name siblings (`tests/a.rs, b.rs`). A directory with no entries of its own below it
//! (`tests/common/`) covers every file in it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test: a failure is the report")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The fenced block under `## Code map` (a fence is a line starting with three backticks).
fn code_map(doc: &str) -> Vec<&str> {
    let after = &doc[doc.find("## Code map").expect("ARCHITECTURE.md has a `## Code map`")..];
    let mut lines = after.lines().skip_while(|l| !l.starts_with("```")).skip(1);
    lines.by_ref().take_while(|l| !l.starts_with("```")).collect()
}

fn is_name(token: &str) -> bool {
    token.ends_with('/')
        || token.rsplit_once('.').is_some_and(|(stem, ext)| {
            !stem.is_empty() && !ext.is_empty() && ext.bytes().all(|b| b.is_ascii_lowercase())
        })
}

/// Every path the map names (directories end in `/`).
fn entries(map: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs: Vec<(usize, String)> = Vec::new();
    for line in map {
        let indent = line.len() - line.trim_start().len();
        let mut tokens = line.split_whitespace();
        let Some(raw) = tokens.next() else { continue };
        let first = raw.trim_end_matches(',');
        if !is_name(first) {
            continue;
        }
        while dirs.last().is_some_and(|(i, _)| *i >= indent) {
            dirs.pop();
        }
        let base: String = dirs.iter().map(|(_, d)| d.as_str()).collect();
        out.insert(format!("{base}{first}"));
        // `tests/a.rs, b.rs`: b.rs is a sibling of a.rs.
        let sibling_dir = first.rsplit_once('/').filter(|_| !first.ends_with('/')).map_or("", |(d, _)| d);
        let mut more = raw.ends_with(',');
        while more {
            let Some(t) = tokens.next() else { break };
            more = t.ends_with(',');
            let sep = if sibling_dir.is_empty() { "" } else { "/" };
            out.insert(format!("{base}{sibling_dir}{sep}{}", t.trim_end_matches(',')));
        }
        if first.ends_with('/') {
            dirs.push((indent, first.to_owned()));
        }
    }
    out
}

/// Whether the map names `file`: itself (with or without its crate's `src/`), or a directory
/// above it that lists no entries of its own.
fn mapped(file: &str, names: &BTreeSet<String>) -> bool {
    let without_src = match file.strip_prefix("crates/").and_then(|r| r.split_once('/')) {
        Some((krate, rest)) => rest.strip_prefix("src/").map(|r| format!("crates/{krate}/{r}")),
        None => None,
    };
    [Some(file.to_owned()), without_src].into_iter().flatten().any(|path| {
        names.contains(&path)
            || path.match_indices('/').any(|(i, _)| {
                let dir = &path[..=i];
                names.contains(dir) && !names.iter().any(|n| n.len() > dir.len() && n.starts_with(dir))
            })
    })
}

fn tracked_rust_files() -> Vec<String> {
    let out = Command::new("git")
        .args(["ls-files", "--", "crates", "tests"])
        .current_dir(root())
        .output()
        .expect("git runs (the code map is checked against the tracked files)");
    assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().filter(|f| f.ends_with(".rs")).map(str::to_owned).collect()
}

#[test]
fn every_tracked_rust_file_is_in_the_code_map() {
    let doc = read("ARCHITECTURE.md");
    let names = entries(&code_map(&doc));
    let files = tracked_rust_files();
    assert!(files.len() > 100, "git ls-files found only {} .rs files", files.len());
    let missing: Vec<_> = files.iter().filter(|f| !mapped(f, &names)).collect();
    assert!(missing.is_empty(), "not in ARCHITECTURE.md's code map: {missing:#?}");
}

#[test]
fn the_map_reader_follows_the_tree() {
    let map = [
        "crates/",
        "  a/                the crate",
        "    lib.rs          exports",
        "    engine/         the engine",
        "      mod.rs        ```a fence inside a line does not end the block",
        "                    prose at the description column does not break the tree",
        "    tests/x.rs, y.rs  two tests",
        "    tests/common/   helpers",
        "tests/              the e2e crate",
        "  src/lib.rs        harness",
    ];
    let names = entries(&map);
    for f in [
        "crates/a/src/lib.rs",
        "crates/a/src/engine/mod.rs",
        "crates/a/tests/x.rs",
        "crates/a/tests/y.rs",
        "crates/a/tests/common/mod.rs",
        "tests/src/lib.rs",
    ] {
        assert!(mapped(f, &names), "{f} should be mapped: {names:?}");
    }
    // A directory with entries below it does not cover its other files; a crate never does.
    for f in ["crates/a/src/engine/other.rs", "crates/a/src/other.rs", "crates/b/src/lib.rs", "tests/src/other.rs"] {
        assert!(!mapped(f, &names), "{f} should not be mapped");
    }
    let doc = "# x\n## Code map\n\n```\ncrates/\n  a/ x\n    lib.rs ```sh in prose\n```\nafter.rs\n";
    assert_eq!(code_map(doc).len(), 3);
}

/// The lines each crate's clippy.toml must keep (clippy reads the crate's file, not the
/// workspace's, so each repeats what it checks).
#[test]
fn the_lints_stay_listed() {
    let clock = ["\"std::time::Instant::now\"", "\"std::time::SystemTime::now\""];
    let rng = ["\"rand::random\"", "\"rand::thread_rng\""];
    let locks = ["\"std::sync::Mutex\"", "\"std::sync::RwLock\""];
    let tokio_clock = ["\"tokio::time::Instant::now\""];
    let wanted: [(&str, Vec<&str>); 4] = [
        // The engine: no clock function at all (it has no tokio to take one from: no_io_deps.rs),
        // randomness only from its seeded generator, no std lock on the data path.
        ("crates/turnkey-proto/clippy.toml", [&clock[..], &rng, &locks].concat()),
        // The drivers: the one clock reading is clock::now (allowed there, with its reason).
        ("crates/turnkey-relay/clippy.toml", [&clock[..], &tokio_clock, &rng, &locks].concat()),
        ("crates/turnkey-auth/clippy.toml", clock.to_vec()),
        ("crates/turnkey-usage/clippy.toml", clock.to_vec()),
    ];
    for (file, lines) in wanted {
        let text = read(file);
        for path in lines {
            assert!(text.contains(&format!("path = {path}")), "{file} no longer disallows {path}");
        }
    }
}
