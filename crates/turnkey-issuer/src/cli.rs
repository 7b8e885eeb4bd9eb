//! Plain functions behind `turnkey keys create|list|delete --data-dir DIR` (the binary wires
//! clap and prints what these return).

use std::path::Path;

use crate::error::Error;
use crate::keys::{KeyOptions, KeyStore};

/// `turnkey keys create`: creates a key and returns the one JSON object to print on stdout,
/// `{"id": "...", "token": "..."}` (the only time the token is shown).
pub fn keys_create(data_dir: &Path, opts: KeyOptions, now_unix: u64) -> Result<String, Error> {
    let new = KeyStore::open(data_dir)?.create(opts, now_unix)?;
    Ok(serde_json::json!({ "id": new.id, "token": new.token }).to_string())
}

/// `turnkey keys list`: one JSON object per key and line (`id`, `max_ttl`,
/// `monthly_bandwidth_bytes`, `created`); never tokens.
pub fn keys_list(data_dir: &Path) -> Result<String, Error> {
    let keys = KeyStore::open(data_dir)?.list()?;
    let mut out = String::new();
    for k in keys {
        out.push_str(
            &serde_json::to_string(&k).map_err(|e| Error::Malformed { path: k.id.clone(), message: e.to_string() })?,
        );
        out.push('\n');
    }
    Ok(out)
}

/// `turnkey keys delete ID`: removes the key (a running server refuses its token at once).
pub fn keys_delete(data_dir: &Path, id: &str) -> Result<(), Error> {
    KeyStore::open(data_dir)?.delete(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_prints_one_json_object_and_list_hides_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let out = keys_create(dir.path(), KeyOptions::default(), 1).unwrap();
        assert!(!out.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        let token = v["token"].as_str().unwrap().to_owned();
        let listed = keys_list(dir.path()).unwrap();
        assert!(listed.contains(&id));
        assert!(!listed.contains(&token));
        keys_delete(dir.path(), &id).unwrap();
        assert_eq!(keys_list(dir.path()).unwrap(), "");
        assert!(keys_delete(dir.path(), &id).is_err());
    }
}
