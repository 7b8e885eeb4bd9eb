//! turnkey-proto stays sans-IO: `cargo metadata` must show no path from it to tokio, socket2,
//! quinn-udp or prometheus (normal dependencies; dev-dependencies and build scripts do not link
//! into the engine).
//!
//! One exception, named here so that it cannot grow silently: webrtc-rs's `stun` and `turn`
//! crates (the STUN/TURN message codec the engine reads and writes attributes through) depend on
//! tokio themselves, for their own client and server code, which the engine never calls. Their
//! subtrees are not followed; everything else is, and `stun`/`turn` must be the only way in.

#![allow(clippy::unwrap_used, reason = "test helpers: a malformed cargo metadata answer fails the test")]

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

const FORBIDDEN: [&str; 4] = ["tokio", "socket2", "quinn-udp", "prometheus"];
/// The codec crates whose own dependencies are not followed (see the module documentation).
const CODEC: [&str; 2] = ["stun", "turn"];

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path", manifest])
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Package id -> (name, normal dependencies' ids).
fn graph(meta: &Value) -> HashMap<String, (String, Vec<String>)> {
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap();
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
                .map(|d| d["pkg"].as_str().unwrap().to_owned())
                .collect();
            (id.to_owned(), (names[id].to_owned(), deps))
        })
        .collect()
}

/// The names reachable from `root` over normal dependencies, not entering `skip`.
fn reachable(g: &HashMap<String, (String, Vec<String>)>, root: &str, skip: &[&str]) -> HashSet<String> {
    let (mut seen, mut todo, mut names) = (HashSet::new(), vec![root.to_owned()], HashSet::new());
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let (name, deps) = &g[&id];
        names.insert(name.clone());
        if id != root && skip.contains(&name.as_str()) {
            continue;
        }
        todo.extend(deps.iter().cloned());
    }
    names
}

#[test]
fn turnkey_proto_reaches_no_runtime_socket_or_metrics_crate() {
    let meta = metadata();
    let g = graph(&meta);
    let root = g.iter().find(|(_, (n, _))| n == "turnkey-proto").map(|(id, _)| id.clone()).expect("in the graph");
    let direct: Vec<&str> = g[&root].1.iter().map(|d| g[d].0.as_str()).collect();
    for f in FORBIDDEN {
        assert!(!direct.contains(&f), "turnkey-proto depends on {f} directly");
    }
    let names = reachable(&g, &root, &CODEC);
    let found: Vec<&str> = FORBIDDEN.into_iter().filter(|f| names.contains(*f)).collect();
    assert!(found.is_empty(), "turnkey-proto reaches {found:?} other than through {CODEC:?}");
    // The check sees what it should: the codec crates are there, and without the exception tokio
    // is reached (so a forbidden crate would be found if it came in any other way).
    assert!(CODEC.iter().all(|c| names.contains(*c)), "{names:?}");
    assert!(reachable(&g, &root, &[]).contains("tokio"));
    // The relay, which drives it, does reach them directly (the graph is read correctly).
    let relay = g.iter().find(|(_, (n, _))| n == "turnkey-relay").map(|(id, _)| id.clone()).unwrap();
    // The check can see each forbidden crate: the relay's drivers reach every one (quinn-udp
    // through turnkey-batch).
    let relay_reach = reachable(&g, &relay, &[]);
    assert!(FORBIDDEN.iter().all(|f| relay_reach.contains(*f)), "{relay_reach:?}");
}
