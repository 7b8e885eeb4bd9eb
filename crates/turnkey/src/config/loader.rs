//! The generic half of config loading: a TOML table (the file, with env/flag overlays merged in)
//! is read into the types that own the settings, every error is collected, and nothing is
//! declared twice.
//!
//! Each config section is read into one or more owning types (several share the flat `[relay]`
//! table). Every owner is deserialized through `serde_ignored` (which keys it did not take) and
//! `serde_path_to_error` (where a value was bad). A bad value is recorded with its path and
//! removed, and the owner is read again, so one run reports every bad value; a key that no owner
//! of its section took is reported as unknown. The result is typed: a value that parsed is valid.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_path_to_error::Segment;

/// Reads owning types out of a config table, collecting every error.
#[derive(Debug)]
pub struct Loader {
    root: toml::Table,
    /// Per section: keys present in the table, and those some owner took.
    sections: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    errors: Vec<String>,
    /// Keys whose value came from a flag or an environment variable, not the file.
    overridden: BTreeSet<String>,
}

impl Loader {
    /// Starts reading `root` (a whole config file).
    pub fn new(root: toml::Table) -> Self {
        Self { root, sections: BTreeMap::new(), errors: Vec::new(), overridden: BTreeSet::new() }
    }

    /// Marks the keys of `overlay` (flags and environment variables), so their errors say so.
    pub fn overridden_by(mut self, overlay: &toml::Table) -> Self {
        fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeSet<String>) {
            for (k, v) in t {
                let key = join(prefix, k);
                match v {
                    toml::Value::Table(inner) => walk(&key, inner, out),
                    _ => {
                        out.insert(key);
                    }
                }
            }
        }
        walk("", overlay, &mut self.overridden);
        self
    }

    /// Reads `T` from section `name` (`""`: the top-level keys). A section read by several owners
    /// is one flat table; each owner takes the keys it knows. On errors, `T` holds what parsed,
    /// with defaults for the rest (the caller fails in [`Loader::finish`] anyway).
    pub fn section<T: DeserializeOwned + Default>(&mut self, name: &str) -> T {
        let table = self.table(name);
        let keys: BTreeSet<String> = table.keys().cloned().collect();
        let (value, taken) = self.read::<T>(name, table);
        let entry = self.sections.entry(name.to_owned()).or_insert_with(|| (keys, BTreeSet::new()));
        entry.1.extend(taken);
        value
    }

    /// A cross-field error found after parsing (e.g. a certificate without its key).
    pub fn error(&mut self, msg: impl Into<String>) {
        self.errors.push(msg.into());
    }

    /// Every error: unknown keys first, then bad values, in one message.
    pub fn finish(self) -> Result<(), String> {
        let mut errors = Vec::new();
        for (name, (keys, taken)) in &self.sections {
            for k in keys.difference(taken) {
                errors.push(format!("unknown key `{}`", join(name, k)));
            }
        }
        // Sections nobody read (`[nope]`), and top-level keys when the top level was not read.
        for k in self.root.keys() {
            let read_as_section = self.sections.contains_key(k.as_str());
            let read_as_key = self.sections.get("").is_some_and(|(keys, _)| keys.contains(k));
            if !read_as_section && !read_as_key {
                errors.push(format!("unknown key `{k}`"));
            }
        }
        errors.extend(self.errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Section `name`: a table of the root (absent: empty); `""`: the root's keys that are not
    /// tables (the top level has no nested settings, so a table there is a section).
    fn table(&mut self, name: &str) -> toml::Table {
        if name.is_empty() {
            return self.root.iter().filter(|(_, v)| !v.is_table()).map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        match self.root.get(name) {
            Some(toml::Value::Table(t)) => t.clone(),
            None => toml::Table::new(),
            Some(other) => {
                self.errors.push(format!("{name}: expected a table, found {}", other.type_str()));
                toml::Table::new()
            }
        }
    }

    /// Reads `T` from `table`, removing each bad value until the rest parses. Returns the value
    /// and the keys it took (every key but the ones it ignored; bad ones count as taken).
    fn read<T: DeserializeOwned + Default>(&mut self, section: &str, mut table: toml::Table) -> (T, BTreeSet<String>) {
        let all: BTreeSet<String> = table.keys().cloned().collect();
        // Every pass removes one value, so this ends; the bound is a second guarantee.
        for _ in 0..=count_values(&table) {
            let mut ignored = Vec::new();
            let mut track = serde_path_to_error::Track::new();
            let de = serde_path_to_error::Deserializer::new(toml::Value::Table(table.clone()), &mut track);
            let result = serde_ignored::deserialize(de, |p| ignored.push(p.to_string()));
            match result {
                Ok(v) => {
                    let mut taken = all.clone();
                    for path in ignored {
                        match path.split_once('.') {
                            // A key this owner does not know: maybe another owner's.
                            None => {
                                taken.remove(&path);
                            }
                            // Inside a value this owner took: unknown for sure.
                            Some(_) => self.errors.push(format!("unknown key `{}`", join(section, &path))),
                        }
                    }
                    return (v, taken);
                }
                Err(e) => {
                    let e: toml::de::Error = e;
                    let msg = e.message().to_owned();
                    let mut path: Vec<Segment> = track.path().iter().cloned().collect();
                    // Point at an unknown field itself, not at its parent.
                    if let Some(field) = msg.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
                        if !matches!(path.last(), Some(Segment::Map { key }) if key == field) {
                            path.push(Segment::Map { key: field.to_owned() });
                        }
                    }
                    let at = join(section, &display(&path));
                    let from_flag = self.overridden.iter().any(|k| {
                        at.strip_prefix(k.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                    });
                    let origin = if from_flag { " (from a flag or TURNKEY_* variable)" } else { "" };
                    self.errors.push(if msg.starts_with("unknown field") {
                        format!("unknown key `{at}`")
                    } else {
                        format!("{at}{origin}: {msg}")
                    });
                    if !remove(&mut table, &path) {
                        break;
                    }
                }
            }
        }
        (T::default(), all)
    }
}

/// The defaults of `value` as a TOML table (for `--help`).
pub fn to_table<T: Serialize>(value: &T) -> toml::Table {
    toml::Table::try_from(value).unwrap_or_default()
}

/// Merges `overlay` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `section.path`; either alone when the other is empty (an owner's cross-key rule has no path).
fn join(section: &str, path: &str) -> String {
    if section.is_empty() || path.is_empty() {
        format!("{section}{path}")
    } else {
        format!("{section}.{path}")
    }
}

fn display(path: &[Segment]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn count_values(t: &toml::Table) -> usize {
    fn count(v: &toml::Value) -> usize {
        match v {
            toml::Value::Table(t) => 1 + t.values().map(count).sum::<usize>(),
            toml::Value::Array(a) => 1 + a.iter().map(count).sum::<usize>(),
            _ => 1,
        }
    }
    t.values().map(count).sum()
}

/// Removes the value at `path`; false when there is none (nothing left to retry with).
fn remove(table: &mut toml::Table, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut cur: &mut toml::Value = match parents.first() {
        None => return remove_from_table(table, last),
        Some(Segment::Map { key }) => match table.get_mut(key) {
            Some(v) => v,
            None => return false,
        },
        Some(_) => return false,
    };
    for seg in parents.iter().skip(1) {
        cur = match (seg, cur) {
            (Segment::Map { key }, toml::Value::Table(t)) => match t.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, toml::Value::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Segment::Map { .. }, toml::Value::Table(t)) => remove_from_table(t, last),
        (Segment::Seq { index }, toml::Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
            true
        }
        _ => false,
    }
}

fn remove_from_table(t: &mut toml::Table, seg: &Segment) -> bool {
    match seg {
        Segment::Map { key } => t.remove(key).is_some(),
        _ => false,
    }
}
