//! Every command block of README.md and docs/*.md runs as written (ports substituted), or says
//! why it cannot run here (`tests/src/doctest.rs`): a doc that stops matching the product fails.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use turnkey_e2e::doctest::{blocks, run_file};
use turnkey_e2e::{require, root};

/// The files with command blocks, each run by a test below.
const COVERED: [&str; 6] =
    ["README.md", "docs/load.md", "docs/fleet.md", "docs/deploy.md", "docs/observability.md", "docs/benchmarks.md"];

fn run(file: &str, tools: &[&str]) {
    if !tools.iter().all(|t| require(t)) {
        return;
    }
    let out = run_file(file, Duration::from_secs(600));
    eprintln!("{file}: ran {:?}; not run here: {:#?}", out.ran, out.skipped);
}

#[test]
fn every_doc_with_commands_is_covered_and_marked() {
    let mut files = vec!["README.md".to_owned()];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(format!("docs/{}", p.file_name().unwrap().to_string_lossy()));
        }
    }
    for f in files {
        let text = std::fs::read_to_string(root().join(&f)).unwrap();
        let b = blocks(&f, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(b.is_empty() || COVERED.contains(&f.as_str()), "{f} has command blocks but no test runs them");
    }
}

#[test]
fn readme_commands_run() {
    run("README.md", &["curl"]);
}

#[test]
fn load_md_commands_run() {
    run("docs/load.md", &["curl"]);
}

#[test]
fn fleet_md_commands_run() {
    run("docs/fleet.md", &["redis-server", "curl"]);
}

#[test]
fn deploy_md_commands_run() {
    run("docs/deploy.md", &[]);
}

#[test]
fn observability_md_commands_run() {
    run("docs/observability.md", &["promtool"]);
}

#[test]
fn benchmarks_md_commands_run() {
    run("docs/benchmarks.md", &[]);
}
